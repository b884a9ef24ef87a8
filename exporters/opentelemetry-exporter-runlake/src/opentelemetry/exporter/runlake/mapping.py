"""Span → row mapping: which attributes become columns, how spans are classified as runs/nodes/turns.

Readable spans from runlake's own instrumentation, OTel GenAI, OpenInference and OpenLLMetry all map to
the same columns. Attributes that feed a column are dropped from the leftover ``attributes`` JSON when
they hold the column's value; :func:`attributes_of_row` puts them back under their canonical names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa

from .layout import DEFAULT_TENANT

# ---- attribute names -------------------------------------------------------------------------------
SPAN_TYPE = "runlake.span.type"
RUN_ID = "runlake.run.id"
TENANT_ID = "runlake.tenant.id"
TTL_DAYS = "runlake.ttl_days"
NODE_ID = "runlake.node.id"
NODE_TYPE = "runlake.node.type"
TURN_ID = "runlake.turn.id"
RUNTIME_ID = "runlake.runtime.id"
RUNTIME_STATE = "runlake.runtime.state"
COST_CENTS = "runlake.cost.cents"
METADATA = "runlake.metadata"

RUN, NODE, TURN, OTHER = "run", "node", "turn", "span"
DEFAULT_TTL_DAYS = 30

# column -> (keys read, first found wins; keys written back when rebuilding the attributes)
COLUMN_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "session_id": (
        ("gen_ai.conversation.id", "session.id", "langfuse.session.id"),
        ("gen_ai.conversation.id", "session.id"),
    ),
    "user_id": (("user.id", "langfuse.user.id", "enduser.id"), ("user.id",)),
    "tenant_id": ((TENANT_ID,), (TENANT_ID,)),
    "run_id": ((RUN_ID,), (RUN_ID,)),
    "agent_name": (("gen_ai.agent.name", "agent.name", "traceloop.entity.name"), ("gen_ai.agent.name",)),
    "agent_id": (("gen_ai.agent.id",), ("gen_ai.agent.id",)),
    "node_id": ((NODE_ID, "gen_ai.tool.name", "tool.name"), (NODE_ID,)),
    "node_type": ((NODE_TYPE,), (NODE_TYPE,)),
    "turn_id": ((TURN_ID,), (TURN_ID,)),
    "runtime_id": ((RUNTIME_ID,), (RUNTIME_ID,)),
    "runtime_state": ((RUNTIME_STATE,), (RUNTIME_STATE,)),
    "operation": (("gen_ai.operation.name",), ("gen_ai.operation.name",)),
    "model": (("gen_ai.request.model", "gen_ai.response.model", "llm.model_name"), ("gen_ai.request.model",)),
    "provider": (("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system"), ("gen_ai.provider.name",)),
    "input": (
        ("input.value", "gen_ai.input.messages", "traceloop.entity.input", "gen_ai.prompt"),
        ("input.value",),
    ),
    "output": (
        ("output.value", "gen_ai.output.messages", "traceloop.entity.output", "gen_ai.completion"),
        ("output.value",),
    ),
    "input_tokens": (
        ("gen_ai.usage.input_tokens", "llm.token_count.prompt", "gen_ai.usage.prompt_tokens"),
        ("gen_ai.usage.input_tokens", "llm.token_count.prompt"),
    ),
    "output_tokens": (
        ("gen_ai.usage.output_tokens", "llm.token_count.completion", "gen_ai.usage.completion_tokens"),
        ("gen_ai.usage.output_tokens", "llm.token_count.completion"),
    ),
    "cost_cents": ((COST_CENTS,), (COST_CENTS,)),
    "error_type": (("error.type",), ("error.type",)),
    "ttl_days": ((TTL_DAYS,), (TTL_DAYS,)),
    "metadata": ((METADATA,), (METADATA,)),
}
_INT_COLUMNS = {"input_tokens", "output_tokens", "ttl_days"}
_FLOAT_COLUMNS = {"cost_cents"}
_TEXT_COLUMNS = {"input", "output", "metadata", "runtime_state"}

# attribute key -> (column, priority)
_KEY_INDEX: dict[str, tuple[str, int]] = {
    key: (column, rank) for column, (reads, _) in COLUMN_KEYS.items() for rank, key in enumerate(reads)
}

_RUN_OPERATIONS = {"invoke_agent", "invoke_workflow", "create_agent"}
_NODE_OPERATIONS = {
    "chat": "llm",
    "text_completion": "llm",
    "generate_content": "llm",
    "execute_tool": "tool",
    "embeddings": "embedding",
    "retrieval": "retrieval",
}
_OPENINFERENCE_NODE_TYPES = {
    "LLM": "llm",
    "TOOL": "tool",
    "RETRIEVER": "retrieval",
    "EMBEDDING": "embedding",
    "RERANKER": "reranker",
    "GUARDRAIL": "guardrail",
    "EVALUATOR": "evaluator",
    "CHAIN": "chain",
    "AGENT": "agent",
}
_TRACELOOP_KINDS = {"workflow": RUN, "agent": RUN, "task": NODE, "tool": NODE}

# ---- schemas -----------------------------------------------------------------------------------------
_s, _i64, _i32, _f64 = pa.string(), pa.int64(), pa.int32(), pa.float64()
SPANS_SCHEMA = pa.schema(
    [
        ("record", _s),  # "end": the finished span; "start": written when a run starts
        ("span_type", _s),  # run | node | turn | span
        ("tenant_id", _s),
        ("session_id", _s),
        ("user_id", _s),
        ("run_id", _s),
        ("trace_id", _s),
        ("span_id", _s),
        ("parent_span_id", _s),
        ("name", _s),
        ("kind", _s),
        ("start_time_unix_nano", _i64),
        ("end_time_unix_nano", _i64),
        ("status_code", _s),  # UNSET | OK | ERROR
        ("status_message", _s),
        ("error_type", _s),
        ("agent_name", _s),
        ("agent_id", _s),
        ("node_id", _s),
        ("node_type", _s),
        ("turn_id", _s),
        ("runtime_id", _s),
        ("runtime_state", _s),
        ("operation", _s),
        ("model", _s),
        ("provider", _s),
        ("input", _s),
        ("output", _s),
        ("input_tokens", _i64),
        ("output_tokens", _i64),
        ("cost_cents", _f64),
        ("ttl_days", _i32),
        ("service_name", _s),
        ("metadata", _s),  # JSON object
        ("attributes", _s),  # JSON object: attributes not held in a column
        ("events", _s),  # JSON list of {name, time_unix_nano, attributes}
        ("resource", _s),  # JSON object: resource attributes
    ]
)
SPAN_COLUMNS = tuple(SPANS_SCHEMA.names)

RUNS_SCHEMA = pa.schema(
    [
        ("record", _s),
        ("tenant_id", _s),
        ("session_id", _s),
        ("user_id", _s),
        ("run_id", _s),
        ("trace_id", _s),
        ("span_id", _s),
        ("parent_span_id", _s),
        ("name", _s),
        ("start_time_unix_nano", _i64),
        ("end_time_unix_nano", _i64),
        ("status_code", _s),
        ("status_message", _s),
        ("error_type", _s),
        ("agent_name", _s),
        ("agent_id", _s),
        ("input", _s),
        ("output", _s),
        ("node_count", _i32),
        ("failed_nodes", _i32),
        ("input_tokens", _i64),
        ("output_tokens", _i64),
        ("cost_cents", _f64),
        ("ttl_days", _i32),
        ("service_name", _s),
        ("metadata", _s),
    ]
)
RUN_COLUMNS = tuple(RUNS_SCHEMA.names)
_RUN_FROM_SPAN = tuple(SPAN_COLUMNS.index(c) if c in SPAN_COLUMNS else -1 for c in RUN_COLUMNS)
_SPAN_INDEX = {name: i for i, name in enumerate(SPAN_COLUMNS)}
_RUN_INDEX = {name: i for i, name in enumerate(RUN_COLUMNS)}
COL = _SPAN_INDEX  # row positions by column name, e.g. row[COL["session_id"]]

_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
_KIND_NAMES = {0: "INTERNAL", 1: "SERVER", 2: "CLIENT", 3: "PRODUCER", 4: "CONSUMER"}
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str).encode


def to_json(value: Any) -> str:
    """Compact JSON, with anything unknown as its ``str``."""
    return _JSON(value)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _JSON(list(value) if isinstance(value, tuple) else value)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return None


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def classify(attributes: Mapping[str, Any], has_parent: bool) -> tuple[str, str | None]:
    """Return ``(span_type, node_type)`` by the rules of docs/schema.md."""
    declared = attributes.get(SPAN_TYPE)
    if declared in (RUN, NODE, TURN):
        return declared, attributes.get(NODE_TYPE)
    operation = attributes.get("gen_ai.operation.name")
    if operation in _RUN_OPERATIONS:
        return RUN, None
    if operation in _NODE_OPERATIONS:
        return NODE, _NODE_OPERATIONS[operation]
    kind = attributes.get("openinference.span.kind")
    if isinstance(kind, str):
        kind = kind.upper()
        if kind == "AGENT" or (kind == "CHAIN" and not has_parent):
            return RUN, None
        if kind in _OPENINFERENCE_NODE_TYPES:
            return NODE, _OPENINFERENCE_NODE_TYPES[kind]
    traceloop = attributes.get("traceloop.span.kind")
    if traceloop in _TRACELOOP_KINDS:
        span_type = _TRACELOOP_KINDS[traceloop]
        return span_type, (traceloop if span_type == NODE else None)
    if operation:
        return NODE, str(operation)
    if not has_parent:
        return RUN, None
    return OTHER, None


def _events_json(events: Sequence[Any]) -> tuple[str | None, str | None]:
    """Events as JSON, and the message of the first exception event (the error message)."""
    if not events:
        return None, None
    out = []
    message = None
    for event in events:
        attrs = dict(event.attributes or {})
        if message is None and event.name == "exception":
            message = attrs.get("exception.message")
        out.append({"name": event.name, "time_unix_nano": event.timestamp, "attributes": attrs})
    return _JSON(out), message


def _resource_of(span: Any, cache: dict[int, tuple[Any, str | None, str | None]]) -> tuple[str | None, str | None]:
    """Service name and resource JSON, cached per resource object (spans of one provider share it)."""
    resource = span.resource
    hit = cache.get(id(resource))
    if hit is None or hit[0] is not resource:  # the cache holds the object, so its id cannot be reused meanwhile
        attrs = dict(resource.attributes) if resource is not None else {}
        service = attrs.pop("service.name", None)
        if len(cache) >= 1024:
            cache.clear()
        hit = cache[id(resource)] = (resource, service, _JSON(attrs) if attrs else None)
    return hit[1], hit[2]


class SpanMapper:
    """Turns ReadableSpans into row tuples in ``SPAN_COLUMNS`` order.

    ``default_tenant`` applies when a span names none; ``force_tenant`` overrides what spans claim (ingest
    with an API key). ``redact``, when given, cleans text columns and leftover attributes before they are
    stored.
    """

    def __init__(
        self,
        default_tenant: str = DEFAULT_TENANT,
        force_tenant: str | None = None,
        redact: Any = None,
        keep_runtime_state: bool = True,
    ) -> None:
        self.default_tenant = default_tenant
        self.keep_runtime_state = keep_runtime_state
        self.force_tenant = force_tenant
        self.redact = redact
        self._resource_cache: dict[int, tuple[Any, str | None, str | None]] = {}

    def map_span(self, span: Any, record: str = "end") -> tuple:
        """One row; raises ValueError for a span that cannot be stored (no ids or start time)."""
        if not isinstance(span.start_time, int) or span.context is None or not span.context.span_id:
            raise ValueError(f"span {span.name!r} has no start time or span id")
        attributes = span.attributes or {}
        values: dict[str, Any] = {}
        ranks: dict[str, int] = {}
        leftover: dict[str, Any] | None = None
        key_index = _KEY_INDEX
        for key, value in attributes.items():
            hit = key_index.get(key)
            if hit is None:
                if leftover is None:
                    leftover = {}
                leftover[key] = value
                continue
            column, rank = hit
            if rank < ranks.get(column, 99):
                values[column] = value
                ranks[column] = rank
        # aliases that were not chosen (or differ) stay in the leftover attributes
        for key, value in attributes.items():
            hit = key_index.get(key)
            if hit is not None and (ranks.get(hit[0]) != hit[1]) and values.get(hit[0]) != value:
                if leftover is None:
                    leftover = {}
                leftover[key] = value
        for column in _INT_COLUMNS.intersection(values):
            values[column] = _as_int(values[column])
        if "cost_cents" in values:
            values["cost_cents"] = _as_float(values["cost_cents"])
        for column in ("input", "output", "runtime_state", "metadata"):
            if column in values and not isinstance(values[column], str):
                values[column] = _text(values[column])

        parent = span.parent
        span_type, node_type = classify(attributes, parent is not None)
        context = span.context
        span_id = f"{context.span_id:016x}"
        if values.get("node_type") is None and node_type is not None:
            values["node_type"] = node_type
        if span_type == RUN:  # a run is named by its own span, whatever it inherited
            values["run_id"] = span_id
        if span_type == NODE and not values.get("node_id"):
            values["node_id"] = span.name
        tenant = self.force_tenant or values.get("tenant_id") or self.default_tenant
        status = span.status
        status_code = _STATUS_NAMES.get(status.status_code.value, "UNSET")
        events_json, exception_message = _events_json(span.events)
        status_message = status.description or exception_message
        service, resource_json = _resource_of(span, self._resource_cache)
        ttl = values.get("ttl_days")
        if not ttl or ttl < 1:
            ttl = DEFAULT_TTL_DAYS
        text = values.get
        input_text, output_text, attrs_json = text("input"), text("output"), leftover
        if self.redact is not None:
            input_text = self.redact(input_text) if input_text else input_text
            output_text = self.redact(output_text) if output_text else output_text
            status_message = self.redact(status_message) if status_message else status_message
            if values.get("metadata"):
                values["metadata"] = _redact_json_text(values["metadata"], self.redact)
            if events_json:
                events_json = _redact_json_text(events_json, self.redact)
            if attrs_json:
                attrs_json = {k: self.redact(v) if isinstance(v, str) else v for k, v in attrs_json.items()}
        return (
            record,
            span_type,
            str(tenant),
            _str_or_none(text("session_id")),
            _str_or_none(text("user_id")),
            _str_or_none(text("run_id")),
            f"{context.trace_id:032x}",
            span_id,
            f"{parent.span_id:016x}" if parent is not None else None,
            span.name,
            _KIND_NAMES.get(span.kind.value, "INTERNAL"),
            span.start_time,
            span.end_time if record == "end" else None,
            status_code,
            status_message,
            _str_or_none(text("error_type")),
            _str_or_none(text("agent_name")),
            _str_or_none(text("agent_id")),
            _str_or_none(text("node_id")),
            _str_or_none(text("node_type")),
            _str_or_none(text("turn_id")),
            _str_or_none(text("runtime_id")),
            text("runtime_state") if self.keep_runtime_state else None,
            _str_or_none(text("operation")),
            _str_or_none(text("model")),
            _str_or_none(text("provider")),
            input_text,
            output_text,
            text("input_tokens"),
            text("output_tokens"),
            text("cost_cents"),
            ttl,
            service,
            text("metadata"),
            _JSON(attrs_json) if attrs_json else None,
            events_json,
            resource_json,
        )


def _redact_strings(value: Any, redact: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact) for v in value]
    return value


def _redact_json_text(text: str, redact: Any) -> str:
    """Redact the strings inside a JSON document, keeping it valid JSON (plain text if it is not JSON)."""
    try:
        return _JSON(_redact_strings(json.loads(text), redact))
    except ValueError:
        return redact(text)


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def run_row(span_row: tuple, aggregate: Sequence[float] | None) -> tuple:
    """The ``runs/`` index row of a run span row; ``aggregate`` is (nodes, failed, in, out, cost)."""
    row = [span_row[i] if i >= 0 else None for i in _RUN_FROM_SPAN]
    nodes, failed, tokens_in, tokens_out, cost = aggregate or (0, 0, 0, 0, 0.0)
    named = _RUN_INDEX
    row[named["node_count"]] = int(nodes)
    row[named["failed_nodes"]] = int(failed)
    # a run's own usage wins over the sum of its nodes (frameworks often put the total on the agent span)
    if row[named["input_tokens"]] is None:
        row[named["input_tokens"]] = int(tokens_in)
    if row[named["output_tokens"]] is None:
        row[named["output_tokens"]] = int(tokens_out)
    if row[named["cost_cents"]] is None:
        row[named["cost_cents"]] = float(cost)
    return tuple(row)


def attributes_of_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a span's attributes from a stored row: leftover JSON plus columns under canonical keys."""
    attributes: dict[str, Any] = {}
    extra = row.get("attributes")
    if extra:
        attributes.update(json.loads(extra))
    for column, (_, writes) in COLUMN_KEYS.items():
        value = row.get(column)
        if value is None:
            continue
        if column == "tenant_id" and value == DEFAULT_TENANT and TENANT_ID not in attributes:
            continue
        for key in writes:
            attributes.setdefault(key, value)
    span_type = row.get("span_type")
    if span_type in (RUN, NODE, TURN):
        attributes.setdefault(SPAN_TYPE, span_type)
    return attributes
