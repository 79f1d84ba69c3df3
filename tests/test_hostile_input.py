"""Hostile identifiers at every entry point: nothing is written outside ``data_dir``.

Each UID below is sent through ``pacsnode import``, the console upload, the Orthanc pull and
C-STORE, and — as a study row an older node (or a bypass) left in the database — through the
worker, the console's result reader, the folder destination and retention. The filesystem around
``data_dir`` is walked before and after (``data_dir`` is a subfolder of ``tmp_path``; the ``../``
and absolute UIDs point into ``/tmp`` at a name unique to the test), and each entry point must
answer with its documented refusal: an error line and exit status 1 from ``import``, a 400 naming
the attribute from the console, a logged refusal from the Orthanc pull, 0xC000 to a DICOM peer,
and an ``instance.refused`` audit row.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from sqlalchemy import func, select

from app.cli import main
from core.config import DestinationSettings, Settings
from node.db.engine import Database
from node.db.orm import Artifact, AuditEvent, Instance, Job, Series, Study, utcnow
from node.dispatch.delivery_plan import plan_deliveries
from node.dispatch.folder import FolderSender
from node.ingest.orthanc_source import pull_study
from node.ingest.scp import start_receiver
from node.ingest.spool import relative_path
from node.jobs import queue
from node.jobs.creation import JobPlanner
from node.jobs.worker import Worker
from node.results.produce import produce_results
from node.scheduler import completion_sweep, delete_study
from tests.node.ingest.helpers import CT_IMAGE_STORAGE, make_instance
from tests.node.jobs.test_queue import PIPES, soon
from tests.node.jobs.test_worker import Pipelines, StubPipeline
from tests.orthanc.harness import ORTHANC_BIN, OrthancProcess
from tests.web.conftest import cheap_password_hashing, csrf_of, make_console  # noqa: F401
from web.result_views import export

ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
# name -> UID, given the test's unique marker (a name under /tmp that must never appear)
HOSTILE: dict[str, Callable[[str], str]] = {
    "dotdot": lambda mark: "../" * 16 + f"tmp/{mark}",  # from any folder up to 16 deep: /tmp/...
    "absolute": lambda mark: f"/tmp/{mark}-abs",
    "nul": lambda mark: "1.2.840.10008\x00.99",
    "non_ascii": lambda mark: "1.2.840.99.\u00e9",
    "too_long": lambda mark: "1." + "2" * 63,  # 65 characters
    "letters": lambda mark: "1.2.840.abc",
}


@pytest.fixture
def mark() -> Iterator[str]:
    """A name under /tmp that a hostile UID points at; asserted absent, cleaned up regardless."""
    name = "ph" + uuid.uuid4().hex[:8]
    yield name
    for path in Path("/tmp").glob(f"{name}*"):
        for child in sorted(path.rglob("*"), reverse=True):
            child.rmdir() if child.is_dir() else child.unlink()
        path.rmdir() if path.is_dir() else path.unlink()


class Watch:
    """Everything under ``tmp_path`` before the action; afterwards, what is new outside data_dir."""

    def __init__(self, tmp_path: Path, data_dir: Path, mark: str, allowed: tuple[Path, ...] = ()):
        self.tmp_path, self.data_dir, self.mark, self.allowed = tmp_path, data_dir, mark, allowed
        self.before = set(tmp_path.rglob("*"))

    def assert_nothing_escaped(self) -> None:
        roots = (self.data_dir, *self.allowed)
        new = set(self.tmp_path.rglob("*")) - self.before
        outside = sorted(p for p in new if not any(p == r or r in p.parents for r in roots))
        assert not outside, f"written outside data_dir: {outside}"
        assert not list(Path("/tmp").glob(f"{self.mark}*")), "a UID chose a path under /tmp"
        for path in self.data_dir.rglob("*"):  # and nothing inside links or resolves out of it
            assert self.data_dir.resolve() in path.resolve().parents, path


def hostile_instance(attribute: str, value: str) -> bytes:
    """A valid small CT instance whose ``attribute`` is ``value`` (file meta kept consistent)."""
    ds = pydicom.dcmread(io.BytesIO(make_instance()))
    with warnings.catch_warnings():  # pydicom warns about the invalid UI value it is asked to write
        warnings.simplefilter("ignore")
        setattr(ds, attribute, value)
        if attribute == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        if attribute == "SOPClassUID":
            ds.file_meta.MediaStorageSOPClassUID = value
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def refusals(db: Database) -> list[tuple[str, str, str]]:
    """(actor, entity type, detail) of every ``instance.refused`` audit row."""
    with db.read() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == "instance.refused"))
        return [(e.actor, e.entity_type, e.detail) for e in rows]


def instance_count(db: Database) -> int:
    with db.read() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


# -- pacsnode import ----------------------------------------------------------------------------
@pytest.mark.parametrize("attribute", ATTRIBUTES)
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_import_refuses_with_an_error_line(
    settings: Settings,
    tmp_path: Path,
    mark: str,
    kind: str,
    attribute: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PACSNODE_ENVIRONMENT", "test")
    monkeypatch.setenv("PACSNODE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PACSNODE_MIN_FREE_DISK_MB", "0")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    (incoming / "bad.dcm").write_bytes(hostile_instance(attribute, HOSTILE[kind](mark)))
    (incoming / "good.dcm").write_bytes(make_instance())
    watch = Watch(tmp_path, settings.data_dir, mark)
    assert main(["import", str(incoming)]) == 1
    err = capsys.readouterr().err
    assert f"error: {incoming / 'bad.dcm'}: {attribute} " in err and "not a valid UID" in err
    watch.assert_nothing_escaped()
    db = Database(settings.effective_database_url)
    try:
        assert instance_count(db) == 1  # the good file is stored, the bad one is not
        ((_, entity_type, detail),) = refusals(db)
        assert attribute in detail and entity_type == "import"
    finally:
        db.dispose()


# -- console upload -----------------------------------------------------------------------------
def _upload(
    client: httpx.Client, files: list[tuple[str, tuple[str, bytes, str]]]
) -> httpx.Response:
    token = csrf_of(client, "/studies/upload")  # type: ignore[arg-type]
    return client.post("/studies/upload", data={"csrf_token": token}, files=files)


@pytest.mark.parametrize(
    ("kind", "attribute"),
    [(kind, "StudyInstanceUID") for kind in sorted(HOSTILE)]
    + [("dotdot", a) for a in ATTRIBUTES[1:]],
)
def test_upload_refuses_with_400_naming_the_attribute(
    settings: Settings, sqlite_db: Database, tmp_path: Path, mark: str, kind: str, attribute: str
) -> None:
    client = make_console(settings, sqlite_db).login("radiologist1")
    watch = Watch(tmp_path, settings.data_dir, mark)
    bad = hostile_instance(attribute, HOSTILE[kind](mark))
    response = _upload(client, [("files", ("scan.dcm", bad, "application/dicom"))])  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert f"scan.dcm: {attribute} " in response.text and "not a valid UID" in response.text
    assert str(settings.data_dir) not in response.text  # the staging path is not shown
    watch.assert_nothing_escaped()
    assert instance_count(sqlite_db) == 0
    ((actor, _, detail),) = refusals(sqlite_db)
    assert attribute in detail and actor == "radiologist1"


def test_upload_file_names_never_become_paths(
    settings: Settings, sqlite_db: Database, tmp_path: Path, mark: str
) -> None:
    client = make_console(settings, sqlite_db).login("radiologist1")
    watch = Watch(tmp_path, settings.data_dir, mark)
    names = ["../" * 16 + f"tmp/{mark}", f"/tmp/{mark}-abs", "..", "a\u00e9b.dcm"]
    files = [("files", (name, make_instance(), "application/dicom")) for name in names]
    response = _upload(client, files)  # type: ignore[arg-type]
    assert response.status_code == 303, response.text
    watch.assert_nothing_escaped()
    assert instance_count(sqlite_db) == len(names)


# -- Orthanc pull -------------------------------------------------------------------------------
@pytest.mark.integration
def test_orthanc_pull_refuses_and_logs(
    settings: Settings,
    sqlite_db: Database,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    mark: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Orthanc stores what it is given; the pull must refuse each hostile instance on its own."""
    if ORTHANC_BIN is None:
        pytest.skip("Orthanc not installed")
    orthanc = OrthancProcess(tmp_path_factory.mktemp("orthanc"))
    orthanc.start()
    try:
        data = settings.model_dump()
        data["orthanc_sources"] = [{"url": orthanc.url, "poll": False}]
        source_settings = Settings(**data)
        (source,) = source_settings.orthanc_sources
        watch = Watch(tmp_path, settings.data_dir, mark)
        for kind in sorted(HOSTILE):  # Orthanc 1.10 stores every one of them as given
            raw = hostile_instance("StudyInstanceUID", HOSTILE[kind](mark))
            answer = httpx.post(f"{orthanc.url}/instances", content=raw, timeout=10)
            assert answer.status_code == 200, answer.text
            with caplog.at_level(logging.WARNING, logger="node.ingest.uid_gate"):
                pull_study(source_settings, sqlite_db, source, answer.json()["ParentStudy"])
            assert "orthanc: refused Orthanc instance" in caplog.text
            assert "StudyInstanceUID" in caplog.text
            caplog.clear()
        watch.assert_nothing_escaped()
        assert instance_count(sqlite_db) == 0
        events = refusals(sqlite_db)
        assert len(events) == len(HOSTILE)
        assert all("StudyInstanceUID" in detail and kind == "orthanc" for _, kind, detail in events)
    finally:
        orthanc.stop()


