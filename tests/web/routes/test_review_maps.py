"""The review page's anomaly map toggle, enhancement quality figures and denoised view (issue 20)."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pydicom
from PIL import Image

from node.db.orm import Artifact
from node.results.enhanced import build_enhanced
from node.results.store import load_result, save_result
from pipelines.contract import AnomalyOutput, EnhancementOutput
from tests.web.conftest import Console
from tests.web.processed import LESION_SLICES, MR_SERIES, ProcessedStudy
from tests.web.routes.test_review_viewer import _touch_result


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_anomaly_map_toggle_and_png(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    frames = len(result.source_frames)
    without_map = AnomalyOutput(12.5, 9.0, 95.0, (12.5,) * frames)
    save_result(replace(result, anomaly=without_map), directory)
    _touch_result(console, study.job_id)
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="anomaly"' in page and 'id="toggle-anomaly"' not in page  # a score, no map
    none = client.get(f"/review/{study.job_id}/anomaly/{LESION_SLICES[1]}.png")
    assert none.status_code == 404 and "no anomaly map" in none.text

    assert result.segmentation is not None
    rows, cols = result.segmentation.label_map.shape[1:]
    anomaly_map = np.full((frames, rows, cols), 2.0, np.float32)  # normal level, min 2
    anomaly_map[LESION_SLICES[1], : rows // 4, : cols // 4] = 12.5  # above the threshold 9
    save_result(replace(result, anomaly=replace(without_map, map=anomaly_map)), directory)
    _touch_result(console, study.job_id)
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="toggle-anomaly"' in page and 'id="anomaly-image"' in page
    assert 'id="opacity-slider"' in page
    assert "red at or above the threshold 9" in page
    response = client.get(f"/review/{study.job_id}/anomaly/{LESION_SLICES[1]}.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    shown = _png(response.content)
    assert shown.shape == (rows, cols, 4)
    hot = shown[: rows // 4, : cols // 4]
    assert (hot[..., 3] == 255).all() and (hot[..., 0] > 100).all() and (hot[..., 2] < 50).all()
    assert (shown[rows // 2 :, cols // 2 :, 3] == 0).all()  # the normal level: transparent
    other = _png(client.get(f"/review/{study.job_id}/anomaly/0.png").content)
    assert (other[..., 3] == 0).all()


def test_enhancement_figures_are_shown(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    page = console.login("viewer1").get(f"/review/{study.job_id}").text
    assert 'id="enhancement"' not in page and 'id="toggle-denoised"' not in page
    enhancement = EnhancementOutput(None, 31.2, 9.8, ("demo-denoise-dncnn",))
    save_result(replace(result, enhancement=enhancement), directory)
    _touch_result(console, study.job_id)
    page = console.login("viewer1").get(f"/review/{study.job_id}").text
    assert 'id="enhancement"' in page
    assert "31.2 → 9.8" in page and "(-69 %)" in page and "demo-denoise-dncnn" in page
    # PSNR/SSIM: the denoiser card's evaluation, beside the noisy input's
    assert 'id="denoiser-quality"' in page
    assert "37.37" in page and "0.926" in page and "25.00 / 0.426" in page


def add_denoised_copy(console: Console, study: ProcessedStudy, index: int) -> np.ndarray:
    """An enhancement artifact for shown frame ``index`` only: the source with its left half
    blanked (written by the real derived-series builder); returns the sources' pixels."""
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    sources = sorted(
        (pydicom.dcmread(p) for p in MR_SERIES.glob("*.dcm")), key=lambda d: int(d.InstanceNumber)
    )
    assert [str(d.SOPInstanceUID) for d in sources] == [
        f.sop_instance_uid for f in result.source_frames
    ]
    image = np.stack([d.pixel_array.astype(np.float32) for d in sources])
    image[:, :, : image.shape[2] // 2] = 0.0
    denoised = replace(result, enhancement=EnhancementOutput(image, 30.0, 10.0, ("demo",)))
    with console.db.write() as session:
        for number, ds in enumerate(build_enhanced(denoised, sources)):
            if number != index:
                continue  # one denoised image is enough, and the others say 404
            path = directory / f"enhanced-{number + 1:04d}.dcm"
            ds.save_as(path, enforce_file_format=True)
            session.add(
                Artifact(
                    job_pk=study.job_id,
                    kind="enhanced",
                    sop_class_uid=str(ds.SOPClassUID),
                    sop_instance_uid=str(ds.SOPInstanceUID),
                    series_instance_uid=str(ds.SeriesInstanceUID),
                    path=str(path.relative_to(console.settings.data_dir)),
                    size_bytes=path.stat().st_size,
                    validated=True,
                )
            )
    return image


def test_denoised_copy_is_viewable_instead_of_the_original(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    client = console.login("viewer1")
    index = LESION_SLICES[1]
    image = add_denoised_copy(console, study, index)
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="toggle-denoised"' in page
    original = client.get(f"/review/{study.job_id}/frames/{index}.png")
    copy = client.get(f"/review/{study.job_id}/denoised/{index}.png")
    assert copy.status_code == 200 and "X-Window" in copy.headers
    left = _png(copy.content)[:, : image.shape[2] // 2]
    assert left.max() < _png(original.content)[:, : image.shape[2] // 2].max()
    assert len(np.unique(left)) == 1  # the blanked half
    missing = client.get(f"/review/{study.job_id}/denoised/{index + 1}.png")
    assert missing.status_code == 404 and "no denoised copy" in missing.text
