"""The burned-in overlay: finding IDs and an "AI" mark in the pixels, the source's own window
(or the modality's default), and no overlay when nothing is on it (a note says why)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from node.results.overlay import annotation_layout, key_frame_index, render_overlay
from node.results.produce import EMPTY_OVERLAY_NOTE, OutputOptions, produce_results
from pipelines.preprocess.display import display_frame
from tests.node.results.factories import make_result, read_testdata, synthetic_ct_series


def _region(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = box
    return pixels[y0 : y1 + 1, x0 : x1 + 1]


@pytest.mark.parametrize("name", ["CT_small.dcm", "RG3_UNCR.dcm", "US1_UNCR.dcm"])
def test_finding_ids_and_the_ai_mark_are_burned_in_and_nothing_else_changes(name: str) -> None:
    sources = [read_testdata(name)]
    result = make_result(sources)
    frame = key_frame_index(result)
    shown = display_frame(sources[0])
    source_rgb = shown if shown.ndim == 3 else np.repeat(shown[:, :, None], 3, axis=2)
    overlay = render_overlay(result, sources, frame)
    layout = annotation_layout(result, frame, (overlay.shape[1], overlay.shape[0]))
    texts = [a.text for a in layout]
    assert texts == [*[f.tracking_id for f in result.findings if frame in f.frame_indices], "AI"]
    for item in layout:  # each text visibly changes the pixels where it is drawn
        changed = np.any(_region(overlay, item.box) != _region(source_rgb, item.box), axis=-1)
        assert changed.mean() > 0.2, f"{item.text!r} not visible: {changed.mean():.2f}"
    mark = next(a for a in layout if a.is_mark)
    x0, _y0, x1, _y1 = mark.box
    assert x1 < overlay.shape[1] and x0 > overlay.shape[1] * 0.6  # top right, inside the image
    for item in layout:  # no ID hidden under the mark
        if not item.is_mark:
            ix0, iy0, ix1, iy1 = item.box
            assert ix1 < mark.box[0] or iy0 > mark.box[3], item.text
    untouched = np.ones(overlay.shape[:2], bool)  # away from the mask, boxes and texts
    assert result.segmentation is not None
    untouched &= result.segmentation.label_map[frame] == 0
    for box in result.detections:
        untouched[int(box.y0) - 4 : int(box.y1) + 4, int(box.x0) - 4 : int(box.x1) + 4] = False
    for item in layout:
        x0, y0, x1, y1 = item.box
        untouched[max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = False
    assert np.array_equal(overlay[untouched], source_rgb[untouched])


def test_no_overlay_when_nothing_is_on_it_and_the_job_notes_why(tmp_path: Path) -> None:
    sources = synthetic_ct_series()
    empty = make_result(sources, with_findings=False)
    produced = produce_results(empty, sources, OutputOptions(), tmp_path / "skip")
    assert ArtifactKind.OVERLAY not in [p.kind for p in produced]
    assert produced.notes == (EMPTY_OVERLAY_NOTE,) and produced.warnings == ()
    kept = produce_results(
        empty, sources, OutputOptions(skip_empty_overlay=False), tmp_path / "keep"
    )
    assert ArtifactKind.OVERLAY in [p.kind for p in kept] and kept.notes == ()
    with_findings = produce_results(make_result(sources), sources, OutputOptions(), tmp_path / "f")
    assert ArtifactKind.OVERLAY in [p.kind for p in with_findings]


def test_overlay_of_a_ct_without_a_window_uses_the_soft_tissue_default(tmp_path: Path) -> None:
    sources = [read_testdata("CT_small.dcm")]
    assert "WindowCenter" not in sources[0]
    result = dataclasses.replace(make_result(sources), findings=(), detections=())
    produced = produce_results(
        result, sources, OutputOptions(skip_empty_overlay=False), tmp_path / "out"
    )
    overlay = pydicom.dcmread(next(p.path for p in produced if p.kind == ArtifactKind.OVERLAY))
    windowed = sources[0].copy()
    windowed.WindowCenter, windowed.WindowWidth = 40, 400
    expected = display_frame(windowed)  # the file's window path, with the default's values
    pixels = overlay.pixel_array[..., 1]  # green: the heatmap is red-green, the AI mark orange
    mask = result.segmentation.label_map[0] == 0
    mark = next(a for a in annotation_layout(result, 0, (pixels.shape[1], pixels.shape[0])))
    x0, y0, x1, y1 = mark.box
    mask[max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = False
    assert np.array_equal(pixels[mask], expected[mask])


def test_the_key_frame_has_most_mask_pixels_first_on_ties_else_a_box_else_the_middle() -> None:
    """The frame the overlay shows (and the SR and PDF cite)."""
    sources = synthetic_ct_series(slices=5)
    result = make_result(sources)
    seg = result.segmentation
    assert seg is not None
    label_map = np.zeros((5, *seg.label_map.shape[1:]), np.uint8)
    label_map[1, :2, :3] = 1  # 6 pixels
    label_map[3, :3, :2] = 2  # 6 pixels, another label: a tie, the first frame wins
    label_map[4, 0, :5] = 1  # 5 pixels
    with_mask = dataclasses.replace(
        result, segmentation=dataclasses.replace(seg, label_map=label_map)
    )
    assert key_frame_index(with_mask) == 1
    label_map[3, 3, 0] = 1
    assert key_frame_index(with_mask) == 3
    empty = dataclasses.replace(seg, label_map=np.zeros_like(label_map))
    no_mask = dataclasses.replace(result, segmentation=empty, detections=())
    assert key_frame_index(no_mask) == len(result.source_frames) // 2
    if result.detections:
        boxed = dataclasses.replace(no_mask, detections=result.detections)
        assert key_frame_index(boxed) == result.detections[0].frame_index
