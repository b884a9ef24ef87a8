"""The fast ``SpanMapper.map_span`` (plain attribute dicts, per-key-set plans) gives exactly the rows of the
straightforward implementation it replaced, kept below as the reference.

The corpus covers runlake's own spans, OpenInference, OTel GenAI and traceloop spans, aliases with equal and
differing values, odd value types, events, errors, start rows of live spans, foreign span objects, redaction and
the tenant / runtime-state options.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.runlake import mapping
from opentelemetry.exporter.runlake.layout import DEFAULT_TENANT
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

import runlake
from runlake import instrument
from runlake.redact import Redactor, default_redactor

# ---- the reference: map_span as it was before the fast path (do not optimise) ----------------------------------
_ENCODE = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str, allow_nan=False).encode


def _JSON(value: Any) -> str:  # noqa: N802 - the name the mapper's reference used
    """Strict JSON: NaN and infinities (at any depth) as null, as every JSON column holds them."""
    return _ENCODE(_finite_or_null(value))


_STATUS_NAMES = {0: "UNSET", 1: "OK", 2: "ERROR"}
_KIND_NAMES = {0: "INTERNAL", 1: "SERVER", 2: "CLIENT", 3: "PRODUCER", 4: "CONSUMER"}
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
_TRACELOOP_KINDS = {"workflow": "run", "agent": "run", "task": "node", "tool": "node"}
_KEY_INDEX = {
    key: (column, rank) for column, (reads, _) in mapping.COLUMN_KEYS.items() for rank, key in enumerate(reads)
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else _JSON(list(value) if isinstance(value, tuple) else value)


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    try:
        number = value if isinstance(value, int) else round(float(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return number if -(2**63) <= number < 2**63 else None  # int64 columns


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(number) or math.isinf(number) else number


def _finite_or_null(value: Any) -> Any:
    """NaN and infinities as None, at any depth: the messages' JSON is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value


def _classify(attributes: Mapping[str, Any], has_parent: bool) -> tuple[str, str | None]:
    declared = attributes.get(mapping.SPAN_TYPE)
    if declared in ("run", "node", "turn"):
        return declared, attributes.get(mapping.NODE_TYPE)
    operation = attributes.get("gen_ai.operation.name")
    if operation in _RUN_OPERATIONS:
        return "run", None
    if operation in _NODE_OPERATIONS:
        return "node", _NODE_OPERATIONS[operation]
    kind = attributes.get("openinference.span.kind")
    if isinstance(kind, str):
        kind = kind.upper()
        if kind == "AGENT" or (kind == "CHAIN" and not has_parent):
            return "run", None
        if kind in _OPENINFERENCE_NODE_TYPES:
            return "node", _OPENINFERENCE_NODE_TYPES[kind]
    traceloop = attributes.get("traceloop.span.kind")
    if traceloop in _TRACELOOP_KINDS:
        span_type = _TRACELOOP_KINDS[traceloop]
        return span_type, (traceloop if span_type == "node" else None)
    request_type = attributes.get("llm.request.type")
    if isinstance(request_type, str) and request_type:
        return "node", {"chat": "llm", "completion": "llm", "embedding": "embedding", "rerank": "reranker"}.get(
            request_type, request_type
        )
    if operation:
        return "node", str(operation)
    if not has_parent:
        return "run", None
    return "span", None


def _events_json(events: Sequence[Any]) -> tuple[str | None, str | None]:
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


# the redaction rule (docs/sessions.md, "Redaction"): ids and names kept, free text redacted, the value under a key
# naming a secret replaced whole (with a Redactor); the OTLP forwarder applies the same rule to the span's attributes
_KEPT_COLUMNS = (
    "session_id", "user_id", "tenant_id", "run_id", "agent_name", "agent_id", "node_id", "node_type", "turn_id",
    "runtime_id", "operation", "model", "provider", "input_tokens", "output_tokens", "cost_cents", "error_type",
    "ttl_days",
)  # fmt: skip
_KEPT_KEYS = {key for column in _KEPT_COLUMNS for keys in mapping.COLUMN_KEYS[column] for key in keys} | {
    mapping.SPAN_TYPE,
    "openinference.span.kind",
    "traceloop.span.kind",
    "llm.request.type",
    "runlake.runtime.cleared",
}


