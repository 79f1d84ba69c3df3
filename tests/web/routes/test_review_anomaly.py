"""The review page shows a result's anomaly score, threshold and decision (issue 20)."""

from __future__ import annotations

from dataclasses import replace

from node.results.store import load_result, save_result
from pipelines.contract import AnomalyOutput
from tests.web.conftest import Console
from tests.web.processed import ProcessedStudy


def test_review_page_shows_the_anomaly(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    directory = console.settings.job_results_dir(study.job_id)
    result = load_result(directory)
    anomaly = AnomalyOutput(12.25, 9.075966, 95.0, (12.25,) * len(result.source_frames))
    save_result(replace(result, anomaly=anomaly), directory)
    page = console.login("viewer1").get(f"/review/{study.job_id}")
    assert page.status_code == 200
    assert 'id="anomaly"' in page.text
    assert "12.250" in page.text and "9.076" in page.text and "95th percentile" in page.text
    assert "<b>anomalous</b>" in page.text


def test_review_page_without_anomaly_has_no_section(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    page = console.login("viewer1").get(f"/review/{study.job_id}")
    assert page.status_code == 200 and 'id="anomaly"' not in page.text
