"""The three required end-to-end paths, with real processes on free loopback ports:

1. storescu -> pacsnode -> results C-STOREd into Orthanc;
2. storescu -> Orthanc (Python plugin) -> hook -> pacsnode -> results uploaded into Orthanc (REST);
3. Orthanc down while results are due -> delivered after it comes back, exactly once.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import select

from node.db.engine import Database
from node.db.orm import AuditEvent, Delivery, Study
from tests.conftest import free_port
from tests.e2e.conftest import (
    assert_results_in_orthanc,
    json_env,
    require_whole_chain,
    result_instances,
    storescu,
    study_uid_of,
    wait_for_results,
    write_cr_phantom,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]
RESULT_TIMEOUT_S = 240


def sop_uids(files: list[Path]) -> set[str]:
    return {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}


def dicom_route(orthanc: Any) -> dict[str, str]:
    return {
        "PACSNODE_DESTINATIONS": json_env([{"name": "orthanc", "kind": "dicom", "ae_title": orthanc.aet,
                                            "host": "127.0.0.1", "port": orthanc.dicom_port}]),
        "PACSNODE_ROUTING": json_env([{"name": "radiographs", "when": {"modality": ["CR", "DX"]}, "pipelines": ["demo-2d"],
                 "destinations": ["orthanc"]},
                {"name": "volumes", "when": {"modality": ["CT", "MR"]}, "pipelines": ["demo-3d"],
                 "destinations": ["orthanc"]}]),
    }  # fmt: skip


def test_storescu_to_node_results_cstored_into_orthanc(
    tmp_path: Path, node_factory: Any, orthanc_factory: Any
) -> None:
    require_whole_chain()
    orthanc = orthanc_factory()
    node = node_factory(dicom_route(orthanc))
    files = write_cr_phantom(tmp_path / "cr")
    storescu(node.dicom_port, "PACSNODE", files)
    results = wait_for_results(orthanc, study_uid_of(files), sop_uids(files), RESULT_TIMEOUT_S)
    assert_results_in_orthanc(results, tmp_path)


def test_orthanc_plugin_hook_to_node_results_uploaded_back(
    tmp_path: Path, node_factory: Any, orthanc_factory: Any
) -> None:
    require_whole_chain()
    web_port_holder = free_port()  # the node's web port must be known before Orthanc starts
    orthanc = orthanc_factory(hook_port=web_port_holder)
    node = node_factory({
        "PACSNODE_WEB_PORT": str(web_port_holder),
        "PACSNODE_HOOK_SECRET": "e2e-hook-secret",
        "PACSNODE_ORTHANC_SOURCES": json_env([{"url": orthanc.url}]),
        "PACSNODE_DESTINATIONS": json_env([{"name": "orthanc-rest", "kind": "orthanc", "url": orthanc.url}]),
        "PACSNODE_ROUTING": json_env([{"name": "radiographs", "when": {"modality": ["CR", "DX"]}, "pipelines": ["demo-2d"],
                 "destinations": ["orthanc-rest"]},
                {"name": "volumes", "when": {"modality": ["CT", "MR"]}, "pipelines": ["demo-3d"],
                 "destinations": ["orthanc-rest"]}]),
    })  # fmt: skip
    assert node.web_port == web_port_holder
    files = write_cr_phantom(tmp_path / "cr", seed=5)
    storescu(orthanc.dicom_port, orthanc.aet, files)  # into Orthanc, not into the node
    results = wait_for_results(orthanc, study_uid_of(files), sop_uids(files), RESULT_TIMEOUT_S)
    assert_results_in_orthanc(results, tmp_path)
    db = Database(node.env["PACSNODE_DATABASE_URL"])
    try:  # the hook, not a C-STORE or polling, fed the node
        with db.read() as session:
            queued = session.scalars(
                select(AuditEvent.detail).where(AuditEvent.action == "orthanc.pull_queued")
            ).all()
            sources = set(session.scalars(select(Study.source)).all())
    finally:
        db.dispose()
    assert queued and all(d.startswith("hook") for d in queued)
    assert sources == {"orthanc"}


def test_orthanc_down_then_back_results_delivered_exactly_once(
    tmp_path: Path, node_factory: Any, orthanc_factory: Any
) -> None:
    require_whole_chain()
    orthanc = orthanc_factory()
    node = node_factory({**dicom_route(orthanc), "PACSNODE_DISPATCH__BACKOFF_BASE_S": "1",
                         "PACSNODE_DISPATCH__BACKOFF_MAX_S": "2", "PACSNODE_DISPATCH__TIMEOUT_S": "5"})  # fmt: skip
    orthanc.stop()
    files = write_cr_phantom(tmp_path / "cr", seed=11)
    storescu(node.dicom_port, "PACSNODE", files)
    db = Database(node.env["PACSNODE_DATABASE_URL"])
    try:
        deadline = time.monotonic() + RESULT_TIMEOUT_S
        retried = False
        while time.monotonic() < deadline and not retried:
            with db.read() as session:
                retried = (
                    session.scalar(
                        select(AuditEvent.id).where(AuditEvent.action == "delivery.retry").limit(1)
                    )
                    is not None
                )
            time.sleep(0.5)
        assert retried, "no delivery attempt failed while Orthanc was down"
        orthanc.start()
        results = wait_for_results(orthanc, study_uid_of(files), sop_uids(files), RESULT_TIMEOUT_S)
        assert_results_in_orthanc(results, tmp_path)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with db.read() as session:
                states = Counter(session.scalars(select(Delivery.state)).all())
            if set(states) == {"delivered"}:
                break
            time.sleep(0.5)
        assert set(states) == {"delivered"}, states
        with db.read() as session:
            delivered = Counter(
                session.scalars(
                    select(AuditEvent.entity_id).where(AuditEvent.action == "delivery.delivered")
                ).all()
            )
        assert set(delivered.values()) == {1}, "a delivery was sent more than once"
        # Orthanc's picture is taken again now that every delivery is recorded as delivered:
        # `results` was taken when the four kinds were there, and a retried object (backoff
        # up to 2 s) may have landed after it.
        stored = result_instances(orthanc, study_uid_of(files), sop_uids(files))
        assert len(stored) == sum(states.values())  # one object in Orthanc per delivery
    finally:
        db.dispose()
