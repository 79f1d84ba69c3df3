"""Spool paths and temp-file litter."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from node.ingest import spool as spool_module
from node.ingest.spool import (
    HEAD_BYTES,
    Spool,
    relative_path,
    remove_stale_temp_files,
    safe_component,
    temp_owner,
)


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
    me = temp_owner()
    dead = directory / f".1.2.3.4.dcm.{me}.999999999.1.part"  # no such PID
    mine = directory / f".1.2.3.5.dcm.{me}.{os.getpid()}.1.part"
    before_reboot = (
        directory / f".1.2.3.6.dcm.{temp_owner(boot_id='old-boot')}.{os.getpid()}.1.part"
    )
    for path in (dead, mine, before_reboot):
        path.write_bytes(b"x")
        old = time.time() - 3600
        os.utime(path, (old, old))
    assert remove_stale_temp_files(tmp_path / "spool") == 2
    assert not dead.exists() and mine.exists() and not before_reboot.exists()


def test_another_hosts_temp_files_are_never_removed(tmp_path: Path) -> None:
    """On a shared volume a PID of host B means nothing on host A: B's in-flight file stays,
    whatever PIDs run here (999999999 runs nowhere)."""
    directory = tmp_path / "spool" / "1.2" / "1.2.3"
    directory.mkdir(parents=True)
    other = temp_owner(host="receiver-b.example")
    theirs = directory / f".1.2.3.4.dcm.{other}.999999999.1.part"
    legacy = directory / ".1.2.3.5.dcm.999999999.1.part"  # no owner token: unknown writer
    for path in (theirs, legacy):
        path.write_bytes(b"x")
        old = time.time() - 3600
        os.utime(path, (old, old))
    assert remove_stale_temp_files(tmp_path / "spool") == 0
    assert theirs.exists() and legacy.exists()


def test_temp_files_carry_their_owner(tmp_path: Path) -> None:
    spool = Spool(tmp_path, fsync=False)
    temp, _ = spool.write_temp("spool/a/b/c.dcm", [b"x"])
    assert temp.name.split(".")[-4] == temp_owner()
    spool.discard(temp)


@pytest.mark.parametrize("size", [0, 1000, HEAD_BYTES, HEAD_BYTES + 1])
def test_incoming_file_reads_back_what_was_written(tmp_path: Path, size: int) -> None:
    """Small data sets are held in memory (no temp file at all), larger ones go to the file: the
    same bytes either way, prefix + data set."""
    data = bytes(i % 251 for i in range(size))
    incoming = Spool(tmp_path, fsync=False).open_incoming(b"META")
    for start in range(0, size, 4096):  # fragment by fragment, as P-DATA arrives
        incoming.write(memoryview(data)[start : start + 4096])
    with incoming.mapped() as view:
        assert bytes(view) == data
    incoming.finish(sync=False)
    if size <= HEAD_BYTES:
        assert incoming.in_memory and not incoming.path.exists()
        assert b"".join(incoming.chunks()) == b"META" + data
    else:
        assert incoming.path.read_bytes() == b"META" + data
    incoming.discard()
    assert not incoming.path.exists()


def test_small_data_set_is_not_read_back_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per small instance, opening and mapping the spool file again cost more than keeping the
    bytes that were just written (docs/performance.md §4)."""
    incoming = Spool(tmp_path, fsync=False).open_incoming(b"META")
    incoming.write(b"x" * 8192)

    def no_mapping(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the file was mapped again")

    monkeypatch.setattr(spool_module.mmap, "mmap", no_mapping)
    with incoming.mapped() as view:
        assert bytes(view) == b"x" * 8192
    incoming.discard()
