"""The validation gate's read-back of a BINARY SEG from its own bytes, without highdicom.

The gate re-reads every SEG it built and compares the segment number of every pixel of every
source frame with the map it was built from. highdicom's ``segread`` indexes every frame into an
SQLite table and unpacks frame by frame (0.1 s for a 100-slice CT, a tenth of the results); here
the pixel data is unpacked in one ``np.unpackbits`` and each frame placed on the source frame its
Derivation Image Sequence cites, under the segment its Segment Identification Sequence names.

Only the plain case is read here: native (uncompressed) 1-bit pixel data whose every frame cites
exactly one source image (frame) the result knows. Anything else (a compressed transfer syntax,
a frame citing none or several, a source frame the result does not list) returns ``None`` and the
gate reads the SEG with highdicom instead (``node.results.seg_read``), as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import UID

from node.results.seg import frame_group_item, segment_number_of
from node.results.seg_read import SourceFrameKey


def cited_instances(dataset: Dataset) -> set[str]:
    """SOP Instance UIDs the SEG names as its sources: its Referenced Series Sequence and the
    sources of its frames (highdicom's ``get_source_image_uids`` reads the former)."""
    cited = {
        str(instance.ReferencedSOPInstanceUID)
        for series in dataset.get("ReferencedSeriesSequence", [])
        for instance in series.get("ReferencedInstanceSequence", [])
    }
    for study in dataset.get("StudiesContainingOtherReferencedInstancesSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            cited.update(
                str(i.ReferencedSOPInstanceUID)
                for i in series.get("ReferencedInstanceSequence", [])
            )
    return cited


def _source_key(dataset: Dataset, item: Dataset) -> SourceFrameKey | None:
    """The one source frame a SEG frame cites, or None when it cites none or several."""
    derivation = item.get("DerivationImageSequence")
    if derivation is None:
        shared = frame_group_item(dataset, item, "DerivationImageSequence")
        derivation = [shared] if shared is not None else []
    refs = [ref for d in derivation for ref in d.get("SourceImageSequence", [])]
    if len(refs) != 1:
        return None
    frames = refs[0].get("ReferencedFrameNumber")
    if isinstance(frames, list | tuple):
        if len(frames) != 1:
            return None
        frames = frames[0]
    return str(refs[0].ReferencedSOPInstanceUID), int(frames) if frames is not None else None


def binary_label_maps(dataset: Dataset, frames: Sequence[SourceFrameKey]) -> np.ndarray | None:
    """``(len(frames), rows, cols)``: the segment number at each pixel of each source frame (the
    highest where segments overlap, 0 where none is), read from a BINARY SEG's bits; ``None``
    when the SEG is not the plain case this reads (see the module's docstring)."""
    meta = getattr(dataset, "file_meta", None)
    syntax = (
        UID(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else None
    )
    if syntax is None or syntax.is_compressed or not syntax.is_little_endian:
        return None
    if int(dataset.get("BitsAllocated", 0)) != 1 or "PixelData" not in dataset:
        return None
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    items = dataset.get("PerFrameFunctionalGroupsSequence") or []
    if not _pixel_measures_complete(dataset, items):
        return None
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    position = {key: index for index, key in enumerate(frames)}
    placed: list[tuple[int, int]] = []  # (source frame index, segment number) per SEG frame
    for item in items:
        key = _source_key(dataset, item)
        if key is None or key not in position:
            return None
        placed.append((position[key], segment_number_of(dataset, item)))
    if len(placed) != count:
        return None
    size = count * rows * columns
    data = np.frombuffer(dataset.PixelData, np.uint8)
    if data.size * 8 < size:
        raise ValueError(f"pixel data holds {data.size * 8} bits, {size} wanted")
    bits = np.unpackbits(data, count=size, bitorder="little").reshape(count, rows, columns)
    highest = max((number for _, number in placed), default=0)
    out = np.zeros((len(frames), rows, columns), np.uint16 if highest < 65536 else np.uint32)
    for frame, (index, number) in enumerate(placed):
        np.maximum(out[index], bits[frame] * out.dtype.type(number), out=out[index])
    return out


def _pixel_measures_complete(dataset: Dataset, items: Sequence[Dataset]) -> bool:
    """Whether every Pixel Measures item carries SliceThickness and PixelSpacing.

    highdicom's ``segread`` refuses a SEG whose Pixel Measures lacks SliceThickness (made from a
    CT without it, e.g. pydicom's ``explicit_VR-UN.dcm``), and so did this gate before it read
    the bits itself; such a SEG goes to highdicom, which refuses it as before
    (``tests/node/results/test_conformance_sweep.py``)."""
    groups = [*(dataset.get("SharedFunctionalGroupsSequence") or []), *items]
    for group in groups:
        for measures in group.get("PixelMeasuresSequence") or []:
            if "SliceThickness" not in measures or "PixelSpacing" not in measures:
                return False
    return True
