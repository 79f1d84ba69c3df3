"""STOW-RS sender against a real DICOMweb server (Orthanc's DICOMweb plugin)."""

from __future__ import annotations

import pytest

from core.config import DestinationSettings
from core.domain import ArtifactKind, DestinationKind
from node.dispatch.targets import sender_for
from tests.conftest import free_port
from tests.node.dispatch.factory import MadeObject
from tests.orthanc.harness import OrthancProcess

pytestmark = pytest.mark.integration


def stow_dest(url: str) -> DestinationSettings:
    return DestinationSettings(name="stow", kind=DestinationKind.DICOMWEB, url=url)


def test_stow_rs_stores_each_object_and_reports_it(
    orthanc: OrthancProcess, results: dict[ArtifactKind, MadeObject]
) -> None:
    sender = sender_for(stow_dest(f"{orthanc.url}/dicom-web"))
    assert sender.ping().ok
    outcomes = sender.send([results[k].path for k in results])
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    study_uid = orthanc.get(f"/instances/{orthanc.get('/instances')[0]}/tags?simplify")[
        "StudyInstanceUID"
    ]
    assert sorted(orthanc.sop_uids_of_study(study_uid)) == sorted(
        r.sop_instance_uid for r in results.values()
    )


def test_unreachable_server_fails_the_batch(results: dict[ArtifactKind, MadeObject]) -> None:
    sender = sender_for(stow_dest(f"http://127.0.0.1:{free_port()}/dicom-web"), timeout_s=3)
    outcomes = sender.send([results[ArtifactKind.SEG].path])
    assert not outcomes[0].ok and "STOW-RS" in outcomes[0].error