def _redact_strings(value: Any, redact: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_strings(v, redact) for v in value)
    return value


def _redact_json_text(text: str, redact: Any) -> str:
    try:
        parsed = json.loads(text)
    except ValueError:
        return redact(text)
    return _JSON(redact.redact_value(parsed) if isinstance(redact, Redactor) else _redact_strings(parsed, redact))


def _redact_attribute(key: str, value: Any, redact: Any, span: bool = True) -> Any:
    if key in _KEPT_KEYS or (span and key == mapping.RUNTIME_STATE):  # a span's runtime state: the policy's
        return value
    if key == mapping.METADATA and isinstance(value, str):
        return _redact_json_text(value, redact) if value else value
    if not isinstance(redact, Redactor):
        return _redact_strings(value, redact)
    if redact.is_sensitive_key(key) and value not in (None, "", (), []) and not isinstance(value, bool):
        return value if isinstance(value, str) and value.startswith("[REDACTED") else "[REDACTED:secret]"
    return _redact_strings(value, redact)


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def reference_map_span(
    span: Any,
    record: str = "end",
    default_tenant: str = DEFAULT_TENANT,
    force_tenant: str | None = None,
    redact: Any = None,
    keep_runtime_state: bool = True,
) -> tuple:
    if not isinstance(span.start_time, int) or span.context is None or not span.context.span_id:
        raise ValueError(f"span {span.name!r} has no start time or span id")
    attributes = span.attributes or {}
    values: dict[str, Any] = {}
    ranks: dict[str, int] = {}
    leftover: dict[str, Any] | None = None
    for key, value in attributes.items():
        hit = _KEY_INDEX.get(key)
        if key in mapping.MESSAGES_FROM.values():  # runlake's own markers: one a span brings is not kept
            continue
        if hit is None:
            if leftover is None:
                leftover = {}
            leftover[key] = value
            continue
        column, rank = hit
        if rank < ranks.get(column, 99):
            values[column] = value
            ranks[column] = rank
    for key, value in attributes.items():
        hit = _KEY_INDEX.get(key)
        if hit is not None and (ranks.get(hit[0]) != hit[1]) and values.get(hit[0]) != value:
            if leftover is None:
                leftover = {}
            leftover[key] = value
    assembled: set[str] = set()  # columns assembled from flattened messages
    for column, prefix, infix in mapping.MESSAGE_FAMILIES:
        if column in values:
            continue
        messages: dict[int, dict[str, Any]] = {}
        keys = []
        for key, value in attributes.items():
            rest = key[len(prefix) :] if key.startswith(prefix) and key not in _KEY_INDEX else ""
            index, _, tail = rest.partition(".")
            if index.isascii() and index.isdigit() and str(int(index)) == index and tail.startswith(infix):
                if tail[len(infix) :]:
                    if redact is not None:  # each field as its flattened attribute is redacted
                        value = _redact_attribute(key, value, redact)
                    messages.setdefault(int(index), {})[tail[len(infix) :]] = value
                    keys.append(key)
        if not messages:
            continue
        values[column] = _JSON([messages[i] for i in sorted(messages)])
        assembled.add(column)
        if sorted(messages) == list(range(len(messages))) and len(keys) == sum(len(m) for m in messages.values()):
            leftover = {k: v for k, v in (leftover or {}).items() if k not in keys}
            leftover[mapping.MESSAGES_FROM[column]] = prefix
    if "cost_cents" not in values and "llm.cost.total" in attributes:
        dollars = attributes["llm.cost.total"]
        dollars = None if isinstance(dollars, bool) else _as_float(dollars)
        values["cost_cents"] = None if dollars is None else dollars * 100
    for column in ("input_tokens", "output_tokens"):  # counts: whole, from 0, int64; booleans are none
        if column in values:
            count = None if isinstance(values[column], bool) else _as_int(values[column])
            values[column] = count if count is not None and count >= 0 else None
    if "ttl_days" in values:  # booleans and NaN the default, past the cap (infinity too) the cap
        ttl = values["ttl_days"]
        try:
            number = None if isinstance(ttl, bool) else ttl if isinstance(ttl, int) else float(ttl)
        except (TypeError, ValueError):
            number = None
        if number is None or math.isnan(number):
            values["ttl_days"] = None
        else:
            values["ttl_days"] = 36_500 if number > 36_500 else _as_int(number)
    if "cost_cents" in values:  # finite, within +/-1e14 cents
        cost = _as_float(values["cost_cents"])
        values["cost_cents"] = None if cost is None else max(-1e14, min(cost, 1e14))
    for column in ("input", "output", "runtime_state", "metadata"):
        if column in values and not isinstance(values[column], str):
            values[column] = _text(values[column])
    parent = span.parent
    span_type, node_type = _classify(attributes, parent is not None)
    context = span.context
    span_id = f"{context.span_id:016x}"
    if values.get("node_type") is None and node_type is not None:
        values["node_type"] = node_type
    if span_type == "run":
        values["run_id"] = span_id
    if span_type == "node" and not values.get("node_id"):
        values["node_id"] = span.name
    tenant = force_tenant or values.get("tenant_id") or default_tenant
    status = span.status
    status_code = _STATUS_NAMES.get(status.status_code.value, "UNSET")
    events_json, exception_message = _events_json(span.events)
    status_message = status.description or exception_message
    resource = span.resource
    attrs = dict(resource.attributes) if resource is not None else {}
    service = attrs.pop("service.name", None)
    resource_json = _JSON(attrs) if attrs else None
    ttl = values.get("ttl_days")
    if not ttl or ttl < 1:
        ttl = 30
    ttl = min(ttl, 36_500)
    text = values.get
    input_text, output_text, attrs_json = text("input"), text("output"), leftover
    if redact is not None:
        if input_text and "input" not in assembled:
            input_text = redact(input_text)
        if output_text and "output" not in assembled:
            output_text = redact(output_text)
        status_message = redact(status_message) if status_message else status_message
        if values.get("metadata"):
            values["metadata"] = _redact_json_text(values["metadata"], redact)
        if events_json:
            events_json = _JSON(
                [
                    {
                        "name": redact(e.name) if e.name else e.name,
                        "time_unix_nano": e.timestamp,
                        "attributes": {
                            k: _redact_attribute(k, v, redact, False) for k, v in (e.attributes or {}).items()
                        },
                    }
                    for e in span.events
                ]
            )
        if attrs_json:
            attrs_json = {k: _redact_attribute(k, v, redact) for k, v in attrs_json.items()}
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
        text("runtime_state") if keep_runtime_state else None,
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


