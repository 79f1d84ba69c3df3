"""``pacsnode import PATH...``: bring files, folders (recursively) and zip archives in.

Every file goes through ``persist_instance``, exactly like an instance received over DICOM, so
duplicates, late arrivals and audit behave the same. Files that are not DICOM are skipped and
counted with the reason; the import never stops on a bad file.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Settings
from core.domain import Association, StoreStatus
from node.db.engine import Database
from node.ingest.persist import persist_file
from node.ingest.uid_gate import instance_uid_error, record_refusal
from node.ingest.zipstream import ZipLimitExceeded, ZipLimits, extract_members

log = logging.getLogger(__name__)


@dataclass
class ImportReport:
    """Counts for the operator; ``skipped`` maps a short reason to how many files had it."""

    stored: int = 0
    duplicates: int = 0
    failed: int = 0
    refused: int = 0  # DICOM files whose identifying UIDs are not plain UIDs (see uid_gate)
    skipped: Counter[str] = field(default_factory=Counter)
    studies: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)  # "<source>: <reason>", first 100
    refusals: list[str] = field(default_factory=list)  # "<source>: <invalid UID>", first 100

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        text = (f"stored {self.stored}, duplicates {self.duplicates}, failed {self.failed}, "
                f"skipped {self.skipped_total}, studies {len(self.studies)}")  # fmt: skip
        if self.refused:
            text += f", refused {self.refused} (invalid UID)"
        if self.skipped:
            text += " (" + ", ".join(f"{n} {why}" for why, n in self.skipped.most_common()) + ")"
        return text


def _looks_like_dicom(head: bytes) -> bool:
    """Part-10 files have 'DICM' at 128; bare datasets usually start with a group 0002/0008 tag."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    return len(head) >= 8 and head[:2] in (b"\x02\x00", b"\x08\x00")


def _iter_sources(
    paths: Sequence[Path], report: ImportReport, limits: ZipLimits, staging: Path
) -> Iterator[tuple[str, Path]]:
    """Each candidate file as (name for messages, a path on disk): files as they are, zip members
    inflated one at a time into ``staging`` (removed after their turn)."""
    for path in paths:
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                yield from _iter_file(child, report, limits, staging)
        elif path.is_file():
            yield from _iter_file(path, report, limits, staging)
        else:
            report.skipped["not found"] += 1
            _note(report, str(path), "not found")


def _iter_file(
    path: Path, report: ImportReport, limits: ZipLimits, staging: Path
) -> Iterator[tuple[str, Path]]:
    try:
        if zipfile.is_zipfile(path):
            yield from _iter_zip(path, report, limits, staging)
            return
    except OSError as exc:
        report.skipped["unreadable"] += 1
        _note(report, str(path), f"unreadable: {exc}")
        return
    yield str(path), path


def _iter_zip(
    path: Path, report: ImportReport, limits: ZipLimits, staging: Path
) -> Iterator[tuple[str, Path]]:
    """Members inflated one at a time under ``limits`` (see node.ingest.zipstream): a refused or
    damaged member is counted and skipped, a total over the limit stops the archive."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        for member, extracted in extract_members(path, limits, staging):
            name = f"{path}!{member.filename}"
            if isinstance(extracted, ZipLimitExceeded):
                report.skipped["over the zip limits"] += 1
                _note(report, name, str(extracted).removeprefix(f"{member.filename}: "))
            elif isinstance(extracted, Exception):
                report.skipped["unreadable"] += 1
                _note(report, name, f"unreadable: {extracted}")
            else:
                try:
                    yield name, extracted
                finally:
                    extracted.unlink(missing_ok=True)
    except zipfile.BadZipFile as exc:
        report.skipped["bad zip archive"] += 1
        _note(report, str(path), f"bad zip archive: {exc}")


def _head(path: Path) -> bytes:
    with path.open("rb") as handle:
        return handle.read(132)


def _note(report: ImportReport, source: str, reason: str) -> None:
    log.info("import: %s: %s", source, reason)
    if len(report.errors) < 100:
        report.errors.append(f"{source}: {reason}")


def import_paths(
    db: Database,
    settings: Settings,
    paths: Sequence[Path],
    *,
    source: str = "import",
    actor: str = "system",
) -> ImportReport:
    """Persist every DICOM instance found under ``paths``; never raises for bad files.

    A file whose identifying UIDs are not plain UIDs is refused (``refused``, an error line naming
    the attribute, an audit row by ``actor``) and the import goes on with the next file."""
    report = ImportReport()
    origin = Association(source=source)
    limits = ZipLimits.from_settings(settings.zip_import)
    staging = Path(tempfile.mkdtemp(prefix="import-", dir=_staging_root(settings)))
    try:
        for name, path in _iter_sources([Path(p) for p in paths], report, limits, staging):
            _import_one(db, settings, name, path, report, origin, source, actor)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def _staging_root(settings: Settings) -> Path:
    """Zip members are inflated inside the data directory, never in /tmp."""
    root = settings.data_dir / "uploads"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _import_one(
    db: Database,
    settings: Settings,
    name: str,
    path: Path,
    report: ImportReport,
    origin: Association,
    source: str,
    actor: str,
) -> None:
    """Check and persist one file, never reading it whole into memory."""
    try:
        head = _head(path)
    except OSError as exc:
        report.skipped["unreadable"] += 1
        _note(report, name, f"unreadable: {exc}")
        return
    if not _looks_like_dicom(head):
        report.skipped["not DICOM"] += 1
        _note(report, name, "not DICOM")
        return
    uid_error = instance_uid_error(path)
    if uid_error is not None:
        report.refused += 1
        if len(report.refusals) < 100:
            report.refusals.append(f"{name}: {uid_error}")
        record_refusal(db, uid_error, origin=name, source=source, actor=actor)
        return
    has_meta = (len(head) >= 132 and head[128:132] == b"DICM") or head[:2] == b"\x02\x00"
    # bare datasets without file meta are by definition implicit VR little endian
    syntax = None if has_meta else "1.2.840.10008.1.2"
    outcome = persist_file(db, settings, path, origin, transfer_syntax_uid=syntax)
    if outcome.status is StoreStatus.SUCCESS:
        report.studies.add(outcome.study_instance_uid)
        if outcome.duplicate:
            report.duplicates += 1
        else:
            report.stored += 1
    elif outcome.status is StoreStatus.CANNOT_UNDERSTAND:
        report.skipped["not a valid instance"] += 1
        _note(report, name, outcome.reason)
    else:
        report.failed += 1
        _note(report, name, outcome.reason)
