"""Folder sender: study/SOP-UID layout, atomic and idempotent, clear error when not writable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.config import DestinationSettings
from core.domain import ArtifactKind, DestinationKind
from node.dispatch.targets import sender_for
from tests.node.dispatch.factory import MadeObject


def folder_dest(path: Path) -> DestinationSettings:
    return DestinationSettings(name="export", kind=DestinationKind.FOLDER, path=path)


def test_copies_into_study_folder_named_by_sop_uid(
    tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    sender = sender_for(folder_dest(tmp_path / "out"))
    paths = [results[k].path for k in results]
    assert all(o.ok for o in sender.send(paths))
    assert all(o.ok for o in sender.send(paths))  # a retry overwrites, never duplicates
    files = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == sorted(f"{r.sop_instance_uid}.dcm" for r in results.values())
    assert sender.ping().ok


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_folder_is_a_clear_failure(
    tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    target = tmp_path / "ro"
    target.mkdir()
    target.chmod(0o500)
    [outcome] = sender_for(folder_dest(target)).send([results[ArtifactKind.SEG].path])
    assert not outcome.ok and "cannot write" in outcome.error


def test_file_in_the_way_is_a_clear_failure(
    tmp_path: Path, results: dict[ArtifactKind, MadeObject]
) -> None:
    blocker = tmp_path / "out"
    blocker.write_text("a file, not a folder")
    [outcome] = sender_for(folder_dest(blocker)).send([results[ArtifactKind.SEG].path])
    assert not outcome.ok and "cannot write" in outcome.error
    assert not sender_for(folder_dest(blocker)).ping().ok