# ---- the corpus ----------------------------------------------------------------------------------------------------
def _redact_digits(text: str) -> str:
    return "".join("#" if c.isdigit() else c for c in text)


OPTIONS: list[dict[str, Any]] = [
    {},
    {"redact": default_redactor()},
    {"redact": _redact_digits, "keep_runtime_state": False},
    {"force_tenant": "forced", "default_tenant": "fallback"},
    {"default_tenant": "fallback"},
]


class _StartRecorder(SpanProcessor):
    """Maps every live span at ``on_start`` (the ``start`` rows of RunStartProcessor) with both mappers."""

    def __init__(self) -> None:
        self.pairs: list[tuple[Any, Any]] = []

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        for options in OPTIONS:
            mapper = mapping.SpanMapper(**options)
            self.pairs.append(
                (_outcome(mapper.map_span, span, "start"), _outcome(reference_map_span, span, "start", **options))
            )


def _outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - both must fail alike
        return ("raised", type(error).__name__, str(error))


def _runlake_spans(recorder: _StartRecorder) -> list[ReadableSpan]:
    """runlake's own run / turn / node spans through the global provider, as an application makes them."""
    memory = InMemorySpanExporter()
    slot = instrument._slot_of(trace.get_tracer_provider())  # type: ignore[arg-type]
    saved = slot.processors
    slot.processors = (*saved, recorder, SimpleSpanProcessor(memory))
    try:
        for i in range(6):
            try:
                with runlake.run(
                    f"agent-{i % 2}",
                    f"session-{i % 3}",
                    user_id=f"user-{i}" if i % 2 else None,
                    tenant_id="acme" if i == 3 else None,
                    input={"question": f"what is {i}?", "n": i} if i % 2 else f"plain input {i}",
                    ttl_days=7 if i == 4 else 30,
                    metadata={"channel": "web", "phone": "+1 415 555 0100"} if i % 2 else None,
                ) as r:
                    with runlake.turn(f"turn-{i}") as t:
                        t.set_state({"step": i})
                        for node_type in ("retrieval", "llm", "tool", "router"):
                            try:
                                with runlake.node(f"n-{node_type}", type=node_type, input=[1, 2, i]) as n:
                                    if node_type == "llm":
                                        n.set_model("gpt-4o-mini", "openai" if i % 2 else None)
                                        n.set_usage(100 + i, 20 + i if i != 2 else None)
                                        n.set_cost(0.25 * i)
                                        n.set_metadata(temperature=0.1 * i)
                                    if node_type == "tool" and i % 3 == 0:
                                        raise TimeoutError(f"tool timed out after {i}s")
                                    n.set_output({"answer": i} if i % 2 else "text out 4111 1111 1111 1111")
                            except TimeoutError:
                                pass
                    if i == 5:
                        raise RuntimeError("agent gave up")
                    r.set_output(f"done {i}")
            except RuntimeError:
                pass
    finally:
        slot.processors = saved
    return list(memory.get_finished_spans())


