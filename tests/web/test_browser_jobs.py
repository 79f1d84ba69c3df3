"""The jobs page in headless chromium: the queue moves on screen while a job runs, no reload."""

from __future__ import annotations

import pytest

from node.db.orm import Job, utcnow
from tests.web.conftest import PASSWORD, Console
from tests.web.processed import ProcessedStudy
from tests.web.test_browser import _shot, browser, server

__all__ = ["browser", "server"]  # the fixtures, shared with the console's other browser test
pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _set_job(console: Console, job_id: int, **fields: object) -> None:
    with console.db.write() as session:
        job = session.get(Job, job_id)
        assert job is not None
        for key, value in fields.items():
            setattr(job, key, value)


def test_jobs_page_updates_live(
    server: tuple[str, Console, ProcessedStudy], browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    base, console, study = server
    driver = browser
    wait = WebDriverWait(driver, 30)
    _set_job(console, study.job_id, state="queued", duration_s=None, lease_owner="")
    driver.get(base + "/jobs")  # type: ignore[attr-defined]
    wait.until(ec.presence_of_element_located((By.ID, "username"))).send_keys("admin1")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)  # type: ignore[attr-defined]
    driver.find_element(By.ID, "login-submit").click()  # type: ignore[attr-defined]
    row = f'tr[data-job="{study.job_id}"]'
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-state="queued"]')))
    driver.execute_script("window.notReloaded = true;")  # type: ignore[attr-defined]

    # a worker claims the job: the row turns "running" and names the worker
    _set_job(console, study.job_id, state="running", lease_owner="gpu-node:77", attempts=1,
             started_at=utcnow())  # fmt: skip
    running = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-state="running"]'))
    )
    assert "gpu-node:77" in running.text
    wait.until(lambda d: d.find_element(By.ID, "count-running").text == "1")
    _shot(driver, "jobs_running")
    # and finishes
    _set_job(console, study.job_id, state="succeeded", duration_s=4.5, finished_at=utcnow())
    done = wait.until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-state="succeeded"]'))
    )
    assert "4.5 s" in done.text
    assert driver.execute_script("return window.notReloaded === true;")  # type: ignore[attr-defined]
    assert "Updated" in driver.find_element(By.ID, "jobs-updated").text  # type: ignore[attr-defined]
    _shot(driver, "jobs_succeeded")
