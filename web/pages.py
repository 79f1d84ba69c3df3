"""Rendering helpers shared by the console routers: templates with the common context, flashes.

Every page gets the caller, the CSRF token for its forms and one-shot flash messages, so templates
never reach into the request themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from core.units import readable_unit
from node.db.repositories import worklist
from web.deps import LoginRequired, Principal, WebState, csrf_token, optional_user, web_state
from web.sessions import handle
from web.study_files import retention_after
from web.viewer_link import viewer_url

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def _dt_filter(zone: tzinfo) -> Callable[[Any], str]:
    """Stored times are UTC; the console shows them in the node's time zone (``timezone``)."""

    def fmt(value: Any) -> str:
        if value is None:
            return "—"
        if isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(zone)
        return str(value.strftime("%Y-%m-%d %H:%M:%S"))

    return fmt


def _fmt_num(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def build_templates(zone: tzinfo = UTC) -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
    templates.env.filters["dt"] = _dt_filter(zone)
    templates.env.filters["num"] = _fmt_num
    templates.env.filters["unit"] = readable_unit  # UCUM codes as people read them
    templates.env.filters["zip"] = lambda a, b: list(zip(a or [], b or [], strict=False))
    templates.env.filters["retention_after"] = retention_after
    templates.env.filters["viewer_url"] = viewer_url
    return templates


def flash(request: Request, message: str, kind: str = "info") -> None:
    """Queue a message for the next page this browser renders (survives the POST redirect)."""
    messages = list(request.session.get("flash", []))
    messages.append([kind, message[:500]])
    request.session["flash"] = messages[-5:]


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    user: Principal | None = None,
) -> HTMLResponse:
    state = web_state(request)
    if user is None and handle(request).user_pk is not None:
        try:
            user = optional_user(request)
        except (HTTPException, LoginRequired):  # an error page renders even for a bad session
            user = None
    messages = request.session.pop("flash", []) if request.session else []
    full = {
        "request": request,
        "user": user,
        "csrf_token": csrf_token(request),
        "messages": messages,
        "settings": state.settings,
        "awaiting_review": lambda: awaiting_review_count(state),  # the nav badge, when shown
        **(context or {}),
    }
    return state.templates.TemplateResponse(request, template, full, status_code=status_code)


def awaiting_review_count(state: WebState) -> int:
    with state.db.read() as session:
        return worklist.awaiting_review(session)


def redirect(url: str) -> RedirectResponse:
    """303 so that the browser follows a POST with a GET (post/redirect/get)."""
    return RedirectResponse(url, status_code=303)
