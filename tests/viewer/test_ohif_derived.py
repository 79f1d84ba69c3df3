"""OHIF v3 in headless Chromium loads issue 20's outputs: the enhancement's derived series and
the explanation's Parametric Map (required test, same harness as ``test_ohif.py``).

The real demo pipelines run on phantoms (``tests.node.results.demo_runs``): ``demo-enhance-2d``
(SR and PDF on) and ``demo-2d`` (Grad-CAM) on one CR study, the same denoiser on a CT volume. The
sources and every object the node made are stored in a real Orthanc (DICOMweb plugin) and OHIF,
served on the same origin, opens each study as a reader would (double-click a series):

- the study's series list shows the derived series and the Parametric Map (OHIF's ``PMAP``);
- the derived series opens in the viewport: the image OHIF decoded is the node's stored pixels,
  one per source instance (12 CT slices), and the canvas shows it (non-background pixels);
- the Parametric Map opens in OHIF's PMAP viewport, over its source image: OHIF 3.12 loads it as
  a volume on the CR's (values x100, its own display scaling), the values it holds are the
  node's map at the same pixels, and the canvas shows it in colour over the grey radiograph;
- the browser console has no errors.

Screenshots are kept in the test's folder (and in PACSNODE_VIEWER_ARTEFACTS when set).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from core.domain import ArtifactKind
from tests.node.results.demo_runs import DemoRun, phantom_study, run_demo
from tests.viewer.ohif_browser import (
    artefacts_dir,
    console_errors,
    need_ohif,
    ohif_on_orthanc,
    open_page_until,
    skip_tour,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

_VIEWPORT = "const vp = cornerstone.getRenderingEngines()[0].getViewports()[0];"
_SOP_OF = "const sopOf = id => id.split('/instances/')[1].split('/')[0];"

# what the viewport's canvas shows: lit pixels, and coloured ones (a grey image has none)
_CANVAS = """
    const canvas = vp.getCanvas();
    const px = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let lit = 0, coloured = 0;
    for (let i = 0; i < px.length; i += 4) {
        const hi = Math.max(px[i], px[i + 1], px[i + 2]);
        const lo = Math.min(px[i], px[i + 1], px[i + 2]);
        if (hi > 24) lit++;
        if (hi - lo > 48) coloured++;
    }
    return {lit: lit / (px.length / 4), coloured: coloured / (px.length / 4)};
"""


def _open_series(driver, label: str, opened) -> object:  # type: ignore[no-untyped-def]
    """Double-click the series whose description contains ``label``, as a reader would, once
    OHIF has laid out the study (a double-click before that is undone by its hanging
    protocol), and wait for ``opened()``; on a loaded machine a second double-click may be
    needed, as for a user."""
    ready = wait_until(lambda: driver.execute_script(
        "const e = window.cornerstone && cornerstone.getRenderingEngines()[0];"
        "const vp = e && e.getViewports()[0];"
        "return Boolean(vp && vp.getCurrentImageId && vp.getCurrentImageId());"
    ), 120)  # fmt: skip
    assert ready, f"OHIF shows no image: {driver.find_element(By.TAG_NAME, 'body').text}"
    skip_tour(driver)
    for _ in range(2):
        item = wait_until(
            lambda: driver.find_elements(By.XPATH, f"//*[contains(text(), '{label}')]")
        )
        assert item, f"no series {label!r}: {driver.find_element(By.TAG_NAME, 'body').text}"
        ActionChains(driver).double_click(item[0]).perform()
        state = wait_until(opened, 60)
        if state:
            return state
    return None


def _shown(driver) -> dict:  # type: ignore[no-untyped-def]
    """The viewport's images (SOP UIDs), the one shown and the pixels OHIF decoded for it."""
    return dict(driver.execute_script(_VIEWPORT + _SOP_OF + """
        const ids = vp.getImageIds ? vp.getImageIds() : [];
        const current = vp.getCurrentImageId ? vp.getCurrentImageId() : null;
        const image = current ? cornerstone.cache.getImage(current) : null;
        return {sops: ids.map(sopOf), current: current ? sopOf(current) : null,
                pixels: image ? Array.from(image.getPixelData()) : null};
    """))  # fmt: skip


def _canvas(driver) -> dict:  # type: ignore[no-untyped-def]
    driver.execute_script("cornerstone.getRenderingEngines().forEach(e => e.render())")
    return dict(driver.execute_script(_VIEWPORT + _CANVAS))


