"""Console queries on SQLite and PostgreSQL: search, paging, sorting, dashboard counts, charts."""

from __future__ import annotations

from datetime import timedelta

from node.db.engine import Database
from node.db.orm import Artifact, Delivery, Instance, Job, Series, Study, utcnow
from node.db.repositories import config_overrides, dashboard
from node.db.repositories import search as study_search


def _seed(db: Database) -> None:
    now = utcnow()
    with db.write() as session:
        for i in range(12):
            study = Study(
                study_instance_uid=f"1.2.3.{i}",
                patient_id=f"P{i}",
                patient_name=f"Name_{i:02d}%",
                accession_number=f"A{i:02d}",
                study_date=f"202402{i + 1:02d}",
                modalities="CT\\SEG" if i % 2 else "MR",
                state="processed",
                first_received_at=now - timedelta(days=i % 3),
                last_received_at=now - timedelta(hours=i),
            )
            session.add(study)
            session.flush()
            series = Series(study_pk=study.id, series_instance_uid=f"1.2.3.{i}.1", modality="CT")
            session.add(series)
            session.flush()
            session.add(
                Instance(
                    series_pk=series.id,
                    sop_instance_uid=f"1.2.3.{i}.1.1",
                    sop_class_uid="1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path="x",
                    size_bytes=1,
                )
            )
            job = Job(
                study_pk=study.id,
                pipeline_name="p",
                state="succeeded" if i < 9 else "failed",
                review_state="pending" if i == 0 else "not_required",
                duration_s=float(i),
                summary={
                    "top_class": "lesion" if i % 3 else "normal",
                    "confidence": 0.05 + i / 12,
                    "severity": ["Low", "High", None][i % 3],
                    "devices": {"m": "cpu"},
                    "processing_seconds": float(i),
                },
            )
            session.add(job)
            session.flush()
            artifact = Artifact(job_pk=job.id, kind="seg", sop_instance_uid=f"9.{i}", path="r")
            session.add(artifact)
            session.flush()
            session.add(
                Delivery(
                    artifact_pk=artifact.id,
                    destination_name="pacs",
                    state=["delivered", "held", "failed"][i % 3],
                )
            )


def test_search_filters_paging_sorting(db: Database) -> None:
    _seed(db)
    with db.read() as session:
        page = study_search.search_studies(session, study_search.StudyFilter(), page=2, per_page=5)
        assert (page.total, page.pages, len(page.items)) == (12, 3, 5)
        assert [s.study_instance_uid for s in page.items][0] == "1.2.3.5"  # newest first
        by_acc = study_search.search_studies(
            session, study_search.StudyFilter(), sort="accession", descending=False, per_page=3
        )
        assert [s.accession_number for s in by_acc.items] == ["A00", "A01", "A02"]
        flt = study_search.StudyFilter(patient="name_1", modality="seg")
        assert {s.patient_name for s in study_search.search_studies(session, flt).items} == {
            "Name_11%"
        }
        assert (
            study_search.search_studies(session, study_search.StudyFilter(patient="%")).total == 12
        )
        assert (
            study_search.search_studies(session, study_search.StudyFilter(patient="0%")).total == 2
        )
        assert (
            study_search.search_studies(session, study_search.StudyFilter(patient="e_1")).total == 2
        )
        dates = study_search.StudyFilter(date_from="20240203", date_to="20240205")
        assert study_search.search_studies(session, dates).total == 3
        assert (
            study_search.search_studies(session, study_search.StudyFilter(status="failed")).total
            == 3
        )
        assert (
            study_search.search_studies(session, study_search.StudyFilter(status="pending")).total
            == 1
        )


def test_dashboard_counts_and_charts(db: Database) -> None:
    _seed(db)
    with db.read() as session:
        counts = dashboard.dashboard_counts(session)
        assert (counts.studies_total, counts.instances_total) == (12, 12)
        assert counts.studies_today == 4 and counts.jobs_failed == 3 and counts.jobs_succeeded == 9
        assert counts.reviews_pending == 1 and counts.median_processing_s == 4.0
        assert counts.destinations == [dashboard.DestinationCounts("pacs", 4, 4, 4, 0)]
        charts = dashboard.chart_data(session, days=3)
        assert sum(n for _, n in charts.studies_per_day) == 12 and len(charts.studies_per_day) == 3
        assert dict(charts.class_distribution) == {"lesion": 6, "normal": 3}
        assert sum(n for _, n in charts.confidence_histogram) == 9
        assert dict(charts.severity_distribution) == {"None": 3, "Low": 3, "Moderate": 0, "High": 3}
        assert charts.devices == {"m": "cpu"}


def test_overrides_roundtrip(db: Database) -> None:
    with db.write() as session:
        config_overrides.set_override(session, "pipeline:x", {"enabled": False}, "admin")
    with db.write() as session:
        config_overrides.set_override(session, "pipeline:x", {"enabled": True}, "admin2")
        config_overrides.set_override(session, "other", {}, "admin")
    with db.read() as session:
        assert config_overrides.list_overrides(session, "pipeline:") == {
            "pipeline:x": {"enabled": True}
        }
    with db.write() as session:
        config_overrides.delete_override(session, "pipeline:x")
    with db.read() as session:
        assert config_overrides.get_override(session, "pipeline:x") is None


def test_effective_settings_apply_console_switches(db: Database, settings) -> None:  # type: ignore[no-untyped-def]
    from core.config import load_settings

    base = load_settings(
        None,
        **{
            **settings.model_dump(exclude={"destinations"}),
            "destinations": [
                {"name": "pacs", "kind": "folder", "path": "/tmp/x"},
                {"name": "other", "kind": "folder", "path": "/tmp/y"},
            ],
        },
    )
    with db.write() as session:
        config_overrides.set_override(session, "destination:pacs", {"enabled": False}, "admin")
        config_overrides.set_override(
            session, "allowed_callers", {"entries": [{"ae_title": "CT1", "host": None}]}, "admin"
        )
    with db.read() as session:
        effective = config_overrides.effective_settings(session, base)
    assert [d.enabled for d in effective.destinations] == [False, True]
    assert [(c.ae_title, c.host) for c in effective.allowed_callers] == [("CT1", None)]
    assert base.destinations[0].enabled  # the file settings are untouched
