"""The receiver's CPU per instance, which wall-clock rates on a shared machine hide (perf §4).

Starts the node's receiver as ``bench/ingest.py`` does (a pool of ``--processes``, durable
writes unless ``--no-fsync``; several pool sizes run in turns, each in every round), sends
``--count`` CT instances of ``--size``² (64: corpus (b), the default; 512: corpus (a)) with
DCMTK ``storescu`` over 1 or 4 associations and prints the rate and the receiver's CPU time
(user + system, all its processes and threads) per instance.
``--peer`` measures Orthanc 1.10 the same way, in turns with the node in each round.

Each row also gives the sender's CPU per instance (the ``storescu`` processes) and how many of
the machine's cores were busy meanwhile. Sender and receiver share the machine, so the busy CPU
per instance bounds the rate: "ceiling" is the rate at which that CPU would fill every core. A
receiver whose rate is well under its ceiling while the cores sit idle is bound by latency (its
own waits, or the sender's), not by CPU. ``--strace FILE`` also runs ``strace -f -c`` on the
node's receiver processes in the first round: system calls per instance are the total count
divided by the instances sent.

    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 1
    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 4 --peer --repeat 3
    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 4 --processes 1 4 --peer --repeat 4
    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 4 --peer --repeat 3 --size 512 --count 500
    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 1 --strace calls.txt

(``.venv/bin`` last in ``PATH``: pynetdicom's ``storescu`` there would shadow DCMTK's.) Compare
two trees by running each tree's copy back to back, several times: single runs drift with load.
Each run's corpus and storage stay under ``var/receiver-cpu/`` (remove it when done): deleting
them would slow the files the next run creates (``bench/ingest.py``'s docstring), and the footer
gives the cost of creating a file just before the run.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402 - bench/ingest.py, beside this file


@dataclass(frozen=True)
class Run:
    """One receiver's run: the rate and the CPU it and the sender spent per instance."""

    rate: float  # instances/s
    receiver_ms: float  # receiver CPU per instance (user + system)
    receiver_sys_ms: float  # of which system
    sender_ms: float  # storescu CPU per instance
    busy_cores: float  # the machine's non-idle cores (not idle, not waiting for I/O) meanwhile
    iowait_cores: float  # cores idle with I/O outstanding
    busy_ms: float  # the machine's busy CPU per instance


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, choices=[1, 4], default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64,
                        help="rows and columns of each instance: 64 is corpus (b), 512 (a)")  # fmt: skip
    parser.add_argument("--processes", type=int, nargs="+", default=[1],
                        help="receiver pool sizes, each run in every round")  # fmt: skip
    parser.add_argument("--peer", action="store_true", help="also Orthanc 1.10, in turns")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--strace", type=Path, default=None, metavar="FILE")
    parser.add_argument("--workdir", type=Path, default=ingest.PROJECT_ROOT / "var" / "receiver-cpu",
                        help="where each run's folder is made (default: var/receiver-cpu)")  # fmt: skip
    args = parser.parse_args(argv)
    runs = args.workdir
    runs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))  # kept: see the module doc
    corpus = workdir / "corpus"
    corpus.mkdir()
    ingest.write_corpus(corpus, args.count, args.size)
    probe = ingest.create_probe_us(workdir / "probe")
    free_gb = ingest.free_memory_gb()
    durable = not args.no_fsync
    receivers: dict[str, Callable[[Path], Any]] = {
        f"pacsnode ({n} process{'es' if n > 1 else ''})": (
            lambda w, n=n: ingest.pacsnode(w, n, durable)
        )
        for n in args.processes
    }
    if args.peer:
        ingest.RECEIVER_ENV["TCP_NODELAY"] = "1"  # as bench/ingest.py: DCMTK's Nagle would stall
        receivers["Orthanc 1.10"] = lambda w: ingest.orthanc(w, durable)
    results: dict[str, list[Run]] = {name: [] for name in receivers}
    for round_ in range(args.repeat):
        for index, (name, start) in enumerate(receivers.items()):
            folder = workdir / f"{round_}-{index}"
            trace = args.strace if round_ == 0 and index == 0 else None
            with start(folder) as (port, aet):
                results[name].append(
                    measure(corpus, args.count, port, aet, args.associations, trace)
                )
    print_table(results, args, probe, free_gb)


