"""What every dispatch target speaks: the :class:`Sender` protocol and its per-object outcomes.

Kept apart from :mod:`node.dispatch.targets` (the registry of sender classes) because every
sender module imports these types, and the registry imports every sender module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


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


def failed_all(paths: Sequence[Path], error: str) -> list[SendOutcome]:
    """The same failure for every object of a batch (peer unreachable, association refused)."""
    return [SendOutcome(path=Path(p), ok=False, error=error) for p in paths]
