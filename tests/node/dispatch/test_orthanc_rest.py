"""Orthanc REST sender against a real Orthanc: stored, idempotent on retry, unreachable."""

from __future__ import annotations

import pytest

from core.config import DestinationSettings
from core.domain import ArtifactKind, DestinationKind
from node.dispatch.targets import sender_for
from tests.conftest import free_port
from tests.node.dispatch.factory import MadeObject
from tests.orthanc.harness import OrthancProcess

pytestmark = pytest.mark.integration


def orthanc_dest(url: str) -> DestinationSettings:
    return DestinationSettings(name="orthanc", kind=DestinationKind.ORTHANC, url=url)


def test_uploads_objects_and_a_retry_does_not_duplicate(
    orthanc: OrthancProcess, results: dict[ArtifactKind, MadeObject]
) -> None:
    paths = [results[k].path for k in results]
    sender = sender_for(orthanc_dest(orthanc.url))
    assert all(o.ok for o in sender.send(paths))
    again = sender.send(paths)  # a retry after a lost answer
    assert all(o.ok and "AlreadyStored" in o.status for o in again)
    stored = orthanc.get("/instances")
    assert len(stored) == 4


def test_bad_file_fails_alone(
    orthanc: OrthancProcess, results: dict[ArtifactKind, MadeObject], tmp_path
) -> None:  # type: ignore[no-untyped-def]
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"garbage")
    outcomes = sender_for(orthanc_dest(orthanc.url)).send([junk, results[ArtifactKind.PDF].path])
    assert [o.ok for o in outcomes] == [False, True]
    assert outcomes[0].error


def test_unreachable_orthanc_fails_every_object(results: dict[ArtifactKind, MadeObject]) -> None:
    sender = sender_for(orthanc_dest(f"http://127.0.0.1:{free_port()}"), timeout_s=3)
    outcomes = sender.send([results[ArtifactKind.SEG].path, results[ArtifactKind.SR].path])
    assert [o.ok for o in outcomes] == [False, False]
    assert "unreachable" in outcomes[1].error
    assert not sender.ping().ok


def test_ping_names_the_orthanc_version(orthanc: OrthancProcess) -> None:
    result = sender_for(orthanc_dest(orthanc.url)).ping()
    assert result.ok and "1.10" in result.detail
