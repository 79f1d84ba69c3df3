"""The OpenAPI schema: every operation an API token can call, its security and its error answers.

The console's routers hide themselves from the schema (they serve pages), yet a token can call
their actions (approve, rerun, upload, admin changes) and downloads. Which routes a token may call
is read from the routes themselves (``web.deps.token_scope_of``), so the schema cannot drift from
the access rules: every token-callable route except an HTML page is documented, with the scope it
needs, the console-session alternative, and the error statuses the app really answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from web.deps import token_scope_of

SESSION_COOKIE = "pacsnode_session"
SECURITY_SCHEMES: dict[str, Any] = {
    "bearerToken": {
        "type": "http",
        "scheme": "bearer",
        "description": "API token from Admin > Tokens; the operation names the scope it needs "
        "(read, review, hooks, admin, predict).",
    },
    "consoleSession": {
        "type": "apiKey",
        "in": "cookie",
        "name": SESSION_COOKIE,
        "description": "Console login; unsafe methods also need the form's csrf_token field or "
        "an X-CSRF-Token header.",
    },
    "hookSecret": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Pacsnode-Hook-Secret",
        "description": "The shared hook_secret, for the Orthanc hook only.",
    },
}
ERROR_SCHEMA = {
    "title": "ErrorOut",
    "type": "object",
    "properties": {"detail": {"title": "Detail", "type": "string"}},
    "required": ["detail"],
}
ERRORS = {
    "401": "no or invalid credentials",
    "403": "the caller's role or token scope does not allow this (or the CSRF token is wrong)",
    "404": "no such object",
    "413": "request body over the limit for this route",
}
MEDIA = {".png": "image/png", "/download": "application/dicom", "/export/": "*/*"}


def _is_download(path: str) -> bool:
    return path.endswith((".png", "/download")) or "/export/" in path


class _Documented(RouteContext):
    """A route context forced into the schema (a console router hides its routes by default)."""

    include_in_schema = True


def api_routes(app: FastAPI) -> list[RouteContext]:
    """Every API route of ``app`` with its effective path, methods and dependencies (FastAPI
    keeps included routers as such in ``app.routes``; this flattens them)."""
    return [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, APIRoute)]


def documented(context: RouteContext) -> bool:
    """In the schema: the JSON API, and every other route a token can call except HTML pages."""
    path = str(context.path)
    if path.startswith("/api/"):
        return bool(context.include_in_schema)
    if token_scope_of(context.dependant) is None:
        return False
    return "GET" not in (context.methods or ()) or _is_download(path)


def _error(description: str) -> dict[str, Any]:
    ref = {"$ref": "#/components/schemas/ErrorOut"}
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _decorate(operation: dict[str, Any], route: RouteContext, method: str) -> None:
    scope = token_scope_of(route.dependant)
    if "security" not in operation:
        operation["security"] = (
            [{"bearerToken": [scope]}, {"consoleSession": []}] if scope is not None else []
        )
    responses: dict[str, Any] = operation.setdefault("responses", {})
    wanted = [] if method == "get" else ["413"]
    if operation["security"]:
        wanted += ["401", "403"]
    path = str(route.path)
    if "{" in path:
        wanted.append("404")
    for status in wanted:
        responses.setdefault(status, _error(ERRORS[status]))
    if path.startswith("/api/"):
        return
    if method != "get":  # console actions answer with a redirect to the page that shows the result
        responses.pop("200", None)
        responses["303"] = {"description": "done; Location names the page that shows the result"}
        return
    media = next(m for key, m in MEDIA.items() if key in path)
    responses["200"] = {"description": "the file", "content": {media: {}}}


def install_openapi(app: FastAPI) -> None:
    """Replace ``app.openapi`` by the schema of the documented routes (see :func:`documented`)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        chosen = [_Documented(c.route, c._route_context) for c in api_routes(app) if documented(c)]
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=chosen
        )
        by_operation = {(m.lower(), str(c.path)): c for c in chosen for m in c.methods or ()}
        components = spec.setdefault("components", {})
        components["securitySchemes"] = SECURITY_SCHEMES
        components.setdefault("schemas", {})["ErrorOut"] = ERROR_SCHEMA
        for path, operations in spec["paths"].items():
            for method, operation in operations.items():
                _decorate(operation, by_operation[(method, path)], method)
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]