def _sdk_spans(recorder: _StartRecorder) -> list[ReadableSpan]:
    """Other instrumentations (OpenInference, OTel GenAI, traceloop, langfuse) on a private provider."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "svc", "deployment.environment": "prod"}))
    provider.add_span_processor(recorder)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("corpus")
    shapes: list[dict[str, Any]] = [
        # OpenInference
        {"openinference.span.kind": "CHAIN", "input.value": "hi", "session.id": "oi-1", "user.id": "u1"},
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "m",
            "llm.provider": "openai",
            "llm.system": "x",
            "llm.token_count.prompt": 12,
            "llm.token_count.completion": 3,
            "llm.token_count.total": 15,
            "input.value": "q",
            "output.value": "a",
            "session.id": "oi-1",
        },  # fmt: skip
        {"openinference.span.kind": "tool", "tool.name": "search", "input.value": '{"q": 1}'},
        {"openinference.span.kind": "AGENT", "agent.name": "oi-agent", "langfuse.session.id": "lf-1"},
        {"openinference.span.kind": "EVALUATOR"},
        {"openinference.span.kind": 3},
        # OTel GenAI
        {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "g",
            "gen_ai.agent.id": "g-1",
            "gen_ai.conversation.id": "c-1",
            "enduser.id": "e-1",
            "gen_ai.provider.name": "anthropic",
        },  # fmt: skip
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "req",
            "gen_ai.response.model": "resp",
            "gen_ai.usage.input_tokens": 5,
            "gen_ai.usage.output_tokens": 7,
            "gen_ai.usage.prompt_tokens": 5,
            "gen_ai.usage.completion_tokens": 8,
            "gen_ai.input.messages": ("a", "b"),
            "gen_ai.output.messages": '[{"role":"assistant"}]',
            "gen_ai.system": "openai",
            "gen_ai.conversation.id": "c-1",
        },  # fmt: skip
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "calc", "error.type": "ValueError"},
        {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "emb", "llm.model_name": "emb"},
        {"gen_ai.operation.name": "rerank_things", "gen_ai.prompt": "p", "gen_ai.completion": "c"},
        {"gen_ai.operation.name": "create_agent"},
        # traceloop / OpenLLMetry
        {
            "traceloop.span.kind": "workflow",
            "traceloop.entity.name": "wf",
            "traceloop.entity.input": "{}",
            "traceloop.entity.output": "{}",
            "traceloop.association.properties.session_id": "t-1",
        },  # fmt: skip
        {"traceloop.span.kind": "task", "traceloop.entity.name": "step", "gen_ai.prompt": "p0"},
        {"traceloop.span.kind": "tool", "traceloop.entity.name": "t"},
        {"traceloop.span.kind": "unknown"},
        {
            "llm.request.type": "chat",
            "gen_ai.prompt.0.role": "system",
            "gen_ai.prompt.0.content": "be brief",
            "gen_ai.prompt.1.role": "user",
            "gen_ai.prompt.1.content": "hi 555-0100",
            "gen_ai.completion.0.role": "assistant",
            "gen_ai.completion.0.tool_calls.0.name": "search",
            "gen_ai.completion.0.content": "ok",
            "llm.input_messages.0.message.content": "another family: stays a leftover",
        },  # OpenLLMetry's flattened messages
        {"gen_ai.prompt.1.content": "gap", "gen_ai.prompt.3.content": "x", "gen_ai.prompt.01.content": "not an index"},
        {
            "gen_ai.prompt.0.content": "NaN",
            "gen_ai.prompt.0.temperature": float("nan"),
            "gen_ai.completion.0.scores": (1.0, float("inf"), float("-inf")),
            "llm.input_messages.0.message.weight": float("-inf"),
        },  # numbers JSON has no form for: null in the messages' JSON
        {"gen_ai.prompt": "own attribute wins", "gen_ai.prompt.0.content": "leftover", "gen_ai.completion.0.": "x"},
        {
            "openinference.span.kind": "LLM",
            "llm.input_messages.0.message.role": "user",
            "llm.input_messages.0.message.content": "q",
            "llm.output_messages.0.message.role": "assistant",
            "llm.output_messages.0.message.contents.0.message_content.text": "a",
            "llm.output_messages.0.role": "no message infix",
            "llm.cost.total": 0.0125,
        },  # OpenInference without input.value / output.value
        {"llm.cost.total": "0.5", "runlake.cost.cents": 7},
        {"output.value": "own", "runlake.output.messages_from": "gen_ai.prompt.", "runlake.input.messages_from": 3},
        {"llm.cost.total": True, "llm.input_messages.x.message.content": "bad index"},
        # aliases with differing values, odd values
        {
            "gen_ai.conversation.id": "A",
            "session.id": "B",
            "langfuse.session.id": "A",
            "user.id": "u",
            "langfuse.user.id": "v",
            "enduser.id": "u",
        },  # fmt: skip
        {"session.id": "B", "gen_ai.conversation.id": "A"},  # same keys, other order
        {
            "gen_ai.usage.input_tokens": 1,
            "llm.token_count.prompt": 1.0,
            "gen_ai.usage.output_tokens": 0,
            "gen_ai.usage.completion_tokens": False,
            "gen_ai.conversation.id": "".join(["s", "1"]),
            "session.id": "".join(["s", "1"]),
        },  # aliases equal to the column's value but not the same object
        {
            "llm.token_count.prompt": "12",
            "gen_ai.usage.input_tokens": 12.9,
            "gen_ai.usage.output_tokens": True,
            "runlake.cost.cents": "1.5",
            "runlake.ttl_days": "0",
        },  # fmt: skip
        {"runlake.cost.cents": "x", "runlake.ttl_days": "abc", "gen_ai.usage.output_tokens": "n/a"},
        {"runlake.cost.cents": float("nan"), "runlake.ttl_days": 2**31, "gen_ai.usage.input_tokens": 2**63},
        {"runlake.cost.cents": "-inf", "runlake.ttl_days": 10**9, "gen_ai.usage.output_tokens": -(2**64)},
        {"runlake.ttl_days": -3, "runlake.cost.cents": 2, "runlake.tenant.id": "t-9", "runlake.run.id": "r-1"},
        {"runlake.ttl_days": float("inf"), "runlake.cost.cents": 1e300, "gen_ai.usage.input_tokens": -1},
        {"runlake.ttl_days": True, "runlake.cost.cents": -1e20, "gen_ai.usage.input_tokens": True},
        {"runlake.ttl_days": "1e9", "gen_ai.usage.output_tokens": "-3", "gen_ai.usage.input_tokens": 2**63 - 1},
        {"runlake.span.type": "node", "runlake.node.type": 7, "runlake.node.id": 42, "user.id": 5},
        {
            "runlake.span.type": "turn",
            "runlake.turn.id": "t",
            "runlake.runtime.id": "rt",
            "runlake.runtime.state": '{"k": "card 4111 1111 1111 1111"}',
        },  # fmt: skip
        {"runlake.span.type": "bogus", "runlake.metadata": "not json 555-0100"},
        {"runlake.metadata": '{"email": "a@b.example", "n": [1, "2"]}', "input.value": "mail a@b.example"},
        {"input.value": (1.5, 2.5), "output.value": (True, False), "gen_ai.input.messages": "other"},
        {"plain.list": ("x", "y"), "plain.float": 1e300, "plain.neg": -1, "ünïcode.kéy": "välue 🙂"},
        # redaction: secrets under secret-named keys, in arrays, in metadata; ids that look like personal data
        {
            "session.id": "bob@example.com",
            "user.id": "alice@example.com",
            "langfuse.session.id": "carol@example.com",
            "runlake.run.id": "4111 1111 1111 1111",
            "gen_ai.agent.name": "agent of +1 415 555 0100",
            "gen_ai.request.model": "model@example.com",
            "password": "hunter2",
            "db.password": 12345,
            "api_key": ("k1", "k2"),
            "http.request.header.authorization": ("Bearer abcdefghijklmnop1234567890",),
            "clientSecret": "",
            "secret": True,
            "contacts": ("dave@example.com", "plain", 3),
            "runlake.metadata": '{"password": "hunter2", "accessToken": ["a"], "nested": {"api_key": {"v": 1}}}',
            "input.value": '{"password": "hunter2"} and erin@example.com',
        },  # fmt: skip
        {
            "llm.request.type": "chat",
            "gen_ai.prompt.0.role": "user",
            "gen_ai.prompt.0.content": "mail frank@example.com",
            "gen_ai.prompt.0.api_key": "abc123secretvalue",
            "gen_ai.completion.0.content": ("password=hunter2", "ok"),
        },  # flattened messages: each field redacted as its attribute
        {},
    ]
    kinds = [SpanKind.INTERNAL, SpanKind.SERVER, SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER]
    for round_ in range(2):
        for i, attrs in enumerate(shapes):
            with tracer.start_as_current_span("root", kind=kinds[i % 5], attributes={"r": round_}):
                span = tracer.start_span(f"shape-{i}", kind=kinds[(i + 1) % 5], attributes=attrs)
                if i % 4 == 0:
                    span.add_event(
                        "note",
                        {"k": "v 555-0100", "n": i, "seq": (1, 2), "runlake.runtime.state": "pin 4111 1111 1111 1111"},
                    )
                if i % 7 == 0:
                    span.add_event("login by gina@example.com", {"password": "hunter2", "user.id": "gina@example.com"})
                if i % 5 == 1:
                    span.record_exception(ValueError(f"bad value {i}"))
                    span.set_status(Status(StatusCode.ERROR))
                elif i % 5 == 2:
                    span.set_status(Status(StatusCode.ERROR, f"described failure {i}"))
                    span.add_event("exception", {"exception.message": "ignored: described"})
                elif i % 5 == 3:
                    span.set_status(Status(StatusCode.OK))
                span.end()
    provider.shutdown()
    return list(memory.get_finished_spans())


class _ForeignSpan:
    """A span-like object that is not an SDK ReadableSpan (duck typing, properties only)."""

    def __init__(self, base: ReadableSpan, attributes: Any) -> None:
        self._base = base
        self.attributes = attributes
        self.name, self.context, self.parent = base.name, base.context, base.parent
        self.start_time, self.end_time, self.kind = base.start_time, base.end_time, base.kind
        self.status, self.events, self.resource = base.status, base.events, base.resource


class _SubclassSpan(ReadableSpan):
    @property
    def attributes(self) -> Any:  # a subclass that rewrites its attributes must be honoured
        return {**(self._attributes or {}), "subclass.extra": True}


def _foreign_spans(base: list[ReadableSpan]) -> Iterator[Any]:
    context = SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(1))
    parent = SpanContext(0xABC, 0x123, is_remote=True)
    plain_dicts: list[dict[str, Any]] = [
        {"session.id": None, "input.value": None, "output.value": {"nested": [1, {"x": None}]}, "x": None},
        {"runlake.runtime.state": ["a", 1], "runlake.metadata": {"m": "555-0100"}, "gen_ai.agent.name": ["l"]},
        {"gen_ai.conversation.id": "A", "session.id": ["A"], "llm.token_count.prompt": None},
        {"openinference.span.kind": "chain", "input.value": "from a dict"},
    ]
    for i, attrs in enumerate(plain_dicts):  # server ingest (otlp.py) and StateGuard build ReadableSpans on dicts
        yield ReadableSpan(
            f"dict-{i}",
            context=context,
            parent=parent if i % 2 else None,
            resource=Resource.create({}) if i % 2 else Resource({"service.name": "s"}),
            attributes=attrs,
            events=[Event("exception", None, 5), Event("exception", {"exception.message": "m 4111 1111 1111 1111"}, 6)],
            status=Status(StatusCode.ERROR),
            start_time=10 + i,
            end_time=20 + i,
        )
    yield ReadableSpan("proxy", context=context, attributes=MappingProxyType({"session.id": "p"}), start_time=1)
    yield ReadableSpan("none-attrs", context=context, attributes=None, start_time=1, end_time=2)
    for span in base[:20]:
        yield _ForeignSpan(span, span.attributes)
        yield _ForeignSpan(span, dict(span.attributes or {}))
        yield _SubclassSpan(
            span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=span.events,
            kind=span.kind,
            status=span.status,
            start_time=span.start_time,
            end_time=span.end_time,
        )
    # spans that cannot be stored: both must refuse them
    yield ReadableSpan("no-start", context=context, attributes={"session.id": "x"})
    yield ReadableSpan("no-context", attributes={"session.id": "x"}, start_time=1)
    yield ReadableSpan("zero-id", context=SpanContext(1, 0, is_remote=False), start_time=1)


@pytest.fixture
def corpus(configured: Path) -> tuple[list[Any], _StartRecorder]:
    recorder = _StartRecorder()
    spans: list[Any] = _runlake_spans(recorder) + _sdk_spans(recorder)
    spans += list(_foreign_spans(spans))
    return spans, recorder


@pytest.mark.parametrize("options", OPTIONS, ids=["plain", "redactor", "digits-no-state", "forced", "fallback"])
def test_fast_map_span_rows_equal_the_reference(corpus: tuple[list[Any], _StartRecorder], options: dict) -> None:
    spans, _ = corpus
    assert len(spans) > 150
    mapper = mapping.SpanMapper(**options)
    for _ in range(2):  # the second pass goes through the cached plans
        for span in spans:
            fast = _outcome(mapper.map_span, span)
            reference = _outcome(reference_map_span, span, **options)
            assert fast == reference, span.name
            assert [type(v) for v in fast] == [type(v) for v in reference], span.name


def test_start_rows_of_live_spans_equal_the_reference(corpus: tuple[list[Any], _StartRecorder]) -> None:
    _, recorder = corpus
    assert len(recorder.pairs) > 100
    for fast, reference in recorder.pairs:
        assert fast == reference


def test_plans_are_bounded_and_rebuilt(corpus: tuple[list[Any], _StartRecorder], monkeypatch) -> None:
    spans, _ = corpus
    monkeypatch.setattr(mapping, "_MAX_PLANS", 3)
    mapper = mapping.SpanMapper()
    for span in spans:
        assert _outcome(mapper.map_span, span) == _outcome(reference_map_span, span)
        assert len(mapper._plans) <= 3


def test_rows_equal_without_the_sdk_fast_path(corpus: tuple[list[Any], _StartRecorder], monkeypatch) -> None:
    """An SDK whose internals differ: only the public properties are used, the rows stay the same."""
    spans, _ = corpus
    monkeypatch.setattr(mapping, "_SDK_SPAN_TYPES", frozenset())
    monkeypatch.setattr(mapping, "_BoundedAttributes", None)
    for options in OPTIONS[:2]:
        mapper = mapping.SpanMapper(**options)
        for span in spans:
            assert _outcome(mapper.map_span, span) == _outcome(reference_map_span, span, **options), span.name
