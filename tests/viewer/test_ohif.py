"""OHIF v3 in headless Chromium shows the node's findings (issue 17, required test).

The node's SEG and SR for the real GE MR series are stored in a real Orthanc (DICOMweb plugin);
OHIF's prebuilt app, served on the same origin, opens the study; the SR is loaded as a reader
would (double-click its series). Asserted from the page and OHIF's own state (its display set,
segmentation service and cornerstone viewport), not from a screenshot:

- the SR's measurements are listed once per finding, each value once (OHIF merges a finding's
  groups by tracking UID; the SR writes each measurement in one of them), a box attached to a
  finding without values of its own;
- selecting each finding's measurement (the SR viewport's < > navigation: OHIF cannot hydrate
  this SR into its measurement panel, whose tool adapters want Cornerstone's own SR encoding)
  jumps to its key slice and draws its own values there, each once;
- the SEG (loaded after it) lists one segment per finding named by its tracking ID; clicking a
  segment row makes that finding's segment the active one and jumps from a slice without it to
  one of its own slices, where the labelmap holds it; the key slice its measurement jumped to
  shows its own segment too;
- the browser console has no errors.

Screenshots are kept in the test's folder (and in PACSNODE_VIEWER_ARTEFACTS when set).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import highdicom as hd
import pytest

from node.results.produce import OutputOptions, produce_results
from node.results.sr import FREEHAND_TRACKING_PREFIX
from pipelines.contract import Finding
from tests.node.results.factories import MR_SERIES_DIR, make_result, mr_series
from tests.viewer.ohif_browser import (
    artefacts_dir,
    console_errors,
    need_ohif,
    ohif_on_orthanc,
    skip_tour,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def _js(driver, script: str, *args: object) -> object:  # type: ignore[no-untyped-def]
    """Run ``script`` with ``cs`` (cornerstone), ``vp`` (the one viewport) and ``ss`` (OHIF's
    segmentation service) defined."""
    prelude = (
        "const cs = window.cornerstone, ct = window.cornerstoneTools;"
        "const ss = window.services.segmentationService;"
        "const vp = cs.getRenderingEngines()[0].getViewports()[0];"
        "const sopOf = id => id.split('/instances/')[1].split('/')[0];"
    )
    return driver.execute_script(prelude + script, *args)


def _render(driver) -> None:  # type: ignore[no-untyped-def]
    """Re-render the viewports. On a loaded machine OHIF can draw the image before the SR's
    annotations are added and then wait for an interaction to draw them; a user's first mouse
    move does that, here the test does."""
    driver.execute_script("window.cornerstone.getRenderingEngines().forEach(e => e.render())")


def _drawn_text(driver, uid: str | None = None) -> str:  # type: ignore[no-untyped-def]
    """The text the SVG layer draws: all of it, or the one annotation's (``uid``)."""
    where = f"g[data-annotation-uid='{uid}'] text" if uid else "svg text"
    return str(driver.execute_script(
        f"return Array.from(document.querySelectorAll(\"{where}\"))"
        ".map(t => Array.from(t.querySelectorAll('tspan')).map(s => s.textContent).join('|')"
        " || t.textContent).join('|')"
    ))  # fmt: skip


def _wait_for(driver, texts: list[str], timeout_s: float = 90.0, uid: str | None = None) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    drawn = ""
    while time.monotonic() < deadline:
        drawn = _drawn_text(driver, uid)
        if all(t in drawn for t in texts):
            return drawn
        _render(driver)
        time.sleep(1)
    raise AssertionError(f"{texts} not drawn; the page shows {drawn!r}")


def _area(finding) -> str:  # type: ignore[no-untyped-def]
    return f"Area: {finding.measurements.area_mm2:.2f} mm2"


def _listed(driver) -> list[dict]:  # type: ignore[no-untyped-def]
    """The SR display set's measurements as OHIF parsed them (what its SR viewport navigates)."""
    return list(driver.execute_script(
        "const sr = window.services.displaySetService.getActiveDisplaySets()"
        "  .find(d => d.Modality === 'SR' && d.measurements);"
        "return sr ? sr.measurements.map(m => ({uid: m.TrackingUniqueIdentifier,"
        "  id: m.TrackingIdentifier, labels: m.labels.map(l => l.label + ': ' + l.value),"
        "  sop: m.imageId.split('/instances/')[1].split('/')[0]})) : [];"
    ))  # fmt: skip


