"""Every console page in headless chromium, as the role that uses it, over a processed study
(issue 19): each page renders (no error page, no browser console error such as a CSP violation,
its key element present) and is saved as a screenshot.

The screenshots go to ``PACSNODE_TEST_SCREENSHOTS`` (a ``PACSNODE_TEST_`` name, which the
test settings keep; default ``tests/_artifacts/console``),
1280×800, as palette PNGs small enough to commit; the README's *Console* section shows the ones
in ``docs/screenshots/``, made with::

    PACSNODE_TEST_SCREENSHOTS=docs/screenshots .venv/bin/pytest -q tests/web/test_browser_screenshots.py
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import PROJECT_ROOT
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import ProcessedStudy
from tests.web.test_browser import browser, server

__all__ = ["browser", "server"]  # the fixtures, shared with the console's other browser tests
pytestmark = [pytest.mark.browser, pytest.mark.slow]
SIZE = (1280, 800)
MAX_BYTES = 150_000


@dataclass(frozen=True)
class Page:
    name: str  # the screenshot's file name, without .png
    role: str | None  # the user it is visited as (None: logged out)
    path: str
    ready: str  # CSS selector of the element that shows the page rendered its content
    heading: str  # text the page's <h1> starts with


def _pages(study: ProcessedStudy) -> list[Page]:
    job, uid = study.job_id, study.study_uid
    return [
        Page("login", None, "/login", "#login-submit", "Log in"),
        Page("dashboard", "radiologist1", "/", "svg.chart", "Dashboard"),
        Page("worklist", "radiologist1", "/worklist", f'tr[data-job="{job}"]', "Review worklist"),
        Page("studies", "viewer1", "/studies", "tr.study-row", "Studies"),
        Page("study", "radiologist1", f"/studies/{uid}", f"#review-{job}", ""),
        Page("review", "radiologist1", f"/review/{job}", "#findings li, #findings tr", "Review"),
        Page("upload", "radiologist1", "/studies/upload", "input[type=file]", "Upload"),
        Page("jobs", "admin1", "/jobs", f'tr[data-job="{job}"]', "Jobs"),
        Page("admin-users", "admin1", "/admin/users", "#users tr", "Users"),
        Page("admin-tokens", "admin1", "/admin/tokens", "#tokens", "API tokens"),
        Page(
            "admin-destinations",
            "admin1",
            "/admin/destinations",
            "#destination-table tr",
            "Destinations",
        ),  # fmt: skip
        Page("admin-pipelines", "admin1", "/admin/pipelines", "#cards", "Pipelines and models"),
        Page(
            "admin-routing",
            "admin1",
            f"/admin/routing?study_uid={uid}",
            "#route-explanation",
            "Routing",
        ),  # fmt: skip
        Page("audit", "admin1", "/admin/audit", "#audit tr", "Audit log"),
        Page("account", "viewer1", "/account", "input[name=current]", "viewer1"),
    ]


def _save(driver: object, folder: Path, name: str) -> Path:
    """The viewport as a 256-colour PNG: the console's flat colours survive, the file stays small."""
    png = driver.get_screenshot_as_png()  # type: ignore[attr-defined]
    image = Image.open(io.BytesIO(png)).convert("RGB")
    path = folder / f"{name}.png"
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


def _log_in(driver: object, base: str, username: str | None) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.delete_all_cookies()  # type: ignore[attr-defined]
    if username is None:
        return
    driver.get(base + "/login")  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 30)
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys(username)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "account-link")))


def test_every_console_page_renders_and_is_captured(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _console, study = server
    driver = browser
    folder = Path(
        os.environ.get("PACSNODE_TEST_SCREENSHOTS", PROJECT_ROOT / "tests/_artifacts/console")
    )
    folder.mkdir(parents=True, exist_ok=True)
    driver.set_window_size(*SIZE)  # type: ignore[attr-defined]
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")  # type: ignore[attr-defined]
    driver.set_window_size(2 * SIZE[0] - inner[0], 2 * SIZE[1] - inner[1])  # type: ignore[attr-defined]
    wait = WebDriverWait(driver, 30)
    role: object = "nobody yet"
    for page in _pages(study):
        if page.role != role:
            _log_in(driver, base, page.role)
            role = page.role
        driver.get(base + page.path)  # type: ignore[attr-defined]
        wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, page.ready)))
        assert not driver.find_elements(By.ID, "error-detail"), page  # type: ignore[attr-defined]
        heading = driver.find_element(By.TAG_NAME, "h1").text  # type: ignore[attr-defined]
        assert heading.startswith(page.heading), (page, heading)
        if page.name == "review":  # the frame and its mask overlay have loaded
            wait.until(
                lambda d: d.execute_script(
                    "return ['frame-image', 'mask-image'].every(id => {"
                    " const i = document.getElementById(id); return i.complete && i.naturalWidth; })"
                )
            )
        errors = [
            e["message"]
            for e in driver.get_log("browser")  # type: ignore[attr-defined]
            if e["level"] == "SEVERE" and "/favicon.ico " not in e["message"]
        ]  # the console has no icon; the browser asks for one anyway
        assert errors == [], (page, errors)
        path = _save(driver, folder, page.name)
        with Image.open(path) as shot:
            assert shot.size == SIZE, (page, shot.size)
        assert path.stat().st_size < MAX_BYTES, (page, path.stat().st_size)
