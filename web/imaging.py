"""PNG renderings for the review page: source frames (windowed greyscale), SEG mask overlays
and the probability heat map.

Masks are read back with highdicom from the SEG object the node produced (the very thing that goes
to PACS), so the reviewer approves what will be sent. The overlays are RGBA images with a
transparent background; the page blends them with a CSS opacity slider. Frames are windowed by
:mod:`pipelines.preprocess.display` (the one windowing implementation), under the window the
reviewer picked.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from node.results.maps import jet as _jet
from node.results.seg_read import label_maps
from pipelines.preprocess.display import (
    DisplayError,
    Window,
    WindowChoice,
    display_frame_windowed,
)


class RenderError(ValueError):
    """The file cannot be shown as an image (no pixel data, unsupported encoding, bad frame)."""


def _to_png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_frame(
    path: Path, frame: int = 0, window: WindowChoice = "file"
) -> tuple[bytes, Window | None]:
    """The ``frame``-th (0-based) frame of a DICOM image as 8-bit PNG, shown as a viewer shows it
    (:func:`pipelines.preprocess.display.display_frame_windowed`, the same pixels as the overlay
    under the file's window), and the window applied (None for colour or a VOI LUT)."""
    try:
        ds = pydicom.dcmread(path)
        shown, applied = display_frame_windowed(ds, frame, window)
    except (InvalidDicomError, DisplayError, OSError) as exc:
        raise RenderError(f"cannot show {path.name}: {exc}") from exc
    return _to_png(shown, "RGB" if shown.ndim == 3 else "L"), applied


def render_frame_png(path: Path, frame: int = 0) -> bytes:
    """:func:`render_frame` under the file's own window."""
    return render_frame(path, frame)[0]


@dataclass(frozen=True)
class SegMasks:
    """Label maps of a SEG for the frames the review page shows: (source SOP Instance UID, 0-based
    frame within it) -> uint8 map of segment numbers; frames the SEG leaves empty are absent."""

    rows: int
    columns: int
    frames: dict[tuple[str, int], np.ndarray]
    segment_labels: dict[int, str]


def read_seg_masks(path: Path, source_frames: Sequence[tuple[str, int]]) -> SegMasks:
    """Read a DICOM SEG with highdicom and return its label map for each of ``source_frames``
    ((SOP Instance UID, 0-based frame) of the shown series): segment numbers as pixel values,
    the highest segment where segments overlap. An instance shown only as frame 0 is read as a
    single-frame source, any other by its frame numbers."""
    try:
        seg = hd.seg.segread(path)
        labels = {
            int(n): str(seg.get_segment_description(n).segment_label) for n in seg.segment_numbers
        }
    except (InvalidDicomError, AttributeError, KeyError, ValueError, OSError) as exc:
        raise RenderError(f"cannot read SEG {path.name}: {exc}") from exc
    frames_of: dict[str, list[int]] = {}
    for sop_uid, frame in source_frames:
        frames_of.setdefault(sop_uid, []).append(frame)
    keys = [(uid, None if frames_of[uid] == [0] else frame + 1) for uid, frame in source_frames]
    try:
        planes = label_maps(seg, keys)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise RenderError(f"SEG {path.name} cannot be mapped onto its source: {exc}") from exc
    shown = {key: plane for key, plane in zip(source_frames, planes, strict=True) if plane.any()}
    return SegMasks(int(seg.Rows), int(seg.Columns), shown, labels)


def _heat(values: np.ndarray) -> np.ndarray:
    """A small 'hot' colour map: 0 transparent, then red -> yellow -> white with rising value."""
    v = np.clip(values, 0.0, 1.0)
    rgba = np.zeros((*v.shape, 4), dtype=np.uint8)
    rgba[..., 0] = np.clip(v * 3, 0, 1) * 255
    rgba[..., 1] = np.clip(v * 3 - 1, 0, 1) * 255
    rgba[..., 2] = np.clip(v * 3 - 2, 0, 1) * 255
    rgba[..., 3] = np.where(v > 0, 255, 0)
    return rgba


def render_mask_png(label_map: np.ndarray | None, shape: tuple[int, int], n_segments: int) -> bytes:
    """An RGBA overlay for one frame: segment k of n gets heat 0.25 + 0.3*k/n (red to orange)."""
    if label_map is None:
        return _to_png(np.zeros((*shape, 4), dtype=np.uint8), "RGBA")
    scale = 0.25 + 0.3 * label_map.astype(np.float32) / max(n_segments, 1)
    heat = _heat(np.where(label_map > 0, scale, 0.0))
    return _to_png(heat, "RGBA")


# probabilities below this are left transparent: an ensemble's near-zero background would
# otherwise tint the whole image
HEAT_FLOOR = 0.05


def render_heatmap_png(heat: np.ndarray | None, shape: tuple[int, int]) -> bytes:
    """An RGBA heat map of one frame's probabilities (uint8, 255 = 1.0): colour by probability,
    opaque from 0.5 up and fading out towards :data:`HEAT_FLOOR`, transparent below it."""
    if heat is None:
        return _to_png(np.zeros((*shape, 4), dtype=np.uint8), "RGBA")
    v = heat.astype(np.float32) / 255.0
    rgba = np.zeros((*v.shape, 4), dtype=np.uint8)
    rgba[..., :3] = np.rint(_jet(v) * 255.0).astype(np.uint8)
    alpha = np.clip(2.0 * v, 0.0, 1.0) * 255.0
    rgba[..., 3] = np.where(v >= HEAT_FLOOR, np.rint(alpha), 0).astype(np.uint8)
    return _to_png(rgba, "RGBA")
