"""The SEG gate re-reads what the writer made (from its bits, else highdicom) and refuses a mask
that differs."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from node.results.seg import BuiltSegmentation, SegOptions, build_segmentation
from node.results.seg_bits import binary_label_maps
from node.results.seg_read import label_maps
from node.results.source import clean_sources
from node.results.validate import ResultValidationError, encode, validate_seg
from pipelines.contract import PipelineResult, SourceFrame
from tests.node.results.conftest import load_sources
from tests.node.results.factories import make_result


def _seg_bytes(
    result: PipelineResult, sources: list[Dataset], tmp_path: Path
) -> tuple[bytes, BuiltSegmentation]:
    """The SEG as produce_results writes it (it passed the gate), and what it was built from
    (the same deterministic build again: its segment-number map is what a re-read must give)."""
    options = OutputOptions(overlay=False, pdf=False, sr=False)
    (seg,) = produce_results(result, sources, options, tmp_path / "out")
    assert seg.kind == ArtifactKind.SEG
    built = build_segmentation(result, clean_sources(sources), SegOptions())
    assert built is not None
    return seg.path.read_bytes(), built


@pytest.mark.parametrize("kind", ["synthetic-ct", "enhanced-ct"])
def test_seg_that_matches_passes_and_one_changed_pixel_fails(kind: str, tmp_path: Path) -> None:
    sources = load_sources(kind)
    result = make_result(sources)
    data, built = _seg_bytes(result, sources, tmp_path)
    validate_seg(data, result, built, "BINARY")
    changed = built.expected.copy()
    frame, row, col = np.argwhere(changed > 0)[0]
    changed[frame, row, col] = 0
    with pytest.raises(ResultValidationError, match="differs after re-read"):
        validate_seg(data, result, dataclasses.replace(built, expected=changed), "BINARY")


def test_seg_citing_other_sources_fails(tmp_path: Path) -> None:
    sources = load_sources("synthetic-ct")
    result = make_result(sources)
    data, built = _seg_bytes(result, sources, tmp_path)
    moved = tuple(
        SourceFrame(f.sop_class_uid, f.sop_instance_uid + ".9", f.series_instance_uid)
        for f in result.source_frames
    )
    with pytest.raises(ResultValidationError, match="unknown sources"):
        validate_seg(data, dataclasses.replace(result, source_frames=moved), built, "BINARY")


@pytest.mark.parametrize(
    "kind", ["synthetic-ct", "synthetic-quirks", "ct-small", "cr-monochrome1", "enhanced-ct"]
)
def test_the_gates_bit_reader_reads_what_highdicom_reads(kind: str, tmp_path: Path) -> None:
    """The gate reads a plain BINARY SEG from its bits; where it does, every pixel of every
    source frame is what highdicom's reader gives, and what the SEG was built from."""
    sources = load_sources(kind)
    result = make_result(sources)
    data, built = _seg_bytes(result, sources, tmp_path)
    keys = [(f.sop_instance_uid, f.frame_number or None) for f in result.source_frames]
    fast = binary_label_maps(pydicom.dcmread(io.BytesIO(data)), keys)
    if kind != "enhanced-ct":  # single-frame sources: always the plain case
        assert fast is not None
    if fast is not None:
        np.testing.assert_array_equal(fast, label_maps(hd.seg.segread(io.BytesIO(data)), keys))
        np.testing.assert_array_equal(fast, built.expected)


def test_a_flipped_bit_in_the_seg_bytes_fails_the_gate(tmp_path: Path) -> None:
    sources = load_sources("synthetic-ct")
    result = make_result(sources)
    data, built = _seg_bytes(result, sources, tmp_path)
    dataset = pydicom.dcmread(io.BytesIO(data))
    pixels = bytearray(dataset.PixelData)
    pixels[len(pixels) // 2] ^= 0x10
    dataset.PixelData = bytes(pixels)
    with pytest.raises(ResultValidationError, match="differs after re-read"):
        validate_seg(encode(dataset), result, built, "BINARY")


def test_a_seg_frame_the_bit_reader_cannot_place_is_read_by_highdicom(tmp_path: Path) -> None:
    """A frame citing no source is not the plain case: the gate falls back to highdicom (which
    here refuses the frame) instead of guessing where it belongs."""
    sources = load_sources("synthetic-ct")
    result = make_result(sources)
    data, built = _seg_bytes(result, sources, tmp_path)
    dataset = pydicom.dcmread(io.BytesIO(data))
    keys = [(f.sop_instance_uid, f.frame_number or None) for f in result.source_frames]
    del dataset.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence
    assert binary_label_maps(dataset, keys) is None
    with pytest.raises(ResultValidationError):
        validate_seg(encode(dataset), result, built, "BINARY")
