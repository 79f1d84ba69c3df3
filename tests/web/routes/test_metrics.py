"""``/metrics``: scraped with prometheus-client's own parser while studies really arrive.

Two receivers (as two processes would be) and the console each open their own ``Database`` on the
same URL; the scrape must show the sum of what both receivers stored and answered, because every
figure is read from the database, not from a process's memory.
"""

from __future__ import annotations

from io import BytesIO

import pydicom
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from core.config import Settings
from node.db.engine import Database
from node.db.orm import Job, Study
from node.ingest.scp import start_receiver
from tests.node.ingest.helpers import make_instance
from tests.web.conftest import Console, make_console, with_web
from tests.web.processed import ProcessedStudy
from web.main import create_app

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, **headers: str) -> Samples:
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def send(port: int, calling_ae: str, datasets: list[pydicom.Dataset]) -> list[int]:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    assert assoc.is_established
    statuses = [int(assoc.send_c_store(ds).Status) for ds in datasets]
    assoc.release()
    return statuses


def _instances(n: int, study_uid: str) -> list[pydicom.Dataset]:
    return [
        pydicom.dcmread(BytesIO(make_instance(study_uid=study_uid, instance_number=i + 1)))
        for i in range(n)
    ]


def test_counters_move_as_studies_arrive_at_two_receivers(settings: Settings, db: Database) -> None:
    console = make_console(settings, db)
    admin = console.login("admin1")
    before = scrape(admin)
    first, second = Database(db.url), Database(db.url)  # two "processes" on one database
    other = settings.model_copy(update={"dicom_port": settings.dicom_port + 1})
    receivers = [start_receiver(settings, first), start_receiver(other, second)]
    try:
        study = generate_uid()
        ok_a = send(receivers[0].port, "MOD_A", _instances(3, study))
        undecodable = _instances(1, study)[0]
        del undecodable.StudyInstanceUID  # the receiver refuses it and stores nothing
        ok_b = send(receivers[1].port, "MOD_B", [*_instances(2, study), undecodable])
    finally:
        for receiver in receivers:
            receiver.stop(timeout=5)
        first.dispose()
        second.dispose()
    assert ok_a == [0, 0, 0] and ok_b[:2] == [0, 0] and ok_b[2] != 0
    after = scrape(admin)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("pacsnode_instances_stored", source="dicom", calling_ae="MOD_A") == 3
    assert moved("pacsnode_instances_stored", source="dicom", calling_ae="MOD_B") == 2
    assert moved("pacsnode_associations_total", calling_ae="MOD_A") == 1
    assert moved("pacsnode_associations_total", calling_ae="MOD_B") == 1
    assert moved("pacsnode_cstore_responses_total", status="0x0000") == 5
    assert moved("pacsnode_cstore_responses_total", status=f"0x{ok_b[2]:04X}") == 1
    assert value(after, "pacsnode_data_dir_free_bytes") > 0
    # the study's completion made jobs? whatever the planner did, the queue depth matches the rows
    with db.read() as session:
        jobs = session.query(Job).join(Study).filter(Study.study_instance_uid == study).count()
    assert sum(v for (n, _), v in after.items() if n == "pacsnode_jobs") >= jobs


def test_jobs_durations_and_deliveries(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    client = console.login("viewer1")
    samples = scrape(client)
    assert value(samples, "pacsnode_jobs", pipeline="demo-mr", state="succeeded") == 1
    assert value(samples, "pacsnode_deliveries", destination="archive", state="held") == 1
    # the fixture's job ran 1.25 s: outside the 1 s bucket, inside the 5 s one
    bucket = "pacsnode_job_duration_seconds_bucket"
    assert value(samples, bucket, pipeline="demo-mr", le="1.0") == 0
    assert value(samples, bucket, pipeline="demo-mr", le="5.0") == 1
    assert value(samples, bucket, pipeline="demo-mr", le="+Inf") == 1
    assert value(samples, "pacsnode_job_duration_seconds_sum", pipeline="demo-mr") == 1.25
    with console.db.write() as session:  # a second, slow run of the pipeline fails
        job = session.get(Job, study.job_id)
        assert job is not None
        session.add(
            Job(
                study_pk=job.study_pk,
                pipeline_name="demo-mr",
                result_version=2,
                state="failed",
                duration_s=400.0,
            )
        )
    samples = scrape(client)
    assert value(samples, "pacsnode_jobs", pipeline="demo-mr", state="failed") == 1
    assert value(samples, "pacsnode_job_duration_seconds_count", pipeline="demo-mr") == 2
    assert value(samples, bucket, pipeline="demo-mr", le="300.0") == 1
    assert value(samples, bucket, pipeline="demo-mr", le="600.0") == 2


def test_token_or_listed_address(settings: Settings, sqlite_db: Database) -> None:
    console = make_console(settings, sqlite_db)
    assert console.client().get("/metrics").status_code == 401
    local = TestClient(console.app, client=("127.0.0.1", 40000))
    assert local.get("/metrics").status_code == 401  # nothing listed: a token is needed
    opened = create_app(with_web(settings, metrics_public_from=["127.0.0.0/8"]), sqlite_db)
    local = TestClient(opened, client=("127.0.0.1", 40000))
    assert "pacsnode_jobs" in local.get("/metrics").text
    elsewhere = TestClient(opened, client=("10.1.2.3", 40000))
    assert elsewhere.get("/metrics").status_code == 401


def test_bad_listed_address_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="not an IP address"):
        with_web(settings, metrics_public_from=["prometheus.local"])
