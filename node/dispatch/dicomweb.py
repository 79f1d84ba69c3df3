"""DICOMweb STOW-RS destination: one ``multipart/related; type="application/dicom"`` POST per batch.

The STOW response lists the stored (0008,1199) and failed (0008,1198) SOP instances, so each object
gets its own outcome. An HTTP error fails the whole batch (nothing is known to be stored).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from core.config import DestinationSettings
from node.dispatch.sender import PingResult, SendOutcome, failed_all

REFERENCED_SOP_SEQUENCE = "00081199"
FAILED_SOP_SEQUENCE = "00081198"
SOP_INSTANCE_UID_TAG = "00081155"
FAILURE_REASON_TAG = "00081197"


class StowRsSender:
    """Posts DICOM files to a DICOMweb server's ``/studies`` endpoint."""

    def __init__(
        self, dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
    ) -> None:
        self.dest = dest
        self.timeout_s = timeout_s
        self.base_url = dest.url.rstrip("/")

    def _client(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.dest.token}"} if self.dest.token else {}
        auth = (self.dest.username, self.dest.password) if self.dest.username else None
        return httpx.Client(timeout=self.timeout_s, headers=headers, auth=auth)

    def ping(self) -> PingResult:
        started = time.monotonic()
        try:
            with self._client() as client:
                response = client.get(
                    f"{self.base_url}/studies",
                    params={"limit": "1"},
                    headers={"Accept": "application/dicom+json"},
                )
        except httpx.HTTPError as exc:
            return PingResult(False, f"{type(exc).__name__}: {exc}", time.monotonic() - started)
        ok = response.status_code < 400
        return PingResult(ok, f"QIDO-RS HTTP {response.status_code}", time.monotonic() - started)

    def send(self, paths: Sequence[Path]) -> list[SendOutcome]:
        parts: list[bytes] = []
        uids: dict[Path, str] = {}
        outcomes: dict[Path, SendOutcome] = {}
        for path in map(Path, paths):
            try:
                payload = path.read_bytes()
                uids[path] = str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)
            except (OSError, InvalidDicomError, AttributeError) as exc:
                outcomes[path] = SendOutcome(path, False, error=f"unreadable DICOM file: {exc}")
                continue
            parts.append(payload)
        if uids:
            outcomes.update(self._post(list(uids), parts, uids))
        return [outcomes[Path(p)] for p in paths]

    def _post(
        self, paths: list[Path], parts: list[bytes], uids: dict[Path, str]
    ) -> dict[Path, SendOutcome]:
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                b"--"
                + boundary.encode()
                + b"\r\nContent-Type: application/dicom\r\n\r\n"
                + part
                + b"\r\n"
                for part in parts
            )
            + b"--"
            + boundary.encode()
            + b"--\r\n"
        )
        content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
        try:
            with self._client() as client:
                response = client.post(
                    f"{self.base_url}/studies",
                    content=body,
                    headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
                )
        except httpx.HTTPError as exc:
            return {o.path: o for o in failed_all(paths, f"STOW-RS {type(exc).__name__}: {exc}")}
        if response.status_code >= 400 and response.status_code != 409:
            error = f"STOW-RS HTTP {response.status_code}: {response.text[:300]}"
            return {o.path: o for o in failed_all(paths, error)}
        stored, failed = _parse_stow_response(response)
        outcomes: dict[Path, SendOutcome] = {}
        for path in paths:
            uid = uids[path]
            if uid in stored:
                outcomes[path] = SendOutcome(path, True, uid, status=f"HTTP {response.status_code}")
            else:
                reason = failed.get(uid, "not listed as stored in the STOW-RS response")
                outcomes[path] = SendOutcome(
                    path, False, uid, status=f"HTTP {response.status_code}", error=reason
                )
        return outcomes


def _parse_stow_response(response: httpx.Response) -> tuple[set[str], dict[str, str]]:
    """Stored UIDs and failed UID -> reason from a DICOM JSON STOW-RS response."""
    try:
        data: Any = response.json()
    except ValueError:
        return set(), {}
    if isinstance(data, list):
        data = data[0] if data else {}
    stored = {_uid(item) for item in _sequence(data, REFERENCED_SOP_SEQUENCE)}
    failed = {
        _uid(item): f"STOW-RS failure reason {_value(item, FAILURE_REASON_TAG)}"
        for item in _sequence(data, FAILED_SOP_SEQUENCE)
    }
    return stored - {""}, failed


def _sequence(data: Any, tag: str) -> list[dict[str, Any]]:
    element = data.get(tag, {}) if isinstance(data, dict) else {}
    value = element.get("Value", []) if isinstance(element, dict) else []
    return [item for item in value if isinstance(item, dict)]


def _value(item: dict[str, Any], tag: str) -> str:
    values = item.get(tag, {}).get("Value", [""])
    return str(values[0]) if values else ""


def _uid(item: dict[str, Any]) -> str:
    return _value(item, SOP_INSTANCE_UID_TAG)
