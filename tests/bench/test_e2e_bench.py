"""bench/e2e.py: the issue-21 targets, and the job's split into stages read from its log."""

from __future__ import annotations

from tests.bench.test_ingest_bench import _load

JOB_LOG = """2026-12-06T04:50:00 attempt 1 by w1
input: 1 series, 100 files
pipeline demo-3d v1.0: 3.21 s
  model demo-seg3d-unet v1 on cpu (asked cpu) 0.80 s
result saved for review in 0.31 s
results: seg, overlay, pdf, sr in 0.88 s
done in 4.52 s"""


def test_targets_are_the_issue_21_ones() -> None:
    e2e = _load("e2e")
    assert e2e.TARGETS_S == {"cr": 1.0, "ct": 8.0}


def test_job_stages_sum_each_stage_over_the_studys_jobs() -> None:
    e2e = _load("e2e")
    assert e2e.job_stages([JOB_LOG]) == "pipeline 3.21 s, save 0.31 s, results 0.88 s"
    assert e2e.job_stages([JOB_LOG, JOB_LOG]) == "pipeline 6.42 s, save 0.62 s, results 1.76 s"
    assert e2e.job_stages(["attempt 1 by w1"]) == ""
