"""``pacsnode import``: files, folders and zip archives into the node, as if a peer had sent them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from core.config import Settings
from node.db.engine import open_database
from node.ingest.importer import import_paths


def import_command(settings: Settings, args: argparse.Namespace) -> int:
    """``pacsnode import``: exit 0 when every DICOM file was stored (or was already there); a file
    refused for an invalid UID has its own error line and makes the exit status 1."""
    db = open_database(settings)
    try:
        report = import_paths(db, settings, [Path(p) for p in args.paths])
    finally:
        db.dispose()
    print(report.summary())
    for line in report.refusals:
        print(f"error: {line}", file=sys.stderr)
    for line in report.errors[:20]:
        print(f"  {line}", file=sys.stderr)
    return 1 if report.failed or report.refused else 0
