"""Route x role matrix: every console and API route called anonymously and as each role.

Denied callers must get exactly 303-to-login (anonymous page), 401 (anonymous API) or 403 (wrong
role); allowed callers must get a non-error answer. The test also fails when a route exists that the
matrix does not list, so a new route cannot ship without an access decision.
"""

from __future__ import annotations

import pytest
from fastapi.routing import APIRoute

from tests.web.conftest import Console, csrf_of
from tests.web.processed import ProcessedStudy

ANY, READ, REVIEW, ADMIN, PUBLIC = "any", "read", "review", "admin", "public"
ALLOWED = {
    READ: {"viewer", "radiologist", "admin"},
    REVIEW: {"radiologist", "admin"},
    ADMIN: {"admin"},
    ANY: {"viewer", "radiologist", "admin"},
}

# (method, path template, who may, form data)
MATRIX: list[tuple[str, str, str, dict[str, str]]] = [
    ("GET", "/login", PUBLIC, {}),
    ("POST", "/login", PUBLIC, {"username": "ghost", "password": "wrong password"}),
    ("GET", "/password/forgot", PUBLIC, {}),
    ("POST", "/password/forgot", PUBLIC, {"login": "ghost"}),
    ("GET", "/password/reset", PUBLIC, {}),
    (
        "POST",
        "/password/reset",
        PUBLIC,
        {"token": "bad", "password": "x" * 12, "password2": "x" * 12},
    ),
    ("GET", "/register", PUBLIC, {}),
    ("POST", "/register", PUBLIC, {"username": "new", "password": "x" * 12}),
    ("GET", "/api/health", PUBLIC, {}),
    ("POST", "/logout", ANY, {}),
    ("GET", "/account", ANY, {}),
    ("POST", "/account/password", ANY, {"current": "wrong", "password": "x" * 12}),
    ("GET", "/", READ, {}),
    ("GET", "/studies", READ, {}),
    ("GET", "/studies/{study_uid}", READ, {}),
    ("GET", "/artifacts/{artifact_id}/download", READ, {}),
    ("GET", "/jobs/{job_id}/export/{which}", READ, {}),
    ("GET", "/review/{job_id}", READ, {}),
    ("GET", "/review/{job_id}/frames/{index}.png", READ, {}),
    ("GET", "/review/{job_id}/masks/{index}.png", READ, {}),
    ("GET", "/api/models", READ, {}),
    ("GET", "/api/pipelines", READ, {}),
    ("GET", "/api/studies", READ, {}),
    ("GET", "/api/studies/{study_uid}/results", READ, {}),
    ("GET", "/api/jobs", READ, {}),
    ("GET", "/api/stats", READ, {}),
    ("GET", "/studies/upload", REVIEW, {}),
    ("POST", "/studies/upload", REVIEW, {}),
    ("POST", "/studies/{study_uid}/complete", REVIEW, {}),
    ("POST", "/review/{job_id}/approve", REVIEW, {}),
    ("POST", "/review/{job_id}/reject", REVIEW, {"reason": "wrong side"}),
    ("POST", "/review/{job_id}/comment", REVIEW, {"text": "ok"}),
    ("POST", "/jobs/{job_id}/rerun", REVIEW, {}),
    ("POST", "/deliveries/{delivery_id}/resend", REVIEW, {}),
    ("GET", "/admin", ADMIN, {}),
    ("GET", "/admin/users", ADMIN, {}),
    ("POST", "/admin/users", ADMIN, {"username": "made-by-{role}", "role": "viewer"}),
    ("POST", "/admin/users/{user_id}/role", ADMIN, {"role": "viewer"}),
    ("POST", "/admin/users/{user_id}/active", ADMIN, {"active": "true"}),
    ("POST", "/admin/users/{user_id}/reset-link", ADMIN, {}),
    ("POST", "/admin/users/{user_id}/unlock", ADMIN, {}),
    ("GET", "/admin/tokens", ADMIN, {}),
    ("POST", "/admin/tokens", ADMIN, {"name": "t-{role}", "scopes": "read"}),
    ("POST", "/admin/tokens/{token_id}/revoke", ADMIN, {}),
    ("GET", "/admin/destinations", ADMIN, {}),
    ("POST", "/admin/destinations/{name}/test", ADMIN, {}),
    ("POST", "/admin/destinations/{name}/enabled", ADMIN, {"enabled": "true"}),
    ("POST", "/admin/allowlist", ADMIN, {"entries": "MODALITY1\nCT2@127.0.0.1"}),
    ("GET", "/admin/pipelines", ADMIN, {}),
    ("POST", "/admin/pipelines/{name}", ADMIN, {"enabled": "on"}),
    ("POST", "/admin/pipelines/{name}/reset", ADMIN, {}),
    ("GET", "/admin/routing", ADMIN, {}),
    ("GET", "/admin/audit", ADMIN, {}),
]
# public routes answer the same to everyone (bad input on purpose; no SMTP; registration off)
PUBLIC_STATUS = {
    ("POST", "/login"): 401,
    ("POST", "/password/forgot"): 400,
    ("GET", "/password/reset"): 400,
    ("POST", "/password/reset"): 400,
    ("GET", "/register"): 404,
    ("POST", "/register"): 404,
}
SKIP_ROUTES = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/api/hooks/orthanc"}


