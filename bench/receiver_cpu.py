"""The receiver's CPU per instance, which wall-clock rates on a shared machine hide (perf §4).

Starts the node's receiver as ``bench/ingest.py`` does (a pool of one process, durable writes
unless ``--no-fsync``), sends corpus (b) (64x64 instances) with DCMTK ``storescu`` over 1 or 4
associations and prints the rate and the receiver process's CPU time (user + system, all its
threads) per instance. ``--strace FILE`` also runs ``strace -f -c`` on the receiver: system calls
per instance are the total count divided by the instances sent.

    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 1
    PATH=$PATH:.venv/bin .venv/bin/python bench/receiver_cpu.py --associations 1 --strace calls.txt

(``.venv/bin`` last in ``PATH``: pynetdicom's ``storescu`` there would shadow DCMTK's.) Compare
two trees by running each tree's copy back to back, several times: single runs drift with load.
Each run's corpus and storage stay under ``var/receiver-cpu/`` (remove it when done): deleting
them would slow the files the next run creates (``bench/ingest.py``'s docstring), and the line
printed ends with the cost of creating a file just before the run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402 - bench/ingest.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--associations", type=int, choices=[1, 4], default=1)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--strace", type=Path, default=None, metavar="FILE")
    args = parser.parse_args()
    runs = ingest.PROJECT_ROOT / "var" / "receiver-cpu"
    runs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="run-", dir=runs))  # kept: see the module doc
    corpus = workdir / "b"
    corpus.mkdir()
    ingest.write_corpus(corpus, args.count, 64)
    probe = ingest.create_probe_us(workdir / "probe")
    seconds, before, after = _measure(workdir, corpus, args)
    user = (after.user - before.user) / args.count * 1e3
    system = (after.system - before.system) / args.count * 1e3
    print(f"{args.associations} assoc: {args.count / seconds:.1f} instances/s, receiver CPU "
          f"{user + system:.3f} ms/instance (user {user:.3f}, sys {system:.3f}), "
          f"load average {psutil.getloadavg()[0]:.2f}, file create {probe:.0f} us")  # fmt: skip


def _measure(workdir: Path, corpus: Path, args: argparse.Namespace) -> tuple[float, Any, Any]:
    """Send the corpus to a fresh receiver: (seconds, its CPU times before, after)."""
    with ingest.pacsnode(workdir, 1, not args.no_fsync) as (port, aet):
        receiver = psutil.Process().children(recursive=True)[-1]
        tracer = None
        if args.strace is not None:
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", str(args.strace),
                                       "-p", str(receiver.pid)])  # fmt: skip
            time.sleep(1.5)
        before = receiver.cpu_times()
        seconds = ingest.send(corpus, port, aet, args.associations, True)
        after = receiver.cpu_times()
        if tracer is not None:
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
    return seconds, before, after


if __name__ == "__main__":
    main()
