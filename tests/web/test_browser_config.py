"""Destinations in headless chromium: edit a destination in the console and see its health.

The real dispatcher (built from the configuration file, before any edit) sends the processed
study's SEG: to the broken folder the admin typed first (the health column shows the error), then,
after the admin corrects it and the Test button says OK, to the corrected one (last success).
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from node.db.orm import Delivery, utcnow
from node.dispatch.dispatcher import Dispatcher
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import ProcessedStudy
from tests.web.test_browser import _shot, browser, server

__all__ = ["browser", "server"]  # the fixtures, shared with the console's other browser tests
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _edit_path(driver: object, wait: object, base: str, path: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.get(base + "/admin/destinations/archive/edit")  # type: ignore[attr-defined]
    field = wait.until(  # type: ignore[attr-defined]
        ec.presence_of_element_located((By.CSS_SELECTOR, "#destination-form input[name=path]"))
    )
    field.clear()
    field.send_keys(path)
    driver.find_element(By.CSS_SELECTOR, "#destination-form button[type=submit]").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "destination-table")))  # type: ignore[attr-defined]


def test_edit_a_destination_and_see_its_health(
    server: tuple[str, Console, ProcessedStudy], browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, console, _ = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    dispatcher = Dispatcher(console.settings, console.db)  # running since before the edits
    with console.db.write() as session:  # the reviewer approved: the SEG is due
        session.query(Delivery).update({"state": "pending", "next_attempt_at": utcnow()})
    driver.get(base + "/admin/destinations")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("admin1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    row = wait.until(ec.presence_of_element_located((By.ID, "dest-archive")))
    assert "file" in row.text and row.find_element(By.CLASS_NAME, "health-success").text == "—"

    # a typo: the folder cannot be written; the dispatcher uses it and fails
    _edit_path(driver, wait, base, "/proc/pacsnode-no-such-folder")
    row = driver.find_element(By.ID, "dest-archive")  # type: ignore[attr-defined]
    assert "/proc/pacsnode-no-such-folder" in row.text and "file, edited" in row.text
    dispatcher._settings._at = -float("inf")  # its next refresh is due (REFRESH_S passed)
    assert dispatcher.run_once() == 0
    driver.refresh()  # type: ignore[attr-defined]
    error = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#dest-archive .health-error"))
    )
    assert "cannot write" in error.text and "/proc/pacsnode-no-such-folder" in error.text
    assert "0 / 1" in driver.find_element(By.ID, "dest-archive").text  # type: ignore[attr-defined]
    _shot(driver, "destinations_error")

    # corrected, tested, and the retry is delivered there
    good = tmp_path / "corrected-archive"
    _edit_path(driver, wait, base, str(good))
    driver.find_element(By.CSS_SELECTOR, "#dest-archive button.test").click()  # type: ignore[attr-defined]
    ping = wait.until(ec.presence_of_element_located((By.ID, "ping-result")))
    assert ping.text.startswith("archive: OK")
    with console.db.write() as session:  # its backoff has passed
        session.query(Delivery).update({"next_attempt_at": utcnow() - timedelta(seconds=1)})
    dispatcher._settings._at = -float("inf")
    assert dispatcher.run_once() == 1
    assert len(list(good.rglob("*.dcm"))) == 1
    driver.refresh()  # type: ignore[attr-defined]
    success = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#dest-archive .health-success"))
    )
    assert success.text.startswith(utcnow().strftime("%Y-%m-%d"))
    last_error = driver.find_element(By.CSS_SELECTOR, "#dest-archive .health-error")  # type: ignore[attr-defined]
    assert "cannot write" in last_error.text  # the last error stays visible, with its time
    _shot(driver, "destinations_healthy")


def test_routing_rule_added_in_the_editor_shows_in_the_dry_run_beside_it(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, _, study = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    driver.get(f"{base}/admin/routing?study_uid={study.study_uid}")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("admin1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "routing-dry-run")))
    form = driver.find_element(By.CSS_SELECTOR, "#routing-editor form.rule-form")  # type: ignore[attr-defined]
    form.find_element(By.NAME, "name").send_keys("mr-prostate")
    form.find_element(By.NAME, "modality").send_keys("MR")
    form.find_element(By.NAME, "destinations").send_keys("archive")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait.until(ec.presence_of_element_located((By.ID, "rule-1")))
    assert "mr-prostate" in driver.find_element(By.ID, "rule-table").text  # type: ignore[attr-defined]
    driver.get(f"{base}/admin/routing?study_uid={study.study_uid}")  # type: ignore[attr-defined]
    explanation = wait.until(ec.presence_of_element_located((By.ID, "route-explanation")))
    assert "mr-prostate" in explanation.text and "archive" in explanation.text
    _shot(driver, "routing_editor")
