"""Several receiver processes on one port store into one database: associations spread evenly
over the processes, and on SQLite the append service commits their rows (or, when it is gone,
each receiver its own)."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage
from sqlalchemy import func, select

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Instance, Study
from node.db.repositories import config_overrides
from node.db.repositories.config_overrides import ALLOWLIST_OVERRIDE_KEY
from node.ingest import receiver_pool
from node.ingest.receiver_pool import SUPERVISE_S, PoolHandle, start_receiver_pool
from node.overrides import REFRESH_S
from tests.node.ingest.helpers import acknowledged_problems, run_dcmtk, write_instances


def send_files(port: int, files: list[Path], acknowledged: dict[str, Path], lock: threading.Lock,
               sops: dict[Path, str], dimse_timeout: float = 30) -> None:  # fmt: skip
    """One association sending ``files``; records each SOP that got a success status. A killed
    receiver leaves the sender waiting ``dimse_timeout`` for the response that never comes."""
    ae = AE(ae_title="POOLSCU")
    ae.dimse_timeout = dimse_timeout
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    if not assoc.is_established:
        return
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not assoc.is_established:
                return
            if status and status.Status == 0x0000:
                with lock:
                    acknowledged[sops[path]] = path
    finally:
        if assoc.is_established:
            assoc.release()


def send_over_four(port: int, files: dict[str, Path]) -> dict[str, Path]:
    """``files`` (SOP Instance UID → path) sent over four associations at once; the SOPs
    acknowledged with success."""
    sops = {path: sop for sop, path in files.items()}
    acknowledged: dict[str, Path] = {}
    lock = threading.Lock()
    paths = list(files.values())
    threads = [threading.Thread(target=send_files, args=(port, paths[i::4], acknowledged, lock, sops))
               for i in range(4)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return acknowledged


@pytest.mark.parametrize("service", ["running", "killed"])
def test_two_processes_share_the_port(
    sqlite_db: Database,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service: str,
) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    files = write_instances(tmp_path / "send", count=40, studies=2)
    pool = start_receiver_pool(settings.model_copy(update={"receiver_processes": 2}))
    try:
        assert pool.alive() == 2
        assert pool.appender is not None and pool.appender.is_alive()  # SQLite: the service runs
        if service == "killed":  # each receiver must notice and commit its own rows
            assert pool.appender.pid is not None
            os.kill(pool.appender.pid, signal.SIGKILL)
            pool.appender.join(10)
        acknowledged = send_over_four(pool.port, files)
    finally:
        pool.stop(timeout=10)
    assert pool.alive() == 0
    assert len(acknowledged) == 40
    assert acknowledged_problems(sqlite_db.url, settings.data_dir, acknowledged) == []
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 40
        assert sorted(s.instance_count for s in session.scalars(select(Study))) == [20, 20]


def test_associations_spread_evenly_over_the_processes(
    sqlite_db: Database, settings: Settings
) -> None:
    """Eight associations, two processes: four each (SO_REUSEPORT's hash, used before, put all
    four associations of a benchmark run in one process in some runs)."""
    pool = start_receiver_pool(settings.model_copy(update={"receiver_processes": 2}))
    held = []
    try:
        for _ in range(8):
            ae = AE(ae_title="POOLSCU")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", pool.port, ae_title="PACSNODE")
            assert assoc.is_established
            held.append(assoc)
        deadline = time.monotonic() + 10
        while sum(pool.connections()) < 8 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.connections() == [4, 4]
    finally:
        for assoc in held:
            assoc.release()
        pool.stop(timeout=10)


def _associate(port: int) -> Any:
    ae = AE(ae_title="POOLSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="PACSNODE")


def _until(check: Any, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.05)
    return bool(check())


def test_max_associations_holds_for_the_whole_pool(sqlite_db: Database, settings: Settings) -> None:
    """``max_associations`` is the node's limit, however many processes receive: with 2 per
    process before, a 2-process pool took 4. The third association is refused transiently
    (local limit exceeded) while two are open in different processes, and accepted once one
    of them is released."""
    pool = start_receiver_pool(
        settings.model_copy(update={"receiver_processes": 2, "max_associations": 2})
    )
    held = []
    try:
        held = [_associate(pool.port) for _ in range(2)]
        assert all(a.is_established for a in held)
        assert _until(lambda: pool.associations() == [1, 1]), pool.associations()
        for _ in range(3):  # whichever process takes the connection refuses it
            refused = _associate(pool.port)
            assert refused.is_rejected and not refused.is_established
        assert pool.associations() == [1, 1]
        held.pop().release()
        assert _until(lambda: sum(pool.associations()) == 1), pool.associations()
        again = _associate(pool.port)
        assert again.is_established
        held.append(again)
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
        pool.stop(timeout=10)


def test_max_pending_connections_holds_for_the_whole_pool(
    sqlite_db: Database, settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    """Silent connections (no A-ASSOCIATE-RQ yet) count against ``max_pending_connections`` in
    all processes together: a third one is closed at once, not held until the ACSE deadline."""
    acse_s = 5.0
    pool = start_receiver_pool(settings.model_copy(update={
        "receiver_processes": 2, "max_pending_connections": 2, "acse_timeout_s": acse_s}))  # fmt: skip
    silent = []
    try:
        silent = [socket.create_connection(("127.0.0.1", pool.port)) for _ in range(2)]
        assert _until(lambda: pool.pending() == [1, 1]), pool.pending()
        with socket.create_connection(("127.0.0.1", pool.port), timeout=acse_s + 5) as third:
            start = time.monotonic()
            assert third.recv(1) == b""
            assert time.monotonic() - start < acse_s / 2  # closed at once
        logged = capfd.readouterr().err  # the refusing process's log line counts the pool's
        assert "already 2 connections negotiating in the receiver pool" in logged
        for sock in silent:
            sock.close()
        assert _until(lambda: sum(pool.pending()) == 0), pool.pending()
        assert _echo(pool.port, "AFTER")  # the slots came back
    finally:
        for sock in silent:
            sock.close()
        pool.stop(timeout=10)


def _echo(port: int, calling: str) -> bool:
    return run_dcmtk("echoscu", "-aet", calling, "-aec", "PACSNODE", "127.0.0.1", str(port),
                     timeout=30).returncode == 0  # fmt: skip


@pytest.mark.slow
def test_every_process_follows_the_allowlist_an_admin_edits(
    sqlite_db: Database, settings: Settings
) -> None:
    """The console's allowlist (stored in the database, not in the YAML) holds from the first
    association, and an edit reaches every process of the pool without a restart."""
    with sqlite_db.write() as session:
        config_overrides.set_override(session, ALLOWLIST_OVERRIDE_KEY,
                                      {"entries": [{"ae_title": "GOODMOD"}]}, "admin")  # fmt: skip
    pool = start_receiver_pool(settings.model_copy(update={"receiver_processes": 2}))
    try:
        # several tries: each association may land on either process
        assert not any(_echo(pool.port, "BADMOD") for _ in range(4))
        assert all(_echo(pool.port, "GOODMOD") for _ in range(4))
        with sqlite_db.write() as session:
            config_overrides.set_override(session, ALLOWLIST_OVERRIDE_KEY,
                                          {"entries": [{"ae_title": "NEWMOD"}]}, "admin")  # fmt: skip
        time.sleep(REFRESH_S * 2 + 1)
        assert not any(_echo(pool.port, "GOODMOD") for _ in range(6))
        assert all(_echo(pool.port, "NEWMOD") for _ in range(6))
    finally:
        pool.stop(timeout=10)


def kill_and_wait_for_restart(pool: PoolHandle, index: int) -> BaseProcess:
    """SIGKILL the receiver in slot ``index``; wait (up to 15 s) until the pool has a first
    restart and all its processes alive. The killed process."""
    victim = pool.processes[index]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (
        pool.restarts == 0 or pool.alive() < len(pool.processes)
    ) and time.monotonic() < deadline:
        time.sleep(0.1)
    return victim


@pytest.mark.slow
def test_a_receiver_process_that_dies_is_started_again(
    sqlite_db: Database,
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A receiver killed while it held an association is replaced in its slot, its stale
    connection count cleared, and the pool then stores everything sent to it, the new process
    through a new pipe to the append service. One that stopped cleanly is left alone."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    pool = start_receiver_pool(settings.model_copy(update={"receiver_processes": 2}))
    held = []
    try:
        for _ in range(2):  # one association in each process
            ae = AE(ae_title="POOLSCU")
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            held.append(ae.associate("127.0.0.1", pool.port, ae_title="PACSNODE"))
        deadline = time.monotonic() + 10
        while pool.connections() != [1, 1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pool.connections() == [1, 1]
        victim = kill_and_wait_for_restart(pool, 0)
        assert pool.restarts == 1 and pool.alive() == 2
        assert pool.processes[0].pid != victim.pid
        assert pool.connections() == [0, 1]  # the dead process's association is not counted
        assert pool.associations() == [0, 1]  # nor held against max_associations
        files = write_instances(tmp_path / "send", count=16, studies=2)
        acknowledged = send_over_four(pool.port, files)
        logged = capfd.readouterr().err  # the children's and the service's log lines
        assert "a restarted receiver's pipe attached" in logged
        assert "append service gone" not in logged and "appends its own rows" not in logged
        for assoc in held:  # a stopping receiver waits for its open associations
            assoc.release()
        stopped = pool.processes[1]  # asked to stop (a Ctrl-C reaches every process): not replaced
        assert stopped.pid is not None
        os.kill(stopped.pid, signal.SIGTERM)
        stopped.join(10)
        assert stopped.exitcode == 0
        time.sleep(SUPERVISE_S * 3)
        assert pool.restarts == 1 and pool.alive() == 1
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.abort()
        pool.stop(timeout=10)
    assert pool.alive() == 0
    assert len(acknowledged) == 16
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 16


def test_a_failed_restart_is_logged_and_tried_again(
    sqlite_db: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Starting the replacement can fail (no memory, no descriptors left): the supervisor logs it
    and tries again after its back-off instead of ending."""
    monkeypatch.setattr(receiver_pool, "RESTART_BACKOFF_S", 0.5)
    pool = start_receiver_pool(settings.model_copy(update={"receiver_processes": 2}))
    try:
        start = pool._start
        assert start is not None
        tries: list[int] = []

        def first_start_fails(index: int) -> Any:
            tries.append(index)
            if len(tries) == 1:
                raise OSError(24, "Too many open files")
            return start(index)

        pool._start = first_start_fails
        kill_and_wait_for_restart(pool, 0)
        assert tries == [0, 0] and pool.restarts == 1 and pool.alive() == 2
        assert "could not start receiver process 0" in caplog.text
        assert _echo(pool.port, "POOLSCU")
    finally:
        pool.stop(timeout=10)
