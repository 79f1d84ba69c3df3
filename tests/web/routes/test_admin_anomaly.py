"""The admin pipelines page edits the anomaly task like the others: device, weight, threshold."""

from __future__ import annotations

from tests.web.conftest import Console, csrf_of


def test_anomaly_task_is_editable(console: Console) -> None:
    admin = console.login("admin1")
    page = admin.get("/admin/pipelines")
    assert 'name="anomaly.demo-anomaly-padim.device"' in page.text
    assert 'name="anomaly.threshold" value=""' in page.text  # the card's threshold applies
    token = csrf_of(admin, "/admin/pipelines")
    bad = admin.post(
        "/admin/pipelines/demo-2d",
        data={"csrf_token": token, "enabled": "on", "anomaly.threshold": "-1"},
    )
    assert bad.status_code == 400 and "anomaly" in bad.text
    ok = admin.post(
        "/admin/pipelines/demo-2d",
        data={
            "csrf_token": token,
            "enabled": "on",
            "anomaly.threshold": "12.5",
            "anomaly.demo-anomaly-padim.device": "cpu",
        },
    )
    assert ok.status_code == 303
    demo = {p["name"]: p for p in admin.get("/api/pipelines").json()}["demo-2d"]
    assert demo["members"]["anomaly"] == [
        {"model": "demo-anomaly-padim", "weight": 1.0, "device": "cpu"}
    ]
    assert 'name="anomaly.threshold" value="12.5"' in admin.get("/admin/pipelines").text
