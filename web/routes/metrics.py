"""``GET /metrics``: the Prometheus scrape target.

Open without credentials only to the addresses in ``web.metrics_public_from`` (a Prometheus on the
same host or network); everyone else needs a console login or an API token with the ``read``
scope, like the rest of the read-only API.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from core.domain import Role
from web.deps import TOKEN_SCOPE_ATTR, OptionalUser, Principal, StateDep, current_user
from web.metrics import node_registry

router = APIRouter(tags=["monitoring"], include_in_schema=False)  # text, not JSON


def _public(request: Request, networks: list[str]) -> bool:
    if request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:  # a test client's or a socket's non-IP name
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in networks)


def metrics_access(request: Request, state: StateDep, user: OptionalUser) -> Principal | None:
    """None for a listed address; otherwise the caller must be a reader (token: ``read`` scope)."""
    if _public(request, state.settings.web.metrics_public_from):
        return None
    caller = current_user(user)
    if caller.role not in (Role.ADMIN, Role.RADIOLOGIST, Role.VIEWER):
        raise HTTPException(403, "requires a console user")
    if caller.via == "token" and "read" not in caller.scopes:
        raise HTTPException(403, "this API token lacks the 'read' scope")
    return caller


setattr(metrics_access, TOKEN_SCOPE_ATTR, "read")


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "text exposition"}},
)
def metrics(
    state: StateDep, _caller: Annotated[Principal | None, Depends(metrics_access)]
) -> Response:
    body = generate_latest(node_registry(state.db, state.settings))
    return Response(body, media_type=CONTENT_TYPE_LATEST)
