"""Route x caller matrix: every route the app serves, called anonymously, as each role's console
session, and with API tokens of each scope (and owners of each role).

The routes come from the app itself (``app.routes`` flattened through FastAPI's route contexts),
not from a list kept here: a route without a rule in ``RULES`` fails the suite, so no route ships
without an access decision. Denied callers must get exactly 303-to-login (anonymous page), 401
(anonymous API) or 403 (wrong role, scope or credential kind); allowed callers a non-error answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from core.domain import Role
from node.db.repositories import users as user_repo
from tests.web.conftest import Console, csrf_of, make_console, with_archive
from tests.web.processed import MR_SERIES, ProcessedStudy, build_processed_study

# who may call a route
PUBLIC = "public"  # everyone, same answer (PUBLIC_STATUS)
SESSION = "session"  # any logged-in console session; API tokens get 403
READ, REVIEW, ADMIN = "read", "review", "admin"  # roles, and the token scope of the same name
HOOKS = "hooks"  # an API token with the hooks scope, or the shared secret; sessions get 403
PREDICT = "predict"  # radiologists and admins; their tokens need the predict scope
ROLES_FOR = {
    SESSION: {"viewer", "radiologist", "admin"},
    READ: {"viewer", "radiologist", "admin"},
    REVIEW: {"radiologist", "admin"},
    ADMIN: {"admin"},
    PREDICT: {"radiologist", "admin"},
}
HOOK_SECRET = "matrix-hook-secret"

# (method, path) -> (who may, form data); every route of the app needs a line here
RULES: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("GET", "/openapi.json"): (PUBLIC, {}),
    ("GET", "/docs"): (PUBLIC, {}),
    ("GET", "/login"): (PUBLIC, {}),
    ("POST", "/login"): (PUBLIC, {"username": "ghost", "password": "wrong password"}),
    ("GET", "/password/forgot"): (PUBLIC, {}),
    ("POST", "/password/forgot"): (PUBLIC, {"login": "ghost"}),
    ("GET", "/password/reset"): (PUBLIC, {}),
    ("POST", "/password/reset"): (
        PUBLIC,
        {"token": "bad", "password": "x" * 12, "password2": "x" * 12},
    ),
    ("GET", "/register"): (PUBLIC, {}),
    ("POST", "/register"): (PUBLIC, {"username": "new", "password": "x" * 12}),
    ("GET", "/api/health"): (PUBLIC, {}),
    ("POST", "/logout"): (SESSION, {}),
    ("GET", "/account"): (SESSION, {}),
    ("POST", "/account/password"): (SESSION, {"current": "wrong", "password": "x" * 12}),
    ("GET", "/"): (READ, {}),
    ("GET", "/studies"): (READ, {}),
    ("GET", "/worklist"): (READ, {}),
    ("GET", "/worklist/rows"): (READ, {}),
    ("GET", "/studies/{study_uid}"): (READ, {}),
    ("GET", "/studies/{study_uid}/download.zip"): (READ, {}),
    ("GET", "/artifacts/{artifact_id}/download"): (READ, {}),
    ("GET", "/jobs/{job_id}/export/{which}"): (READ, {}),
    ("GET", "/review/{job_id}"): (READ, {}),
    ("GET", "/review/{job_id}/frames/{index}.png"): (READ, {}),
    ("GET", "/review/{job_id}/masks/{index}.png"): (READ, {}),
    ("GET", "/review/{job_id}/heatmap/{index}.png"): (READ, {}),
    ("GET", "/review/{job_id}/explanation/{index}.png"): (READ, {}),
    ("GET", "/review/{job_id}/anomaly/{index}.png"): (READ, {}),
    ("GET", "/review/{job_id}/denoised/{index}.png"): (READ, {}),
    ("GET", "/api/models"): (READ, {}),
    ("GET", "/api/pipelines"): (READ, {}),
    ("GET", "/api/studies"): (READ, {}),
    ("GET", "/api/studies/{study_uid}/results"): (READ, {}),
    ("GET", "/api/jobs"): (READ, {}),
    ("GET", "/api/stats"): (READ, {}),
    ("GET", "/metrics"): (READ, {}),
    ("GET", "/studies/upload"): (REVIEW, {}),
    ("POST", "/studies/upload"): (REVIEW, {}),
    ("POST", "/studies/{study_uid}/complete"): (REVIEW, {}),
    ("POST", "/review/{job_id}/approve"): (REVIEW, {}),
    ("POST", "/review/{job_id}/reject"): (REVIEW, {"reason": "wrong side"}),
    ("POST", "/review/{job_id}/comment"): (REVIEW, {"text": "ok"}),
    ("POST", "/jobs/{job_id}/rerun"): (REVIEW, {}),
    ("POST", "/deliveries/{delivery_id}/resend"): (REVIEW, {}),
    ("GET", "/jobs"): (REVIEW, {}),
    ("GET", "/jobs/rows"): (REVIEW, {}),
    ("POST", "/jobs/{job_id}/retry"): (REVIEW, {}),
    ("POST", "/jobs/{job_id}/cancel"): (REVIEW, {}),
    ("POST", "/jobs/{job_id}/rerun-with"): (REVIEW, {"pipeline": "not-a-pipeline"}),
    ("POST", "/deliveries/resend-failed"): (REVIEW, {}),
    ("GET", "/admin"): (ADMIN, {}),
    ("GET", "/admin/users"): (ADMIN, {}),
    ("POST", "/admin/users"): (ADMIN, {"username": "made-by-{caller}", "role": "viewer"}),
    ("POST", "/admin/users/{user_id}/role"): (ADMIN, {"role": "viewer"}),
    ("POST", "/admin/users/{user_id}/active"): (ADMIN, {"active": "true"}),
    ("POST", "/admin/users/{user_id}/reset-link"): (ADMIN, {}),
    ("POST", "/admin/users/{user_id}/unlock"): (ADMIN, {}),
    ("GET", "/admin/tokens"): (ADMIN, {}),
    ("POST", "/admin/tokens"): (ADMIN, {"name": "t-{caller}", "scopes": "read"}),
    ("POST", "/admin/tokens/{token_id}/revoke"): (ADMIN, {}),
    ("GET", "/admin/destinations"): (ADMIN, {}),
    ("POST", "/admin/destinations/{name}/test"): (ADMIN, {}),
    ("POST", "/admin/destinations/{name}/enabled"): (ADMIN, {"enabled": "true"}),
    ("GET", "/admin/destinations/{name}/edit"): (ADMIN, {}),
    ("POST", "/admin/destinations"): (
        ADMIN,
        {
            "name": "d-{caller}",
            "kind": "dicom",
            "ae_title": "PACS",
            "host": "127.0.0.1",
            "port": "104",
        },
    ),
    ("POST", "/admin/destinations/{name}"): (
        ADMIN,
        {"kind": "folder", "path": "/tmp/pacsnode-matrix", "enabled": "on"},
    ),
    ("POST", "/admin/destinations/{name}/reset"): (ADMIN, {}),
    ("POST", "/admin/destinations/{name}/delete"): (ADMIN, {}),  # after every other name rule
    ("POST", "/admin/routing/rules"): (ADMIN, {"name": "r-{caller}", "destinations": "archive"}),
    ("POST", "/admin/routing/rules/{rule}"): (ADMIN, {"name": "renamed", "modality": "CT"}),
    ("POST", "/admin/routing/rules/{rule}/move"): (ADMIN, {"direction": "down"}),
    ("POST", "/admin/routing/rules/{rule}/delete"): (ADMIN, {}),
    ("POST", "/admin/routing/reset"): (ADMIN, {}),
    ("POST", "/admin/pipelines/{name}/review"): (ADMIN, {"review_required": "true"}),
    ("GET", "/worklist/export/{which}"): (REVIEW, {}),
    ("GET", "/studies/export/{which}"): (REVIEW, {}),
    ("GET", "/jobs/export/{which}"): (REVIEW, {}),
    ("POST", "/jobs/{job_id}/send"): (REVIEW, {"destination": "archive"}),
    ("POST", "/admin/allowlist"): (ADMIN, {"entries": "MODALITY1\nCT2@127.0.0.1"}),
    ("GET", "/admin/pipelines"): (ADMIN, {}),
    ("POST", "/admin/pipelines/{name}"): (ADMIN, {"enabled": "on"}),
    ("POST", "/admin/pipelines/{name}/reset"): (ADMIN, {}),
    ("GET", "/admin/routing"): (ADMIN, {}),
    ("GET", "/admin/audit"): (ADMIN, {}),
    ("GET", "/admin/audit.csv"): (ADMIN, {}),
    ("POST", "/admin/users/{user_id}/email"): (ADMIN, {"email": "v-{caller}@example.test"}),
    ("POST", "/admin/users/{user_id}/delete"): (ADMIN, {}),  # after every other user_id rule
    ("POST", "/studies/{study_uid}/delete"): (ADMIN, {"confirm": "yes"}),  # last of study_uid's
    ("POST", "/api/hooks/orthanc"): (HOOKS, {}),
    ("POST", "/api/predict"): (PREDICT, {"pipeline": "demo-2d"}),
    ("POST", "/api/predict/batch"): (PREDICT, {"pipeline": "demo-2d"}),
    ("GET", "/api/predict/batch/{batch_id}"): (PREDICT, {}),
}
# public routes answer the same to everyone (bad input on purpose; no SMTP; registration off)
PUBLIC_STATUS = {
    ("POST", "/login"): 401,
    ("POST", "/password/forgot"): 400,
    ("GET", "/password/reset"): 400,
    ("POST", "/password/reset"): 400,
    ("GET", "/register"): 404,
    ("POST", "/register"): 404,
}


@dataclass(frozen=True)
class Caller:
    """Who calls: nobody, a console session of ``role``, or a token of ``role``'s user."""

    name: str
    role: str | None = None
    scopes: tuple[str, ...] | None = None  # None: a console session (or anonymous)

    @property
    def token(self) -> str:
        return f"matrix-token-{self.name}"


