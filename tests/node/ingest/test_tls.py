"""DICOM TLS with a real client: DCMTK storescu/echoscu ``+tls`` against self-signed certificates."""

from __future__ import annotations

import contextlib
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from core.config import Settings, TLSSettings
from node.db.engine import Database
from node.db.orm import Instance
from node.ingest.receiver_pool import start_receiver_pool
from tests.node.ingest.conftest import StartReceiver
from tests.node.ingest.helpers import make_instance, needs_dcmtk, run_dcmtk

pytestmark = [
    needs_dcmtk,
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("openssl") is None, reason="openssl CLI needed to make certificates"
    ),
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A test CA plus a server (SAN 127.0.0.1) and a client certificate it signed."""
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=pacsnode test CA", cwd=d)  # fmt: skip
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=d)  # fmt: skip
    return d


def _tls_settings(settings: Settings, pki: Path, require_client_cert: bool) -> Settings:
    tls = TLSSettings(cert_file=pki / "server.crt", key_file=pki / "server.key",
                      ca_file=pki / "ca.crt", require_client_cert=require_client_cert)  # fmt: skip
    return settings.model_copy(update={"tls": tls})


def test_storescu_over_tls_with_client_certificate(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings, pki: Path, tmp_path: Path
) -> None:
    handle = receiver_on(sqlite_db, _tls_settings(settings, pki, require_client_cert=True))
    instance = tmp_path / "one.dcm"
    instance.write_bytes(make_instance())
    client = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    echo = run_dcmtk("echoscu", *client, "-aec", "PACSNODE", "127.0.0.1", str(handle.port))
    assert echo.returncode == 0, echo.stderr
    store = run_dcmtk(
        "storescu", *client, "-aec", "PACSNODE", "127.0.0.1", str(handle.port), str(instance)
    )
    assert store.returncode == 0, store.stderr
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 1


def test_client_without_certificate_is_refused_when_required(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings, pki: Path
) -> None:
    handle = receiver_on(sqlite_db, _tls_settings(settings, pki, require_client_cert=True))
    anonymous = run_dcmtk("echoscu", "+tla", "+cf", str(pki / "ca.crt"), "-aec", "PACSNODE",
                          "127.0.0.1", str(handle.port))  # fmt: skip
    assert anonymous.returncode != 0
    plain = run_dcmtk("echoscu", "-aec", "PACSNODE", "127.0.0.1", str(handle.port), timeout=60)
    assert plain.returncode != 0
    # the listener still serves a proper client afterwards
    client = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    assert (
        run_dcmtk("echoscu", *client, "-aec", "PACSNODE", "127.0.0.1", str(handle.port)).returncode
        == 0
    )


def test_server_only_tls(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings, pki: Path
) -> None:
    handle = receiver_on(sqlite_db, _tls_settings(settings, pki, require_client_cert=False))
    echo = run_dcmtk("echoscu", "+tla", "+cf", str(pki / "ca.crt"), "-aec", "PACSNODE",
                     "127.0.0.1", str(handle.port))  # fmt: skip
    assert echo.returncode == 0, echo.stderr


def test_a_slow_tls_handshake_is_closed_at_the_association_deadline(
    receiver_on: StartReceiver, sqlite_db: Database, settings: Settings, pki: Path
) -> None:
    """Handshake bytes dripping in do not extend ``acse_timeout_s``."""
    strict = _tls_settings(settings, pki, False).model_copy(update={"acse_timeout_s": 1.0})
    handle = receiver_on(sqlite_db, strict)
    outgoing = ssl.MemoryBIO()
    client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    client_hello = outgoing.read()  # a real ClientHello, sent one byte per 0.25 s
    with socket.create_connection(("127.0.0.1", handle.port), timeout=0.25) as sock:
        start = time.monotonic()
        for byte in client_hello:
            try:
                sock.sendall(bytes([byte]))
                if sock.recv(4096) == b"":
                    break
            except TimeoutError:
                continue
            except OSError:
                break
            assert time.monotonic() - start < 5, "the node let the handshake drip on"
        took = time.monotonic() - start
    assert took < 1.0 + 1.5


def test_a_receiver_pool_serves_tls(
    sqlite_db: Database, settings: Settings, pki: Path, tmp_path: Path
) -> None:
    """Each process of a pool wraps the connections it accepts from the pool's one socket."""
    tls = _tls_settings(settings, pki, require_client_cert=True)
    pool = start_receiver_pool(tls.model_copy(update={"receiver_processes": 2}))
    client = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    try:
        for index in range(3):
            instance = tmp_path / f"{index}.dcm"
            instance.write_bytes(make_instance())
            store = run_dcmtk("storescu", *client, "-aec", "PACSNODE", "127.0.0.1",
                              str(pool.port), str(instance))  # fmt: skip
            assert store.returncode == 0, store.stderr
    finally:
        pool.stop(timeout=10)
    with sqlite_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 3
