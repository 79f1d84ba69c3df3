"""The review viewer's server side: the frame route's ``window`` parameter, the heat map PNG, the
findings table (key slice, outline, area %, circularity, readable units), next/previous study in
worklist order, and the "Open in viewer" link. Over the real MR series of ``tests/web/processed``."""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core.config import ConfigError, Settings
from node.db.engine import Database
from node.db.orm import Job
from node.results.store import ARRAYS_NPZ, HEATMAP_NPZ, RESULT_JSON
from tests.web.conftest import Console, csrf_of, make_console, with_archive, with_web
from tests.web.processed import LESION_SLICES, MR_SERIES, ProcessedStudy, build_processed_study
from web.main import create_app


def _png(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def _touch_result(console: Console, job_id: int) -> Path:
    """Changed result files: the console's caches key on result.json's mtime."""
    directory = console.settings.job_results_dir(job_id)
    stat = (directory / RESULT_JSON).stat()
    os.utime(directory / RESULT_JSON, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    return directory


def test_frame_window_parameter(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    url = f"/review/{study.job_id}/frames/{LESION_SLICES[1]}.png"
    plain = client.get(url)
    assert plain.status_code == 200
    assert re.fullmatch(r"-?[\d.]+,[\d.]+", plain.headers["X-Window"])  # where a drag starts
    shown = {}
    for window in ("file", "auto", "lung", "bone", "soft", "300,200", "-50.5,1000"):
        response = client.get(url, params={"window": window})
        assert response.status_code == 200, (window, response.text)
        assert response.headers["content-type"] == "image/png"
        shown[window] = _png(response.content)
    assert np.array_equal(shown["file"], _png(plain.content))
    assert client.get(url, params={"window": "300,200"}).headers["X-Window"] == "300,200"
    assert client.get(url, params={"window": "lung"}).headers["X-Window"] == "-600,1500"
    # a narrow window around the ADC values contrasts; a CT bone window on an MR is near black
    assert shown["300,200"].std() > shown["bone"].std()
    assert not np.array_equal(shown["300,200"], shown["-50.5,1000"])
    for bad in ("brain", "40,0", "nan,40", "40", "1,2,3", "40,-5", "1e9,5"):
        response = client.get(url, params={"window": bad})
        assert response.status_code == 400, bad
        assert "window must be" in response.text
    assert client.get(url, params={"window": "1" * 41}).status_code == 422  # over max_length


def test_heatmap_png_is_the_ensemble_probability(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    client = console.login("viewer1")
    page = client.get(f"/review/{study.job_id}")
    assert 'id="toggle-heatmap"' in page.text and 'id="heatmap-image"' in page.text
    response = client.get(f"/review/{study.job_id}/heatmap/{LESION_SLICES[1]}.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    heat = _png(response.content)
    assert heat.shape == (256, 256, 4)
    alpha = heat[..., 3]
    # a smooth probability, not the binary mask: many levels, wider than the lesion, peak inside
    mask = _png(client.get(f"/review/{study.job_id}/masks/{LESION_SLICES[1]}.png").content)
    assert len(np.unique(alpha)) > 20
    assert (alpha > 0).sum() > (mask[..., 3] > 0).sum()
    peak = np.unravel_index(np.argmax(alpha), alpha.shape)
    assert mask[peak][3] > 0
    colours = {tuple(c) for c in heat[alpha > 0][:, :3]}
    assert len(colours) > 20  # a colour map, not one tint
    far = _png(client.get(f"/review/{study.job_id}/heatmap/0.png").content)
    assert far.shape == (256, 256, 4) and far[..., 3].max() == 0  # nothing there: transparent
    assert client.get(f"/review/{study.job_id}/heatmap/{study.frame_count}.png").status_code == 404
    assert client.get("/review/9999/heatmap/0.png").status_code == 404

    # a result saved before heatmap.npz existed: derived from the float maps in arrays.npz
    directory = console.settings.job_results_dir(study.job_id)
    (directory / HEATMAP_NPZ).unlink()
    _touch_result(console, study.job_id)
    again = client.get(f"/review/{study.job_id}/heatmap/{LESION_SLICES[1]}.png")
    assert again.status_code == 200 and np.array_equal(_png(again.content), heat)

    # a pipeline without probabilities: no heat map offered, and the route says why
    with np.load(directory / ARRAYS_NPZ) as arrays:
        label_map = arrays["label_map"]
    np.savez_compressed(directory / ARRAYS_NPZ, label_map=label_map)
    _touch_result(console, study.job_id)
    none = client.get(f"/review/{study.job_id}/heatmap/{LESION_SLICES[1]}.png")
    assert none.status_code == 404 and "no probabilities" in none.text
    assert 'id="toggle-heatmap"' not in client.get(f"/review/{study.job_id}").text


def test_findings_table_key_slice_outline_and_measurements(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    page = console.login("viewer1").get(f"/review/{study.job_id}").text
    row = re.search(r'<tr class="finding-row"[^>]*>.*?</tr>', page, re.S)
    assert row, page
    # the largest cross-section of the lesion (slices 9 and 10 tie: the first) is its key slice
    assert 'data-key-frame="9"' in row.group(0)
    cells = re.findall(r"<td>(.*?)</td>", row.group(0), re.S)
    assert "1.20" in cells  # area % of the image
    assert "0.83" in cells  # circularity
    assert "950.0 arbitrary units" in row.group(0) and "[arb" not in page
    outline = re.search(
        r'<polygon class="finding-outline"[^>]*data-frame="(\d+)" points="([^"]+)"', page
    )
    assert outline and outline.group(1) == "9"
    points = [tuple(float(v) for v in p.split(",")) for p in outline.group(2).split()]
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    # the lesion's disc on slice 9 (radius 16.5 around row 115, column 141)
    assert (
        120 < min(xs) < 130 and 155 < max(xs) < 160 and 95 < min(ys) < 102 and 128 < max(ys) < 134
    )
    assert re.search(
        r'<text class="finding-label on-image-label"[^>]*data-frames="8 9 10 11"', page
    )
    assert re.search(r'<text class="det-label on-image-label"[^>]*>lesion 0.81</text>', page)
    assert 'value="9"' in page  # the page opens on the key slice


def test_next_and_previous_study_follow_the_worklist(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    with console.db.write() as session:
        first = session.get(Job, study.job_id)
        assert first is not None
        ids = []
        runs = (("succeeded", "pending"), ("failed", "not_required"), ("succeeded", "approved"))
        for n, (state, review) in enumerate(runs):
            job = Job(
                study_pk=first.study_pk,
                pipeline_name=f"other-{n}",
                pipeline_version="1.0",
                destinations=[],
                state=state,
                review_state=review,
                summary={"severity": "Moderate"},
            )
            session.add(job)
            session.flush()
            ids.append(job.id)
    pending2, failed, approved = ids
    client = console.login("radiologist1")
    # newest first; a failed job is not reviewable and is skipped
    page = client.get(f"/review/{pending2}").text
    assert f'id="previous-study" href="/review/{approved}"' in page
    assert f'id="next-study" href="/review/{study.job_id}"' in page
    assert f"/review/{failed}" not in page
    # the filters the reviewer came with are kept: pending only, oldest first
    page = client.get(f"/review/{study.job_id}?review=pending&sort=oldest").text
    assert f'id="next-study" href="/review/{pending2}?review=pending&amp;sort=oldest"' in page
    assert 'id="previous-study"' not in page
    token = csrf_of(client, f"/review/{study.job_id}")
    response = client.post(
        f"/review/{study.job_id}/approve?review=pending&sort=oldest", data={"csrf_token": token}
    )
    assert response.status_code == 303
    assert response.headers["location"] == f"/review/{study.job_id}?review=pending&sort=oldest"
    # approved, it left the pending list but keeps its place: "next" is still the next one
    page = client.get(response.headers["location"]).text
    assert f'id="next-study" href="/review/{pending2}?review=pending&amp;sort=oldest"' in page
    assert client.get(f"/review/{study.job_id}?review=bogus").status_code == 400


def test_open_in_viewer_link_from_the_settings(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    if not MR_SERIES.is_dir():
        pytest.skip(f"sample data missing: {MR_SERIES}")
    full = with_archive(settings, tmp_path / "archive")
    study = build_processed_study(full, sqlite_db)
    plain = make_console(full, sqlite_db).login("viewer1")
    assert "open-in-viewer" not in plain.get(f"/review/{study.job_id}").text  # off by default
    assert "open-in-viewer" not in plain.get(f"/studies/{study.study_uid}").text

    configured = with_web(full, viewer_base_url="https://ohif.example.org/")
    client = Console(create_app(configured, sqlite_db), sqlite_db, configured).login("viewer1")
    expected = f'href="https://ohif.example.org/viewer?StudyInstanceUIDs={study.study_uid}"'
    for path in (f"/review/{study.job_id}", f"/studies/{study.study_uid}"):
        page = client.get(path).text
        assert f'id="open-in-viewer" {expected}' in page, path

    with pytest.raises(ConfigError, match="viewer_base_url"):
        with_web(full, viewer_base_url="javascript:alert(1)")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        with_web(full, viewer_url_template="/viewer?patient={patient}")


def test_explanation_png_toggle_and_absence(processed: tuple[Console, ProcessedStudy]) -> None:
    """The classification's explanation map as a colour overlay, offered only when it exists."""
    from dataclasses import replace

    from node.results.store import EXPLANATION_NPZ, load_result, save_result
    from tests.node.results.factories import explanation_for

    console, study = processed
    client = console.login("viewer1")
    directory = console.settings.job_results_dir(study.job_id)
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="toggle-explanation"' not in page  # the pipeline made none
    none = client.get(f"/review/{study.job_id}/explanation/{LESION_SLICES[1]}.png")
    assert none.status_code == 404 and "no explanation" in none.text

    result = load_result(directory)
    assert result.segmentation is not None
    save_result(
        replace(result, explanation=explanation_for(result.segmentation.label_map)), directory
    )
    assert (directory / EXPLANATION_NPZ).is_file()
    _touch_result(console, study.job_id)
    page = client.get(f"/review/{study.job_id}").text
    assert 'id="toggle-explanation"' in page and 'id="explanation-image"' in page
    assert "Grad-CAM for abnormal" in page
    response = client.get(f"/review/{study.job_id}/explanation/{LESION_SLICES[1]}.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    shown = _png(response.content)
    assert shown.shape == (256, 256, 4)
    alpha = shown[..., 3]
    assert len(np.unique(alpha)) > 20  # the smooth map, in the heat map's colours
    mask = _png(client.get(f"/review/{study.job_id}/masks/{LESION_SLICES[1]}.png").content)
    ys, xs = np.nonzero(alpha == 255)  # the opaque core (map >= 0.5)
    centre = (int(round(ys.mean())), int(round(xs.mean())))
    assert mask[centre][3] > 0  # centred on the lesion it was made around
    bad = client.get(f"/review/{study.job_id}/explanation/{study.frame_count}.png")
    assert bad.status_code == 404
