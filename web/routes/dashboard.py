"""The dashboard: what arrived, what is queued or failing, what was delivered, and how models run."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from core.domain import Role
from node.db.repositories import dashboard as dashboard_repo
from node.db.repositories import users as user_repo
from web.charts import bar_chart
from web.deps import Reader, SessionDep, StateDep
from web.integrations import model_cards
from web.pages import render

router = APIRouter(tags=["console: dashboard"], include_in_schema=False)


def model_overview(
    state: StateDep, devices: dict[str, str], fallbacks: list[str]
) -> dict[str, Any]:
    """Model cards with the device each last ran on, and the device fallbacks seen lately."""
    cards = model_cards(state.settings)
    models = [
        {
            "name": name,
            "version": card.version,
            "task": card.task,
            "framework": card.framework,
            "device": devices.get(name, "not run yet"),
        }
        for name, card in sorted(cards.items())
    ]
    return {"models": models, "fallbacks": fallbacks}


@router.get("/")
def dashboard(request: Request, session: SessionDep, state: StateDep, user: Reader) -> Response:
    counts = dashboard_repo.dashboard_counts(session)
    data = dashboard_repo.chart_data(session)
    charts = [
        bar_chart(
            "Studies received per day",
            [(day[5:], n) for day, n in data.studies_per_day],
            css_class="studies-per-day",
        ),
        bar_chart("Class distribution", data.class_distribution, css_class="classes"),
        bar_chart("Confidence histogram", data.confidence_histogram, css_class="confidence"),
        bar_chart("Severity distribution", data.severity_distribution, css_class="severity"),
        bar_chart("Processing time", data.processing_time_histogram, css_class="processing"),
    ]
    return render(
        request,
        "dashboard.html",
        {
            "counts": counts,
            "charts": charts,
            # who works here and when they last logged in is for admins only (None: not shown)
            "activity": user_repo.user_activity(session) if user.role is Role.ADMIN else None,
            "models": model_overview(state, data.devices, data.fallbacks),
        },
        user=user,
    )
