"""Make ultralytics strictly offline before it is imported.

Importing ultralytics resolves public DNS names to decide whether it is online, and dataset checks
download a font; a hospital node must do neither. We set ``YOLO_OFFLINE`` and a private
``YOLO_CONFIG_DIR`` (unless the admin set one) holding a local font under the names ultralytics
looks for, and switch off its telemetry. Call :func:`prepare_offline` before ``import ultralytics``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_prepared = False


def _local_font() -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return font if font.is_file() else None


def prepare_offline() -> Path:
    """Configure the environment (idempotent); return the ultralytics config directory."""
    global _prepared
    os.environ["YOLO_OFFLINE"] = "1"
    # ultralytics otherwise pip-installs packages at run time (e.g. pi-heif from its Image.open patch)
    os.environ["YOLO_AUTOINSTALL"] = "false"
    config_dir = Path(
        os.environ.setdefault(
            "YOLO_CONFIG_DIR",
            str(Path(tempfile.gettempdir()) / f"pacsnode-ultralytics-{os.getuid()}"),
        )
    )
    if _prepared:
        return config_dir
    config_dir.mkdir(parents=True, exist_ok=True)
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR  # resolved under YOLO_CONFIG_DIR

    font = _local_font()
    for name in _FONT_NAMES:
        target = Path(USER_CONFIG_DIR) / name
        if font is not None and not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(font, target)

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})
    _prepared = True
    return config_dir
