"""The directory syncer: every request is answered after an fsync of its directory that began
after the request; requests that queue meanwhile share one fsync; a failure reaches each of them."""

from __future__ import annotations

import threading
from pathlib import Path

from node.ingest.dir_sync import DirSyncer


def test_requests_queued_during_a_sync_share_the_next_one(tmp_path: Path) -> None:
    started, release = threading.Event(), threading.Event()
    calls: list[Path] = []

    def fsync_dir(directory: Path) -> None:
        calls.append(directory)
        started.set()
        release.wait(5)

    syncer = DirSyncer(fsync_dir)
    try:
        first = syncer.request(tmp_path)
        assert started.wait(5)
        queued = [syncer.request(tmp_path) for _ in range(5)]
        assert not queued[0].done.is_set()  # a sync that began before the request does not count
        release.set()
        assert first.wait() is None
        assert all(r.wait() is None for r in queued)
        assert calls == [tmp_path, tmp_path]
    finally:
        release.set()
        syncer.stop()


def test_a_failed_sync_is_reported_to_every_request_for_that_directory(tmp_path: Path) -> None:
    bad, good = tmp_path / "bad", tmp_path / "good"

    def fsync_dir(directory: Path) -> None:
        if directory == bad:
            raise OSError(5, "Input/output error")

    syncer = DirSyncer(fsync_dir)
    try:
        requests = [syncer.request(d) for d in (bad, good, bad)]
        errors = [r.wait() for r in requests]
    finally:
        syncer.stop()
    assert [e is not None for e in errors] == [True, False, True]


def test_a_request_after_stop_is_synced_in_the_caller(tmp_path: Path) -> None:
    """A handler racing with the receiver's shutdown must not wait for a thread that is gone."""
    calls: list[Path] = []
    syncer = DirSyncer(calls.append)
    syncer.stop()
    request = syncer.request(tmp_path)
    assert request.done.is_set() and request.wait() is None
    assert calls == [tmp_path]
