"""OHIF in headless Chromium, on a real Orthanc holding what a test stored: the start-up and the
checks every OHIF viewer test shares (``test_ohif.py``, ``test_ohif_derived.py``).

Selenium is imported where it is used, so that importing this module does not need it; the tests
skip themselves when it, Chromium, chromedriver, Orthanc's DICOMweb plugin or the OHIF app is
missing (:func:`need_ohif`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port
from tests.orthanc.harness import DICOMWEB_PLUGIN, ORTHANC_BIN, running_orthanc
from tests.viewer.ohif import ohif_dist, serving_ohif


def need_ohif() -> Path:
    """OHIF's ``dist/``; skips the test when a tool it needs is not installed."""
    for tool in ("chromium", "chromedriver"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not installed")
    if ORTHANC_BIN is None or not DICOMWEB_PLUGIN.is_file():
        pytest.skip("Orthanc with its DICOMweb plugin not installed")
    dist = ohif_dist()
    if dist is None:
        pytest.skip("OHIF app not available (npm pack @ohif/app failed)")
    return dist


def artefacts_dir(tmp_path: Path) -> Path:
    """Where screenshots are kept: PACSNODE_VIEWER_ARTEFACTS when set, else the test's folder."""
    artefacts = Path(os.environ.get("PACSNODE_VIEWER_ARTEFACTS", tmp_path))
    artefacts.mkdir(parents=True, exist_ok=True)
    return artefacts


def chromium() -> Any:
    """Headless Chromium with software WebGL (OHIF's viewports need it) and its console kept."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

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


@contextmanager
def ohif_on_orthanc(
    dist: Path, folder: Path, files: Iterable[Path], last_shot: Path
) -> Iterator[tuple[Any, str]]:
    """A real Orthanc (DICOMweb plugin) in ``folder`` holding ``files``, OHIF served on the same
    origin and a browser: yields (driver, OHIF's URL). The browser's last screen is saved to
    ``last_shot`` however the test ends, for the reader of a failure."""
    with running_orthanc(folder, dicomweb=True) as orthanc:
        for path in files:
            stored = httpx.post(f"{orthanc.url}/instances", content=path.read_bytes(), timeout=30)
            stored.raise_for_status()
        with serving_ohif(dist, orthanc.url, free_port()) as url:
            driver = chromium()
            try:
                yield driver, url
            finally:
                driver.save_screenshot(str(last_shot))
                driver.quit()


def tour_message(message: str) -> bool:
    """OHIF's onboarding tour (Shepherd) logs errors when its steps' elements are not there yet;
    the tour is OHIF's own, not about the data shown."""
    return "advanceOn" in message or "Shepherd step" in message


def onnxruntime_start_message(message: str) -> bool:
    """OHIF 3.12 bundles onnxruntime-web for its own AI segmentation tools; when that chunk starts
    without ``document.currentScript`` (loaded asynchronously, which happens only on some runs),
    its Emscripten loader falls back to Node's ``__filename`` and logs this ReferenceError. It is
    OHIF's tooling failing to start, not about the data shown (CI failed on it once)."""
    return "ReferenceError: __filename is not defined" in message


def console_errors(driver: Any) -> list[str]:
    """The browser console's errors, but for those of OHIF's onboarding tour and of its bundled
    onnxruntime's start-up."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and not tour_message(e["message"])
        and not onnxruntime_start_message(e["message"])
    ]


def skip_tour(driver: Any) -> None:
    """Dismiss OHIF's onboarding tour, which can pop up over the study and swallow a click."""
    from selenium.webdriver.common.by import By

    for text in ("Skip all", "Confirm and hide"):
        for el in driver.find_elements(By.XPATH, f"//*[normalize-space()='{text}']"):
            with contextlib.suppress(Exception):  # a tour step already gone
                el.click()


def wait_until(check: Callable[[], Any], timeout_s: float = 30.0) -> Any:
    """``check()`` once it is truthy, polled every 0.5 s; its last (falsy) value at the timeout."""
    deadline = time.monotonic() + timeout_s
    value = check()
    while not value and time.monotonic() < deadline:
        time.sleep(0.5)
        value = check()
    return value


def open_page_until(
    driver: Any, url: str, check: Callable[[], Any], timeout_s: float = 90.0
) -> Any:
    """Open ``url`` and wait for ``check()``; a page still blank at the timeout is loaded once
    more. Under load OHIF now and then leaves the page empty after a switch of study (no text at
    all: the viewer never started), which a reload cures; a viewer that shows the page but not
    what ``check`` wants still fails."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    value = wait_until(check, timeout_s)
    if not value and not driver.find_element(By.TAG_NAME, "body").text.strip():
        driver.get(url)
        value = wait_until(check, timeout_s)
    return value
