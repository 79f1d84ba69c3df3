"""Configuration in the console: destinations (validation, health, edit, delete), routing rules,
the review gate per pipeline, each audited and live for the stages; one edit delivered for real."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.config import Settings
from node.db.engine import Database
from node.db.orm import ConfigOverride, Delivery, Job, utcnow
from node.db.repositories import audit, config_overrides
from node.dispatch.delivery_plan import plan_deliveries
from node.dispatch.dispatcher import Dispatcher
from node.overrides import effective_pipeline_configs, settings_refresher
from pipelines.spec import load_pipeline_configs
from tests.conftest import free_port
from tests.node.dispatch.conftest import add_job_with_artifacts, start_storescp
from tests.node.dispatch.factory import make_results
from tests.web.conftest import Console, csrf_of, make_console, with_archive
from tests.web.processed import ProcessedStudy

DICOM = {"kind": "dicom", "ae_title": "PACS1", "host": "127.0.0.1", "port": "104"}


def _admin(console: Console) -> tuple[TestClient, str]:
    admin = console.login("admin1")
    return admin, csrf_of(admin, "/admin/destinations")


def _actions(console: Console, action: str) -> list[str]:
    with console.db.read() as session:
        return [f"{e.entity_id}:{e.detail}" for e in audit.query(session, action=action)]


@pytest.fixture
def archived(settings: Settings, sqlite_db: Database, tmp_path: Path) -> Console:
    """A console whose configuration file has one folder destination, ``archive``."""
    return make_console(with_archive(settings, tmp_path / "archive"), sqlite_db)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({**DICOM, "ae_title": "A_TITLE_LONGER_THAN_16"}, "AE title"),
        ({**DICOM, "ae_title": "BACK\\SLASH"}, "AE title"),
        ({**DICOM, "port": "70000"}, "port"),
        ({**DICOM, "port": "0"}, "port"),
        ({**DICOM, "host": "not a host"}, "host"),
        ({**DICOM, "host": ""}, "needs host"),
        ({"kind": "orthanc", "url": ""}, "needs url"),
        ({"kind": "dicomweb", "url": "ftp://x"}, "url"),
        ({"kind": "folder", "path": "relative/dir"}, "absolute"),
        ({"kind": "tape"}, "kind"),
    ],
)
def test_a_destination_is_validated_before_it_is_stored(
    archived: Console, form: dict[str, str], message: str
) -> None:
    admin, token = _admin(archived)
    answer = admin.post("/admin/destinations", data={"csrf_token": token, "name": "pacs", **form})
    assert answer.status_code == 400 and message in answer.text, answer.text
    with archived.db.read() as session:
        assert session.get(ConfigOverride, "destination:pacs") is None


def test_destination_added_edited_deleted_and_audited(archived: Console) -> None:
    admin, token = _admin(archived)
    bad_name = admin.post("/admin/destinations", data={"csrf_token": token, "name": "a b", **DICOM})
    assert bad_name.status_code == 400 and "name" in bad_name.text
    made = admin.post(
        "/admin/destinations",
        data={"csrf_token": token, "name": "pacs", "enabled": "on", **DICOM},
    )
    assert made.status_code == 303
    again = admin.post("/admin/destinations", data={"csrf_token": token, "name": "pacs", **DICOM})
    assert again.status_code == 409
    page = admin.get("/admin/destinations").text
    assert "PACS1@127.0.0.1:104" in page and "console" in page
    # an Orthanc destination with a password; editing it with the password left blank keeps it
    orthanc = {"kind": "orthanc", "url": "http://127.0.0.1:8042", "username": "u"}
    admin.post(
        "/admin/destinations",
        data={"csrf_token": token, "name": "orth", "password": "s3cret", **orthanc},
    )
    edit_page = admin.get("/admin/destinations/orth/edit").text
    assert "s3cret" not in edit_page and "(unchanged)" in edit_page
    admin.post(
        "/admin/destinations/orth",
        data={"csrf_token": token, "enabled": "on", **orthanc, "url": "http://127.0.0.1:9042"},
    )
    with archived.db.read() as session:
        current = config_overrides.effective_settings(session, archived.settings)
    orth = current.destination("orth")
    assert orth.password == "s3cret" and orth.url == "http://127.0.0.1:9042"
    assert not any("s3cret" in e for e in _actions(archived, "destination.update"))
    assert sorted(e.split(":")[0] for e in _actions(archived, "destination.create")) == [
        "orth",
        "pacs",
    ]
    # switching a console destination off keeps its definition
    admin.post("/admin/destinations/orth/enabled", data={"csrf_token": token, "enabled": "false"})
    with archived.db.read() as session:
        orth = config_overrides.effective_settings(session, archived.settings).destination("orth")
    assert not orth.enabled and orth.url == "http://127.0.0.1:9042"
    # the file's destination: deleted (a marker row), then restored from the file
    assert (
        admin.post("/admin/destinations/archive/delete", data={"csrf_token": token}).status_code
        == 303
    )
    assert (
        "archive" not in [d.name for d in _effective(archived).destinations]
        and "Restore" in admin.get("/admin/destinations").text
    )
    assert (
        admin.post("/admin/destinations/archive/reset", data={"csrf_token": token}).status_code
        == 303
    )
    assert "archive" in [d.name for d in _effective(archived).destinations]
    assert (
        admin.post("/admin/destinations/pacs/delete", data={"csrf_token": token}).status_code == 303
    )
    assert (
        admin.post("/admin/destinations/pacs/delete", data={"csrf_token": token}).status_code == 404
    )
    assert len(_actions(archived, "destination.delete")) == 2


def _effective(console: Console) -> Settings:
    with console.db.read() as session:
        return config_overrides.effective_settings(session, console.settings)


def test_config_posts_need_the_csrf_token(archived: Console) -> None:
    admin, _ = _admin(archived)
    for path, data in [
        ("/admin/destinations", {"name": "pacs", **DICOM}),
        ("/admin/destinations/archive", {"kind": "folder", "path": "/tmp/x"}),
        ("/admin/destinations/archive/delete", {}),
        ("/admin/routing/rules", {"name": "r"}),
        ("/admin/pipelines/demo-2d/review", {"review_required": "true"}),
    ]:
        assert admin.post(path, data=data).status_code == 403, path
    assert _effective(archived).destinations[0].path == archived.settings.destinations[0].path


def test_health_column_shows_last_success_and_last_error(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    now = utcnow()
    with console.db.write() as session:
        delivery = session.query(Delivery).one()
        delivery.state, delivery.delivered_at = "delivered", now - timedelta(hours=1)
        failed = Delivery(
            artifact_pk=delivery.artifact_pk,
            destination_name="pacs",
            state="failed",
            last_error="association rejected by PACS1",
            last_error_at=now,
        )
        session.add(failed)
    admin, token = _admin(console)
    admin.post("/admin/destinations", data={"csrf_token": token, "name": "pacs", **DICOM})
    page = admin.get("/admin/destinations").text
    archive_row = page.split('id="dest-archive"')[1].split("</tr>")[0]
    pacs_row = page.split('id="dest-pacs"')[1].split("</tr>")[0]
    assert (now - timedelta(hours=1)).strftime("%Y-%m-%d %H:%M") in archive_row
    assert (
        "association rejected by PACS1" in pacs_row and now.strftime("%Y-%m-%d %H:%M") in pacs_row
    )
    assert "1 / 0" in pacs_row


def test_routing_rules_edited_validated_reordered_and_live(
    processed: tuple[Console, ProcessedStudy],
) -> None:
    console, study = processed
    admin, token = _admin(console)
    base = {"csrf_token": token, "modality": "MR", "pipelines": "demo-2d", "stop": "on"}
    for bad, message in [
        ({"name": "r1", "destinations": "nowhere"}, "no destination named nowhere"),
        ({"name": "r1", "pipelines": "no-such-pipeline"}, "no pipeline named"),
        ({"name": "r1", "study_description_regex": "(unclosed"}, "regular expression"),
        ({"name": ""}, "rule name"),
    ]:
        answer = admin.post("/admin/routing/rules", data={**base, **bad})
        assert answer.status_code == 400 and message in answer.text, answer.text
    for name in ("mr-to-archive", "catch-all"):
        data = {**base, "name": name, "destinations": "archive"}
        assert admin.post("/admin/routing/rules", data=data).status_code == 303
    assert admin.post("/admin/routing/rules", data={**base, "name": "catch-all"}).status_code == 409
    assert [r.name for r in _effective(console).routing] == ["mr-to-archive", "catch-all"]
    moved = admin.post(
        "/admin/routing/rules/catch-all/move", data={"csrf_token": token, "direction": "up"}
    )
    assert moved.status_code == 303
    assert [r.name for r in _effective(console).routing] == ["catch-all", "mr-to-archive"]
    edited = admin.post(
        "/admin/routing/rules/catch-all",
        data={**base, "name": "catch-all", "modality": "CT", "destinations": ""},
    )
    assert edited.status_code == 303
    rule = _effective(console).routing[0]
    assert rule.when.modality == ["CT"] and rule.destinations == []
    # the dry-run beside the editor sees the edited rules: CT does not match, the MR rule does
    page = admin.get(f"/admin/routing?study_uid={study.study_uid}").text
    assert "routing-editor" in page and "mr-to-archive" in page
    explanation = page.split('id="route-explanation">')[1].split("</pre>")[0]
    assert "catch-all" in explanation and "archive" in explanation
    # a destination a rule uses cannot be deleted
    blocked = admin.post("/admin/destinations/archive/delete", data={"csrf_token": token})
    assert blocked.status_code == 409 and "mr-to-archive" in blocked.text
    assert (
        admin.post("/admin/routing/rules/catch-all/delete", data={"csrf_token": token}).status_code
        == 303
    )
    assert [r.name for r in _effective(console).routing] == ["mr-to-archive"]
    actions = {a for a in ("routing.add", "routing.move_up", "routing.update", "routing.delete")
               if _actions(console, a)}  # fmt: skip
    assert len(actions) == 4
    admin.post("/admin/routing/reset", data={"csrf_token": token})
    assert _effective(console).routing == []


def test_review_required_switched_in_the_console_applies_to_new_jobs(archived: Console) -> None:
    admin, token = _admin(archived)
    base = load_pipeline_configs(archived.settings.pipelines_dir)
    assert base["demo-2d"].review_required is False
    answer = admin.post(
        "/admin/pipelines/demo-2d/review", data={"csrf_token": token, "review_required": "true"}
    )
    assert answer.status_code == 303
    assert effective_pipeline_configs(base, archived.db)["demo-2d"].review_required is True
    assert "Send without review" in admin.get("/admin/pipelines").text
    # saving the pipeline's other settings keeps the review gate
    admin.post("/admin/pipelines/demo-2d", data={"csrf_token": token, "enabled": "on"})
    assert effective_pipeline_configs(base, archived.db)["demo-2d"].review_required is True
    assert _actions(archived, "pipeline.review_required") == ["demo-2d:"]
    missing = admin.post(
        "/admin/pipelines/nope/review", data={"csrf_token": token, "review_required": "true"}
    )
    assert missing.status_code == 404


@pytest.mark.skipif(shutil.which("storescp") is None, reason="DCMTK storescp not installed")
def test_destination_edited_in_the_console_is_used_by_a_real_dispatcher(
    settings: Settings, sqlite_db: Database, tmp_path: Path
) -> None:
    """The file says the PACS listens on a dead port; the admin corrects it in the console, and a
    running dispatcher (built before the edit) delivers to a real storescp there."""
    dead, live = free_port(), free_port()
    data = settings.model_dump()
    data["destinations"] = [
        {"name": "pacs", "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": dead}
    ]
    data["dispatch"] = {**data["dispatch"], "timeout_s": 5.0}
    cfg = Settings(**data)
    console = make_console(cfg, sqlite_db)
    dispatcher = Dispatcher(cfg, sqlite_db)
    job_id = add_job_with_artifacts(sqlite_db, cfg, make_results(tmp_path / "made"))
    with sqlite_db.write() as session:
        plan_deliveries(session, session.get_one(Job, job_id), ["pacs"], held=False)
    assert dispatcher.settings.destination("pacs").port == dead  # what it read from the file
    folder = tmp_path / "storescp"
    peer = start_storescp(folder, live)
    try:
        admin, token = _admin(console)
        answer = admin.post(
            "/admin/destinations/pacs",
            data={"csrf_token": token, "enabled": "on", "kind": "dicom", "ae_title": "STORESCP",
                  "host": "127.0.0.1", "port": str(live)},
        )  # fmt: skip
        assert answer.status_code == 303
        test = admin.post("/admin/destinations/pacs/test", data={"csrf_token": token})
        assert test.status_code == 303
        assert "pacs: OK" in admin.get("/admin/destinations").text
        dispatcher._settings._at = -float("inf")  # the next refresh is due (REFRESH_S passed)
        assert dispatcher.settings.destination("pacs").port == live
        assert dispatcher.run_once() == 4
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert len([p for p in folder.rglob("*") if p.is_file()]) == 4
    page = admin.get("/admin/destinations").text
    assert utcnow().strftime("%Y-%m-%d") in page.split('id="dest-pacs"')[1].split("</tr>")[0]


def test_settings_refresher_rebuilds_only_when_an_edit_is_seen(
    settings: Settings, sqlite_db: Database
) -> None:
    calls = []
    refresher = settings_refresher(settings, sqlite_db)
    original = refresher._compute

    def counted() -> Settings:
        calls.append(1)
        return original()

    refresher._compute = counted
    refresher.get()
    refresher._at = -float("inf")
    refresher.get()
    assert len(calls) == 1  # nothing edited: the version query alone ran
    with sqlite_db.write() as session:
        config_overrides.set_override(
            session,
            "destination:new",
            {"definition": {"kind": "folder", "path": "/tmp/new"}},
            "admin",
        )
    refresher._at = -float("inf")
    assert [d.name for d in refresher.get().destinations] == ["new"]
    assert len(calls) == 2
    with sqlite_db.write() as session:
        config_overrides.delete_override(session, "destination:new")
    refresher._at = -float("inf")
    assert refresher.get().destinations == []