ALL_SCOPES = ("read", "review", "hooks", "admin", "predict")
CALLERS = [
    Caller("anonymous"),
    *(Caller(f"{role}-session", role) for role in ("viewer", "radiologist", "admin")),
    # an admin's token is limited by its scope alone ...
    *(Caller(f"admin-token-{scope}", "admin", (scope,)) for scope in ALL_SCOPES),
    # ... other users' tokens by their role, whatever scopes they carry
    *(Caller(f"{role}-token-all", role, ALL_SCOPES) for role in ("viewer", "radiologist")),
]


def app_routes(console: Console) -> set[tuple[str, str]]:
    """Every (method, path) the app serves, read from the app (HEAD is GET's shadow)."""
    return {
        (method, str(context.path))
        for context in iter_route_contexts(console.app.routes)
        if context.methods
        for method in context.methods
        if method != "HEAD"
    }


def expected_ok(caller: Caller, who: str, path: str, status: int) -> bool:
    if caller.role is None:  # anonymous
        if who == HOOKS:
            return status == 403
        return status == (401 if path.startswith("/api/") or path == "/metrics" else 303)
    if caller.scopes is None:  # console session
        if who == HOOKS:
            return status == 403
        allowed = caller.role in ROLES_FOR[who]
    elif who == HOOKS:
        allowed = "hooks" in caller.scopes
    elif who == SESSION:
        allowed = False
    else:
        allowed = caller.role in ROLES_FOR[who] and who in caller.scopes
    return (status < 500 and status not in (401, 403)) if allowed else status == 403


