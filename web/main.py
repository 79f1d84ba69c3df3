"""``create_app``: the console and JSON API as one FastAPI application over the node's database.

The app owns no state of its own: users, sessions, login throttling, studies and results all live in
the database, so several web processes can serve the same node.
On first start with no users an admin is created with a generated password printed once to the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from core.config import Settings
from core.domain import Role
from node.db.engine import Database
from node.db.repositories import audit
from node.db.repositories import users as user_repo
from web.deps import LoginRequired, WebState
from web.limits import BodyLimit, NoStore, limit_for
from web.openapi import install_openapi
from web.pages import STATIC_DIR, build_templates, redirect, render
from web.routes import (
    admin,
    admin_accounts,
    admin_config,
    api,
    auth,
    dashboard,
    exports,
    hooks,
    jobs,
    metrics,
    predict,
    review,
    review_images,
    send_results,
    studies,
    study_admin,
    uploads,
    worklist,
)
from web.security import generate_password, hash_password
from web.sessions import ServerSessions

log = logging.getLogger("pacsnode.web")
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)


def _wants_json(request: Request) -> bool:
    """The API, the schema, and any token-authenticated client (a machine, not a browser)."""
    return (
        request.url.path.startswith("/api/")
        or request.url.path in ("/openapi.json", "/docs", "/metrics")
        or "authorization" in request.headers
    )


class SecurityHeaders(BaseHTTPMiddleware):
    """Clickjacking, sniffing and script-injection defences on every response (HSTS behind HTTPS)."""

    def __init__(self, app: object, hsts: bool) -> None:
        super().__init__(app)  # type: ignore[arg-type]
        self.hsts = hsts

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        if self.hsts:
            response.headers.setdefault("Strict-Transport-Security", "max-age=31536000")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith("/docs"):
            response.headers.setdefault("Content-Security-Policy", CSP)
        return response


def ensure_first_admin(db: Database) -> str | None:
    """Create ``admin`` with a generated password when the node has no users; return the password."""
    with db.write() as session:
        if user_repo.count_users(session) > 0:
            return None
        password = generate_password()
        user_repo.create_user(session, "admin", hash_password(password), role=Role.ADMIN)
        audit.record(
            session,
            "user.create",
            entity_type="user",
            entity_id="admin",
            detail="first admin created at first start",
        )
    log.warning(
        "No console users existed: created user 'admin' with password %s "
        "(shown once; change it after logging in)",
        password,
    )
    return password


def _include_routers(app: FastAPI) -> None:
    # uploads before studies: /studies/{study_uid} would otherwise take /studies/upload
    first = (auth, dashboard, uploads, studies, review, review_images, admin, api, predict, hooks)
    for module in first:
        app.include_router(module.router)
    for module in (jobs, metrics, admin_accounts, study_admin, worklist, admin_config, exports):
        app.include_router(module.router)
    app.include_router(send_results.router)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if _wants_json(request):
            return JSONResponse(
                {"detail": "authentication required"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        target = request.url.path
        if request.url.query:
            target += "?" + request.url.query
        from urllib.parse import quote

        return redirect(f"/login?next={quote(target, safe='')}")

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        if _wants_json(request) or exc.status_code < 400:
            return JSONResponse(
                {"detail": exc.detail},
                status_code=exc.status_code,
                headers=getattr(exc, "headers", None),
            )
        return render(
            request,
            "error.html",
            {"status": exc.status_code, "detail": exc.detail},
            status_code=exc.status_code,
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if _wants_json(request):  # FastAPI's documented HTTPValidationError body
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return render(request, "error.html", {"status": 422, "detail": problems}, status_code=422)


def _install_offline_docs(app: FastAPI) -> None:
    """Swagger UI from vendored assets (the default page loads them from a CDN)."""
    try:
        import fastapi_offline
    except ImportError:
        log.warning("fastapi-offline is not installed: /docs is not available offline")
        return
    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/static-docs", StaticFiles(directory=str(assets)), name="static-docs")

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="pacsnode API",
            swagger_js_url="/static-docs/swagger-ui-bundle.js",
            swagger_css_url="/static-docs/swagger-ui.css",
            swagger_favicon_url="/static-docs/favicon.png",
        )


def create_app(settings: Settings, db: Database | None = None) -> FastAPI:
    """The console + API. ``db`` None: open ``settings.effective_database_url`` and migrate it."""
    if db is None:
        db = Database(settings.effective_database_url)
        db.migrate()
    app = FastAPI(
        title="pacsnode",
        version="0.1.0",
        description="DICOM-native AI node: console and JSON API",
        docs_url=None,  # served from vendored assets by _install_offline_docs
        redoc_url=None,
    )
    app.state.web = WebState(settings=settings, db=db, templates=build_templates(settings.zone))
    app.add_middleware(NoStore)
    app.add_middleware(SecurityHeaders, hsts=settings.web.secure_cookies)
    app.add_middleware(ServerSessions)
    # the client address (throttling, audit) from X-Forwarded-For only when a trusted proxy sent it
    app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=list(settings.web.trusted_proxies))
    # outermost: bodies are refused before sessions, CSRF, login or any parser see them
    app.add_middleware(BodyLimit, limit=limit_for(settings.web))
    app.mount("/static", StaticFiles(directory=str(STATIC_DIR)), name="static")
    _install_offline_docs(app)
    _install_error_handlers(app)
    _include_routers(app)
    install_openapi(app)
    ensure_first_admin(db)
    return app
