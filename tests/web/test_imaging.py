"""The console reads SEG with highdicom: the label map it shows is the one the node wrote.

SEGs made by the node's own writer (node.results.seg) over single-frame series, a single image and
an enhanced multi-frame CT (frame references), BINARY and FRACTIONAL.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from node.results.seg import SegOptions, build_segmentation
from pipelines.contract import PipelineResult
from tests.node.results.conftest import load_sources
from tests.node.results.factories import make_result
from web.imaging import RenderError, read_seg_masks, render_mask_png


def _shown_frames(sources: list[Dataset]) -> list[tuple[str, int]]:
    """(SOP Instance UID, 0-based frame) for every frame, as the review page lists them."""
    return [
        (str(ds.SOPInstanceUID), frame)
        for ds in sources
        for frame in range(int(ds.get("NumberOfFrames", 1) or 1))
    ]


def _with_faint_probabilities(result: PipelineResult) -> PipelineResult:
    """Probabilities of 0.3 outside the lesion: a FRACTIONAL SEG stores them, none is shown."""
    seg = result.segmentation
    assert seg is not None and seg.probabilities is not None
    probabilities = seg.probabilities.copy()
    probabilities[0][seg.label_map == 0] = 0.3
    return replace(result, segmentation=replace(seg, probabilities=probabilities))


@pytest.mark.parametrize("seg_type", ["BINARY", "FRACTIONAL"])
@pytest.mark.parametrize("kind", ["synthetic-ct", "ct-small", "enhanced-ct"])
def test_masks_are_the_label_map_the_node_wrote(kind: str, seg_type: str, tmp_path: Path) -> None:
    sources = load_sources(kind)
    result = _with_faint_probabilities(make_result(sources))
    built = build_segmentation(result, sources, SegOptions(seg_type=seg_type, segments="per_label"))
    assert built is not None
    path = tmp_path / "seg.dcm"
    built.dataset.save_as(path)
    shown = _shown_frames(sources)
    masks = read_seg_masks(path, shown)
    assert result.segmentation is not None
    lut = np.zeros(256, np.uint8)
    for value, number in built.segment_numbers.items():
        lut[value] = number
    expected = lut[result.segmentation.label_map]
    assert masks.segment_labels == {1: "lesion", 2: "nodule"}
    assert (masks.rows, masks.columns) == expected.shape[1:]
    for index, key in enumerate(shown):
        if expected[index].any():
            np.testing.assert_array_equal(masks.frames[key], expected[index])
        else:
            assert key not in masks.frames  # slices without findings are not listed
    assert len(masks.frames) == int(expected.any(axis=(1, 2)).sum()) > 0


def test_frames_of_other_instances_are_empty_and_a_non_seg_is_refused(tmp_path: Path) -> None:
    sources = load_sources("synthetic-ct")
    built = build_segmentation(make_result(sources), sources, SegOptions())
    assert built is not None
    path = tmp_path / "seg.dcm"
    built.dataset.save_as(path)
    assert read_seg_masks(path, [("1.2.3.4", 0)]).frames == {}
    png = render_mask_png(None, (32, 32), 2)
    assert png[:4] == b"\x89PNG"
    image = tmp_path / "image.dcm"
    sources[0].save_as(image, enforce_file_format=True)
    with pytest.raises(RenderError, match="cannot read SEG"):
        read_seg_masks(image, _shown_frames(sources))
