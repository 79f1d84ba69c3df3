"""Admin pages: users, tokens, destinations (test button), allowlist, pipelines, routing, audit."""

from __future__ import annotations

import re

from node.db.orm import AuditEvent, ConfigOverride, User
from tests.web.conftest import Console, csrf_of, login
from tests.web.processed import ProcessedStudy


def test_create_user_prints_password_once_and_role_changes(console: Console) -> None:
    admin = console.login("admin1")
    token = csrf_of(admin, "/admin/users")
    assert (
        admin.post(
            "/admin/users", data={"csrf_token": token, "username": "dr.who", "role": "radiologist"}
        ).status_code
        == 303
    )
    page = admin.get("/admin/users").text
    password = re.search(r"Password for dr.who \(shown once\): (\S+)<", page)
    assert password, page
    assert "Password for dr.who" not in admin.get("/admin/users").text  # gone on the next view
    assert login(console.client(), "dr.who", password.group(1)).status_code == 303
    duplicate = admin.post("/admin/users", data={"csrf_token": token, "username": "DR.WHO"})
    assert duplicate.status_code == 400 and "already exists" in duplicate.text
    with console.db.read() as session:
        who_id = session.query(User).filter_by(username="dr.who").one().id
        my_id = session.query(User).filter_by(username="admin1").one().id
    admin.post(f"/admin/users/{who_id}/active", data={"csrf_token": token, "active": "false"})
    assert login(console.client(), "dr.who", password.group(1)).status_code == 401
    own = admin.post(f"/admin/users/{my_id}/role", data={"csrf_token": token, "role": "viewer"})
    assert own.status_code == 409
    with console.db.read() as session:
        actions = [e.action for e in session.query(AuditEvent).order_by(AuditEvent.id)]
    assert "user.create" in actions and "user.disable" in actions


def test_api_token_created_in_console_works_once_shown(console: Console) -> None:
    admin = console.login("admin1")
    token = csrf_of(admin, "/admin/tokens")
    admin.post(
        "/admin/tokens",
        data={"csrf_token": token, "name": "script", "owner": "viewer1", "scopes": ["read"]},
    )
    secret = re.search(
        r"Token \S*script\S* \(shown once\): ([\w-]+)", admin.get("/admin/tokens").text
    )
    assert secret
    api = console.client()
    assert (
        api.get("/api/jobs", headers={"Authorization": f"Bearer {secret.group(1)}"}).status_code
        == 200
    )


def test_destination_test_button_pings_folder(processed: tuple[Console, ProcessedStudy]) -> None:
    console, _ = processed
    admin = console.login("admin1")
    token = csrf_of(admin, "/admin/destinations")
    assert (
        admin.post("/admin/destinations/archive/test", data={"csrf_token": token}).status_code
        == 303
    )
    page = admin.get("/admin/destinations").text
    assert "archive: OK" in page
    assert (
        admin.post("/admin/destinations/nope/test", data={"csrf_token": token}).status_code == 404
    )


def test_allowlist_is_validated_and_stored(console: Console) -> None:
    admin = console.login("admin1")
    token = csrf_of(admin, "/admin/destinations")
    bad = admin.post(
        "/admin/allowlist", data={"csrf_token": token, "entries": "WAY_TOO_LONG_AE_TITLE_X"}
    )
    assert bad.status_code == 400
    admin.post("/admin/allowlist", data={"csrf_token": token, "entries": "CT1\nMR2@10.0.0.5\n"})
    with console.db.read() as session:
        row = session.get(ConfigOverride, "allowed_callers")
        assert row is not None and row.value["entries"] == [
            {"ae_title": "CT1", "host": None},
            {"ae_title": "MR2", "host": "10.0.0.5"},
        ]
    assert "MR2@10.0.0.5" in admin.get("/admin/destinations").text


def test_routing_dry_run_and_audit_filters(processed: tuple[Console, ProcessedStudy]) -> None:
    console, study = processed
    admin = console.login("admin1")
    page = admin.get(f"/admin/routing?study_uid={study.study_uid}")
    assert page.status_code == 200
    assert "route-explanation" in page.text or "not available" in page.text
    assert "No study with UID" in admin.get("/admin/routing?study_uid=1.2.3").text
    audit = admin.get("/admin/audit?action=auth.login&actor=admin1")
    assert audit.status_code == 200 and "auth.login" in audit.text and "viewer1" not in audit.text


def test_pipelines_page_degrades_without_definitions(console: Console) -> None:
    admin = console.login("admin1")
    page = admin.get("/admin/pipelines")
    assert page.status_code == 200


def test_pipeline_overrides_are_validated_and_applied(console: Console) -> None:
    admin = console.login("admin1")
    page = admin.get("/admin/pipelines")
    assert "demo-2d" in page.text and "demo-seg-unet" in page.text
    token = csrf_of(admin, "/admin/pipelines")
    bad = admin.post(
        "/admin/pipelines/demo-2d",
        data={"csrf_token": token, "enabled": "on", "segmentation.threshold": "1.5"},
    )
    assert bad.status_code == 400
    bad_device = admin.post(
        "/admin/pipelines/demo-2d",
        data={"csrf_token": token, "segmentation.demo-seg-unet.device": "tpu"},
    )
    assert bad_device.status_code == 400
    ok = admin.post(
        "/admin/pipelines/demo-2d",
        data={
            "csrf_token": token,
            "classification.threshold": "0.6",
            "segmentation.demo-seg-unet.device": "cpu",
            "segmentation.demo-seg-unet.weight": "0.8",
        },
    )
    assert ok.status_code == 303  # "enabled" unticked: the pipeline is switched off
    pipelines = {p["name"]: p for p in admin.get("/api/pipelines").json()}
    demo = pipelines["demo-2d"]
    assert demo["enabled"] is False
    unet = next(m for m in demo["members"]["segmentation"] if m["model"] == "demo-seg-unet")
    assert unet["device"] == "cpu" and unet["weight"] == 0.8 / 1.3
    assert demo["classes"]["classification"]  # class names read from the model cards
    assert (
        admin.post("/admin/pipelines/demo-2d/reset", data={"csrf_token": token}).status_code == 303
    )
    assert {p["name"]: p for p in admin.get("/api/pipelines").json()}["demo-2d"]["enabled"] is True
