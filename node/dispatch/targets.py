"""The typed registry of dispatch targets: one sender class per :class:`DestinationKind`.

The dispatcher only knows the :class:`Sender` protocol. Each kind of destination (DICOM C-STORE,
Orthanc REST, DICOMweb STOW-RS, folder) lives in its own module and answers per object, so one
rejected object never hides the others' success and a retry re-sends only what is still due.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from core.config import DestinationSettings
from core.domain import DestinationKind


@dataclass(frozen=True)
class SendOutcome:
    """What happened to one object sent to one destination."""

    path: Path
    ok: bool
    sop_instance_uid: str = ""
    status: str = ""  # e.g. "0x0000", "HTTP 200", "copied"
    error: str = ""


@dataclass(frozen=True)
class PingResult:
    """Whether a destination answers (C-ECHO, GET /system, ...), for the console's test button."""

    ok: bool
    detail: str
    seconds: float = 0.0


class Sender(Protocol):
    """Sends files to one destination; never raises for a peer problem, reports it per object."""

    def send(self, paths: Sequence[Path]) -> list[SendOutcome]: ...

    def ping(self) -> PingResult: ...


class DispatchError(RuntimeError):
    """A destination could not be reached at all (the whole batch failed)."""


# kind -> "module:Class"; imported lazily so a folder-only node never imports pynetdicom or httpx
SENDERS: dict[DestinationKind, str] = {
    DestinationKind.DICOM: "node.dispatch.cstore:CStoreSender",
    DestinationKind.ORTHANC: "node.dispatch.orthanc_rest:OrthancRestSender",
    DestinationKind.DICOMWEB: "node.dispatch.dicomweb:StowRsSender",
    DestinationKind.FOLDER: "node.dispatch.folder:FolderSender",
}


def sender_for(
    dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
) -> Sender:
    """Build the sender for ``dest``; ``timeout_s`` bounds every network wait of one send."""
    module_name, class_name = SENDERS[DestinationKind(dest.kind)].split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    sender: Sender = cls(dest, timeout_s=timeout_s, calling_ae=calling_ae)
    return sender


def failed_all(paths: Sequence[Path], error: str) -> list[SendOutcome]:
    """The same failure for every object of a batch (peer unreachable, association refused)."""
    return [SendOutcome(path=Path(p), ok=False, error=error) for p in paths]
