"""Zip import under limits: members inflated in chunks, refused by size, total and ratio; a real
2 GiB zip bomb costs the importer (``pacsnode import``) and the console upload < 200 MB."""

from __future__ import annotations

import random
import tracemalloc
import zipfile
from pathlib import Path

import pytest

from core.config import Settings, ZipLimitSettings
from node.db.engine import Database
from node.ingest.importer import import_paths
from node.ingest.zipstream import ZipLimitExceeded, ZipLimits, check_archive, iter_members
from tests.node.ingest.helpers import make_instance
from tests.node.ingest.zipbomb import build_bomb

MIB = 1024 * 1024
RSS_BUDGET = 200 * MIB
NOISE = random.Random(15).randbytes(2 * MIB)


@pytest.fixture(scope="session")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bomb(tmp_path_factory.mktemp("bomb") / "bomb.zip")


def _limits(member_mb: float = 512, total_mb: float = 8192, ratio: float = 100) -> ZipLimits:
    return ZipLimits.from_settings(ZipLimitSettings(max_member_mb=member_mb,
                                                    max_total_mb=total_mb, max_ratio=ratio))  # fmt: skip


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_members_over_each_limit_are_refused_by_name(tmp_path: Path) -> None:
    dicom = make_instance()
    archive = _zip(
        tmp_path / "a.zip",
        {"a.dcm": dicom, "zeros.bin": b"\0" * (8 * MIB), "noise.bin": NOISE},
    )
    results = {m.filename: r for m, r in iter_members(archive, _limits(member_mb=1.5))}
    assert results["a.dcm"] == dicom
    assert isinstance(results["zeros.bin"], ZipLimitExceeded)  # 8 MiB: over the member limit
    assert "zip_import.max_member_mb" in str(results["zeros.bin"])
    ratio = {m.filename: r for m, r in iter_members(archive, _limits(ratio=5))}
    assert "zip_import.max_ratio" in str(ratio["zeros.bin"])  # 8 MiB of zeros: ~1000:1
    assert ratio["noise.bin"] == NOISE  # incompressible: passes any ratio cap
    total = list(iter_members(archive, _limits(total_mb=3, ratio=1e9)))
    assert [m.filename for m, _ in total] == ["a.dcm", "zeros.bin"]  # stops the archive
    assert isinstance(total[-1][1], ZipLimitExceeded) and total[-1][1].whole_archive


def test_inflation_is_counted_not_just_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the header check out of the way, the bytes actually inflated are still cut off."""
    from node.ingest import zipstream

    monkeypatch.setattr(zipstream, "check_declared", lambda *args: None)
    archive = _zip(tmp_path / "z.zip", {"x.bin": b"\0" * (4 * MIB)})
    with zipfile.ZipFile(archive) as zf:
        with pytest.raises(ZipLimitExceeded, match="inflates beyond"):
            zipstream.read_member(zf, zf.infolist()[0], _limits(member_mb=1, ratio=1e9))
        with pytest.raises(ZipLimitExceeded, match="inflates beyond"):
            zipstream.read_member(zf, zf.infolist()[0], _limits(ratio=10))


def test_check_archive_refuses_without_inflating(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "z.zip", {"zeros.bin": b"\0" * (4 * MIB)})
    with pytest.raises(ZipLimitExceeded, match="compression ratio"):
        check_archive(archive, _limits())
    (tmp_path / "junk.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(zipfile.BadZipFile):
        check_archive(tmp_path / "junk.zip", _limits())


@pytest.mark.slow
def test_zip_bomb_import_is_refused_with_bounded_memory(
    bomb: Path, sqlite_db: Database, settings: Settings
) -> None:
    assert bomb.stat().st_size < 3 * MIB
    tracemalloc.start()
    try:
        report = import_paths(sqlite_db, settings, [bomb])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nzip bomb ({bomb.stat().st_size / MIB:.1f} MB -> 2048 MB): import peak "
          f"{peak / MIB:.1f} MB traced")  # fmt: skip
    assert peak < RSS_BUDGET, peak
    assert report.stored == 1 and report.skipped == {"over the zip limits": 1}
    assert any("bomb.dcm" in e and "zip_import" in e for e in report.errors), report.errors
