"""Does a directory fsync cost a second device flush after the file's fdatasync? (perf §4)

Creates small files (9 KB, like a 64x64 instance) under a fresh folder of ``--dir`` and times,
per file, ``fdatasync(file)`` then ``fsync(directory)`` one after the other ("serial") against the
two at once, the directory's in a second thread ("overlapped"), alternating the two so both see
the same disk. The receiver overlaps them (``node.ingest.dir_sync``) because on ext4 the serial
directory fsync finds the journal committed and still flushes the device cache.

    .venv/bin/python bench/fsync_overlap.py --dir var/fsync-bench --count 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import threading
import time
from pathlib import Path


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _one(directory: Path, name: str, data: bytes, overlapped: bool) -> float:
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, data)
        started = time.perf_counter()
        if overlapped:
            other = threading.Thread(target=_fsync_dir, args=(directory,))
            other.start()
            os.fdatasync(fd)
            other.join()
        else:
            os.fdatasync(fd)
            _fsync_dir(directory)
        return time.perf_counter() - started
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path("var/fsync-bench"))
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--size", type=int, default=9000)
    args = parser.parse_args()
    directory = args.dir / f"run-{os.getpid()}"
    directory.mkdir(parents=True)
    data = os.urandom(args.size)
    times: dict[bool, list[float]] = {False: [], True: []}
    try:
        for index in range(args.count):
            for overlapped in (False, True):
                name = f"{index}-{int(overlapped)}.dcm"
                times[overlapped].append(_one(directory, name, data, overlapped))
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    for overlapped, label in ((False, "serial    "), (True, "overlapped")):
        values = times[overlapped]
        print(f"{label} median {statistics.median(values) * 1e3:.3f} ms, "
              f"mean {statistics.mean(values) * 1e3:.3f} ms")  # fmt: skip
    print(f"load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