def measure(
    corpus: Path, count: int, port: int, aet: str, associations: int, trace: Path | None
) -> Run:
    """Send the ``count`` instances of ``corpus`` to a started receiver (every process this one
    started is the receiver's)."""
    processes = psutil.Process().children(recursive=True)
    with _strace([p.pid for p in processes], trace):
        before = [_cpu(p) for p in processes]
        sender_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        machine_before = psutil.cpu_times()
        seconds = ingest.send(corpus, port, aet, associations, True)
        machine_after = psutil.cpu_times()
        sender_after = resource.getrusage(resource.RUSAGE_CHILDREN)
        after = [_cpu(p) for p in processes]
    per = 1e3 / count
    user = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    system = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    sender = (sender_after.ru_utime - sender_before.ru_utime
              + sender_after.ru_stime - sender_before.ru_stime)  # fmt: skip
    idle = machine_after.idle - machine_before.idle
    iowait = getattr(machine_after, "iowait", 0.0) - getattr(machine_before, "iowait", 0.0)
    busy = sum(machine_after) - sum(machine_before) - idle - iowait
    return Run(
        rate=count / seconds,
        receiver_ms=(user + system) * per,
        receiver_sys_ms=system * per,
        sender_ms=sender * per,
        busy_cores=busy / seconds,
        iowait_cores=iowait / seconds,
        busy_ms=busy * per,
    )


def _cpu(process: psutil.Process) -> tuple[float, float]:
    """(user, system) seconds of a process, its threads included; (0, 0) once it is gone."""
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return times.user, times.system
    return 0.0, 0.0


@contextlib.contextmanager
def _strace(pids: list[int], output: Path | None) -> Iterator[None]:
    if output is None:
        yield
        return
    attach = [arg for pid in pids for arg in ("-p", str(pid))]
    tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(output), *attach])
    time.sleep(1.5)
    try:
        yield
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait()


def print_table(
    results: dict[str, list[Run]], args: argparse.Namespace, probe: float, free_gb: float
) -> None:
    """Medians over the rounds, each column on its own; the node's rate against the peer's."""
    cores = psutil.cpu_count() or 1
    print(f"{args.count} x {args.size}x{args.size} 16-bit over {args.associations} association(s), "
          f"storescu TCP_NODELAY=1, {'no fsync' if args.no_fsync else 'durable'}, median of "
          f"{args.repeat}, {cores} cores")  # fmt: skip
    print(f"{'receiver':<24} {'inst/s':>8} {'ratio':>6} {'recv ms':>8} {'of sys':>7} "
          f"{'send ms':>8} {'busy cores':>10} {'iowait':>7} {'busy ms':>8} {'ceiling/s':>10}")  # fmt: skip
    peer = statistics.median(r.rate for r in results.get("Orthanc 1.10", [])) if args.peer else 0
    for name, runs in results.items():
        median = {
            f: statistics.median(getattr(r, f) for r in runs) for f in Run.__dataclass_fields__
        }
        ratio = f"{median['rate'] / peer:5.2f}x" if peer else "     -"
        print(f"{name:<24} {median['rate']:8.1f} {ratio:>6} {median['receiver_ms']:8.3f} "
              f"{median['receiver_sys_ms']:7.3f} {median['sender_ms']:8.3f} "
              f"{median['busy_cores']:10.2f} {median['iowait_cores']:7.2f} {median['busy_ms']:8.3f} "
              f"{cores / median['busy_ms'] * 1e3:10.0f}")  # fmt: skip
    print(f"recv/send ms: receiver's and sender's CPU per instance; busy ms: the machine's busy "
          f"CPU per instance; ceiling: the rate at which that fills all {cores} cores. Load "
          f"average {psutil.getloadavg()[0]:.2f}, file create {probe:.0f} us before the first "
          f"run (over {ingest.SETTLED_US:.0f} us: recent deletions slow the run); "
          f"{ingest.memory_note(free_gb)}")  # fmt: skip


if __name__ == "__main__":
    main()