@pytest.fixture
def matrix(settings, sqlite_db, tmp_path):  # type: ignore[no-untyped-def]
    """A console over a processed study, with the hook secret set and every caller's token."""
    if not MR_SERIES.is_dir():
        pytest.skip(f"sample data missing: {MR_SERIES} (see /work/shared/data/README.md)")
    full = with_archive(settings.model_copy(update={"hook_secret": HOOK_SECRET}), tmp_path / "a")
    study = build_processed_study(full, sqlite_db)
    console = make_console(full, sqlite_db)
    with sqlite_db.write() as session:
        admin = user_repo.get_by_username(session, "admin")
        assert admin is not None  # token 1: the one the revoke route revokes
        user_repo.create_api_token(session, admin, "victim", "matrix-victim", ["read"])
        for caller in CALLERS:
            if caller.scopes is not None:
                assert caller.role is not None
                owner = user_repo.get_by_username(session, caller.role + "1")
                assert owner is not None
                user_repo.create_api_token(session, owner, caller.name, caller.token, caller.scopes)
    return console, study


def _params(console: Console, study: ProcessedStudy) -> dict[str, str]:
    with console.db.read() as session:
        viewer = user_repo.get_by_username(session, "viewer1")
        assert viewer is not None and viewer.role == Role.VIEWER
        user_id = str(viewer.id)
    return {
        "study_uid": study.study_uid,
        "artifact_id": "1",
        "job_id": str(study.job_id),
        "which": "json",
        "index": "3",
        "delivery_id": "1",
        "user_id": user_id,
        "token_id": "1",
        "name": "archive",
        "rule": "r-admin-session",
        "batch_id": "1.not-a-signature",
    }


