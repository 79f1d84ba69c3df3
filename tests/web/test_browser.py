"""End to end in Debian's headless chromium: log in, dashboard, study, review, approve, delivered.

Screenshots land in ``tests/_artifacts/`` (gitignored) for a human look. The processed study is the
real MR series with a real SEG (``tests/web/processed.py``); approval releases its held delivery and
the real dispatcher copies the SEG to the folder destination.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from node.dispatch.dispatcher import Dispatcher
from tests.conftest import PROJECT_ROOT, free_port
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import ProcessedStudy

pytestmark = [pytest.mark.browser, pytest.mark.slow]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = PROJECT_ROOT / "tests" / "_artifacts"


@pytest.fixture
def server(
    processed: tuple[Console, ProcessedStudy],
) -> Iterator[tuple[str, Console, ProcessedStudy]]:
    console, study = processed
    port = free_port()
    config = uvicorn.Config(console.app, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert uv.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{port}", console, study
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium / chromium-driver not installed")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver: object, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"web_{name}.png"))  # type: ignore[attr-defined]


def test_review_and_approve_in_a_real_browser(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, console, study = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    driver.get(base + "/")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("radiologist1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    _shot(driver, "01_login")
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "counts")))
    assert driver.find_element(By.ID, "reviews-pending").text == "1"  # type: ignore[attr-defined]
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart")) == 5  # type: ignore[attr-defined]
    _shot(driver, "02_dashboard")

    driver.find_element(By.LINK_TEXT, "Studies").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "tr.study-row a"))).click()
    wait.until(ec.presence_of_element_located((By.ID, f"review-{study.job_id}")))
    _shot(driver, "03_study")
    driver.find_element(By.ID, f"review-{study.job_id}").click()  # type: ignore[attr-defined]

    mask = wait.until(ec.presence_of_element_located((By.ID, "mask-image")))
    wait.until(
        lambda d: (
            d.execute_script("return document.getElementById('frame-image').naturalWidth") == 256
        )
    )
    opacity = driver.find_element(By.ID, "opacity-slider")  # type: ignore[attr-defined]
    for _ in range(30):
        opacity.send_keys(Keys.ARROW_RIGHT)
    assert driver.find_element(By.ID, "opacity-value").text == "80"  # type: ignore[attr-defined]
    assert float(mask.value_of_css_property("opacity")) == pytest.approx(0.8)
    frame = driver.find_element(By.ID, "frame-slider")  # type: ignore[attr-defined]
    start = int(frame.get_attribute("value"))
    frame.send_keys(Keys.ARROW_RIGHT)
    assert driver.find_element(By.ID, "frame-number").text == str(start + 2)  # type: ignore[attr-defined]
    wait.until(
        lambda d: d.execute_script(
            "var i=document.getElementById('frame-image');return i.complete&&i.naturalWidth==256"
        )
    )
    _shot(driver, "04_review")

    driver.find_element(By.ID, "approve").click()  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "review-state"), "approved"))
    assert "pending" in driver.find_element(By.ID, "deliveries").text  # type: ignore[attr-defined]
    assert Dispatcher(console.settings, console.db).run_once() == 1
    driver.get(f"{base}/studies/{study.study_uid}")  # type: ignore[attr-defined]
    delivery = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "span.delivery")))
    assert delivery.text == "archive: delivered"
    _shot(driver, "05_delivered")
    assert shutil.disk_usage(ARTIFACTS).free > 0


def test_error_page_back_link_works_under_the_csp(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    """The console's CSP forbids inline script and ``javascript:`` URLs; Back still goes back."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, _ = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    driver.get(base + "/login")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("viewer1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "counts")))
    driver.get(base + "/studies?sort=patient")  # type: ignore[attr-defined]
    driver.get(base + "/studies/not-a-study")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "error-detail")))
    _shot(driver, "06_error_page")
    driver.find_element(By.ID, "back-link").click()  # type: ignore[attr-defined]
    wait.until(lambda d: d.current_url == base + "/studies?sort=patient")
