"""The SEG gate re-reads what the writer made (highdicom) and refuses a mask that differs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from core.domain import ArtifactKind
from node.results.produce import OutputOptions, produce_results
from node.results.seg import BuiltSegmentation, SegOptions, build_segmentation
from node.results.source import clean_sources
from node.results.validate import ResultValidationError, validate_seg
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
