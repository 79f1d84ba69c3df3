"""The worklist in headless chromium: filter, open the review, and the badge moving live; plus
screenshots of the pages issue 19 added (worklist, study actions, users, audit export)."""

from __future__ import annotations

import pytest

from node.db.orm import Job
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import ProcessedStudy
from tests.web.test_browser import _shot, browser, server

__all__ = ["browser", "server"]  # the fixtures, shared with the console's other browser tests
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_worklist_filter_review_and_live_badge(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base, console, study = server
    driver = browser
    # the rows are swapped in by the filter's request: a check that reads the old element as it
    # goes ("Node with given id does not belong to the document") tries again, as for stale ones
    wait = WebDriverWait(
        driver, 30, ignored_exceptions=(StaleElementReferenceException, WebDriverException)
    )
    driver.get(base + "/")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("admin1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    badge = wait.until(ec.presence_of_element_located((By.ID, "review-badge")))
    assert badge.text == "1"
    driver.find_element(By.ID, "awaiting-link").click()  # type: ignore[attr-defined]
    row = f'tr[data-job="{study.job_id}"]'
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    Select(driver.find_element(By.ID, "filter-severity")).select_by_value("High")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#worklist-filter button").click()  # type: ignore[attr-defined]
    wait.until(ec.text_to_be_present_in_element((By.ID, "worklist-rows"), "Nothing matches"))
    Select(driver.find_element(By.ID, "filter-severity")).select_by_value("Moderate")  # type: ignore[attr-defined]
    driver.find_element(By.CSS_SELECTOR, "#worklist-filter button").click()  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    _shot(driver, "worklist")
    driver.execute_script("window.notReloaded = true;")  # type: ignore[attr-defined]
    with console.db.write() as session:  # another radiologist approves meanwhile
        job = session.get(Job, study.job_id)
        assert job is not None
        job.review_state = "approved"
    # the list shows what awaits review: the approved study leaves it, and the badge drops
    wait.until(ec.text_to_be_present_in_element((By.ID, "worklist-rows"), "Nothing matches"))
    wait.until(lambda d: d.find_element(By.ID, "review-badge").get_attribute("textContent") == "0")
    assert "zero" in driver.find_element(By.ID, "review-badge").get_attribute("class")  # type: ignore[attr-defined]
    assert driver.execute_script("return window.notReloaded === true;")  # type: ignore[attr-defined]
    driver.get(base + "/worklist")  # type: ignore[attr-defined]
    wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-review="approved"] a.button'))
    ).click()
    wait.until(ec.presence_of_element_located((By.ID, "frame-image")))
    assert f"/review/{study.job_id}" in driver.current_url  # type: ignore[attr-defined]

    driver.get(f"{base}/studies/{study.study_uid}")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "delete-study")))
    _shot(driver, "study_actions")
    driver.get(base + "/admin/users")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "users")))
    _shot(driver, "admin_users")
    driver.get(base + "/admin/audit")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "audit-csv")))
    _shot(driver, "admin_audit")
