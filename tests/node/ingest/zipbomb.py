"""A real zip bomb for the limit tests: a ~2 MB archive whose one member inflates to 2 GiB."""

from __future__ import annotations

import zipfile
from pathlib import Path

from tests.node.ingest.helpers import make_instance

BOMB_BYTES = 2 * 1024**3
CHUNK = b"\0" * (1 << 20)


def build_bomb(path: Path, *, with_instance: bool = True) -> Path:
    """Deflate 2 GiB of zeros (about 2 MB on disk), after one genuine small DICOM member."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        if with_instance:
            zf.writestr("ok/a.dcm", make_instance())
        with zf.open("bomb.dcm", "w", force_zip64=True) as member:
            for _ in range(BOMB_BYTES // len(CHUNK)):
                member.write(CHUNK)
    return path
