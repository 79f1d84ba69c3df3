"""Receive-speed benchmark: pacsnode vs Orthanc vs DCMTK storescp vs pynetdicom, fed by DCMTK storescu.

Corpora: (a) CT-like 512x512 16-bit instances (0.5 MB each), (b) 64x64 instances. Senders:
``storescu`` with ``TCP_NODELAY=1`` exported and with its defaults (Nagle on), over 1 and 4
concurrent associations. pacsnode runs with durable writes (fsync of file, directory and
database commit before each success status) in 1 and N receiver processes; Orthanc (SQLite
index, temp config, free ports, ``SyncStorageArea: true`` — its default since 1.7.4, an fsync of
each stored file) and storescp (``--fork``, no fsync) write each instance to its own file. The
pynetdicom row (``bench/pynetdicom_scp.py``: a plain ``AE.start_server`` storage SCP, one process,
file and folder fsynced before each success status) is the baseline for the node's own DICOM upper
layer (docs/performance.md). Every receiver gets a fresh, empty storage per run. Orthanc and
storescp also get ``TCP_NODELAY=1`` (pacsnode sets it on its sockets itself); without it DCMTK-based
receivers stall ~40 ms per response on delayed ACKs (``--receivers-nagle`` shows that).

Storage is removed only when the whole run ends, never between runs: on ext4 without a journal
(this machine's disk) the kernel will not reuse an inode deleted in the last 60-360 s and scans
past every such inode to create a file (``recently_deleted()`` in ``fs/ext4/ialloc.c``), so after a
run's thousands of deletions each file the next run created cost 0.2-0.5 ms instead of ~0.01 ms —
more than the rest of a small instance's work, and a different amount for whichever receiver ran
next. The footer prints the cost of creating a file, probed before the first run and after the
last; over 50 us before the first run means recent deletions (another run's, within ~6 minutes)
slowed this one. (After the last run it is often higher anyway: gigabytes of CT written back.)
So before the first run the benchmark probes every 15 s until the probe is under 50 us, for up
to ``--settle`` seconds (default 420; 0 with ``--quick``): this benchmark run right after another
one (whose folder was just deleted) probed 467 us and measured pacsnode over one association at
1.00x Orthanc, against 1.45x two minutes earlier (2026-12-07).
A full page cache slows writes too: once the memory is full of cached files, every page a
receiver writes is first reclaimed from another file. After ~32 GB of earlier benchmark runs had
filled this 24 GB machine's memory with cache, corpus (a) over 4 associations measured 536/s with
1 receiver process and 423/s with 4 (receiver CPU 1.95 and 3.21 ms per instance); with the cache
dropped (``sync; echo 1 > /proc/sys/vm/drop_caches``), 518/s and 628/s (1.63, 1.75 ms;
``bench/receiver_cpu.py``, 2026-12-07). So the footer prints the memory free before the first
run; under ``LOW_FREE_GB`` it says so.
For the same reason every run starts with nothing left to write back (``sync`` after writing the
corpora and after each run, outside the timing): a receiver that does not flush (storescp) would
otherwise leave ~250 MB of CT in the page cache for the next receiver's run to write back.

    .venv/bin/python bench/ingest.py            # full run, median of 3 runs each (~20 minutes)
    .venv/bin/python bench/ingest.py --quick    # small run
    .venv/bin/python bench/ingest.py --quick --repeat 1 --only pacsnode-1 pynetdicom
    .venv/bin/python bench/ingest.py --quick --repeat 1 --no-fsync   # protocol cost, no disk
    .venv/bin/python bench/ingest.py --corpora b --count 20000 --repeat 1  # does the rate hold?
    .venv/bin/python bench/ingest.py --quick --postgres postgresql+psycopg://postgres@127.0.0.1/test
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import pynetdicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))

from core.config import load_settings  # noqa: E402
from node.db.engine import Database  # noqa: E402
from node.ingest.receiver_pool import start_receiver_pool  # noqa: E402
from tests.conftest import free_port  # noqa: E402 - never one port for Orthanc's DICOM and HTTP

ASSOCIATION_SPLIT = 4


def write_corpus(folder: Path, count: int, size: int) -> int:
    """``count`` CT instances of ``size``x``size`` 16-bit, split in 4 sub-folders; returns bytes."""
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    total = 0
    for index in range(count):
        ds = Dataset()
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientName, ds.PatientID, ds.Modality = "Bench^Patient", "BENCH", "CT"
        ds.StudyDate, ds.SeriesNumber, ds.InstanceNumber = "20260101", 1, index + 1
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        part = folder / f"part{index % ASSOCIATION_SPLIT}"
        part.mkdir(parents=True, exist_ok=True)
        path = part / f"{index:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        total += path.stat().st_size
    return total


def wait_for_echo(port: int, aet: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = subprocess.run(["echoscu", "-aec", aet, "127.0.0.1", str(port)],
                                capture_output=True, check=False)  # fmt: skip
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError(f"receiver on port {port} did not answer C-ECHO")


@contextlib.contextmanager
def fresh_database(postgres: str | None) -> Iterator[str]:
    """An empty URL (SQLite in the data directory), or a new PostgreSQL schema, dropped after."""
    if not postgres:
        yield ""
        return
    from sqlalchemy import create_engine, text

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{postgres}{'&' if '?' in postgres else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@contextlib.contextmanager
def pacsnode(
    workdir: Path, processes: int, durable: bool, postgres: str | None = None
) -> Iterator[tuple[int, str]]:
    data_dir = workdir / "pacsnode"
    with fresh_database(postgres) as url:
        settings = load_settings(None, environment="test", data_dir=data_dir, database_url=url,
                                 dicom_host="127.0.0.1", dicom_port=free_port(), min_free_disk_mb=0,
                                 fsync=durable, log_level="WARNING",
                                 receiver_processes=processes)  # fmt: skip
        data_dir.mkdir(parents=True)
        db = Database(settings.effective_database_url)
        db.migrate()
        db.dispose()
        pool = start_receiver_pool(settings)
        try:
            wait_for_echo(pool.port, settings.ae_title)
            yield pool.port, settings.ae_title
            PEAK_RSS_MB.append(max(peak_rss_mb(p.pid) for p in pool.processes if p.pid))
        finally:
            pool.stop()


PEAK_RSS_MB: list[float] = []  # the last pacsnode run's largest receiver process (VmHWM)


def peak_rss_mb(pid: int) -> float:
    """A process's peak resident set (VmHWM), in MB; 0 where /proc cannot tell."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