# -- C-STORE ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_c_store_hostile_study_uid(
    settings: Settings, sqlite_db: Database, tmp_path: Path, mark: str, kind: str
) -> None:
    ds = pydicom.dcmread(io.BytesIO(hostile_instance("StudyInstanceUID", HOSTILE[kind](mark))))
    watch = Watch(tmp_path, settings.data_dir, mark)
    handle = start_receiver(settings, sqlite_db)
    try:
        ae = AE(ae_title="HOSTILE")
        ae.add_requested_context(CT_IMAGE_STORAGE, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", handle.port, ae_title=settings.ae_title)
        assert assoc.is_established
        status = assoc.send_c_store(ds)
        assoc.release()
    finally:
        handle.stop(timeout=5)
    watch.assert_nothing_escaped()
    assert status.Status == 0xC000
    assert instance_count(sqlite_db) == 0


# -- a hostile study row through the worker, the console, a folder destination and retention -----
def _add_hostile_study(settings: Settings, db: Database, study_uid: str) -> None:
    """A study as an older node stored it: the UID as sent, the file where the spool put it."""
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source.StudyInstanceUID = study_uid
    relative = relative_path(study_uid, source.SeriesInstanceUID, source.SOPInstanceUID)
    (settings.data_dir / relative).parent.mkdir(parents=True, exist_ok=True)
    source.save_as(settings.data_dir / relative)
    earlier = utcnow() - timedelta(hours=1)
    with db.write() as session:
        study = Study(study_instance_uid=study_uid, modalities="CT", instance_count=1,
                      patient_id="P1", patient_name="Doe^Jane", last_received_at=earlier)  # fmt: skip
        session.add(study)
        session.flush()
        series = Series(study_pk=study.id, series_instance_uid=str(source.SeriesInstanceUID),
                        modality="CT", instance_count=1, series_number=1)  # fmt: skip
        session.add(series)
        session.flush()
        session.add(Instance(series_pk=series.id, sop_instance_uid=str(source.SOPInstanceUID),
                             sop_class_uid=str(source.SOPClassUID), path=relative,
                             transfer_syntax_uid=str(source.file_meta.TransferSyntaxUID),
                             size_bytes=(settings.data_dir / relative).stat().st_size))  # fmt: skip


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_worker_results_stay_inside_data_dir(
    settings: Settings, sqlite_db: Database, tmp_path: Path, mark: str, kind: str
) -> None:
    study_uid = HOSTILE[kind](mark)
    archive = tmp_path / "archive"  # a folder destination the admin configured
    watch = Watch(tmp_path, settings.data_dir, mark, allowed=(archive,))
    _add_hostile_study(settings, sqlite_db, study_uid)
    planner = JobPlanner(settings, {"demo-3d": PIPES["demo-3d"]})
    assert completion_sweep(settings, sqlite_db, planner, utcnow()) == [study_uid]
    worker = Worker(
        settings,
        sqlite_db,
        Pipelines(StubPipeline()),
        producer=produce_results,  # the real result writers: they must write inside data_dir
        delivery_planner=partial(plan_deliveries, settings=settings),
        worker_id="w1",
    )
    claimed = queue.claim_next(sqlite_db, "w1", soon(), settings.jobs)
    assert claimed is not None
    worker.process(claimed)
    with sqlite_db.read() as session:
        job = session.get(Job, claimed.job_id)
        assert job is not None and job.state == "succeeded", job.error if job else None
        paths = [a.path for a in session.scalars(select(Artifact))]
        # the console reads the result back from the job's folder (not the summary fallback)
        content, _, _ = export(settings, job, "json")
        study_pk = job.study_pk
    folder = settings.job_results_dir(claimed.job_id)
    # no finding: no overlay (outputs.skip_empty_overlay), the PDF and SR say so
    assert sorted(paths) == [f"results/job-{claimed.job_id}/{k}.dcm" for k in ("pdf", "sr")]
    assert (folder / "result.json").is_file()
    assert json.loads(content)["study_instance_uid"] == study_uid
    # a folder destination refuses to join the UID to its path
    outcomes = FolderSender(
        DestinationSettings(name="archive", kind="folder", path=str(archive))
    ).send([folder / "sr.dcm"])
    assert not outcomes[0].ok and "StudyInstanceUID" in outcomes[0].error
    watch.assert_nothing_escaped()
    # retention deletes what the node wrote, and nothing a UID points at
    sentinel = Path("/tmp") / mark / "keep.txt"
    sentinel.parent.mkdir()
    sentinel.write_text("not the node's")
    Path(f"/tmp/{mark}-abs").mkdir()
    delete_study(settings, sqlite_db, study_pk, study_uid, "test")
    assert sentinel.read_text() == "not the node's" and Path(f"/tmp/{mark}-abs").is_dir()
    assert not folder.exists() and not list(settings.spool_dir.rglob("*.dcm"))


def test_console_never_reads_a_row_path_outside_data_dir(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """An instance row whose path leads out of data_dir (an older node, a bypass) is not rendered,
    although a real DICOM file is there to read."""
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    _add_hostile_study(settings, sqlite_db, "1.2.840.99.1")
    with sqlite_db.write() as session:
        instance = session.scalars(select(Instance)).one()
        inside = instance.path
        job = Job(study_pk=session.scalars(select(Study)).one().id, pipeline_name="demo-3d")
        session.add(job)
        session.flush()
        job_id = job.id
    client = make_console(settings, sqlite_db).login("viewer1")
    assert client.get(f"/review/{job_id}/frames/0.png").status_code == 200  # the real row renders
    with sqlite_db.write() as session:
        session.scalars(select(Instance)).one().path = f"../{outside.name}"
    assert client.get(f"/review/{job_id}/frames/0.png").status_code == 422
    assert inside.startswith("spool/")
