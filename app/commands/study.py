"""CLI: ``pacsnode study complete UID``, ``pacsnode study list``, ``pacsnode route --study UID``."""

from __future__ import annotations

import argparse

from core.config import Settings
from node.db.engine import open_database
from node.db.orm import utcnow
from node.db.repositories import studies
from node.grouping.completion import force_complete
from node.grouping.routing import explain_routes
from pipelines.spec import load_pipeline_configs


def complete_study_command(settings: Settings, args: argparse.Namespace) -> int:
    db = open_database(settings)
    with db.write() as session:
        found = force_complete(session, args.study_uid, "forced from the command line", utcnow())
    db.dispose()
    if not found:
        print(f"pacsnode: no study {args.study_uid}")
        return 1
    print(f"study {args.study_uid}: completion requested; jobs start at the next sweep")
    return 0


def list_studies_command(settings: Settings, args: argparse.Namespace) -> int:
    db = open_database(settings)
    with db.read() as session:
        rows = studies.list_studies(session)
        print(f"{'STUDY INSTANCE UID':<64} {'STATE':<10} {'MOD':<8} {'INST':>5}  LAST RECEIVED")
        for st in rows:
            print(
                f"{st.study_instance_uid:<64} {st.state:<10} {st.modalities:<8} "
                f"{st.instance_count:>5}  {st.last_received_at:%Y-%m-%d %H:%M:%S}"
            )
    db.dispose()
    return 0


def route_command(settings: Settings, args: argparse.Namespace) -> int:
    db = open_database(settings)
    with db.read() as session:
        facts = studies.study_facts(session, args.study_uid)
    db.dispose()
    if facts is None:
        print(f"pacsnode: no study {args.study_uid}")
        return 1
    decision = explain_routes(settings, load_pipeline_configs(settings.pipelines_dir), facts)
    print(f"study {args.study_uid} ({', '.join(sorted({s.modality for s in facts.series}))})")
    print(decision.explain())
    return 0