RECEIVER_ENV: dict[str, str] = dict(os.environ)
Receiver = Callable[[Path], contextlib.AbstractContextManager[tuple[int, str]]]


@contextlib.contextmanager
def serving(command: list[str], port: int, aet: str) -> Iterator[tuple[int, str]]:
    """Run an outside receiver until the block ends; yield once it answers C-ECHO."""
    proc = subprocess.Popen(
        command, env=RECEIVER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_echo(port, aet)
        yield port, aet
    finally:
        proc.terminate()
        proc.wait(30)


@contextlib.contextmanager
def orthanc(workdir: Path, durable: bool) -> Iterator[tuple[int, str]]:
    root = workdir / "orthanc"
    root.mkdir(parents=True)
    port = free_port()
    config = {
        "Name": "bench", "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
        "DicomAet": "ORTHANC", "DicomPort": port, "HttpPort": free_port(), "HttpServerEnabled": True,
        "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
        "Plugins": [], "StorageCompression": False, "SaveJobs": False, "DicomThreadsCount": 4,
        "SyncStorageArea": durable,
    }  # fmt: skip
    (root / "orthanc.json").write_text(json.dumps(config))
    with serving(["Orthanc", str(root / "orthanc.json")], port, "ORTHANC") as receiver:
        yield receiver


@contextlib.contextmanager
def pynetdicom_scp(workdir: Path, durable: bool) -> Iterator[tuple[int, str]]:
    """The plain pynetdicom storage SCP of ``bench/pynetdicom_scp.py`` in its own process."""
    port = free_port()
    script = Path(__file__).resolve().parent / "pynetdicom_scp.py"
    command = [sys.executable, str(script), str(port), str(workdir / "pynetdicom")]
    if not durable:
        command.append("--no-fsync")
    with serving(command, port, "PYNETDICOM") as receiver:
        yield receiver


@contextlib.contextmanager
def storescp(workdir: Path) -> Iterator[tuple[int, str]]:
    out = workdir / "storescp"
    out.mkdir(parents=True)
    port = free_port()
    command = ["storescp", "--fork", "+xa", "-od", str(out), "-aet", "STORESCP", str(port)]
    with serving(command, port, "STORESCP") as receiver:
        yield receiver


def send(corpus: Path, port: int, aet: str, associations: int, nodelay: bool) -> float:
    """Send the corpus with ``associations`` parallel storescu processes; return seconds."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    parts = sorted(corpus.glob("part*"))
    groups = [parts] if associations == 1 else [[p] for p in parts]
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            ["storescu", "-aec", aet, "+sd", "+r", "127.0.0.1", str(port), *map(str, group)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for group in groups
    ]
    errors = [p.communicate()[1] for p in procs]
    elapsed = time.perf_counter() - started
    failed = [e.decode()[-300:] for p, e in zip(procs, errors, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"storescu failed: {failed[0]}")
    return elapsed


@dataclass(frozen=True)
class Result:
    receiver: str
    scenario: str
    rate: float
    mb_s: float


def receivers_for(
    processes: int, durable: bool = True, postgres: str | None = None
) -> dict[str, tuple[str, Receiver, tuple[str, ...]]]:
    """Every receiver: short key (``--only``) -> (table label, start-up, outside tools it needs)."""
    writes = ("durable" if durable else "no fsync") + (", PostgreSQL" if postgres else "")
    return {
        "pacsnode-1": (
            f"pacsnode (1 process, {writes})",
            lambda w: pacsnode(w, 1, durable, postgres),
            (),
        ),
        "pacsnode-n": (
            f"pacsnode ({processes} processes, {writes})",
            lambda w: pacsnode(w, processes, durable, postgres),
            (),
        ),
        "orthanc": (
            f"Orthanc 1.10 (SQLite{'' if durable else ', no fsync'})",
            lambda w: orthanc(w, durable),
            ("Orthanc",),
        ),
        "storescp": ("DCMTK storescp --fork", storescp, ("storescp",)),
        "pynetdicom": (
            f"pynetdicom {pynetdicom.__version__} (1 process, {writes})",
            lambda w: pynetdicom_scp(w, durable),
            (),
        ),
    }


def bench_folder(workdir: Path | None) -> Path:
    """A fresh folder for corpora and storage, inside ``workdir`` (created if missing) or /tmp."""
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="pacsnode-bench-", dir=workdir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small corpora, NODELAY sender only")
    parser.add_argument("--processes", type=int, default=2, help="pacsnode receiver processes (N)")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where corpora and storage go (created)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(receivers_for(2)),
        default=None,
        help="run these receivers only (default: all)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per receiver and scenario (median)"
    )
    parser.add_argument(
        "--no-fsync",
        action="store_true",
        help="pacsnode, Orthanc and pynetdicom without fsync: the protocol and process costs "
        "alone, without the disk's (storescp never fsyncs)",
    )
    parser.add_argument("--corpora", nargs="+", choices=["a", "b"], default=["a", "b"],
                        help="(a) CT 512x512, (b) 64x64 (default: both)")  # fmt: skip
    parser.add_argument("--count", type=int, default=None,
                        help="instances in corpus (b) (default 2,000; 400 with --quick)")  # fmt: skip
    parser.add_argument("--associations", nargs="+", type=int, choices=[1, 4], default=[1, 4],
                        help="concurrent associations per scenario (default: 1 and 4)")  # fmt: skip
    parser.add_argument("--postgres", default=None, metavar="URL",
                        help="pacsnode on PostgreSQL (a fresh schema per run) instead of SQLite")  # fmt: skip
    parser.add_argument("--settle", type=float, default=None, metavar="SECONDS",
                        help="before the first run, wait up to this long for the file create probe "
                             "to fall under 50 us (recent deletions slow the disk; 0: do not wait; "
                             "default 420, 0 with --quick)")  # fmt: skip
    parser.add_argument("--receivers-nagle", action="store_true",
                        help="start Orthanc and storescp without TCP_NODELAY=1 (DCMTK's default: "
                             "Nagle on, ~40 ms stall per response); default: TCP_NODELAY=1")  # fmt: skip
    args = parser.parse_args(argv)
    RECEIVER_ENV.pop("TCP_NODELAY", None)
    if not args.receivers_nagle:
        RECEIVER_ENV["TCP_NODELAY"] = "1"  # pacsnode sets TCP_NODELAY itself; give them the same
    chosen = {
        key: value
        for key, value in receivers_for(args.processes, not args.no_fsync, args.postgres).items()
        if args.only is None or key in args.only
    }
    needed = {"storescu", "echoscu"}.union(*(tools for _, _, tools in chosen.values()))
    for tool in sorted(needed):
        if shutil.which(tool) is None:
            print(f"{tool} not found: install dcmtk and orthanc", file=sys.stderr)
            return 2
    ct_count, tiny_count = (100, 400) if args.quick else (500, 2000)
    counts = {"a": ct_count, "b": args.count or tiny_count}
    base = bench_folder(args.workdir)
    try:
        corpora = {"a": base / "corpus-ct", "b": base / "corpus-64"}
        sides = {"a": 512, "b": 64}
        sizes = {c: write_corpus(corpora[c], counts[c], sides[c]) for c in args.corpora}
        os.sync()  # the corpora's dirty pages written back before the first run, not during it
        settle_s = args.settle if args.settle is not None else 0.0 if args.quick else 420.0
        probes = [settled_probe_us(base, settle_s)]
        free_gb = free_memory_gb()
        receivers = {label: factory for label, factory, _ in chosen.values()}
        scenarios = [(c, a, True) for c in args.corpora for a in args.associations]
        if not args.quick and "a" in args.corpora:
            scenarios += [("a", a, False) for a in args.associations]
        results: list[Result] = []
        for corpus, assocs, nodelay in scenarios:
            label = f"({corpus}) {assocs} assoc{'' if nodelay else ', Nagle on'}"
            runs: dict[str, list[float]] = {name: [] for name in receivers}
            for _ in range(
                args.repeat
            ):  # receivers interleaved, so a slow spell of the disk hits all
                for number, (name, factory) in enumerate(receivers.items()):
                    workdir = base / f"run-{len(results)}-receiver-{number}-{len(runs[name])}"
                    PEAK_RSS_MB.clear()
                    with factory(workdir) as (port, aet):
                        elapsed = send(corpora[corpus], port, aet, assocs, nodelay)
                    # kept until the end: deleting now slows every file the next run creates;
                    # written back now, not during the next receiver's run (storescp never syncs)
                    os.sync()
                    runs[name].append(elapsed)
                    rate = counts[corpus] / elapsed
                    rss = f"  peak RSS {PEAK_RSS_MB[0]:.0f} MB" if PEAK_RSS_MB else ""
                    print(f"{label:24s} {name:34s} {rate:8.1f} inst/s{rss}", flush=True)
            for name, times in runs.items():
                elapsed = statistics.median(times)
                results.append(
                    Result(name, label, counts[corpus] / elapsed, sizes[corpus] / elapsed / 1e6)
                )
        probes.append(create_probe_us(base / "probe-after"))
        print_table(results, counts, args.repeat, probes, free_gb)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


SETTLED_US = 50.0  # a file create probe above this: recent deletions slow the disk (module doc)
SETTLE_EVERY_S = 15.0


def settled_probe_us(base: Path, settle_s: float) -> float:
    """The file create probe, repeated every ``SETTLE_EVERY_S`` while it is above ``SETTLED_US``
    for up to ``settle_s`` seconds: the last probe."""
    deadline = time.monotonic() + settle_s
    for attempt in itertools.count():
        probe = create_probe_us(base / f"probe-before-{attempt}")
        if probe <= SETTLED_US or time.monotonic() + SETTLE_EVERY_S > deadline:
            return probe
        print(f"file create probe {probe:.0f} us (recent deletions): waiting {SETTLE_EVERY_S:.0f} s "
              "for the disk to settle", flush=True)  # fmt: skip
        time.sleep(SETTLE_EVERY_S)
    raise AssertionError("unreachable")


def create_probe_us(folder: Path, count: int = 300) -> float:
    """Median microseconds to create (``O_EXCL``) and write a 9 KB file in a fresh ``folder``:
    ~10 us on an idle ext4, 200+ us when many inodes were deleted in the last minutes (module doc).
    The files stay (deleting them would slow the runs after)."""
    folder.mkdir()
    data = os.urandom(9000)
    times = []
    for index in range(count):
        started = time.perf_counter()
        fd = os.open(folder / f"{index:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


LOW_FREE_GB = 4.0  # under this, the page cache is about full: the runs pay for its reclaim


def free_memory_gb() -> float:
    """Memory neither used nor caching files, in GB (``MemFree``)."""
    return psutil.virtual_memory().free / 1e9


def memory_note(free_gb: float) -> str:
    """The footer's words on the memory free before the first run (module doc)."""
    full = " (page cache full: writes wait for reclaim; drop caches or rerun later)"
    return (
        f"{free_gb:.1f} GB free memory before the first run{full if free_gb < LOW_FREE_GB else ''}"
    )


def print_table(
    results: list[Result],
    counts: dict[str, int],
    repeat: int,
    probes: list[float],
    free_gb: float,
) -> None:
    scenarios = list(dict.fromkeys(r.scenario for r in results))
    orthanc_rate = {r.scenario: r.rate for r in results if r.receiver.startswith("Orthanc")}
    receivers = "with" if RECEIVER_ENV.get("TCP_NODELAY") else "without"
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; corpus (a): "
          f"{counts['a']} CT 512x512 16-bit; (b): {counts['b']} 64x64; sender storescu "
          f"with TCP_NODELAY=1 unless 'Nagle on'; Orthanc/storescp {receivers} TCP_NODELAY=1; "
          f"median of {repeat} runs; file create probe {probes[0]:.0f} us before the first run, "
          f"{probes[-1]:.0f} us after the last"
          f"{' (slowed by recent deletions: rerun later)' if probes[0] > SETTLED_US else ''}; "
          f"{memory_note(free_gb)}\n")  # fmt: skip
    print("| scenario | receiver | instances/s | MB/s | vs Orthanc |")
    print("|---|---|---|---|---|")
    for scenario in scenarios:
        for r in (r for r in results if r.scenario == scenario):
            base = orthanc_rate.get(scenario)
            ratio = f"{r.rate / base:.2f}x" if base else "—"  # Orthanc not in this run (--only)
            print(f"| {scenario} | {r.receiver} | {r.rate:.1f} | {r.mb_s:.1f} | {ratio} |")


if __name__ == "__main__":
    sys.exit(main())
