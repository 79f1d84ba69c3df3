"""OHIF v3 in headless Chromium shows the node's findings (issue 17, required test).

The node's SEG and SR for the real GE MR series are stored in a real Orthanc (DICOMweb plugin);
OHIF's prebuilt app, served on the same origin, opens the study; the SR is loaded as a reader
would (double-click its series). Asserted from the page, not from a screenshot: each finding's
measurement is drawn with its own values, navigating the SR's measurements moves from one
finding to the next, the SEG (loaded after it) lists one segment per finding named by its
tracking ID, and the browser console has no errors. Not asserted: that clicking a segment row
jumps to it (OHIF's own behaviour). Screenshots are kept in the test's
folder (and in PACSNODE_VIEWER_ARTEFACTS when set).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import httpx
import pytest

from node.results.produce import OutputOptions, produce_results
from tests.conftest import free_port
from tests.node.results.factories import MR_SERIES_DIR, make_result, mr_series
from tests.orthanc.harness import DICOMWEB_PLUGIN, ORTHANC_BIN, running_orthanc
from tests.viewer.ohif import ohif_dist, serving_ohif

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.integration]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402


def _need() -> Path:
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if ORTHANC_BIN is None or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin not installed")
    dist = ohif_dist()
    if dist is None:
        pytest.skip("OHIF app not available (npm pack @ohif/app failed)")
    return dist


def _browser():  # type: ignore[no-untyped-def]
    options = Options()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--window-size=1600,1000",
        "--disable-dev-shm-usage",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def _drawn_text(driver) -> str:  # type: ignore[no-untyped-def]
    return str(driver.execute_script(
        "return Array.from(document.querySelectorAll('svg text')).map(t => t.textContent).join('|')"
    ))  # fmt: skip


def _wait_for(driver, texts: list[str], timeout_s: float = 90.0) -> str:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    drawn = ""
    while time.monotonic() < deadline:
        drawn = _drawn_text(driver)
        if all(t in drawn for t in texts):
            return drawn
        time.sleep(1)
    raise AssertionError(f"{texts} not drawn; the page shows {drawn!r}")


def _area(finding) -> str:  # type: ignore[no-untyped-def]
    return f"Area: {finding.measurements.area_mm2:.2f} mm2"


def _next_measurement(driver, expected: str) -> None:  # type: ignore[no-untyped-def]
    """Click the SR viewport's measurement arrows (< >) until ``expected`` is drawn."""
    arrows = driver.find_elements(
        By.XPATH,
        "//div[contains(@class, 'cursor-pointer') and contains(@class, 'shrink-0')"
        " and contains(@class, 'text-highlight')]",
    )
    assert arrows, "the SR viewport has no measurement navigation"
    for arrow in reversed(arrows):  # "next" is the right-hand one
        arrow.click()
        try:
            _wait_for(driver, [expected], timeout_s=20)
            return
        except AssertionError:
            continue
    raise AssertionError(f"no measurement navigation reached {expected!r}")


def test_each_finding_is_listed_and_drawn_in_ohif(tmp_path: Path) -> None:
    dist = _need()
    artefacts = Path(os.environ.get("PACSNODE_VIEWER_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    sources = mr_series()
    result = make_result(sources)
    objects = produce_results(result, sources, OutputOptions(), tmp_path / "results")
    with running_orthanc(tmp_path / "orthanc", dicomweb=True) as orthanc:
        files = sorted(MR_SERIES_DIR.glob("*.dcm"))
        files += [o.path for o in objects if o.kind.value in ("seg", "sr")]
        for path in files:
            httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=30)
        with serving_ohif(dist, orthanc.url, free_port()) as url:
            driver = _browser()
            try:
                driver.get(f"{url}/viewer?StudyInstanceUIDs={result.study_instance_uid}")
                sr_item = None
                deadline = time.monotonic() + 120
                while sr_item is None and time.monotonic() < deadline:
                    found = driver.find_elements(By.XPATH, "//*[contains(text(), 'SR (AI)')]")
                    sr_item = found[0] if found else None
                    time.sleep(1)
                assert sr_item is not None, "the SR series is not listed"
                for label in ("Skip all", "Confirm and hide"):
                    for el in driver.find_elements(By.XPATH, f"//*[normalize-space()='{label}']"):
                        with contextlib.suppress(Exception):  # a tour step already gone
                            el.click()
                ActionChains(driver).double_click(sr_item).perform()
                # each finding's measurement is drawn with its own values, one after the other
                seen = []
                for index, finding in enumerate(result.findings):
                    drawn = _wait_for(driver, [_area(finding)])
                    seen.append(drawn)
                    driver.save_screenshot(str(artefacts / f"ohif-{finding.tracking_id}.png"))
                    if index + 1 < len(result.findings):
                        _next_measurement(driver, _area(result.findings[index + 1]))
                seg_item = driver.find_element(By.XPATH, "//*[contains(text(), 'SEG (AI)')]")
                ActionChains(driver).double_click(seg_item).perform()
                time.sleep(15)  # OHIF asks "Do you want to open this Segmentation?"
                for el in driver.find_elements(By.XPATH, "//*[normalize-space()='Yes']"):
                    with contextlib.suppress(Exception):
                        el.click()
                time.sleep(15)  # then the segmentation panel is opened
                segmentation_panel = "[data-cy*='egmentation' i], [aria-label*='egmentation' i]"
                for el in driver.find_elements(By.CSS_SELECTOR, segmentation_panel):
                    with contextlib.suppress(Exception):
                        el.click()
                # the segmentation panel lists one segment per finding, named by its tracking ID
                listed = "\n".join(
                    f"{n}\n{f.tracking_id}" for n, f in enumerate(result.findings, start=1)
                )
                deadline = time.monotonic() + 60
                body = ""
                while listed not in body and time.monotonic() < deadline:
                    time.sleep(1)
                    body = driver.find_element(By.TAG_NAME, "body").text
                driver.save_screenshot(str(artefacts / "ohif-seg.png"))
                assert listed in body, body
                volume = f"Volume: {result.findings[0].measurements.volume_mm3:.2f} mm3"
                assert volume in seen[0]  # the segment's volume: the groups of one finding merged
                errors = [
                    e["message"]
                    for e in driver.get_log("browser")
                    if e["level"] == "SEVERE" and "advanceOn" not in e["message"]
                ]
                assert errors == [], errors
            finally:
                driver.save_screenshot(str(artefacts / "ohif-last.png"))
                driver.quit()
