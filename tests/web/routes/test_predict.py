"""``POST /api/predict`` and ``/api/predict/batch`` end to end: the console queues, a real worker
(the demo-2d pipeline with its real models, ``app.worker.build_worker``'s parts) runs the job, the
answer carries the PipelineResult; bad input is refused with a 4xx that says why."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from email.parser import BytesParser
from email.policy import HTTP
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from core.config import Settings, load_settings
from node.db.engine import Database
from node.db.orm import Delivery, Job, Study
from node.db.repositories import users as user_repo
from node.db.repositories.config_overrides import set_override
from tests.web.conftest import Console, make_console, with_archive, with_web

PIPELINE = "demo-2d"
TOKEN = "predict-token-for-tests"
READ_TOKEN = "read-only-token-for-tests"
_MODELS: list[object] = []  # one warm model registry for the whole module (2 shared CPUs)


def _settings(settings: Settings, **web: object) -> Settings:
    fast = load_settings(
        None,
        **{
            **settings.model_dump(exclude={"jobs"}),
            "jobs": {**settings.jobs.model_dump(), "poll_interval_s": 0.1},
        },
    )
    return with_web(fast, **web) if web else fast


def _console(settings: Settings, db: Database, **web: object) -> Console:
    """A console whose node has a destination: a prediction must still send nothing unasked."""
    archive = settings.data_dir.parent / "archive"
    console = make_console(with_archive(_settings(settings, **web), archive), db)
    with db.write() as session:
        for name, token, scopes in (
            ("scripts", TOKEN, ["predict"]),
            ("dashboards", READ_TOKEN, ["read", "review"]),
        ):
            owner = user_repo.get_by_username(session, "radiologist1")
            assert owner is not None
            user_repo.create_api_token(session, owner, name, token, scopes)
    return console


@pytest.fixture
def console(settings: Settings, sqlite_db: Database) -> Console:
    return _console(settings, sqlite_db)


def _worker(console: Console):  # type: ignore[no-untyped-def]
    """The worker ``pacsnode worker`` builds, over a model registry shared by this module."""
    from models.registry import ModelRegistry
    from node.dispatch.delivery_plan import plan_deliveries
    from node.jobs.worker import Worker
    from node.results.produce import produce_results
    from pipelines.registry import PipelineRegistry

    settings = console.settings
    if not _MODELS:
        _MODELS.append(ModelRegistry(settings.models_dir, 1))
    return Worker(
        settings,
        console.db,
        PipelineRegistry(settings, _MODELS[0]),  # type: ignore[arg-type]
        producer=produce_results,
        delivery_planner=partial(plan_deliveries, settings=settings),
        worker_id="w-predict",
    )


@pytest.fixture
def worker(console: Console) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=_worker(console).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=120)


def _cr(tmp_path: Path, seed: int = 7) -> Path:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_2d_phantom

    phantom = make_2d_phantom(np.random.default_rng(seed), lesion_count=2)
    return write_series(phantom, tmp_path / f"cr-{seed}", modality="CR")[0]


def _jpeg(seed: int = 11) -> bytes:
    """A colour JPEG of a phantom radiograph (what a script exports from a viewer)."""
    from models.training.phantoms import make_2d_phantom

    phantom = make_2d_phantom(np.random.default_rng(seed), lesion_count=1)
    grey = np.round(phantom.image * 255).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _post(
    client: TestClient,
    files: list[tuple[str, bytes, str]],
    path: str = "/api/predict",
    token: str = TOKEN,
    **fields: str,
):  # type: ignore[no-untyped-def]
    return client.post(
        path,
        data={"pipeline": PIPELINE, **fields},
        files=[("files", f) for f in files],
        headers={"Authorization": f"Bearer {token}"},
    )


def _studies(console: Console) -> list[tuple[str, str]]:
    with console.db.read() as session:
        return [(s.study_instance_uid, s.source) for s in session.query(Study).all()]


def _assert_prediction(body: dict, study_uid: str) -> None:  # type: ignore[type-arg]
    assert body["state"] == "succeeded", body
    assert body["study_instance_uid"] == study_uid
    result = body["result"]
    assert result["pipeline_name"] == PIPELINE
    classification = result["classification"]
    assert len(classification["probabilities"]) == len(classification["classes"]) == 2
    assert abs(sum(classification["probabilities"]) - 1) < 1e-4
    assert {r["task"] for r in result["model_runs"]} >= {"segmentation", "classification"}
    assert all(r["device_used"] for r in result["model_runs"])
    assert result["processing_seconds"] > 0
    assert result["conclusion"]
    assert body["summary"]["devices"]


@pytest.mark.slow
def test_dicom_cr_is_predicted_and_nothing_is_kept(
    console: Console, worker: None, tmp_path: Path
) -> None:
    path = _cr(tmp_path)
    study_uid = str(pydicom.dcmread(path).StudyInstanceUID)
    response = _post(console.client(), [("cr.dcm", path.read_bytes(), "application/dicom")])
    assert response.status_code == 200, response.text
    body = response.json()
    _assert_prediction(body, study_uid)
    assert body["result"]["modality"] == "CR"
    assert all(a["download_url"] is None for a in body["artifacts"])
    # transient: the study, its job, its results and the staged files are gone; nothing sent
    assert _studies(console) == []
    assert not console.settings.job_results_dir(body["job_id"]).exists()
    assert not any((console.settings.data_dir / "uploads").iterdir())
    with console.db.read() as session:
        assert session.query(Delivery).count() == 0


@pytest.mark.slow
def test_jpeg_with_pixel_spacing_answers_dicom_objects(console: Console, worker: None) -> None:
    response = _post(
        console.client(),
        [("film.jpg", _jpeg(), "image/jpeg")],
        pixel_spacing_mm="0.5",
    )
    # ?outputs=dicom is a query parameter
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"]["pixel_spacing_mm"] == [0.5, 0.5]
    assert body["result"]["modality"] == "OT"

    response = console.client().post(
        "/api/predict?outputs=dicom",
        data={"pipeline": PIPELINE, "pixel_spacing_mm": "0.5"},
        files=[("files", ("film.jpg", _jpeg(), "image/jpeg"))],
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("multipart/mixed; boundary=")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: "
        + response.headers["content-type"].encode()
        + b"\r\n\r\n"
        + response.content
    )
    parts = list(message.iter_parts())
    assert parts[0].get_content_type() == "application/json"
    dicoms = [pydicom.dcmread(io.BytesIO(p.get_payload(decode=True))) for p in parts[1:]]
    assert dicoms and all(p.get_content_type() == "application/dicom" for p in parts[1:])
    kinds = {str(ds.Modality) for ds in dicoms}
    assert "SR" in kinds, kinds
    study_uids = {str(ds.StudyInstanceUID) for ds in dicoms}
    assert len(study_uids) == 1
    assert _studies(console) == []


@pytest.mark.slow
def test_deliver_sends_where_routing_sends(console: Console, worker: None, tmp_path: Path) -> None:
    path = _cr(tmp_path, seed=5)
    response = _post(
        console.client(), [("cr.dcm", path.read_bytes(), "application/dicom")], deliver="true"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    with console.db.read() as session:
        job = session.get(Job, body["job_id"])
        assert job is not None and job.destinations == ["archive"]
        planned = {d.destination_name for d in session.query(Delivery).all()}
    assert planned == {"archive"}
    # kept (hidden from the list) until the dispatcher has sent it and the retention is over
    assert [source for _, source in _studies(console)] == ["predict"]
    assert all(a["download_url"] for a in body["artifacts"])


@pytest.mark.slow
def test_zip_kept_on_request(console: Console, worker: None, tmp_path: Path) -> None:
    path = _cr(tmp_path, seed=3)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(path, "study/IM0001")
    response = _post(
        console.client(), [("study.zip", buffer.getvalue(), "application/zip")], keep="true"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    study_uid = str(pydicom.dcmread(path).StudyInstanceUID)
    _assert_prediction(body, study_uid)
    assert _studies(console) == [(study_uid, "api")]
    link = body["artifacts"][0]["download_url"]
    download = console.client().get(link, headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert download.status_code == 200
    # a second prediction of a study the node now holds is refused, not run behind its back
    again = _post(console.client(), [("study.zip", buffer.getvalue(), "application/zip")])
    assert again.status_code == 409, again.text
    assert "already on the node" in again.json()["detail"]


@pytest.mark.slow
def test_timeout_answers_504_and_the_batch_is_polled(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    console = _console(settings, sqlite_db, predict_timeout_s=0.3)
    path = _cr(tmp_path)
    response = _post(console.client(), [("cr.dcm", path.read_bytes(), "application/dicom")])
    assert response.status_code == 504, response.text
    poll = response.json()["poll_url"]
    state = console.client().get(poll, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert state["done"] is False and state["predictions"][0]["state"] == "queued"
    # a transient study is not in the study list, even while it waits
    listed = console.client().get("/api/studies", headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert listed.json()["total"] == 0
    # another user's token cannot read the batch
    other = console.client().get(poll, headers={"Authorization": f"Bearer {READ_TOKEN}"})
    assert other.status_code == 403

    batch = _post(
        console.client(),
        [("a.jpg", _jpeg(1), "image/jpeg"), ("b.jpg", _jpeg(2), "image/jpeg")],
        path="/api/predict/batch",
    )
    assert batch.status_code == 202, batch.text
    assert len(batch.json()["predictions"]) == 2  # each picture is its own study
    assert _worker(console).run_once() and _worker(console).run_once()
    assert _worker(console).run_once()
    for url in (poll, batch.json()["poll_url"]):
        done = console.client().get(url, headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert done["done"] is True
        for item in done["predictions"]:
            _assert_prediction(item, item["study_instance_uid"])
    # the batch's studies wait for the retention, then the next request removes them
    assert len(_studies(console)) == 3
    console.app.state.web.clock = lambda: time_travel(days=2)
    refused = _post(console.client(), [("x.txt", b"hello", "text/plain")])
    assert refused.status_code == 415
    assert _studies(console) == []


def time_travel(**delta: float):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from node.db.orm import utcnow

    return utcnow() + timedelta(**delta)


# -- refusals (no worker needed) ----------------------------------------------------------------


def test_wrong_type_is_415(console: Console) -> None:
    response = _post(console.client(), [("notes.txt", b"not an image at all", "text/plain")])
    assert response.status_code == 415
    assert "notes.txt: not a DICOM file, zip archive, PNG or JPEG" in response.json()["detail"]


def test_undecodable_picture_is_400(console: Console) -> None:
    response = _post(console.client(), [("x.jpg", b"\xff\xd8\xff" + b"\0" * 200, "image/jpeg")])
    assert response.status_code == 400
    assert "cannot be decoded" in response.json()["detail"]
    assert _studies(console) == []


def test_undecodable_dicom_is_400(console: Console) -> None:
    broken = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\x7f" + b"\x01" * 64
    response = _post(console.client(), [("broken.dcm", broken, "application/dicom")])
    assert response.status_code == 400, response.text
    assert "nothing could be imported" in response.json()["detail"]
    assert str(console.settings.data_dir) not in response.json()["detail"]  # no server paths
    assert _studies(console) == []


def test_unknown_and_missing_pipeline_are_named(console: Console) -> None:
    response = _post(console.client(), [("a.jpg", _jpeg(), "image/jpeg")], pipeline="nope")
    assert response.status_code == 404
    assert "no pipeline 'nope'" in response.json()["detail"]
    assert "demo-2d" in response.json()["detail"]
    missing = console.client().post(
        "/api/predict",
        files=[("files", ("a.jpg", _jpeg(), "image/jpeg"))],
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert missing.status_code == 400
    assert "pipeline" in missing.json()["detail"]


def test_disabled_pipeline_is_409(console: Console) -> None:
    with console.db.write() as session:
        set_override(session, "pipeline:" + PIPELINE, {"enabled": False}, "admin1")
    response = _post(console.client(), [("a.jpg", _jpeg(), "image/jpeg")])
    assert response.status_code == 409
    assert f"pipeline {PIPELINE!r} is disabled" in response.json()["detail"]


def test_bad_pixel_spacing_is_400(console: Console) -> None:
    response = _post(console.client(), [("a.jpg", _jpeg(), "image/jpeg")], pixel_spacing_mm="-1")
    assert response.status_code == 400
    assert "pixel_spacing_mm" in response.json()["detail"]


def test_oversize_is_413(settings: Settings, sqlite_db: Database) -> None:
    console = _console(settings, sqlite_db, max_upload_mb=0.01)
    response = _post(console.client(), [("big.dcm", b"\0" * 20_000, "application/dicom")])
    assert response.status_code == 413
    assert "request body too large" in response.json()["detail"]


def test_token_without_the_predict_scope_is_403(console: Console) -> None:
    response = _post(console.client(), [("a.jpg", _jpeg(), "image/jpeg")], token=READ_TOKEN)
    assert response.status_code == 403
    assert "'predict' scope" in response.json()["detail"]


def test_two_studies_need_the_batch_route(console: Console, tmp_path: Path) -> None:
    files = [
        (f"{seed}.dcm", _cr(tmp_path, seed).read_bytes(), "application/dicom") for seed in (1, 2)
    ]
    response = _post(console.client(), files)
    assert response.status_code == 400
    assert "/api/predict/batch" in response.json()["detail"]
    assert _studies(console) == []  # the transient studies it imported are gone again
    with console.db.read() as session:
        assert session.query(Job).count() == 0


def test_forged_batch_id_is_404(console: Console) -> None:
    response = console.client().get(
        "/api/predict/batch/1-2.AAAAAAAAAAAAAAAAAAAAAAAA",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 404


def test_documented_in_openapi(console: Console) -> None:
    spec = console.client().get("/openapi.json").json()
    post = spec["paths"]["/api/predict"]["post"]
    assert post["security"][0] == {"bearerToken": ["predict"]}
    schema = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"files", "pipeline", "pixel_spacing_mm", "deliver", "keep"} <= set(schema["properties"])
    assert "504" in post["responses"] and "413" in post["responses"]
    assert "/api/predict/batch" in spec["paths"]
    assert "/api/predict/batch/{batch_id}" in spec["paths"]


@pytest.mark.slow
def test_input_the_pipeline_cannot_take_is_422(
    console: Console, worker: None, tmp_path: Path
) -> None:
    from models.training.dicom_export import write_series
    from models.training.phantoms import make_3d_phantom

    phantom = make_3d_phantom(np.random.default_rng(1), shape=(4, 48, 48), lesion_count=1)
    files = write_series(phantom, tmp_path / "ct")
    response = _post(
        console.client(), [(p.name, p.read_bytes(), "application/dicom") for p in files]
    )
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["detail"].startswith(f"pipeline {PIPELINE} failed: ")
    assert body["state"] == "failed" and body["result"] is None
    assert _studies(console) == []


def test_console_session_needs_the_csrf_token(console: Console) -> None:
    client = console.login("radiologist1")
    response = client.post(
        "/api/predict",
        data={"pipeline": PIPELINE},
        files=[("files", ("a.jpg", _jpeg(), "image/jpeg"))],
    )
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
