"""Request limits before parsing, uploads staged in data_dir, no-store caching, the Back link, the
OpenAPI schema's security and coverage, the admin-only user list and allowlist host checks."""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.config import Settings
from node.db.engine import Database
from tests.conftest import PROJECT_ROOT, free_port
from tests.node.ingest.helpers import make_instance
from tests.node.ingest.zipbomb import build_bomb
from tests.web.conftest import Console, csrf_of
from tests.web.processed import ProcessedStudy
from web.deps import token_scope_of
from web.openapi import api_routes

MIB = 1024 * 1024
HUGE = 700 * MIB
SERVER = """
import sys, uvicorn
from core.config import load_settings
from web.main import create_app
settings = load_settings(None, environment="test", data_dir=sys.argv[1])
uvicorn.run(create_app(settings), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


# -- the 700 MB anonymous form ----------------------------------------------------------------


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[int, int, Path, Path]]:
    """The console in its own process (so its RSS is its own), TMPDIR pointed at a watched dir."""
    data, tmp = tmp_path / "data", tmp_path / "tmp"
    data.mkdir()
    tmp.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACSNODE_")}
    env.update(PYTHONPATH=str(PROJECT_ROOT), TMPDIR=str(tmp))
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(data), str(port)], env=env, cwd=PROJECT_ROOT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        else:
            pytest.fail("the console did not start")
        yield proc.pid, port, data, tmp
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _largest_file(*roots: Path) -> int:
    sizes = [0]
    for root in roots:
        for folder, _, files in os.walk(root):
            for name in files:
                with contextlib.suppress(OSError):  # a temporary file may vanish meanwhile
                    sizes.append(os.stat(os.path.join(folder, name)).st_size)
    return max(sizes)


def _send_huge(port: int, *, chunked: bool) -> tuple[bytes, int]:
    """POST 700 MB of form data to /login as fast as the server takes it; stop when it answers.
    Returns the status line and how many body bytes the socket accepted."""
    sock = socket.create_connection(("127.0.0.1", port))
    framing = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {HUGE}"
    sock.sendall(
        f"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        f"{framing}\r\n\r\n".encode()
    )
    piece = b"a" * MIB
    block = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    sent = 0
    try:
        while sent < HUGE:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(block)
            sent += len(piece)
    except (BrokenPipeError, ConnectionResetError):
        pass
    sock.settimeout(10)
    try:
        status = sock.recv(4096).split(b"\r\n", 1)[0]
    except (ConnectionResetError, TimeoutError):
        status = b""
    sock.close()
    return status, sent


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_700mb_anonymous_form_is_refused_without_disk_or_memory(
    server: tuple[int, int, Path, Path], chunked: bool
) -> None:
    pid, port, data, tmp = server
    before = _rss(pid)
    peak_rss, peak_file, done = [before], [0], threading.Event()
    system_tmp = Path("/tmp")
    big_before = {p for p in system_tmp.iterdir() if p.is_file() and p.stat().st_size > MIB}

    def watch() -> None:
        while not done.is_set():
            peak_rss.append(_rss(pid))
            peak_file.append(_largest_file(data, tmp))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        status, sent = _send_huge(port, chunked=chunked)
    finally:
        done.set()
        watcher.join()
    growth = max(peak_rss) - before
    print(f"\n700 MB anonymous POST /login ({'chunked' if chunked else 'Content-Length'}): "
          f"{status.decode()}; client got {sent / MIB:.0f} MB into the socket; server RSS "
          f"+{growth / MIB:.1f} MB; largest file in data_dir/TMPDIR {max(peak_file)} bytes")  # fmt: skip
    assert status.startswith(b"HTTP/1.1 413"), status
    assert growth < 50 * MIB, growth
    assert max(peak_file) < MIB
    big_after = {p for p in system_tmp.iterdir() if p.is_file() and p.stat().st_size > MIB}
    assert not (big_after - big_before)


@pytest.mark.slow
def test_zip_bomb_upload_keeps_the_server_process_flat(
    server: tuple[int, int, Path, Path], tmp_path: Path
) -> None:
    """A logged-in radiologist uploads a 2 MB zip that inflates to 2 GiB to a real server
    process; its RSS, sampled throughout, grows by far less than 200 MB."""
    import httpx

    from core.config import load_settings
    from core.domain import Role
    from tests.web.conftest import CSRF_RE, PASSWORD, add_user

    pid, port, data, _ = server
    db = Database(load_settings(None, environment="test", data_dir=data).effective_database_url)
    add_user(db, "radiologist1", Role.RADIOLOGIST)
    db.dispose()
    bomb = build_bomb(tmp_path / "bomb.zip")
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        match = CSRF_RE.search(client.get("/login").text)
        assert match
        form = {"username": "radiologist1", "password": PASSWORD, "csrf_token": match.group(1)}
        assert client.post("/login", data=form).status_code == 303
        match = CSRF_RE.search(client.get("/studies/upload").text)
        assert match
        before = _rss(pid)
        peak, done = [before], threading.Event()

        def watch() -> None:
            while not done.is_set():
                peak.append(_rss(pid))
                time.sleep(0.02)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with bomb.open("rb") as fh:
                response = client.post(
                    "/studies/upload",
                    data={"csrf_token": match.group(1)},
                    files={"files": ("b.zip", fh, "application/zip")},
                )
        finally:
            done.set()
            watcher.join()
    growth = max(peak) - before
    print(f"\nzip bomb upload ({bomb.stat().st_size / MIB:.1f} MB -> 2048 MB) to a server "
          f"process: HTTP {response.status_code}; server RSS +{growth / MIB:.1f} MB")  # fmt: skip
    assert response.status_code == 400 and "bomb.dcm" in response.text, response.text[:500]
    assert str(data) not in response.text
    assert growth < 200 * MIB, growth
    assert not list((data / "uploads").iterdir())


# -- limits in process ------------------------------------------------------------------------


def test_form_limit_answers_413_before_csrf_and_login(console: Console) -> None:
    client = console.client()
    big = {"username": "x", "password": "y" * (20 * 1024)}  # over the 16 KB form limit
    assert client.post("/login", data=big).status_code == 413  # not 403: CSRF never looked
    assert client.post("/review/1/approve", data=big).status_code == 413  # not 303-to-login

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"a" * 1024

    chunked = client.post(
        "/login",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert chunked.status_code == 413 and "16 KB" in chunked.text


def test_a_route_reading_its_own_form_is_cut_off_cleanly(console: Console) -> None:
    """``/admin/tokens`` parses ``request.form()`` itself: the cut-off must end in the 413, not
    in a ClientDisconnect escaping as a server error (the test client re-raises those)."""
    client = console.login("admin1")
    token = csrf_of(client, "/admin/tokens")

    def chunks() -> Iterator[bytes]:
        yield f"csrf_token={token}&name=".encode()
        for _ in range(100):
            yield b"a" * 1024

    response = client.post(
        "/admin/tokens",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 413 and "64 KB" in response.text


def test_admin_forms_get_a_larger_limit(console: Console) -> None:
    client = console.login("admin1")
    token = csrf_of(client, "/admin/destinations")
    entries = "\n".join(f"MODALITY{i}@10.0.{i // 250}.{i % 250}" for i in range(800))
    assert 16 * 1024 < len(entries) < 20000  # the form field's own maximum
    response = client.post("/admin/allowlist", data={"entries": entries, "csrf_token": token})
    assert response.status_code == 303, response.text[:300]


def _upload(client: TestClient, files: list, **fields: str):  # type: ignore[no-untyped-def,type-arg]
    token = csrf_of(client, "/studies/upload")
    return client.post("/studies/upload", data={"csrf_token": token, **fields}, files=files)


def test_upload_is_staged_in_data_dir_not_spooled_to_tmp(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    import starlette.formparsers

    import web.upload_stream

    spooled: list[object] = []
    monkeypatch.setattr(
        starlette.formparsers, "SpooledTemporaryFile", lambda *a, **k: spooled.append(1)
    )
    staged: list[Path] = []
    real = web.upload_stream.disk_name
    monkeypatch.setattr(
        web.upload_stream,
        "disk_name",
        lambda i, name: staged.append(Path(real(i, name))) or real(i, name),
    )
    client = console.login("radiologist1")
    big = make_instance(size=1024)  # 1024x1024 16-bit: 2 MB, over Starlette's 1 MB spool
    response = _upload(client, [("files", ("../../etc/a b.dcm", big, "application/dicom"))])
    assert response.status_code == 303, response.text[:500]
    assert not spooled
    assert [p.name for p in staged] == ["0000.upload"]  # the client's name never a path
    assert not list((console.settings.data_dir / "uploads").iterdir())  # removed after use


def test_stale_staging_folders_are_removed(console: Console) -> None:
    staging = console.settings.data_dir / "uploads"
    old, fresh = staging / "upload-old", staging / "upload-fresh"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "0000_a.dcm").write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    client = console.login("radiologist1")
    _upload(client, [("files", ("a.dcm", make_instance(), "application/dicom"))])
    assert not old.exists() and fresh.exists()


def test_upload_without_csrf_writes_nothing(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    import web.upload_stream

    written: list[int] = []
    real = web.upload_stream._Collector.flush

    def spy(self: web.upload_stream._Collector) -> None:
        written.extend(len(d) for _, d in self.pending)
        real(self)

    monkeypatch.setattr(web.upload_stream._Collector, "flush", spy)
    client = console.login("radiologist1")
    files = [("files", ("a.dcm", make_instance(), "application/dicom"))]
    response = client.post("/studies/upload", data={"csrf_token": "wrong"}, files=files)
    assert response.status_code == 403 and "CSRF" in response.text
    assert sum(written) == 0


@pytest.mark.slow
def test_zip_bomb_upload_is_refused_with_bounded_memory(console: Console, tmp_path: Path) -> None:
    bomb = build_bomb(tmp_path / "bomb.zip").read_bytes()
    client = console.login("radiologist1")
    tracemalloc.start()
    try:
        response = _upload(client, [("files", ("b.zip", bomb, "application/zip"))])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nzip bomb upload: {response.status_code}, peak {peak / MIB:.1f} MB traced")
    assert response.status_code == 400 and "bomb.dcm" in response.text
    assert "zip_import" in response.text
    assert str(console.settings.data_dir) not in response.text
    assert peak < 200 * MIB + len(bomb) * 4  # the test client holds the request body itself


def test_upload_errors_never_show_a_server_path(console: Console) -> None:
    client = console.login("radiologist1")
    response = _upload(client, [("files", ("x.zip", b"PK\x03\x04broken", "application/zip"))])
    assert response.status_code == 400 and "x.zip" in response.text
    assert str(console.settings.data_dir) not in response.text


# -- caching, dashboard, Back link, OpenAPI, allowlist ----------------------------------------


def test_no_store_on_pages_api_and_downloads_not_on_static(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    client = console.login("viewer1")
    for path in (
        "/",
        f"/studies/{study.study_uid}",
        f"/api/studies/{study.study_uid}/results",
        f"/jobs/{study.job_id}/export/json",
        f"/review/{study.job_id}/frames/3.png",
        "/studies/not-a-study",
    ):
        response = client.get(path)
        assert response.headers["cache-control"] == "no-store", (path, response.status_code)
    assert "no-store" not in client.get("/static/console.css").headers.get("cache-control", "")


def test_user_list_is_for_admins_only(console: Console) -> None:
    assert 'id="user-activity"' not in console.login("viewer1").get("/").text
    assert 'id="user-activity"' not in console.login("radiologist1").get("/").text
    page = console.login("admin1").get("/").text
    assert 'id="user-activity"' in page and "viewer1" in page


def test_error_page_back_link_needs_no_inline_script(console: Console) -> None:
    client = console.login("viewer1")
    page = client.get("/studies/not-a-study")
    assert page.status_code == 404
    csp = page.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    assert "javascript:" not in page.text and '<a href="/" id="back-link">Back</a>' in page.text
    assert '<script src="/static/back.js"></script>' in page.text
    script = client.get("/static/back.js")
    assert script.status_code == 200 and "history.back()" in script.text


def test_openapi_declares_security_errors_and_every_token_action(console: Console) -> None:
    spec = console.client().get("/openapi.json").json()
    assert set(spec["components"]["securitySchemes"]) == {
        "bearerToken",
        "consoleSession",
        "hookSecret",
    }
    actions = {
        (method.lower(), str(c.path))
        for c in api_routes(console.app)
        if token_scope_of(c.dependant) is not None
        for method in c.methods or ()
        if method != "GET"
    }
    assert len(actions) > 15
    documented = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    assert actions <= documented, actions - documented
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path == "/api/health":
                assert operation["security"] == []
                continue
            assert operation["security"], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
    approve = spec["paths"]["/review/{job_id}/approve"]["post"]
    assert approve["security"][0] == {"bearerToken": ["review"]}
    assert {"303", "404", "413"} <= set(approve["responses"])


def test_allowlist_hosts_must_be_ip_cidr_or_hostname(console: Console) -> None:
    client = console.login("admin1")
    token = csrf_of(client, "/admin/destinations")
    bad = client.post("/admin/allowlist", data={"entries": "CT1@not a host", "csrf_token": token})
    assert bad.status_code == 400
    assert "not an IP address, CIDR network or hostname" in bad.text
    good = client.post(
        "/admin/allowlist",
        data={"entries": "CT1@10.1.0.0/16\nCT2@pacs.example.org\nCT3@::1", "csrf_token": token},
    )
    assert good.status_code == 303


def test_allowlist_entry_matches_addresses_networks_and_names(settings: Settings) -> None:
    from core.config import CallerAllowEntry, ConfigError, load_settings
    from node.ingest.scp import caller_allowed

    entries = [
        CallerAllowEntry(ae_title="CT1", host="10.1.0.0/16"),
        CallerAllowEntry(ae_title="MR1", host="192.168.1.5"),
    ]
    assert caller_allowed(entries, "CT1", "10.1.200.3")
    assert not caller_allowed(entries, "CT1", "10.2.0.1")
    assert caller_allowed(entries, "MR1", "192.168.1.5")
    assert not caller_allowed(entries, "MR1", "192.168.1.6")
    with pytest.raises(ConfigError, match="not a host"):
        load_settings(
            None,
            **{
                **settings.model_dump(exclude={"allowed_callers"}),
                "allowed_callers": [{"ae_title": "CT1", "host": "not a host"}],
            },
        )


def test_a_stored_pre_validation_allowlist_entry_matches_nobody(
    settings: Settings, sqlite_db: Database
) -> None:
    """An entry saved before hosts were checked must not vanish (an empty list admits everyone)."""
    from node.db.repositories import config_overrides as console_repo
    from node.ingest.scp import caller_allowed

    entries = {"entries": [{"ae_title": "CT1", "host": "not a host"}]}
    with sqlite_db.write() as session:
        console_repo.set_override(session, console_repo.ALLOWLIST_OVERRIDE_KEY, entries, "admin")
    with sqlite_db.read() as session:
        effective = console_repo.effective_settings(session, settings)
    assert len(effective.allowed_callers) == 1
    assert not caller_allowed(effective.allowed_callers, "CT1", "127.0.0.1")
    assert not caller_allowed(effective.allowed_callers, "OTHER", "127.0.0.1")
