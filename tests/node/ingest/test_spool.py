"""Spool paths and temp-file litter."""

from __future__ import annotations

import os
import time
from pathlib import Path

from node.ingest.spool import Spool, relative_path, remove_stale_temp_files, safe_component


def test_hostile_uids_cannot_escape_the_spool() -> None:
    path = relative_path("../../etc", "1.2.3/../../x", "1.2.840.1")
    assert path.startswith("spool/") and ".." not in path.split("/")[1:3]
    assert safe_component("1.2.840.10008.5.1.4") == "1.2.840.10008.5.1.4"
    assert safe_component("a" * 65).startswith("x")


def test_write_temp_then_publish(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    rel = relative_path("1.2", "1.2.3", "1.2.3.4")
    temp, size = spool.write_temp(rel, [b"abc", memoryview(b"defg")])
    assert size == 7 and temp.exists() and not (tmp_path / rel).exists()
    final = spool.publish(temp, rel)
    assert final.read_bytes() == b"abcdefg" and not temp.exists()


def test_publish_new_links_a_free_name_and_never_replaces_a_taken_one(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=True)
    rel = relative_path("1.2", "1.2.3", "1.2.3.4")
    temp, _ = spool.write_temp(rel, [b"first"])
    assert spool.publish_new(temp, rel) == tmp_path / rel
    assert (tmp_path / rel).read_bytes() == b"first" and not temp.exists()
    again, _ = spool.write_temp(rel, [b"second"])
    assert spool.publish_new(again, rel) is None  # taken: left to the committer
    assert (tmp_path / rel).read_bytes() == b"first" and again.read_bytes() == b"second"


def test_stale_temp_files_of_dead_processes_are_removed(tmp_path: Path) -> None:
    directory = tmp_path / "spool" / "1.2" / "1.2.3"
    directory.mkdir(parents=True)
    dead = directory / ".1.2.3.4.dcm.999999999.1.part"  # no such PID
    mine = directory / f".1.2.3.5.dcm.{os.getpid()}.1.part"
    for path in (dead, mine):
        path.write_bytes(b"x")
        old = time.time() - 3600
        os.utime(path, (old, old))
    assert remove_stale_temp_files(tmp_path / "spool") == 1
    assert not dead.exists() and mine.exists()
