"""Explanation and anomaly maps in the overlay series (issue 20): each map is a further image of
the overlay series, with the map in colour where it is high, the mask's outline and finding IDs
still on it, a caption saying what it is, and UIDs that a retry gives again."""

from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from scipy import ndimage

from core.domain import ArtifactKind
from node.results.maps import anomaly_display_values
from node.results.overlay import annotation_layout, key_frame_index, source_frame_pixels
from node.results.produce import EMPTY_OVERLAY_NOTE, OutputOptions, produce_results
from pipelines.contract import PipelineResult
from tests.node.results.conftest import load_sources
from tests.node.results.factories import make_result
from tests.node.results.test_anomaly_results import _with_anomaly
from tests.node.results.test_conformance import _need


def _overlays(result: PipelineResult, sources: list[Dataset], out: Path) -> dict[str, Dataset]:
    produced = produce_results(result, sources, OutputOptions(), out)
    assert produced.warnings == ()
    return {
        p.path.stem: pydicom.dcmread(p.path) for p in produced if p.kind == ArtifactKind.OVERLAY
    }


def _source_rgb(sources: list[Dataset], frame: int) -> np.ndarray:
    shown = source_frame_pixels(sources, frame).astype(np.int16)
    return shown if shown.ndim == 3 else np.repeat(shown[:, :, None], 3, axis=2)


