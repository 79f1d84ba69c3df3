"""Folder destination: ``<path>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``, written atomically.

A consumer watching the folder never sees a half-written file (temporary name, fsync, rename), and
a retry overwrites the same name, so the folder never holds duplicates. A UID that is not a plain
UID (a study received before entry points checked them) is refused, never joined to the path.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError

from core.config import DestinationSettings
from core.dicom_uids import InvalidUIDError, checked_uid
from node.dispatch.sender import PingResult, SendOutcome


class FolderSender:
    """Copies DICOM files into a folder tree."""

    def __init__(
        self, dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
    ) -> None:
        if dest.path is None:
            raise ValueError(f"destination {dest.name!r} has no path")
        self.root = Path(dest.path)

    def ping(self) -> PingResult:
        started = time.monotonic()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".pacsnode-probe-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            return PingResult(False, f"folder not writable: {exc}", time.monotonic() - started)
        return PingResult(True, f"writable: {self.root}", time.monotonic() - started)

    def send(self, paths: Sequence[Path]) -> list[SendOutcome]:
        return [self._copy(Path(p)) for p in paths]

    def _copy(self, path: Path) -> SendOutcome:
        try:
            header = dcmread(path, stop_before_pixels=True)
            study_uid, sop_uid = str(header.StudyInstanceUID), str(header.SOPInstanceUID)
        except (OSError, InvalidDicomError, AttributeError) as exc:
            return SendOutcome(path, False, error=f"unreadable DICOM file: {exc}")
        try:  # the names come from the file: only a plain UID may become a path component
            study_uid = checked_uid(study_uid, "StudyInstanceUID")
            sop_uid = checked_uid(sop_uid, "SOPInstanceUID")
        except InvalidUIDError as exc:
            return SendOutcome(path, False, error=f"not copied: {exc}")
        target = self.root / study_uid / f"{sop_uid}.dcm"
        partial = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(partial, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                partial.unlink(missing_ok=True)
            return SendOutcome(path, False, sop_uid, error=f"cannot write {target}: {exc}")
        return SendOutcome(path, True, sop_uid, status=f"copied to {target}")
