"""Study-level queries: lookups, the facts completion and routing decide on, state changes."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from core.domain import SeriesFacts, StudyFacts, StudyState
from node.db.orm import Artifact, Instance, Job, Series, Study


def get_study(session: Session, study_uid: str, *, with_results: bool = False) -> Study | None:
    """The study row, or None. ``with_results`` also loads its series and its jobs' artifacts and
    deliveries in a few queries (the console's study and review pages show all of them)."""
    stmt = select(Study).where(Study.study_instance_uid == study_uid)
    if with_results:
        stmt = stmt.options(
            selectinload(Study.series),
            selectinload(Study.jobs).selectinload(Job.artifacts).selectinload(Artifact.deliveries),
        )
    return session.scalars(stmt).first()


def _facts(study: Study, first_sop_classes: dict[int, str]) -> StudyFacts:
    return StudyFacts(
        study_instance_uid=study.study_instance_uid,
        state=StudyState(study.state),
        last_received_at=study.last_received_at,
        series=tuple(
            SeriesFacts(
                series_instance_uid=s.series_instance_uid,
                modality=s.modality,
                sop_class_uid=first_sop_classes.get(s.id, ""),
                series_description=s.series_description,
                body_part_examined=s.body_part_examined,
                instance_count=s.instance_count,
            )
            for s in study.series
        ),
        study_description=study.study_description,
        calling_ae=study.calling_ae,
        called_ae=study.called_ae,
        peer_host=study.peer_host,
        complete_requested=study.complete_requested,
    )


def _first_sop_classes(session: Session, series_ids: Sequence[int]) -> dict[int, str]:
    if not series_ids:
        return {}
    rows = session.execute(
        select(Instance.series_pk, Instance.sop_class_uid)
        .where(Instance.series_pk.in_(series_ids))
        .order_by(Instance.series_pk, Instance.id)
    ).all()
    first: dict[int, str] = {}
    for series_pk, sop_class in rows:
        first.setdefault(series_pk, sop_class)
    return first


def study_facts(session: Session, study_uid: str) -> StudyFacts | None:
    study = session.scalar(
        select(Study)
        .where(Study.study_instance_uid == study_uid)
        .options(selectinload(Study.series))
    )
    if study is None:
        return None
    return _facts(study, _first_sop_classes(session, [s.id for s in study.series]))


def receiving_study_facts(session: Session) -> list[StudyFacts]:
    studies = session.scalars(
        select(Study)
        .where(Study.state == StudyState.RECEIVING.value)
        .options(selectinload(Study.series))
        .order_by(Study.last_received_at)
    ).all()
    first = _first_sop_classes(session, [s.id for st in studies for s in st.series])
    return [_facts(st, first) for st in studies]


def series_instances(session: Session, study_uid: str) -> dict[Series, list[Instance]]:
    """Every series of a study with its instances (ordered by InstanceNumber, then arrival).

    A study's series, keyed by series; the console's one-series list is
    ``instances.instances_of_series``."""
    study = get_study(session, study_uid)
    if study is None:
        return {}
    series = session.scalars(
        select(Series).where(Series.study_pk == study.id).order_by(Series.series_number, Series.id)
    ).all()
    result: dict[Series, list[Instance]] = {}
    for s in series:
        result[s] = list(
            session.scalars(
                select(Instance)
                .where(Instance.series_pk == s.id)
                .order_by(Instance.instance_number, Instance.id)
            ).all()
        )
    return result


def list_studies(session: Session, limit: int = 100) -> Sequence[Study]:
    return session.scalars(select(Study).order_by(Study.last_received_at.desc()).limit(limit)).all()