def _client(console: Console, caller: Caller) -> tuple[TestClient, dict[str, str], str]:
    if caller.scopes is not None:
        return console.client(), {"Authorization": f"Bearer {caller.token}"}, ""
    if caller.role is None:
        client = console.client()
        return client, {}, csrf_of(client, "/login")
    client = console.login(caller.role + "1")
    return client, {}, csrf_of(client, "/account")


def _call(console: Console, caller: Caller, method: str, path: str, data: dict[str, str]) -> int:
    client, headers, csrf = _client(console, caller)
    if method == "GET":
        return client.get(path, headers=headers).status_code
    form = {k: v.format(caller=caller.name) for k, v in data.items()}
    if csrf:
        form["csrf_token"] = csrf
    if path == "/api/hooks/orthanc":  # a session sends only its cookie, which must not pass
        return client.post(path, json={"study_id": "abc"}, headers=headers).status_code
    if path.startswith("/admin/pipelines/") and path.count("/") == 3:
        path = "/admin/pipelines/not-a-pipeline"  # no pipelines installed in tests: 404 is fine
    if path in ("/studies/upload", "/api/predict", "/api/predict/batch"):
        files = {"files": ("x.txt", b"not an image", "text/plain")}
        return client.post(path, data=form, files=files, headers=headers).status_code
    return client.post(path, data=form, headers=headers).status_code


def test_every_route_of_the_app_has_a_rule(matrix) -> None:  # type: ignore[no-untyped-def]
    console, _ = matrix
    served = app_routes(console)
    assert served == set(RULES), (
        f"routes without a rule: {served - set(RULES)}; rules without a route: "
        f"{set(RULES) - served}"
    )


def test_hook_secret_alone_is_accepted(matrix) -> None:  # type: ignore[no-untyped-def]
    console, _ = matrix
    response = console.client().post(
        "/api/hooks/orthanc",
        json={"study_id": "abc"},
        headers={"X-Pacsnode-Hook-Secret": HOOK_SECRET},
    )
    assert response.status_code == 422, response.text  # past the check; no Orthanc source set


@pytest.mark.parametrize("caller", CALLERS, ids=[c.name for c in CALLERS])
def test_route_caller_matrix(matrix, caller: Caller) -> None:  # type: ignore[no-untyped-def]
    console, study = matrix
    params = _params(console, study)
    problems = []
    for (method, template), (who, data) in RULES.items():
        path = template.format(**params)
        status = _call(console, caller, method, path, data)
        if who == PUBLIC:
            ok = status == PUBLIC_STATUS.get((method, template), 200)
        else:
            ok = expected_ok(caller, who, template, status)
        if not ok:
            problems.append(f"{method} {template} as {caller.name} ({who}) -> {status}")
    assert not problems, "\n".join(problems)
