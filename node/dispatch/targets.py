"""The typed registry of dispatch targets: one sender class per :class:`DestinationKind`.

The dispatcher only knows the :class:`~node.dispatch.sender.Sender` protocol. Each kind of
destination (DICOM C-STORE, Orthanc REST, DICOMweb STOW-RS, folder) lives in its own module and
answers per object, so one rejected object never hides the others' success and a retry re-sends
only what is still due.
"""

from __future__ import annotations

from typing import Protocol

from core.config import DestinationSettings
from core.domain import DestinationKind
from node.dispatch.cstore import CStoreSender
from node.dispatch.dicomweb import StowRsSender
from node.dispatch.folder import FolderSender
from node.dispatch.orthanc_rest import OrthancRestSender
from node.dispatch.sender import Sender


class SenderClass(Protocol):
    """A sender's constructor: the destination, a bound on every network wait, our AE title."""

    def __call__(
        self, dest: DestinationSettings, *, timeout_s: float, calling_ae: str
    ) -> Sender: ...


SENDERS: dict[DestinationKind, SenderClass] = {
    DestinationKind.DICOM: CStoreSender,
    DestinationKind.ORTHANC: OrthancRestSender,
    DestinationKind.DICOMWEB: StowRsSender,
    DestinationKind.FOLDER: FolderSender,
}


def sender_for(
    dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
) -> Sender:
    """Build the sender for ``dest``; ``timeout_s`` bounds every network wait of one send."""
    return SENDERS[DestinationKind(dest.kind)](dest, timeout_s=timeout_s, calling_ae=calling_ae)
