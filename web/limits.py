"""Request-body limits enforced before anything parses the body, and ``Cache-Control: no-store``.

``BodyLimit`` is plain ASGI and sits in front of the sessions, the CSRF check and the login check:
a declared ``Content-Length`` over the route's limit is refused before a byte is read, and a body
without one (chunked) is counted as it streams and cut off at the limit. So an anonymous client
cannot make the node read, spool or parse more than a few KB, except on the upload route, whose
limit is the ``web.max_upload_mb`` setting (and which streams into ``data_dir``, see
``web.upload_stream``).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.config import WebSettings

UPLOAD_PATHS = frozenset({"/studies/upload", "/api/predict", "/api/predict/batch"})
ADMIN_PREFIX = "/admin/"  # the allowlist and pipeline forms carry more than a login form
KIB = 1024
MIB = 1024 * 1024
NO_STORE_EXEMPT = ("/static/", "/static-docs/")


def limit_for(settings: WebSettings) -> Callable[[str, str], int]:
    """The body limit in bytes for a request (method, path) under ``settings``."""
    upload = int(settings.max_upload_mb * MIB)
    admin = int(settings.max_admin_form_kb * KIB)
    form = int(settings.max_form_kb * KIB)

    def limit(method: str, path: str) -> int:
        if method == "POST" and path in UPLOAD_PATHS:
            return upload
        if path.startswith(ADMIN_PREFIX):
            return admin
        return form

    return limit


def _describe(limit: int) -> str:
    return f"{limit / MIB:g} MB" if limit >= MIB else f"{limit / KIB:g} KB"


class BodyLimit:
    """Answer 413 for a body over the route's limit: early by ``Content-Length``, else by count."""

    def __init__(self, app: ASGIApp, limit: Callable[[str, str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["method"], scope["path"])
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(limit, scope, receive, send)
            return
        seen = 0
        refused = started = False

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # once refused, the app's own (error) answer is dropped
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        async def counting_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                if not started:
                    await self._refuse(limit, scope, receive, send)
                refused = True
                return {"type": "http.disconnect"}  # the parser stops reading here
            return message

        try:
            await self.app(scope, counting_receive, guarded_send)
        except ClientDisconnect:
            if not refused:  # a client that went away on its own: not our answer to give
                raise

    @staticmethod
    async def _refuse(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body too large: the limit here is {_describe(limit)}"},
            status_code=413,
            headers={"Connection": "close", "Cache-Control": "no-store"},
        )
        await response(scope, receive, send)


class NoStore:
    """``Cache-Control: no-store`` on every response but static assets: pages, API answers and
    downloads carry patient data, which must not stay in a browser's or a proxy's cache."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(NO_STORE_EXEMPT):
            await self.app(scope, receive, send)
            return

        async def marking_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers.setdefault("Pragma", "no-cache")
            await send(message)

        await self.app(scope, receive, marking_send)
