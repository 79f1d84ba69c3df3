"""Insert study/series/instance rows directly, for tests whose subject is what happens after ingest."""

from __future__ import annotations

from datetime import datetime

from node.db.engine import Database
from node.db.orm import Instance, Series, Study, utcnow


def add_study(
    db: Database,
    study_uid: str,
    modality: str = "CT",
    *,
    instances: int = 1,
    received_at: datetime | None = None,
    calling_ae: str = "MODALITY",
) -> None:
    at = received_at or utcnow()
    with db.write() as session:
        study = Study(
            study_instance_uid=study_uid,
            modalities=modality,
            last_received_at=at,
            first_received_at=at,
            instance_count=instances,
            calling_ae=calling_ae,
            called_ae="PACSNODE",
            patient_id="P1",
            patient_name="Doe^Jane",
        )
        session.add(study)
        session.flush()
        series = Series(
            study_pk=study.id,
            series_instance_uid=f"{study_uid}.1",
            modality=modality,
            instance_count=instances,
            last_received_at=at,
            series_number=1,
        )
        session.add(series)
        session.flush()
        for i in range(instances):
            session.add(
                Instance(
                    series_pk=series.id,
                    sop_instance_uid=f"{study_uid}.1.{i + 1}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    instance_number=i + 1,
                    path=f"spool/{study_uid}/{i + 1}.dcm",
                    size_bytes=10,
                    received_at=at,
                )
            )