def _next_measurement(driver, expected_sop: str) -> None:  # type: ignore[no-untyped-def]
    """Click the SR viewport's "next measurement" arrow (>) once; OHIF then shows the next
    measurement's image (``expected_sop``)."""
    arrows = driver.find_elements(
        By.XPATH,
        "//div[contains(@class, 'cursor-pointer') and contains(@class, 'shrink-0')"
        " and contains(@class, 'text-highlight')]",
    )
    assert arrows, "the SR viewport has no measurement navigation"
    arrows[-1].click()  # "next" is the right-hand one
    assert wait_until(lambda: _current_sop(driver) == expected_sop), (
        f"the next measurement's image {expected_sop} is not shown: {_current_sop(driver)}"
    )


def _current_sop(driver) -> str:  # type: ignore[no-untyped-def]
    return str(_js(driver, "return sopOf(vp.getCurrentImageId());"))


def _segment_state(driver) -> dict:  # type: ignore[no-untyped-def]
    """The active segment, the image shown and the segment indices its labelmap slice holds."""
    return dict(_js(driver, """
        const seg = ss.getSegmentations()[0];
        const active = ss.getActiveSegment(vp.id);
        const lm = ct.segmentation.state.getCurrentLabelmapImageIdForViewport(
            vp.id, seg.segmentationId);
        const px = lm ? cs.cache.getImage(lm).getPixelData() : [];
        return {active: active ? active.segmentIndex : null, sop: sopOf(vp.getCurrentImageId()),
                present: Array.from(new Set(px)).filter(v => v > 0)};
    """))  # fmt: skip


def _show_image(driver, sop_uids: list[str], inside: bool) -> None:  # type: ignore[no-untyped-def]
    """Scroll the viewport to the first image whose SOP is (``inside``) or is not in ``sop_uids``."""
    _js(driver, """
        const [uids, inside] = arguments;
        const index = vp.getImageIds().findIndex(id => uids.includes(sopOf(id)) === inside);
        vp.setImageIdIndex(index);
    """, sop_uids, inside)  # fmt: skip
    deadline = time.monotonic() + 20
    while (_current_sop(driver) in sop_uids) != inside and time.monotonic() < deadline:
        time.sleep(0.5)


def _click_fresh(driver, xpath: str) -> None:  # type: ignore[no-untyped-def]
    """Click the element at ``xpath``, finding it again if OHIF re-rendered its panel between
    the lookup and the click (selenium's "stale element reference"), as a user's second look
    would."""
    for attempt in range(3):
        try:
            driver.find_element(By.XPATH, xpath).click()
            return
        except StaleElementReferenceException:
            if attempt == 2:
                raise
            time.sleep(0.2)


def _open_sr(driver, viewer_url: str) -> None:  # type: ignore[no-untyped-def]
    """Open the study in OHIF and the SR in its viewport (double-click), as a reader would."""
    driver.get(viewer_url)
    sr_item = wait_until(lambda: driver.find_elements(By.XPATH, _SR_SERIES), 120)
    assert sr_item, "the SR series is not listed"
    # OHIF's onboarding tour can pop up just after the list appears and swallow the double-click
    # (the viewport then stays on the images): dismiss it and double-click again, as a reader
    # would, until the SR viewport draws its measurements or asks to track them
    for _ in range(4):
        skip_tour(driver)
        ActionChains(driver).double_click(sr_item[0]).perform()
        if wait_until(lambda: _drawn_text(driver) or _hydrate_buttons(driver), 20):
            return
        sr_item = driver.find_elements(By.XPATH, _SR_SERIES) or sr_item


def _hydrate_buttons(driver) -> list:  # type: ignore[no-untyped-def,type-arg]
    return list(driver.find_elements(By.CSS_SELECTOR, "[data-cy='yes-hydrate-btn']"))


def _hydrate_sr(driver, viewer_url: str) -> None:  # type: ignore[no-untyped-def]
    """Answer "Yes" to OHIF's "continue tracking measurements for this study?", which OHIF asks
    when the SR's viewport opens. It asks once per SR and session: after a reader navigated the
    SR viewport the prompt is gone for good (there is no other button for SR), so the study is
    opened afresh, as a reader's next session."""
    _open_sr(driver, viewer_url)
    yes = wait_until(
        lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy='yes-hydrate-btn']"), 90
    )
    assert yes, "OHIF did not offer to track the SR's measurements"
    yes[0].click()


_SR_SERIES = "//*[contains(text(), 'SR (AI)')]"


