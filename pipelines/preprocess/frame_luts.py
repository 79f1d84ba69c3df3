"""Which Modality LUT and VOI LUT apply to one frame: top level, or enhanced functional groups.

Model input (:mod:`.decode`) and display (:mod:`.display`) both need the rescale and the VOI of
one frame. A classic image has them at the top level; an enhanced multi-frame object keeps them in
the Pixel Value Transformation and Frame VOI LUT functional groups, per frame or shared.
:func:`frame_lut_view` gives a small dataset with exactly what applies to one frame, in the form
pydicom's ``apply_modality_lut`` / ``apply_voi_lut`` read.
"""

from __future__ import annotations

import copy
from typing import Any

from pydicom.dataset import Dataset
from pydicom.tag import Tag

# The Image Pixel attributes pydicom's LUT functions read, copied from the top level.
_PIXEL_KEYWORDS = ("PhotometricInterpretation", "BitsStored", "PixelRepresentation")
# Modality LUT and VOI LUT module attributes: top level, overridden by the frame's groups.
_MODALITY_KEYWORDS = ("ModalityLUTSequence", "RescaleSlope", "RescaleIntercept", "RescaleType")
_VOI_KEYWORDS = ("VOILUTSequence", "WindowCenter", "WindowWidth", "VOILUTFunction")
_PIXEL_TAGS, _MODALITY_TAGS, _VOI_TAGS = (
    tuple(Tag(keyword) for keyword in keywords)
    for keywords in (_PIXEL_KEYWORDS, _MODALITY_KEYWORDS, _VOI_KEYWORDS)
)


def _first_item(ds: Dataset, *keywords: str) -> Dataset | None:
    """Walk nested single-item sequences (functional groups) and return the innermost item."""
    current: Any = ds
    for keyword in keywords:
        seq = getattr(current, keyword, None)
        if not seq:
            return None
        current = seq[0]
    return current


def functional_group(ds: Dataset, frame_index: int, macro: str) -> Dataset | None:
    """A functional-group macro for one frame of an enhanced object (per-frame over shared)."""
    per_frame = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    if per_frame and frame_index < len(per_frame):
        item = _first_item(per_frame[frame_index], macro)
        if item is not None:
            return item
    return _first_item(ds, "SharedFunctionalGroupsSequence", macro)


def frame_lut_view(ds: Dataset, frame_index: int = 0) -> Dataset:
    """A small dataset with the Modality LUT and VOI LUT attributes that apply to one frame.

    pydicom's LUT functions read the top level only; an enhanced object keeps rescale in the Pixel
    Value Transformation macro and windows in the Frame VOI LUT macro, in the frame's own groups
    or else the shared ones. The view takes the top-level values and replaces them by the macro's
    where the frame has one, so the functions see exactly what applies to this frame. Elements are
    shallow copies: the source dataset is never modified.
    """
    view = Dataset()
    if hasattr(ds, "file_meta"):
        view.file_meta = ds.file_meta  # the endianness of OW LUT data
    view.set_original_encoding(*ds.original_encoding)
    for tag in (*_PIXEL_TAGS, *_MODALITY_TAGS, *_VOI_TAGS):
        if tag in ds:
            view.add(copy.copy(ds[tag]))  # pydicom's functions set values on what they read
    for macro, tags in (
        ("PixelValueTransformationSequence", _MODALITY_TAGS),
        ("FrameVOILUTSequence", _VOI_TAGS),
    ):
        item = functional_group(ds, frame_index, macro)
        if item is None or not any(tag in item for tag in tags):
            continue
        for tag in tags:  # the macro replaces the top level's values
            if tag in view:
                del view[tag]
            if tag in item:
                view.add(copy.copy(item[tag]))
    return view
