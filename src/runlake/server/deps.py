"""FastAPI dependencies shared by the routers: the app's runtime, the caller's key, scoped readers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request

from ..api_models import ErrorBody
from ..auth import Principal, key_from_headers, unsupported_scheme
from ..history import HistoryDB
from ..service import ExecutionHistoryService
from .runtime import Runtime

AUTH_HELP = "send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No key or an unknown key"},
    422: {"model": ErrorBody, "description": "Invalid or unknown query parameters"},
    503: {"model": ErrorBody, "description": "The lake cannot be read right now; retry after Retry-After"},
}


def missing_key_message(headers: Mapping[str, str]) -> str:
    """The 401 text when no key was found: names an unsupported Authorization scheme, the usual cause."""
    scheme = unsupported_scheme(headers)
    if scheme is not None:
        return f"missing API key: Authorization scheme {scheme!r} is not supported; {AUTH_HELP}"
    return f"missing API key: {AUTH_HELP}"


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


def caller(request: Request) -> Principal:
    """The principal of the request's API key; 401 without a known key."""
    runtime = runtime_of(request)
    key = key_from_headers(request.headers)
    principal = runtime.authenticate(key)
    if principal is None:
        message = missing_key_message(request.headers) if key is None else "invalid API key"
        raise HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
    return principal


Caller = Annotated[Principal, Depends(caller)]


def history_for(request: Request, principal: Principal) -> HistoryDB:
    """The lake's reader, limited to what the key may read."""
    return runtime_of(request).history.scoped(principal.tenant_id, principal.read_user)


def service_for(request: Request, principal: Principal) -> ExecutionHistoryService:
    return runtime_of(request).service.scoped(principal.tenant_id, principal.read_user)