def _open_measurements_panel(driver) -> None:  # type: ignore[no-untyped-def]
    """Show the right-hand Measurements panel (OHIF opens the segmentation panel for a SEG)."""
    if not driver.find_elements(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-panel']"):
        driver.find_element(By.CSS_SELECTOR, "[data-cy='trackedMeasurements-btn']").click()


def _panel_rows(driver, at_least: int) -> list[str]:  # type: ignore[no-untyped-def]
    """The Measurements panel's rows as the page shows them ("1\nlesion-1\n762 mm²...")."""
    _open_measurements_panel(driver)
    rows = wait_until(
        lambda: (
            len(found := [r.text for r in driver.find_elements(
                By.CSS_SELECTOR, "[data-cy='trackedMeasurements-panel'] [data-cy='data-row']"
            )]) >= at_least and found
        ),
        60,
    )  # fmt: skip
    assert rows, driver.find_element(By.TAG_NAME, "body").text
    return list(rows)


def _panel_row(driver, label: str):  # type: ignore[no-untyped-def]
    """The Measurements panel's row labelled ``label`` (its second line, after the number)."""
    rows = driver.find_elements(
        By.CSS_SELECTOR, "[data-cy='trackedMeasurements-panel'] [data-cy='data-row']"
    )
    return next((r for r in rows if r.text.split("\n")[1:2] == [label]), None)


def _tracked(driver) -> list[dict]:  # type: ignore[no-untyped-def]
    """OHIF's tracked measurements (its measurement service, what the panel lists): label,
    Cornerstone tool, the image it is on and how many outline points it has."""
    return list(_js(driver, """
        return window.services.measurementService.getMeasurements().map(m => {
            const a = ct.annotation.state.getAnnotation(m.uid);
            const image = a && a.metadata.referencedImageId;
            const line = a && a.data.contour ? a.data.contour.polyline : [];
            return {label: m.label, tool: m.toolName, sop: image ? sopOf(image) : null,
                    points: line.length};
        });
    """))  # fmt: skip


def test_each_finding_is_listed_and_drawn_in_ohif(tmp_path: Path) -> None:
    dist = need_ohif()
    artefacts = artefacts_dir(tmp_path)
    sources = mr_series()
    result = make_result(sources)
    objects = produce_results(result, sources, OutputOptions(), tmp_path / "results")
    seg_path = next(o.path for o in objects if o.kind.value == "seg")
    seg = hd.seg.segread(seg_path)
    segment_of = {
        seg.get_segment_description(n).segment_label: n for n in seg.segment_numbers
    }  # the SEG's segment per tracking ID, as the node wrote it
    frames_of = {
        f.tracking_id: [result.source_frames[i].sop_instance_uid for i in f.frame_indices]
        for f in result.findings
    }
    files = sorted(MR_SERIES_DIR.glob("*.dcm"))
    files += [o.path for o in objects if o.kind.value in ("seg", "sr")]
    last_shot = artefacts / "ohif-last.png"
    with ohif_on_orthanc(dist, tmp_path / "orthanc", files, last_shot) as (driver, url):
        viewer = f"{url}/viewer?StudyInstanceUIDs={result.study_instance_uid}"
        _open_sr(driver, viewer)
        _wait_for(driver, [_area(result.findings[0])])

        # listed: each finding once, each of its values once
        listed = _listed(driver)
        for finding in result.findings:
            own = [m for m in listed if m["uid"] == finding.tracking_uid]
            assert len(own) == 1, listed
            names = [label.split(":")[0] for label in own[0]["labels"]]
            assert len(names) == len(set(names)), own[0]["labels"]
            # the outline's Tracking Identifier names Cornerstone's tool, then the finding
            assert own[0]["id"] == f"{FREEHAND_TRACKING_PREFIX}:{finding.tracking_id}"
            assert _area(finding) in own[0]["labels"]
        finding_uids = {f.tracking_uid for f in result.findings}
        boxes = [m for m in listed if m["uid"] not in finding_uids]
        assert all(not m["labels"] for m in boxes), f"a box repeats values: {listed}"

        # selecting each finding's measurement (OHIF starts on the first, > goes to the
        # next) jumps to its key slice and draws its own values, each once
        key_sop = {}
        selected = 0
        for finding in result.findings:
            index = next(i for i, m in enumerate(listed) if m["uid"] == finding.tracking_uid)
            while selected < index:
                selected += 1
                _next_measurement(driver, listed[selected]["sop"])
            key = result.source_frames[result.key_index_of(finding)].sop_instance_uid
            assert listed[index]["sop"] == key == _current_sop(driver), finding
            own = _wait_for(driver, [_area(finding)], uid=finding.tracking_uid)
            assert own.count("Area:") == 1, own
            if finding.measurements.volume_mm3 is not None:
                assert f"Volume: {finding.measurements.volume_mm3:.2f} mm3" in own, own
            key_sop[finding.tracking_id] = key
            driver.save_screenshot(str(artefacts / f"ohif-{finding.tracking_id}.png"))

        # "Yes" to OHIF's "continue tracking measurements?": the SR is hydrated into
        # the Measurements panel, one row per finding labelled with its tracking ID
        _hydrate_sr(driver, viewer)
        rows = _panel_rows(driver, len(result.findings))
        driver.save_screenshot(str(artefacts / "ohif-measurements.png"))
        tracked = _tracked(driver)
        for finding in result.findings:
            mine = [r for r in rows if r.split("\n")[1] == finding.tracking_id]
            assert len(mine) == 1, rows
            own_tool = [m for m in tracked if m["label"] == finding.tracking_id]
            assert len(own_tool) == 1, tracked
            assert own_tool[0]["tool"] == "PlanarFreehandROI", own_tool
            assert own_tool[0]["sop"] == key_sop[finding.tracking_id], own_tool
            assert own_tool[0]["points"] >= 3, own_tool  # its outline, not a point

        seg_item = driver.find_element(By.XPATH, "//*[contains(text(), 'SEG (AI)')]")
        ActionChains(driver).double_click(seg_item).perform()
        # OHIF asks "Do you want to open this Segmentation?"
        yes = wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy='yes-hydrate-btn']"),
            60,
        )
        assert yes, "OHIF did not offer to open the segmentation"
        yes[0].click()
        panel = wait_until(
            lambda: driver.find_elements(By.CSS_SELECTOR, "[data-cy='panelSegmentation-btn']"),
            60,
        )
        with contextlib.suppress(Exception):  # already open
            panel[0].click()
        # the segmentation panel lists one segment per finding, named by its tracking ID
        listed_rows = "\n".join(
            f"{n}\n{f.tracking_id}" for n, f in enumerate(result.findings, start=1)
        )
        body = wait_until(
            lambda: listed_rows in (b := driver.find_element(By.TAG_NAME, "body").text) and b,
            60,
        )
        driver.save_screenshot(str(artefacts / "ohif-seg.png"))
        assert body, driver.find_element(By.TAG_NAME, "body").text
        assert wait_until(lambda: _js(driver, "return ss.getSegmentations().length;"))

        # clicking a segment row selects that finding's segment and jumps to its slices
        for finding in result.findings:
            number = segment_of[finding.tracking_id]
            _show_image(driver, frames_of[finding.tracking_id], inside=False)
            assert number not in _segment_state(driver)["present"]
            row_xpath = f"//span[normalize-space(text())='{finding.tracking_id}']"

            def jumped(number: int = number, finding: Finding = finding) -> object:
                st = _segment_state(driver)
                ok = st["active"] == number and st["sop"] in frames_of[finding.tracking_id]
                return ok and st

            _click_fresh(driver, row_xpath)
            # on a loaded machine OHIF can take the click before the scrolled viewport
            # settles and then not jump; a second click is what a user would do
            state = (
                wait_until(jumped, 15) or (_click_fresh(driver, row_xpath), wait_until(jumped))[1]
            )
            assert state, f"{finding.tracking_id}: {_segment_state(driver)}"
            assert number in state["present"], state
            _render(driver)
            driver.save_screenshot(str(artefacts / f"ohif-seg-{finding.tracking_id}.png"))
            # the key slice its measurement jumped to shows its own segment
            _show_image(driver, [key_sop[finding.tracking_id]], inside=True)
            shown = _segment_state(driver)
            assert shown["sop"] == key_sop[finding.tracking_id], shown
            assert number in shown["present"], shown

        # selecting each finding's row in the Measurements panel jumps to its key slice,
        # where its own segment is present
        _open_measurements_panel(driver)
        for finding in result.findings:
            number = segment_of[finding.tracking_id]
            key = key_sop[finding.tracking_id]
            _show_image(driver, [key], inside=False)
            row = wait_until(lambda f=finding: _panel_row(driver, f.tracking_id))
            assert row, f"no row {finding.tracking_id}: {_panel_rows(driver, 0)}"
            row.click()
            assert wait_until(lambda key=key: _current_sop(driver) == key), (
                f"{finding.tracking_id}: row jumped to {_current_sop(driver)}, not {key}"
            )
            shown = wait_until(
                lambda number=number: number in (st := _segment_state(driver))["present"] and st,
                20,
            )
            assert shown, f"{finding.tracking_id}: {_segment_state(driver)}"
            _render(driver)
            driver.save_screenshot(str(artefacts / f"ohif-measurement-{finding.tracking_id}.png"))

        errors = console_errors(driver)
        assert errors == [], errors
