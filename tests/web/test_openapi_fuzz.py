"""Property-based run of the JSON API against its own OpenAPI spec (schemathesis): never a 5xx,
and every response body matches its declared schema.

Hypothesis drives each operation's strategy directly (schemathesis' pytest plugin does not load
under this pytest version); the assertions are schemathesis' own checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from core.config import Settings
from node.db.engine import Database
from node.db.repositories import users as user_repo
from tests.web.conftest import make_console, with_archive
from tests.web.processed import MR_SERIES, build_processed_study

TOKEN = "fuzz-token-read-review-admin"
HOOK_SECRET = "fuzz-hook-secret"
pytestmark = pytest.mark.slow


@pytest.fixture
def api_schema(settings: Settings, sqlite_db: Database, tmp_path: Path):  # type: ignore[no-untyped-def]
    # the Orthanc hook (web/routes/hooks.py) answers 503 by design while no secret is configured
    full = with_archive(
        settings.model_copy(update={"hook_secret": HOOK_SECRET}), tmp_path / "archive"
    )
    if MR_SERIES.is_dir():
        build_processed_study(full, sqlite_db)
    console = make_console(full, sqlite_db)
    with sqlite_db.write() as session:
        admin = user_repo.get_by_username(session, "admin1")
        assert admin is not None
        user_repo.create_api_token(session, admin, "fuzz", TOKEN, ["read", "review", "admin"])
    return schemathesis.openapi.from_asgi("/openapi.json", console.app)


def test_api_never_fails_with_5xx(api_schema) -> None:  # type: ignore[no-untyped-def]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert {
        "/api/health",
        "/api/studies",
        "/api/studies/{study_uid}/results",
        "/api/stats",
    } <= paths
    for operation in operations:

        @settings(
            max_examples=40,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
        @given(case=operation.as_strategy())
        def check(case: schemathesis.Case) -> None:
            response = case.call(
                headers={"Authorization": f"Bearer {TOKEN}", "X-Pacsnode-Hook-Secret": HOOK_SECRET}
            )
            checks = [not_a_server_error]
            # the hook (web/routes/hooks.py, dispatch engineer) answers 422 with a string detail,
            # which its OpenAPI entry does not document; body schemas are enforced everywhere else
            if not (case.operation.path.startswith("/api/hooks/") and response.status_code == 422):
                checks.append(response_schema_conformance)
            case.validate_response(response, checks=checks)
            anonymous = case.call(allow_redirects=False)
            assert anonymous.status_code < 500, (case.operation.path, anonymous.text)
            if not case.operation.path.startswith("/api/"):  # console action or download
                if anonymous.status_code == 303:
                    assert anonymous.headers["location"][0].startswith("/login")
                else:  # 401: a generated bad token; 403: CSRF comes before the login check
                    assert anonymous.status_code in (401, 403, 404, 405, 422), anonymous.status_code
            elif case.operation.path not in ("/api/health", "/api/hooks/orthanc"):
                assert anonymous.status_code in (401, 404, 405, 422), anonymous.status_code

        check()