def _params(study: ProcessedStudy) -> dict[str, str]:
    return {
        "study_uid": study.study_uid,
        "artifact_id": "1",
        "job_id": str(study.job_id),
        "which": "json",
        "index": "3",
        "delivery_id": "1",
        "user_id": "2",
        "token_id": "1",
        "name": "archive",
    }


def _call(
    console: Console,
    role: str | None,
    method: str,
    template: str,
    data: dict[str, str],
    study: ProcessedStudy,
) -> int:
    client = console.login(role + "1") if role else console.client()
    csrf = csrf_of(client, "/login" if role is None else "/account")
    path = template.format(**_params(study))
    if method == "GET":
        return client.get(path).status_code
    form = {k: v.format(role=role or "anon") for k, v in data.items()}
    if path.startswith("/admin/pipelines/") and path.count("/") == 3:
        path = "/admin/pipelines/not-a-pipeline"  # no pipelines installed in tests: 404 is fine
    if path == "/studies/upload":
        return client.post(
            path,
            data={"csrf_token": csrf},
            files={"files": ("x.txt", b"not an image", "text/plain")},
        ).status_code
    return client.post(path, data={**form, "csrf_token": csrf}).status_code


def test_matrix_lists_every_route(processed: tuple[Console, ProcessedStudy]) -> None:
    from web.routes import admin, api, auth, dashboard, review, studies

    routes = {
        (method, route.path)
        for module in (admin, api, auth, dashboard, review, studies)
        for route in module.router.routes
        if isinstance(route, APIRoute)
        for method in route.methods
        if route.path not in SKIP_ROUTES
    }
    listed = {(m, p) for m, p, _, _ in MATRIX}
    assert routes == listed, f"unlisted: {routes - listed}; stale: {listed - routes}"


@pytest.mark.parametrize("role", [None, "viewer", "radiologist", "admin"])
def test_route_role_matrix(processed: tuple[Console, ProcessedStudy], role: str | None) -> None:
    console, study = processed
    problems = []
    for method, template, who, data in MATRIX:
        status = _call(console, role, method, template, data, study)
        if who == PUBLIC:
            ok = status == PUBLIC_STATUS.get((method, template), 200)
        elif role is None:
            ok = status == (401 if template.startswith("/api/") else 303)
        elif role in ALLOWED[who]:
            ok = status < 500 and status not in (401, 403)
        else:
            ok = status == 403
        if not ok:
            problems.append(f"{method} {template} as {role or 'anonymous'} -> {status}")
    assert not problems, "\n".join(problems)
