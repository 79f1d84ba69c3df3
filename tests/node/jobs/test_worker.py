"""The worker's job boundary: success commits artifacts + deliveries + state together; failures
are recorded on the job and retried; a worker that lost its lease cannot overwrite the outcome.

The pipeline and producer here are small stand-ins: the subject is the worker's bookkeeping (the
real pipelines and writers are tested end to end in tests/e2e)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select

from core.config import Settings
from core.domain import ArtifactKind
from node.db.engine import Database
from node.db.orm import Artifact, Instance, Job, utcnow
from node.jobs import queue
from node.jobs.creation import JobPlanner
from node.jobs.worker import NonRetryableError, Worker
from node.results.produce import EMPTY_OVERLAY_NOTE, ProducedResults, produce_results
from node.scheduler import completion_sweep
from pipelines.contract import PipelineResult, SourceFrame, StudyInput
from tests.node.jobs.rows import add_study
from tests.node.jobs.test_queue import PIPES, soon


@dataclass
class Produced:
    kind: ArtifactKind
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    size_bytes: int


@dataclass
class StubPipeline:
    name: str = "demo-3d"
    version: str = "1.2"
    config: Any = None
    fail_with: Exception | None = None
    seen: list[StudyInput] = field(default_factory=list)

    def run(self, study: StudyInput) -> PipelineResult:
        self.seen.append(study)
        if self.fail_with is not None:
            raise self.fail_with
        series = study.series[0]
        ds = pydicom.dcmread(series.files[0], stop_before_pixels=True)
        return PipelineResult(
            pipeline_name=self.name,
            pipeline_version=self.version,
            study_instance_uid=study.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            modality=series.modality,
            source_frames=(
                SourceFrame(ds.SOPClassUID, ds.SOPInstanceUID, series.series_instance_uid),
            ),
            pixel_spacing_mm=(1.0, 1.0),
            slice_thickness_mm=None,
            model_runs=(),
        )


class Pipelines:
    def __init__(self, pipeline: StubPipeline) -> None:
        self.pipeline = pipeline

    def get(self, name: str) -> StubPipeline:
        return self.pipeline


def producer(
    result: PipelineResult, sources: list[Any], options: Any, out_dir: Path
) -> ProducedResults:
    assert (
        len(sources) == 1 and sources[0].SOPInstanceUID == result.source_frames[0].sop_instance_uid
    )
    path = out_dir / "sr.dcm"
    path.write_bytes(b"not really an SR")
    return ProducedResults(
        [
            Produced(
                ArtifactKind.SR,
                path,
                "1.2.840.10008.5.1.4.1.1.88.34",
                f"{result.study_instance_uid}.99",
                "9.9",
                path.stat().st_size,
            )
        ]
    )


@pytest.fixture
def study_on_disk(settings: Settings, db: Database) -> str:
    add_study(db, "1.5", instances=1)
    with db.write() as s:
        inst = s.scalar(select(Instance))
        assert inst is not None
        src = Path(get_testdata_file("CT_small.dcm"))
        dest = settings.data_dir / inst.path
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(src.read_bytes())
        inst.sop_instance_uid = pydicom.dcmread(src, stop_before_pixels=True).SOPInstanceUID
    completion_sweep(
        settings,
        db,
        JobPlanner(settings, {"demo-3d": PIPES["demo-3d"]}),
        utcnow() + timedelta(seconds=60),
    )
    return "1.5"


def make_worker(
    settings: Settings, db: Database, pipeline: StubPipeline, planned: list[Any]
) -> Worker:
    def plan(session: Any, job: Job, destinations: Any, held: bool) -> None:
        planned.append((job.id, [a.kind for a in job.artifacts], held))

    worker = Worker(
        settings, db, Pipelines(pipeline), worker_id="w1", producer=producer, delivery_planner=plan
    )
    return worker


def run_one(worker: Worker) -> None:
    claimed = queue.claim_next(worker.db, worker.worker_id, soon(), worker.settings.jobs)
    assert claimed is not None
    worker.process(claimed)


def test_success_records_artifacts_deliveries_and_summary(
    settings: Settings, db: Database, study_on_disk: str
) -> None:
    planned: list[Any] = []
    pipeline = StubPipeline()
    run_one(make_worker(settings, db, pipeline, planned))
    assert pipeline.seen[0].series[0].files[0].exists()
    with db.read() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "succeeded", job.error
        assert job.summary["finding_count"] == 0 and "attempt 1" in job.log
        # where the job's time went: each stage with its seconds (bench/e2e.py reads them)
        for stage in (
            r"pipeline demo-3d v1\.2: [0-9.]+ s",
            r"result saved for review in [0-9.]+ s",
        ):
            assert re.search(f"^{stage}$", job.log, re.M), job.log
        assert re.search(r"^results: .* in [0-9.]+ s$", job.log, re.M), job.log
        job_id = job.id
        art = s.scalar(select(Artifact))
        assert art is not None and art.kind == "sr"
        assert art.path.startswith(f"results/job-{job_id}/")  # the job's key, not the study UID
    assert planned == [(job_id, ["sr"], False)]


def test_retryable_failure_requeues_and_keeps_the_traceback(
    settings: Settings, db: Database, study_on_disk: str
) -> None:
    run_one(make_worker(settings, db, StubPipeline(fail_with=RuntimeError("GPU fell over")), []))
    with db.read() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "queued"
        assert "GPU fell over" in job.error and "Traceback" in job.log


def test_non_retryable_failure_fails_at_once(
    settings: Settings, db: Database, study_on_disk: str
) -> None:
    run_one(
        make_worker(settings, db, StubPipeline(fail_with=NonRetryableError("no series fits")), [])
    )
    with db.read() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "failed" and job.attempts == 1


def test_worker_that_lost_its_lease_discards_its_outcome(
    settings: Settings, db: Database, study_on_disk: str
) -> None:
    planned: list[Any] = []
    worker = make_worker(settings, db, StubPipeline(), planned)
    claimed = queue.claim_next(db, "w1", soon(), settings.jobs)
    assert claimed is not None
    with db.write() as s:  # the lease expired and another worker took the job meanwhile
        job = s.get(Job, claimed.job_id)
        assert job is not None
        job.lease_owner = "w2"
    worker.process(claimed)
    with db.read() as s:
        job = s.get(Job, claimed.job_id)
        assert job is not None and job.state == "running" and job.lease_owner == "w2"
        assert s.scalar(select(Artifact)) is None
    assert planned == []


def test_optional_output_that_fails_makes_the_job_succeed_with_warnings(
    settings: Settings, db: Database, study_on_disk: str
) -> None:
    with db.read() as s:
        inst = s.scalar(select(Instance))
        assert inst is not None
        stored = settings.data_dir / inst.path
    damaged = pydicom.dcmread(stored)
    damaged.PixelData = damaged.PixelData[:100]  # undecodable: no overlay, no PDF picture
    damaged.StudyInstanceUID = study_on_disk  # the study the rows say it belongs to
    damaged.save_as(stored)
    planned: list[Any] = []
    worker = Worker(
        settings,
        db,
        Pipelines(StubPipeline()),
        worker_id="w1",
        producer=produce_results,  # the real result writers
        delivery_planner=lambda s, job, d, held: planned.append([a.kind for a in job.artifacts]),
    )
    run_one(worker)
    with db.read() as s:
        job = s.scalar(select(Job))
        assert job is not None and job.state == "succeeded", job.error
        warnings = job.summary["output_warnings"]
        assert [w.split(":")[0] for w in warnings] == ["pdf not made"]
        assert all(f"warning: {w}" in job.log for w in warnings)
        # nothing to draw (the stub finds nothing): no overlay, by design, and the job says why
        assert job.summary["output_notes"] == [EMPTY_OVERLAY_NOTE]
        assert f"note: {EMPTY_OVERLAY_NOTE}" in job.log
    assert planned == [["sr"]]  # the SR is still made and delivered
