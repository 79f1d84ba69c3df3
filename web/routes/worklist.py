"""The review worklist: studies with AI results, filtered the way a radiologist reads them.

Filters (review state, severity, class, modality, pipeline, study dates, job state) and the sort
live in the query string, so a filtered list is a link. The rows refresh every few seconds from
``/worklist/rows`` (``web/static/live.js``), which also updates the nav's awaiting-review badge.
Failed jobs are rows of their own, shown as failures with their error, never as results.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import Response

from core.domain import JobState, ReviewState, Severity
from node.db.repositories import worklist
from web.deps import Reader, SessionDep
from web.pages import render

router = APIRouter(tags=["console: worklist"], include_in_schema=False)
DATE = re.compile(r"^(\d{8})?$")
Short = Annotated[str, Query(max_length=64)]


def _filter(
    review: Short = "",
    severity: Short = "",
    classification: Short = "",
    modality: Annotated[str, Query(max_length=16)] = "",
    pipeline: Short = "",
    date_from: Annotated[str, Query(max_length=8)] = "",
    date_to: Annotated[str, Query(max_length=8)] = "",
    state: Short = "",
) -> worklist.WorklistFilter:
    """The worklist's filters from the query string (one dependency for the page and its rows)."""
    checks = {
        "review": (review, [r.value for r in ReviewState]),
        "severity": (severity, [s.value for s in Severity]),
        "state": (state, [s.value for s in JobState]),
    }
    for name, (value, allowed) in checks.items():
        if value and value not in allowed:
            raise HTTPException(400, f"{name} must be one of {', '.join(allowed)}")
    for name, value in (("date_from", date_from), ("date_to", date_to)):
        if not DATE.match(value):
            raise HTTPException(400, f"{name} must be a date as YYYYMMDD")
    return worklist.WorklistFilter(
        review, severity, classification, modality.strip(), pipeline, date_from, date_to, state
    )


WorklistQuery = Annotated[worklist.WorklistFilter, Depends(_filter)]


def _context(
    session: SessionDep, flt: worklist.WorklistFilter, sort: str, page: int
) -> dict[str, Any]:
    rows, total = worklist.search(session, flt, sort=sort, page=page)
    query = {k: v for k, v in vars(flt).items() if v}
    return {
        "rows": rows,
        "total": total,
        "filter": flt,
        "sort": sort,
        "page": page,
        "pages": max(1, -(-total // worklist.PER_PAGE)),
        "query": urlencode({**query, "sort": sort}),
        "awaiting": worklist.awaiting_review(session),
    }


@router.get("/worklist")
def worklist_page(
    request: Request,
    session: SessionDep,
    user: Reader,
    flt: WorklistQuery,
    sort: Annotated[worklist.WorklistSort, Query()] = "newest",
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
) -> Response:
    context = _context(session, flt, sort, page)
    context.update(
        choices=worklist.choices(session),
        reviews=[r.value for r in ReviewState],
        severities=[s.value for s in Severity],
        states=[s.value for s in JobState],
        sorts=list(worklist.SORTS),
    )
    return render(request, "worklist.html", context, user=user)


@router.get("/worklist/rows")
def worklist_rows(
    request: Request,
    session: SessionDep,
    user: Reader,
    flt: WorklistQuery,
    sort: Annotated[worklist.WorklistSort, Query()] = "newest",
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
) -> Response:
    """The table body alone, with the awaiting-review count for the nav badge."""
    context = _context(session, flt, sort, page)
    response = render(request, "worklist_rows.html", context, user=user)
    response.headers["X-Live-Counts"] = f"awaiting={context['awaiting']}"
    return response
