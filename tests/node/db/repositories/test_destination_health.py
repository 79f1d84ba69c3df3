"""The destinations' health column, from the deliveries table, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Job, Study, utcnow
from node.db.repositories.deliveries import destination_health


def test_last_success_last_error_and_counts_per_destination(db: Database) -> None:
    now = utcnow()
    with db.write() as session:
        job = Job(study=Study(study_instance_uid="1.2.3"), pipeline_name="p", state="succeeded")
        artifacts = [
            Artifact(job=job, kind="seg", sop_class_uid="1.2", sop_instance_uid=f"1.2.{i}",
                     series_instance_uid="1.2.9", path=f"x{i}.dcm", size_bytes=1)
            for i in range(3)
        ]  # fmt: skip
        session.add_all([job, *artifacts])
        session.flush()
        a, b, c = (x.id for x in artifacts)
        session.add_all(
            [
                Delivery(artifact_pk=a, destination_name="pacs", state="delivered",
                         delivered_at=now - timedelta(minutes=5), last_error="timeout",
                         last_error_at=now - timedelta(minutes=9)),
                Delivery(artifact_pk=b, destination_name="pacs", state="failed",
                         last_error="association rejected", last_error_at=now - timedelta(minutes=1)),
                Delivery(artifact_pk=c, destination_name="pacs", state="pending"),
                Delivery(artifact_pk=a, destination_name="archive", state="delivered",
                         delivered_at=now),
            ]
        )  # fmt: skip
    with db.read() as session:
        health = destination_health(session)
    pacs, archive = health["pacs"], health["archive"]
    assert pacs.last_success_at == now - timedelta(minutes=5)
    assert pacs.last_error_at == now - timedelta(minutes=1)
    assert pacs.last_error == "association rejected"
    assert (pacs.failed, pacs.pending) == (1, 1)
    assert archive.last_success_at == now and archive.last_error_at is None
    assert archive.last_error == "" and (archive.failed, archive.pending) == (0, 0)
