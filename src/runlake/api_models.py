"""Response and query-parameter models of the HTTP API (they document it in OpenAPI)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_PAGE = 1000  # the cap of every `limit` parameter


class ErrorBody(BaseModel):
    detail: Any = Field(description="What went wrong: a message, or the list of invalid parameters (422)")


class HistoryItem(BaseModel):
    run_id: str | None
    status: str
    started_at: str | None
    duration: str | None
    input: str | None
    output: str | None
    node_count: int
    tokens_used: int
    cost_cents: int


class LogNode(BaseModel):
    id: str | None
    type: str | None
    input: str | None
    output: str | None
    time: str | None
    status: str
    error_message: str | None
    metadata: dict[str, Any]


class LogError(BaseModel):
    node_id: str | None
    error_type: str | None
    error_message: str | None


class LogSummary(BaseModel):
    total_nodes: int
    successful_nodes: int
    failed_nodes: int
    total_duration: str | None
    tokens_used: int
    cost_cents: int


class LogsResponse(BaseModel):
    run_id: str
    nodes: list[LogNode]
    errors: list[LogError]
    final_output: str | None
    summary: LogSummary


class RunItem(BaseModel):
    run_id: str | None
    session_id: str | None
    started_at: float | None
    ended_at: float | None
    input_content: str | None
    output_content: str | None
    status: str
    metadata: dict[str, Any]
    metrics: dict[str, Any]


class TraceSpan(BaseModel):
    span_id: str
    trace_id: str
    name: str | None
    parent_span_id: str | None
    started_at: float | None
    ended_at: float | None
    status: str
    attributes: dict[str, Any]
    events: list[Any]


class TraceItem(BaseModel):
    trace_id: str
    session_id: str | None
    run_id: str | None
    agent_name: str | None
    user_id: str | None
    started_at: float | None
    ended_at: float | None
    status: str
    metadata: dict[str, Any]
    spans: list[TraceSpan]


class _Figures(BaseModel):
    period_days: int
    since: str | None
    until: str | None
    total_executions: int
    completed_executions: int
    failed_executions: int
    running_executions: int
    success_rate: float | None = Field(description="completed / (completed + failed); null when none finished")
    tokens_used: int
    input_tokens: int
    output_tokens: int
    cost_cents: int
    avg_cost_cents: float | None
    total_nodes: int
    failed_nodes: int
    avg_duration_ms: float | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None
    max_duration_ms: float | None
    first_execution_at: str | None
    last_execution_at: str | None


class StatsResponse(_Figures):
    user_id: str | None


class NodeTypeFigures(BaseModel):
    count: int
    failed: int
    success_rate: float | None
    tokens_used: int
    cost_cents: float
    avg_duration_ms: float | None
    p50_duration_ms: float | None
    p95_duration_ms: float | None


class PerformanceResponse(_Figures):
    agent_id: str
    node_types: dict[str, NodeTypeFigures]


class HealthResponse(BaseModel):
    status: str


# ---- query parameters: unknown ones are refused (422) --------------------------------------------------------
class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


_Id = Field(min_length=1, max_length=1024)


class HistoryParams(_Params):
    agent_id: str | None = Field(None, min_length=1, max_length=1024, description="Agent name or id")
    skip: int = Field(0, ge=0, le=10**9, description="Items to skip (pagination offset)")
    limit: int = Field(100, ge=0, le=MAX_PAGE, description=f"Items to return, at most {MAX_PAGE}")


class LogsParams(_Params):
    run_id: str = Field(min_length=1, max_length=1024, description="Execution run id")


class RunsParams(_Params):
    session_id: str = Field(min_length=1, max_length=1024)
    limit: int = Field(100, ge=0, le=MAX_PAGE, description=f"Runs to return, newest first, at most {MAX_PAGE}")


class TracesParams(_Params):
    session_id: str | None = Field(None, min_length=1, max_length=1024)
    user_id: str | None = Field(None, min_length=1, max_length=1024)
    limit: int = Field(100, ge=0, le=MAX_PAGE, description=f"Traces to return, newest first, at most {MAX_PAGE}")


class StatsParams(_Params):
    user_id: str | None = Field(
        None, min_length=1, max_length=1024, description="Default: the key's user (a user key), the tenant (admin)"
    )
    days: int = Field(30, ge=1, le=3650)


class PerformanceParams(_Params):
    days: int = Field(30, ge=1, le=3650)


class WsParams(_Params):
    agent_id: str | None = Field(None, min_length=1, max_length=1024)
    run_id: str | None = Field(None, min_length=1, max_length=1024)
    session_id: str | None = Field(None, min_length=1, max_length=1024)
