"""DICOM C-STORE SCU: one association per batch, contexts negotiated from the objects themselves.

For every SOP class in the batch we propose the object's own transfer syntax, the destination's
preferred one, and both uncompressed little-endian syntaxes. Each object then goes over the best
context the peer accepted: unchanged when its own syntax was accepted, re-encoded to the preferred
syntax when that was accepted and the encoder is available, decompressed when the peer only takes
uncompressed data. Nothing is ever renamed: the SOP Instance UID on the wire is the one on disk.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from core.config import DestinationSettings
from node.dispatch import reactor_guard
from node.dispatch.sender import PingResult, SendOutcome, failed_all

log = logging.getLogger(__name__)
_config.LOG_HANDLER_LEVEL = "none"  # per-PDU debug handlers cost CPU (docs/performance.md §5)
reactor_guard.install()  # a fast peer's response is never lost to pynetdicom's reactor

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
# C-STORE statuses that mean "stored" (PS3.4 B.2.3): success and the warnings (coercion etc.)
STORED_STATUSES = {0x0000, 0xB000, 0xB006, 0xB007}
MAX_CONTEXTS = 128


class CStoreSender:
    """Sends files to a DICOM peer (AE title, host, port, optional TLS)."""

    def __init__(
        self, dest: DestinationSettings, *, timeout_s: float = 30.0, calling_ae: str = "PACSNODE"
    ) -> None:
        self.dest = dest
        self.timeout_s = timeout_s
        self.calling_ae = calling_ae

    # -- public ------------------------------------------------------------------------------
    def ping(self) -> PingResult:
        started = time.monotonic()
        assoc = self._associate([build_context(Verification)])
        if assoc is None:
            return PingResult(False, self._refusal_text, time.monotonic() - started)
        try:
            status = assoc.send_c_echo()
            code = int(getattr(status, "Status", -1)) if status else -1
        finally:
            assoc.release()
        ok = code == 0
        detail = (
            "C-ECHO success"
            if ok
            else f"C-ECHO status {code:#06x}"
            if code >= 0
            else "no C-ECHO response"
        )
        return PingResult(ok, detail, time.monotonic() - started)

    def send(self, paths: Sequence[Path]) -> list[SendOutcome]:
        headers: dict[Path, Dataset] = {}
        outcomes: dict[Path, SendOutcome] = {}
        for path in map(Path, paths):
            try:
                headers[path] = dcmread(path, stop_before_pixels=True)
                _ = headers[path].file_meta.TransferSyntaxUID, headers[path].SOPClassUID
            except (OSError, InvalidDicomError, AttributeError) as exc:
                outcomes[path] = SendOutcome(path, False, error=f"unreadable DICOM file: {exc}")
        if headers:
            assoc = self._associate(self._contexts(list(headers.values())))
            if assoc is None:
                outcomes.update({o.path: o for o in failed_all(list(headers), self._refusal_text)})
            else:
                try:
                    for path, header in headers.items():
                        outcomes[path] = self._store_one(assoc, path, header)
                        if not assoc.is_established:
                            break
                finally:
                    if assoc.is_established:
                        assoc.release()
                for path in headers:
                    outcomes.setdefault(path, SendOutcome(path, False, error="association lost"))
        return [outcomes[Path(p)] for p in paths]

    # -- negotiation --------------------------------------------------------------------------
    def _contexts(self, headers: Sequence[Dataset]) -> list[PresentationContext]:
        """One context per (SOP class, transfer syntax) so the peer can accept each separately."""
        preferred = (
            UID(self.dest.preferred_transfer_syntax)
            if self.dest.preferred_transfer_syntax
            else None
        )
        wanted: dict[str, list[UID]] = {}
        for header in headers:
            syntaxes = wanted.setdefault(str(header.SOPClassUID), [])
            for ts in (header.file_meta.TransferSyntaxUID, preferred, *UNCOMPRESSED):
                if ts is not None and ts not in syntaxes:
                    syntaxes.append(UID(ts))
        contexts: list[PresentationContext] = []
        for sop_class, syntaxes in wanted.items():
            contexts.extend(build_context(sop_class, [ts]) for ts in syntaxes)
        if len(contexts) > MAX_CONTEXTS:  # too many classes: keep one uncompressed context each
            contexts = [build_context(sop, list(UNCOMPRESSED)) for sop in wanted][:MAX_CONTEXTS]
        return contexts

    def _associate(self, contexts: list[PresentationContext]) -> Association | None:
        ae = AE(ae_title=self.calling_ae)
        ae.requested_contexts = contexts
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.maximum_pdu_size = 0
        tls_args = (self._tls_context(), self.dest.host) if self.dest.tls else None
        assoc = ae.associate(
            self.dest.host, self.dest.port, ae_title=self.dest.ae_title, tls_args=tls_args
        )
        if assoc.is_established:
            _disable_nagle(assoc)
            return assoc
        if assoc.is_rejected:
            self._refusal_text = f"association rejected by {self._peer}"
        elif assoc.is_aborted:
            self._refusal_text = f"{self._peer} unreachable or aborted the association"
        else:
            self._refusal_text = f"{self._peer} unreachable (no association)"
        return None

    _refusal_text = "association failed"

    @property
    def _peer(self) -> str:
        return f"{self.dest.ae_title}@{self.dest.host}:{self.dest.port}"

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH,
            cafile=str(self.dest.tls_ca_file) if self.dest.tls_ca_file else None,
        )
        if self.dest.tls_cert_file and self.dest.tls_key_file:
            ctx.load_cert_chain(str(self.dest.tls_cert_file), str(self.dest.tls_key_file))
        return ctx

    # -- sending -----------------------------------------------------------------------------
    def _store_one(self, assoc: Association, path: Path, header: Dataset) -> SendOutcome:
        sop_uid = str(header.SOPInstanceUID)
        try:
            dataset = self._encode_for_peer(assoc, path, header)
        except ValueError as exc:
            return SendOutcome(path, False, sop_uid, error=str(exc))
        status = assoc.send_c_store(dataset)
        code = int(getattr(status, "Status", -1)) if status else -1
        if code in STORED_STATUSES:
            return SendOutcome(path, True, sop_uid, status=f"{code:#06x}")
        if code < 0:
            return SendOutcome(path, False, sop_uid, error="no C-STORE response (timeout or abort)")
        comment = str(getattr(status, "ErrorComment", "") or "")
        return SendOutcome(
            path,
            False,
            sop_uid,
            status=f"{code:#06x}",
            error=f"C-STORE status {code:#06x} {comment}".strip(),
        )

    def _encode_for_peer(self, assoc: Association, path: Path, header: Dataset) -> Dataset:
        """Pick the accepted context for this object and return the dataset in its syntax."""
        sop_class = str(header.SOPClassUID)
        own = UID(header.file_meta.TransferSyntaxUID)
        accepted = [
            UID(cx.transfer_syntax[0])
            for cx in assoc.accepted_contexts
            if cx.abstract_syntax == sop_class
        ]
        if not accepted:
            raise ValueError(f"peer accepts no presentation context for SOP class {sop_class}")
        dataset = dcmread(path)
        preferred = self.dest.preferred_transfer_syntax
        if preferred and preferred != own and UID(preferred) in accepted and "PixelData" in dataset:
            try:
                if own.is_compressed:
                    dataset.decompress(generate_instance_uid=False)
                dataset.compress(UID(preferred), generate_instance_uid=False)
                return dataset
            except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
                log.info("cannot encode %s as %s (%s); using another syntax", path, preferred, exc)
                dataset = dcmread(path)
        if own in accepted or (
            not own.is_compressed and any(not ts.is_compressed for ts in accepted)
        ):
            return dataset
        if own.is_compressed and any(ts in UNCOMPRESSED for ts in accepted):
            try:
                dataset.decompress(generate_instance_uid=False)
            except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
                raise ValueError(
                    f"peer wants uncompressed data and decompression failed: {exc}"
                ) from exc
            return dataset
        raise ValueError(
            f"peer accepts {sop_class} only in {[str(t) for t in accepted]}, not {own}"
        )


def _disable_nagle(assoc: Association) -> None:
    """Nagle's algorithm plus the peer's delayed ACK costs ~40 ms per C-STORE round trip; with
    TCP_NODELAY a batch to Orthanc goes 2-3x faster (docs/performance.md §5)."""
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
