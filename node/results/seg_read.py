"""Reading a DICOM Segmentation back as label maps on its source frames, with highdicom.

The node's general SEG reader: the console shows the SEG it will send, and the results validator
re-reads a SEG with it where the SEG is not the plain BINARY case it unpacks from the bits itself
(``node.results.seg_bits``). Both ask highdicom for the pixels of given source instances (or
frames of a multi-frame source), so frame order, shared functional groups, omitted empty frames
and bit packing are highdicom's business, not ours.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import highdicom as hd
import numpy as np

# A FRACTIONAL segment covers a pixel from half its maximum on (highdicom rescales to [0, 1]).
FRACTIONAL_THRESHOLD = 0.5
# Source instances per highdicom call: bounds the (instances, rows, cols) array of one call.
_INSTANCES_PER_READ = 64
# A source frame: (SOP Instance UID, 1-based frame number, or None for a single-frame instance).
SourceFrameKey = tuple[str, int | None]
_PixelReader = Callable[..., np.ndarray]


def label_maps(seg: hd.seg.Segmentation, frames: Sequence[SourceFrameKey]) -> np.ndarray:
    """``(len(frames), rows, cols)`` uint8 (uint16 past 255 segments): the segment number at each pixel of each source
    frame (the highest where segments overlap), 0 where no segment is, or the SEG does not
    cover that frame. Raises ``KeyError``/``RuntimeError``/``ValueError`` (highdicom's) for a
    SEG that cannot be indexed by its source frames."""
    out = np.zeros((len(frames), int(seg.Rows), int(seg.Columns)), dtype=_map_dtype(seg))
    singles = [(index, uid) for index, (uid, number) in enumerate(frames) if number is None]
    for start in range(0, len(singles), _INSTANCES_PER_READ):
        batch = singles[start : start + _INSTANCES_PER_READ]
        read = partial(seg.get_pixels_by_source_instance, [uid for _, uid in batch])
        out[[index for index, _ in batch]] = _combined(seg, read)
    by_instance: dict[str, list[tuple[int, int]]] = {}
    for index, (uid, number) in enumerate(frames):
        if number is not None:
            by_instance.setdefault(uid, []).append((index, number))
    for uid, items in by_instance.items():
        read = partial(seg.get_pixels_by_source_frame, uid, [number for _, number in items])
        out[[index for index, _ in items]] = _combined(seg, read)
    return out


def _map_dtype(seg: hd.seg.Segmentation) -> type[np.unsignedinteger]:
    """One segment per finding can pass 255 segments; the map then needs 16 bits."""
    return np.uint8 if max(seg.segment_numbers, default=0) <= 255 else np.uint16


def _combined(seg: hd.seg.Segmentation, read: _PixelReader) -> np.ndarray:
    common = {"assert_missing_frames_are_empty": True}
    dtype = _map_dtype(seg)
    if seg.segmentation_type != hd.seg.SegmentationTypeValues.FRACTIONAL:
        combined = read(combine_segments=True, skip_overlap_checks=True, dtype=dtype, **common)
        return np.asarray(combined, dtype=dtype)
    maps: np.ndarray | None = None
    for number in sorted(seg.segment_numbers):  # the highest segment wins, as when combined
        fraction = read(segment_numbers=[number], dtype=np.float32, **common)[..., 0]
        if maps is None:
            maps = np.zeros(fraction.shape, dtype=dtype)
        maps[fraction >= FRACTIONAL_THRESHOLD] = number
    if maps is None:
        raise ValueError("the SEG has no segments")
    return maps


def referenced_instances(seg: hd.seg.Segmentation) -> set[str]:
    """SOP Instance UIDs of the source images the SEG names."""
    return {str(sop_uid) for _study, _series, sop_uid in seg.get_source_image_uids()}
