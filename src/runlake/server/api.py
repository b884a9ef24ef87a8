"""The read API: CodexOS history, logs, statistics and performance; PraisonAI runs and traces; status."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi import Path as PathParam
from starlette.convertors import PathConvertor, register_url_convertor

from ..api_models import (
    ErrorBody,
    HealthResponse,
    HistoryItem,
    HistoryParams,
    LogsParams,
    LogsResponse,
    PerformanceParams,
    PerformanceResponse,
    RunItem,
    RunsParams,
    StatsParams,
    StatsResponse,
    TraceItem,
    TracesParams,
)
from .deps import ERRORS, Caller, history_for, runtime_of, service_for

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, tags=["meta"], summary="Liveness and readiness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/api/v1/agents/history",
    response_model=list[HistoryItem],
    responses=ERRORS,
    tags=["CodexOS"],
    summary="Execution history, newest first",
)
def agenthistory_for(request: Request, principal: Caller, params: Annotated[HistoryParams, Query()]) -> Any:
    return history_for(request, principal).get_history(params.agent_id, params.skip, params.limit)


@router.get(
    "/api/v1/agents/logs",
    response_model=LogsResponse,
    responses={**ERRORS, 404: {"model": ErrorBody, "description": "No such run (or not yours)"}},
    tags=["CodexOS"],
    summary="Node-level logs of one execution",
)
def agent_logs(request: Request, principal: Caller, params: Annotated[LogsParams, Query()]) -> Any:
    try:
        return history_for(request, principal).get_logs(params.run_id)
    except LookupError:
        raise HTTPException(404, f"run {params.run_id!r} not found") from None


@router.get(
    "/api/v1/agents/stats",
    response_model=StatsResponse,
    responses=ERRORS,
    tags=["CodexOS"],
    summary="Execution statistics of a user (or, for an admin key without user_id, of the tenant)",
)
async def agent_stats(request: Request, principal: Caller, params: Annotated[StatsParams, Query()]) -> Any:
    user_id = params.user_id if params.user_id is not None else principal.read_user
    return await service_for(request, principal).get_execution_statistics(user_id, params.days)


class _AnyTextConvertor(PathConvertor):
    """Starlette's ``path`` matches no line break (``.*``); an agent name may hold one (names are stored as sent)."""

    regex = r"[\s\S]*"


register_url_convertor("anytext", _AnyTextConvertor())


@router.get(
    "/api/v1/agents/{agent_id:anytext}/performance",  # an agent name may hold "/" (sent as %2F) or a line break
    response_model=PerformanceResponse,
    responses=ERRORS,
    tags=["CodexOS"],
    summary="Performance of one agent, with figures per node type",
)
async def agent_performance(
    request: Request,
    principal: Caller,
    agent_id: Annotated[str, PathParam(min_length=1, max_length=1024)],
    params: Annotated[PerformanceParams, Query()],
) -> Any:
    return await service_for(request, principal).get_agent_performance_metrics(agent_id, params.days)


@router.get(
    "/api/v1/runs",
    response_model=list[RunItem],
    responses=ERRORS,
    tags=["PraisonAI"],
    summary="Runs of a session, newest first",
)
def runs(request: Request, principal: Caller, params: Annotated[RunsParams, Query()]) -> Any:
    return history_for(request, principal).get_runs(params.session_id, params.limit)


@router.get(
    "/api/v1/traces",
    response_model=list[TraceItem],
    responses=ERRORS,
    tags=["PraisonAI"],
    summary="Traces with their spans, newest first",
)
def traces(request: Request, principal: Caller, params: Annotated[TracesParams, Query()]) -> Any:
    return history_for(request, principal).get_traces(params.session_id, params.user_id, params.limit)


@router.get(
    "/api/v1/status",
    responses={**ERRORS, 403: {"model": ErrorBody, "description": "Not an admin key"}},
    tags=["meta"],
    summary="Ingest, WebSocket, TTL and compaction counters (admin keys)",
)
def status(request: Request, principal: Caller) -> dict[str, Any]:
    if not principal.is_admin:
        raise HTTPException(403, "an admin key is required")
    runtime = runtime_of(request)
    sinks = [s.stats() for s in runtime.sinks() if principal.tenant_id in (None, s.tenant)]
    return {
        "uptime_s": round(time.time() - runtime.started_at, 1),
        "durability": runtime.settings.durability.value,
        "ingest": sinks,
        "ingest_in_progress": {  # a tenant's key sees its tenant's count; the server's only without keys
            "requests": runtime.ingest_slots.of(principal.tenant_id),
            "limit": runtime.settings.max_pending_ingest
            if principal.tenant_id is None
            else runtime.settings.tenant_pending_limit,
        },
        "ingest_log": None
        if runtime.log is None or principal.tenant_id is not None
        else {
            "folder": str(runtime.log.folder),
            "requests_logged": runtime.log.appended,
            "checkpoints": runtime.checkpoints,
            "segments_kept_for_replay": runtime.kept_for_replay,
            "replayed_at_start": runtime.replayed,
            "replayed_after_outage": runtime.replayed_after_outage,
        },
        "websocket": runtime.hub.counters(principal.tenant_id),
        "ttl": {
            "interval_s": runtime.settings.ttl_interval_s,
            "runs": runtime.ttl_runs,
            "last": runtime.ttl_last,
        },
        "compaction": {
            "interval_s": runtime.settings.compact_interval_s,
            "runs": runtime.compact_runs,
            "last": runtime.compact_last,
        },
    }