def _check_derived(driver, run: DemoRun, shots: Path, name: str) -> None:  # type: ignore[no-untyped-def]
    """Open the derived series: its images in the viewport, the stored pixels, a lit canvas."""
    derived = run.of_kind(ArtifactKind.ENHANCED)
    wanted = sorted(o.sop_instance_uid for o in derived)
    state = _open_series(
        driver,
        "denoised (AI)",
        lambda: (st := _shown(driver))["pixels"] is not None and sorted(st["sops"]) == wanted
        and st,
    )  # fmt: skip
    assert state, f"{name}: the derived series is not in the viewport: {_shown(driver)['sops']}"
    stored = pydicom.dcmread(
        next(o.path for o in derived if o.sop_instance_uid == state["current"])
    )
    np.testing.assert_array_equal(np.asarray(state["pixels"]), stored.pixel_array.ravel())
    canvas = wait_until(lambda: (c := _canvas(driver))["lit"] > 0.1 and c, 30)
    driver.save_screenshot(str(shots / f"ohif-{name}-derived.png"))
    assert canvas, f"{name}: the derived image is not drawn: {_canvas(driver)}"
    assert canvas["coloured"] < 0.01, canvas  # a grey image (what makes the map's colour count)


def test_derived_series_and_parametric_map_load_in_ohif(tmp_path: Path) -> None:
    dist = need_ohif()
    shots = artefacts_dir(tmp_path)
    cr = phantom_study(tmp_path / "cr", "CR")
    ct = phantom_study(tmp_path / "ct", "CT")
    reports = {"pdf": True, "sr": True}
    runs = {
        "cr": run_demo("demo-enhance-2d", cr, tmp_path / "a", outputs=reports),
        "ct": run_demo("demo-enhance-2d", ct, tmp_path / "c", modality="CT", outputs=reports),
    }
    explained = run_demo("demo-2d", cr, tmp_path / "b")
    explanation = explained.result.explanation
    assert explanation is not None and explained.of_kind(ArtifactKind.PMAP)
    files = [*cr, *ct] + [o.path for r in [*runs.values(), explained] for o in r.objects]
    last_shot = shots / "ohif-derived-last.png"
    with ohif_on_orthanc(dist, tmp_path / "orthanc", files, last_shot) as (driver, url):
        for name, run in runs.items():
            driver.get(f"{url}/viewer?StudyInstanceUIDs={run.result.study_instance_uid}")
            _check_derived(driver, run, shots, name)

        # the CR study lists the derived series and the map, as OHIF's PMAP series
        listed = [
            "CR\ndemo-enhance-2d v1.0.0 denoised (AI)",
            "PMAP\ndemo-2d v1.0.0 explanation map (AI)",
        ]
        body = open_page_until(
            driver,
            f"{url}/viewer?StudyInstanceUIDs={explained.result.study_instance_uid}",
            lambda: all(t in (b := driver.find_element(By.TAG_NAME, "body").text)
                        for t in listed) and b,
        )  # fmt: skip
        assert body, driver.find_element(By.TAG_NAME, "body").text
        pmap = _open_series(
            driver,
            "explanation map (AI)",
            lambda: driver.execute_script(_VIEWPORT + """
                const ds = services.displaySetService.getActiveDisplaySets()
                    .find(d => d.Modality === 'PMAP');
                if (!ds || !ds.isLoaded) return null;
                const volume = cornerstone.cache.getVolume(ds.displaySetInstanceUID);
                const onView = vp.getActors().map(a => a.referencedId);
                return volume && onView.includes(ds.displaySetInstanceUID) && {
                    dims: volume.dimensions, source: ds.referencedSeriesInstanceUID,
                    actors: onView, own: ds.displaySetInstanceUID,
                    under: ds.referencedVolumeId,
                    values: Array.from(volume.voxelManager.getCompleteScalarDataArray())};
            """),
        )  # fmt: skip
        driver.save_screenshot(str(shots / "ohif-pmap.png"))
        assert pmap, driver.find_element(By.TAG_NAME, "body").text
        # over its source radiograph, both in the viewport
        assert pmap["source"] == str(explained.sources[0].SeriesInstanceUID)
        assert sorted(pmap["actors"]) == sorted([pmap["own"], pmap["under"]]), pmap["actors"]
        rows, columns = explanation.maps.shape[1:]
        assert pmap["dims"] == [columns, rows, 1], pmap["dims"]
        # the node's map at the same pixels (OHIF shows the values x100)
        held = np.asarray(pmap["values"], dtype=np.float32).reshape(rows, columns) / 100
        np.testing.assert_allclose(held, explanation.maps[0], atol=1e-5)
        # drawn in colour over the grey radiograph
        canvas = wait_until(lambda: (c := _canvas(driver))["coloured"] > 0.1 and c, 30)
        driver.save_screenshot(str(shots / "ohif-pmap.png"))
        assert canvas, f"the map is not drawn in colour: {_canvas(driver)}"

        errors = console_errors(driver)
        assert errors == [], errors