def _caption_bar(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the bottom fifth (the caption's place) is jet blue and where it is jet red."""
    box = pixels[pixels.shape[0] - pixels.shape[0] // 5 :].astype(np.int16)
    bluish = (box[..., 2] > 200) & (box[..., 0] < 80) & (box[..., 1] < 80)
    reddish = (box[..., 0] > 200) & (box[..., 2] < 80) & (box[..., 1] < 80)
    return bluish, reddish


@pytest.mark.parametrize("kind", ["ct-small", "cr-monochrome1"])
def test_each_map_is_an_image_of_the_overlay_series_coloured_where_it_is_high(
    tmp_path: Path, kind: str
) -> None:
    sources = load_sources(kind)
    result = _with_anomaly(make_result(sources, explain=True), 12.5)
    overlays = _overlays(result, sources, tmp_path)
    assert sorted(overlays) == ["overlay", "overlay-anomaly", "overlay-explanation"]
    main, explained, anomaly = (
        overlays[k] for k in ("overlay", "overlay-explanation", "overlay-anomaly")
    )
    assert (main.InstanceNumber, explained.InstanceNumber, anomaly.InstanceNumber) == (1, 2, 3)
    assert {d.SeriesInstanceUID for d in overlays.values()} == {main.SeriesInstanceUID}
    assert len({d.SOPInstanceUID for d in overlays.values()}) == 3
    assert all(d.BurnedInAnnotation == "YES" for d in overlays.values())
    assert "Grad-CAM for abnormal" in explained.ImageComments
    assert "anomaly map" in anomaly.ImageComments

    frame = key_frame_index(result)
    assert result.explanation is not None and result.segmentation is not None
    values = result.explanation.maps[frame]
    source = _source_rgb(sources, frame)
    pixels = explained.pixel_array.astype(np.int16)
    rows, cols = values.shape
    mask = result.segmentation.label_map[frame] > 0
    clear = np.zeros(values.shape, bool)  # away from the caption box and the texts
    clear[: rows - rows // 5, :] = True
    for item in annotation_layout(result, frame, (cols, rows)):
        x0, y0, x1, y1 = item.box
        clear[max(y0 - 3, 0) : y1 + 4, max(x0 - 3, 0) : x1 + 4] = False
    away = clear & ~ndimage.binary_dilation(mask, iterations=3)  # and from outlines and boxes
    for det in result.detections:
        away[int(det.y0) - 4 : int(det.y1) + 4, int(det.x0) - 4 : int(det.x1) + 4] = False
    hot = (values > 0.85) & clear & ndimage.binary_erosion(mask, iterations=3)  # inside the rim
    cold = (values < 0.01) & away
    assert hot.sum() > 20 and cold.sum() > 20
    # jet red where the map is high: the grey source turns red (red well above blue)
    assert (source[hot][:, 0] == source[hot][:, 2]).all()
    assert (pixels[hot][:, 0] - pixels[hot][:, 2]).mean() > 100
    assert np.abs(pixels[cold] - source[cold]).max() <= 2  # no tint where the map is ~0
    # the mask is not hidden: its rim is drawn white over the map
    rim = mask & ~ndimage.binary_erosion(mask) & clear
    assert (pixels[rim] == 255).all(axis=-1).mean() > 0.7
    # the caption: white text over a blue (low, left) -> red (high, right) colour bar
    bluish, reddish = _caption_bar(pixels)
    assert bluish.sum() > 4 and reddish.sum() > 4
    assert np.nonzero(bluish)[1].mean() < np.nonzero(reddish)[1].mean()
    caption = pixels[rows - rows // 5 :]
    assert (caption == 255).all(axis=-1).sum() > 10
    assert not any(part.any() for part in _caption_bar(main.pixel_array))  # the overlay has none


def test_anomaly_image_is_red_at_the_threshold_and_on_its_highest_frame(tmp_path: Path) -> None:
    sources = load_sources("synthetic-ct")
    result = _with_anomaly(make_result(sources), 12.5)
    assert result.anomaly is not None and result.anomaly.map is not None
    scores = (1.0, 3.0, 12.5, 2.0)
    result = dataclasses.replace(
        result, anomaly=dataclasses.replace(result.anomaly, frame_scores=scores)
    )
    anomaly = _overlays(result, sources, tmp_path)["overlay-anomaly"]
    cited = anomaly.SourceImageSequence[0].ReferencedSOPInstanceUID
    assert cited == sources[2].SOPInstanceUID  # the frame the study's score comes from
    values = anomaly_display_values(result.anomaly.map, result.anomaly.threshold)[2]
    above = result.anomaly.map[2] >= result.anomaly.threshold
    assert above.any() and np.all(values[above] == 1.0) and values.min() >= 0.0


def test_retry_gives_the_same_map_images_and_a_map_without_overlay_content_is_kept(
    tmp_path: Path,
) -> None:
    sources = load_sources("cr-monochrome1")
    result = make_result(sources, with_findings=False, explain=True)  # classification only
    first = produce_results(result, sources, OutputOptions(), tmp_path / "a")
    again = produce_results(result, sources, OutputOptions(), tmp_path / "b")
    overlays = [p for p in first if p.kind == ArtifactKind.OVERLAY]
    assert [p.path.name for p in overlays] == ["overlay-explanation.dcm"]
    assert first.notes == (EMPTY_OVERLAY_NOTE,)  # the overlay itself had nothing on it
    assert [p.sop_instance_uid for p in first] == [p.sop_instance_uid for p in again]
    assert overlays[0].path.read_bytes() == (tmp_path / "b" / overlays[0].path.name).read_bytes()
    off = produce_results(result, sources, OutputOptions(overlay=False), tmp_path / "off")
    assert ArtifactKind.OVERLAY not in [p.kind for p in off]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ct-small", "cr-monochrome1", "synthetic-ct"])
def test_map_images_pass_dciodvfy(tmp_path: Path, kind: str) -> None:
    _need("dciodvfy")
    sources = load_sources(kind)
    result = _with_anomaly(make_result(sources, explain=True), 12.5)
    produced = produce_results(result, sources, OutputOptions(), tmp_path)
    maps = [p for p in produced if p.kind == ArtifactKind.OVERLAY and "-" in p.path.stem]
    assert len(maps) == 2
    for obj in maps:
        run = subprocess.run(["dciodvfy", str(obj.path)], capture_output=True, text=True)
        errors = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.startswith("Error")]
        assert errors == [], f"{obj.path.name}: {errors}"
