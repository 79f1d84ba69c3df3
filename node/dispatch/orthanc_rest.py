"""Orthanc REST destination: ``POST /instances`` per object through orthanc-api-client.

Orthanc answers ``AlreadyStored`` for an instance it holds, so a retry after a lost answer is
harmless: the SOP Instance UID is the same on every attempt and Orthanc keeps one copy.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from orthanc_api_client import OrthancApiClient
from orthanc_api_client import exceptions as orthanc_errors

from core.config import DestinationSettings
from node.dispatch.sender import PingResult, SendOutcome, failed_all


def orthanc_client(
    url: str, username: str = "", password: str = "", token: str = ""
) -> OrthancApiClient:
    """A client with basic auth or a bearer token, whichever the settings give."""
    return OrthancApiClient(
        url.rstrip("/") + "/",
        user=username or None,
        pwd=password or None,
        api_token=token or None,
    )


class OrthancRestSender:
    """Uploads DICOM files to an Orthanc over its REST API."""

    def __init__(
        self, dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
    ) -> None:
        self.dest = dest
        self.timeout_s = timeout_s
        self.client = orthanc_client(dest.url, dest.username, dest.password, dest.token)

    def ping(self) -> PingResult:
        started = time.monotonic()
        try:
            system = self.client.get_json("system", timeout=self.timeout_s)
        except orthanc_errors.OrthancApiException as exc:
            return PingResult(False, str(exc), time.monotonic() - started)
        detail = f"Orthanc {system.get('Version', '?')} ({system.get('Name', '')})"
        return PingResult(True, detail, time.monotonic() - started)

    def send(self, paths: Sequence[Path]) -> list[SendOutcome]:
        outcomes: list[SendOutcome] = []
        for index, path in enumerate(map(Path, paths)):
            try:
                payload = path.read_bytes()
            except OSError as exc:
                outcomes.append(SendOutcome(path, False, error=f"cannot read {path}: {exc}"))
                continue
            try:
                response = self.client.post("instances", data=payload, timeout=self.timeout_s)
            except orthanc_errors.ConnectionError as exc:
                # the peer is gone: the rest of the batch would fail the same way, slowly
                outcomes.extend(
                    failed_all(list(map(Path, paths))[index:], f"Orthanc unreachable: {exc.msg}")
                )
                break
            except orthanc_errors.OrthancApiException as exc:
                outcomes.append(SendOutcome(path, False, error=str(exc)[:500]))
                continue
            body = response.json()
            body = body[0] if isinstance(body, list) and body else body
            status = str(body.get("Status", "")) if isinstance(body, dict) else ""
            ok = status in ("Success", "AlreadyStored")
            outcomes.append(
                SendOutcome(
                    path,
                    ok,
                    status=f"HTTP {response.status_code} {status}".strip(),
                    error="" if ok else f"Orthanc answered {body!r}"[:500],
                )
            )
        return outcomes
