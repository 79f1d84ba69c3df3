"""A plain pynetdicom storage SCP with durable writes: the baseline row of ``bench/ingest.py``.

The node receives with its own DICOM upper layer (``node.ingest.upper_layer``) instead of
pynetdicom's acceptor; this receiver is what that decision is measured against
(docs/performance.md, "Own DICOM upper layer"). It is pynetdicom as its documentation
recommends it for speed, nothing of ours: ``AE.start_server``, every storage SOP class,
the data set written undecoded (``event.encoded_dataset()``), unlimited maximum PDU and the
per-PDU debug log handlers off. Like the node's durable writes, each instance's file and its
folder are fsynced before the success status goes back (``--no-fsync`` leaves that out, to set it
beside the node with ``fsync: false``).

    .venv/bin/python bench/pynetdicom_scp.py PORT OUT_DIR [--ae-title PYNETDICOM] [--no-fsync]
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from pathlib import Path

from pynetdicom import AE, _config, evt
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # PS3.4 B.2.3: refused, out of resources (here: the write failed)


def store(event: Event, out: Path, durable: bool) -> int:
    """Write one received instance (and fsync it and its folder when durable); the status.

    The file name is ours (a UUID), never built from the peer's values.
    """
    path = out / f"{uuid.uuid4().hex}.dcm"
    try:
        with open(path, "wb") as handle:
            handle.write(event.encoded_dataset())
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        if durable:
            folder = os.open(out, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
    except OSError:
        return OUT_OF_RESOURCES
    return SUCCESS


def build_ae(ae_title: str) -> AE:
    """The storage SCP's application entity: every storage SOP class and Verification."""
    _config.LOG_HANDLER_LEVEL = "none"  # the standard handlers log every PDU at debug level
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.maximum_pdu_size = 0  # unlimited: fewest P-DATA PDUs per instance
    ae.maximum_associations = 16
    return ae


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("out", type=Path, help="folder for the received instances (created)")
    parser.add_argument("--ae-title", default="PYNETDICOM")
    parser.add_argument("--no-fsync", action="store_true", help="write without fsync")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    ae = build_ae(args.ae_title)
    handlers: list[EventHandlerType] = [(evt.EVT_C_STORE, store, [args.out, not args.no_fsync])]
    ae.start_server(("127.0.0.1", args.port), block=True, evt_handlers=handlers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
