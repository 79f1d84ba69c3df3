"""PNG renderings for the review page: source frames (windowed greyscale) and SEG mask overlays.

Masks are read back from the SEG object the node produced (the very thing that goes to PACS), so the
reviewer approves what will be sent. The overlay is an RGBA image in a heat colour map with
transparent background; the page blends it with a CSS opacity slider.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError

from node.results.seg import frame_group_item
from pipelines.preprocess.display import DisplayError, display_frame

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


class RenderError(ValueError):
    """The file cannot be shown as an image (no pixel data, unsupported encoding, bad frame)."""


def _to_png(array: np.ndarray, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def render_frame_png(path: Path, frame: int = 0) -> bytes:
    """The ``frame``-th (0-based) frame of a DICOM image as 8-bit PNG, shown as a viewer shows it
    (:func:`pipelines.preprocess.display.display_frame`, the same pixels as the overlay)."""
    try:
        ds = pydicom.dcmread(path)
        shown = display_frame(ds, frame)
    except (InvalidDicomError, DisplayError, OSError) as exc:
        raise RenderError(f"cannot show {path.name}: {exc}") from exc
    return _to_png(shown, "RGB" if shown.ndim == 3 else "L")


@dataclass(frozen=True)
class SegMasks:
    """Label maps of a SEG per referenced source instance (and frame): (sop_uid, frame) -> map."""

    rows: int
    columns: int
    frames: dict[tuple[str, int | None], np.ndarray]
    segment_labels: dict[int, str]


def read_seg_masks(path: Path) -> SegMasks:
    """Decode a DICOM SEG into one uint8 label map per source frame (segment numbers as values)."""
    try:
        ds = pydicom.dcmread(path)
        if ds.SOPClassUID != SEG_SOP_CLASS:
            raise RenderError(f"{path.name} is not a Segmentation")
        pixels = ds.pixel_array
    except (InvalidDicomError, AttributeError, ValueError, RuntimeError, OSError) as exc:
        raise RenderError(f"cannot decode SEG {path.name}: {exc}") from exc
    if pixels.ndim == 2:
        pixels = pixels[np.newaxis]
    try:
        return _label_maps(ds, pixels)
    except (AttributeError, IndexError, KeyError, ValueError) as exc:
        raise RenderError(f"SEG {path.name} lacks per-frame references: {exc}") from exc


def _group_item(ds: pydicom.Dataset, group: pydicom.Dataset, keyword: str) -> pydicom.Dataset:
    """A functional group macro from the per-frame item, else from the shared groups."""
    item = frame_group_item(ds, group, keyword)
    if item is None:
        raise KeyError(keyword)
    return item


def _label_maps(ds: pydicom.Dataset, pixels: np.ndarray) -> SegMasks:
    labels = {int(s.SegmentNumber): str(s.SegmentLabel) for s in ds.SegmentSequence}
    maps: dict[tuple[str, int | None], np.ndarray] = {}
    for index, group in enumerate(ds.PerFrameFunctionalGroupsSequence):
        segment = int(
            _group_item(ds, group, "SegmentIdentificationSequence").ReferencedSegmentNumber
        )
        source = _group_item(ds, group, "DerivationImageSequence").SourceImageSequence[0]
        frame_ref = getattr(source, "ReferencedFrameNumber", None)
        key = (str(source.ReferencedSOPInstanceUID), int(frame_ref) if frame_ref else None)
        plane = maps.setdefault(key, np.zeros((int(ds.Rows), int(ds.Columns)), dtype=np.uint8))
        frame_pixels = pixels[index]
        if str(getattr(ds, "SegmentationType", "BINARY")) == "FRACTIONAL":
            hit = frame_pixels >= (int(getattr(ds, "MaximumFractionalValue", 255)) / 2)
        else:
            hit = frame_pixels > 0
        plane[hit] = segment
    return SegMasks(int(ds.Rows), int(ds.Columns), maps, labels)


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
