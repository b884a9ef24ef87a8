"""Span → row mapping: which attributes become columns, how spans are classified as runs/nodes/turns.

Readable spans from runlake's own instrumentation, OTel GenAI, OpenInference and OpenLLMetry all map to
the same columns. Attributes that feed a column are dropped from the leftover ``attributes`` JSON when
they hold the column's value; :func:`attributes_of_row` puts them back under their canonical names.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import pyarrow as pa
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan as _ReadableSpan
from opentelemetry.sdk.trace import Span as _SdkSpan
from opentelemetry.trace import SpanKind, StatusCode

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
RUNTIME_CLEARED = "runlake.runtime.cleared"  # a tombstone turn: "runtime" (the one it names) or "all" cleared
CLEARED_RUNTIME, CLEARED_ALL = "runtime", "all"
COST_CENTS = "runlake.cost.cents"
METADATA = "runlake.metadata"

RUN, NODE, TURN, OTHER = "run", "node", "turn", "span"
DEFAULT_TTL_DAYS = 30
MAX_TTL_DAYS = 36_500  # 100 years: "keep it"; larger values are stored as this (dates stay computable)
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)
MAX_COST_CENTS = 1e14  # a span's cost beyond +/-this many cents (a trillion dollars) is stored as the bound

# column -> (keys read, first found wins; keys written back when rebuilding the attributes)
COLUMN_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "session_id": (
        ("gen_ai.conversation.id", "session.id", "langfuse.session.id", "traceloop.association.properties.session_id"),
        ("gen_ai.conversation.id", "session.id"),
    ),
    "user_id": (
        ("user.id", "langfuse.user.id", "enduser.id", "traceloop.association.properties.user_id"),
        ("user.id",),
    ),
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
        (
            "input.value",
            "gen_ai.input.messages",
            "traceloop.entity.input",
            "gen_ai.prompt",
            "gen_ai.tool.call.arguments",
        ),
        ("input.value",),
    ),
    "output": (
        (
            "output.value",
            "gen_ai.output.messages",
            "traceloop.entity.output",
            "gen_ai.completion",
            "gen_ai.tool.call.result",
        ),
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
# message lists flattened into one attribute per field, read when a span has no input / output attribute of its own:
# (column, key prefix, infix) for OpenLLMetry's gen_ai.prompt.{i}.{field} and OpenInference's
# llm.input_messages.{i}.message.{field}. The column holds them as a JSON list of {field: value} per message.
MESSAGE_FAMILIES = (
    ("input", "gen_ai.prompt.", ""),
    ("input", "llm.input_messages.", "message."),
    ("output", "gen_ai.completion.", ""),
    ("output", "llm.output_messages.", "message."),
)
# leftover attribute naming the family a column was assembled from, so attributes_of_row can flatten it back
MESSAGES_FROM = {"input": "runlake.input.messages_from", "output": "runlake.output.messages_from"}
_MARKER_KEYS = frozenset(MESSAGES_FROM.values())
USD_COST = "llm.cost.total"  # OpenInference: a span's cost in US dollars, read when runlake.cost.cents is absent
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
# OpenLLMetry's llm spans before it adopted gen_ai.operation.name carry only llm.request.type
_LLM_REQUEST_TYPES = {"chat": "llm", "completion": "llm", "embedding": "embedding", "rerank": "reranker"}

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
_STATUS_BY_ID = {id(code): _STATUS_NAMES.get(code.value, "UNSET") for code in StatusCode}  # no Enum.value per span
_KIND_BY_ID = {id(kind): _KIND_NAMES.get(kind.value, "INTERNAL") for kind in SpanKind}


# strict: JSON has no NaN or infinities (they raise, and are then written as null: see ``to_json``)
def bytes_text(value: bytes | bytearray | memoryview) -> str:
    """Bytes as text: UTF-8 as it is, anything else in base64 (as OTLP/JSON writes bytes), never a Python repr."""
    data = bytes(value)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return base64.b64encode(data).decode("ascii")


def _as_text(value: Any) -> str:
    """A value that is not a string, as a text column (or JSON) holds it: bytes by ``bytes_text``, else ``str()``."""
    return bytes_text(value) if isinstance(value, (bytes, bytearray, memoryview)) else str(value)


_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_as_text, allow_nan=False).encode

try:  # the C encoder JSONEncoder.encode builds on every call, built once (no circular check: attribute values)
    from json.encoder import c_make_encoder as _c_make_encoder
    from json.encoder import encode_basestring as _encode_basestring
except ImportError:  # pragma: no cover - interpreters without the C accelerator
    _c_make_encoder = None
if _c_make_encoder is not None:
    _c_encoder = _c_make_encoder(None, _as_text, _encode_basestring, None, ":", ",", False, False, False)

    def _encode(value: Any) -> str:
        return "".join(_c_encoder(value, 0))

else:  # pragma: no cover
    _encode = _JSON


def _fast_json(value: Any) -> str:
    """``to_json`` for the dicts and lists of span attributes and events, without the encoder's per-call set-up."""
    try:
        return _encode(value)
    except ValueError:  # a NaN or infinity somewhere (rare): written as null
        return _encode(_finite_or_null(value))


def to_json(value: Any) -> str:
    """Compact JSON, with anything unknown as its ``str`` and NaN / infinities as null, so every JSON column holds
    JSON that strict readers accept (the number columns take None for them too, see ``_as_float``)."""
    try:
        return _JSON(value)
    except ValueError:
        return _JSON(_finite_or_null(value))


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes_text(value)
    return to_json(list(value) if isinstance(value, tuple) else value)


def _as_int(value: Any) -> int | None:
    """An int64 column's value; None for what is not a number or does not fit (left in no column, never an error)."""
    if isinstance(value, bool):
        return int(value)
    if not isinstance(value, int):
        try:
            value = round(float(value))
        except (TypeError, ValueError, OverflowError):  # OverflowError: round() of an infinity
            return None
    return value if -INT64_MAX - 1 <= value <= INT64_MAX else None


def _as_count(value: Any) -> int | None:
    """A token count: a whole number from 0 that fits int64, else None (a negative or boolean count is none)."""
    if isinstance(value, bool):
        return None
    number = _as_int(value)
    return number if number is not None and number >= 0 else None


def _as_cost(value: Any) -> float | None:
    """A cost in cents: finite, and within +/-MAX_COST_CENTS (more is no real cost; sums stay exact and the same in
    history, logs and statistics)."""
    number = _as_float(value)
    if number is None:
        return None
    return max(-MAX_COST_CENTS, min(number, MAX_COST_CENTS))


def _as_ttl_days(value: Any) -> int | None:
    """A run's ``ttl_days``: past the cap (an infinity, 10**30) the cap; None (the default) for what is not a number,
    a bool included (``True`` is no ttl of one day)."""
    if isinstance(value, bool):
        return None
    try:
        number = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError):
        return None
    if number != number:  # NaN
        return None
    return MAX_TTL_DAYS if number > MAX_TTL_DAYS else _as_int(number)


def _as_float(value: Any) -> float | None:
    """A double column's value; None for what is not a finite number (NaN and infinities break every sum)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


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
    request_type = attributes.get("llm.request.type")
    if isinstance(request_type, str) and request_type:
        return NODE, _LLM_REQUEST_TYPES.get(request_type, request_type)
    if operation:
        return NODE, str(operation)
    if not has_parent:
        return RUN, None
    return OTHER, None


def _plain(attributes: Any) -> Any:
    """The SDK's plain dict behind ``BoundedAttributes`` (read-only use), else the mapping itself."""
    if type(attributes) is _BoundedAttributes:
        return attributes._dict if attributes._immutable else attributes.copy()  # a live span's: a snapshot
    return attributes


def _redacted_events_json(events: Sequence[Any], redact: Any) -> str:
    """Events as JSON, each cleaned by ``redact_event`` (the forwarder cleans them the same way)."""
    out = []
    for event in events:
        name, attrs = redact_event(event.name, event.attributes, redact)
        out.append({"name": name, "time_unix_nano": event.timestamp, "attributes": attrs})
    return _fast_json(out)


def _events_json(events: Sequence[Any]) -> tuple[str | None, str | None]:
    """Events as JSON, and the message of the first exception event (the error message)."""
    if not events:
        return None, None
    out = []
    message = None
    for event in events:
        attrs = event.attributes
        attrs = _plain(attrs) if type(attrs) is _BoundedAttributes else dict(attrs or {})  # only read, never changed
        if message is None and event.name == "exception":
            message = attrs.get("exception.message")
        out.append({"name": event.name, "time_unix_nano": event.timestamp, "attributes": attrs})
    return _fast_json(out), message


_MAX_RESOURCES = 1024
_MAX_CACHED_RESOURCE_CHARS = 16_384  # a bigger resource (rare) is worked out each time rather than held


def _resource_of(resource: Any, cache: dict[int, tuple[Any, str | None, str | None]]) -> tuple[str | None, str | None]:
    """Service name and resource JSON, cached per resource object (spans of one provider share it; every request a
    server decodes has a new one, hence the caps: at most 1,024 resources of at most 16 KB of JSON each)."""
    hit = cache.get(id(resource))
    if hit is None or hit[0] is not resource:  # the cache holds the object, so its id cannot be reused meanwhile
        attrs = dict(resource.attributes) if resource is not None else {}
        service = attrs.pop("service.name", None)
        hit = (resource, service, to_json(attrs) if attrs else None)
        if hit[2] is None or len(hit[2]) <= _MAX_CACHED_RESOURCE_CHARS:
            if len(cache) >= _MAX_RESOURCES:
                cache.clear()
            cache[id(resource)] = hit
    return hit[1], hit[2]


# ---- the per-key-set plan ----------------------------------------------------------------------------------------
# Spans of one instrumentation carry the same attribute keys in the same order, so what each key feeds is worked out
# once per key tuple: which value every column takes (the first found of its keys), which keys are leftovers, and
# which aliases go to the leftovers only when their value differs from the column's.
_PLAN_COLUMNS = tuple(COLUMN_KEYS)  # the order of the values a plan's getter returns (map_span unpacks them)
_PLAN_TEXT = frozenset(_TEXT_COLUMNS)  # absent -> _ABSENT (a present None becomes "null", as _text makes it)
_ABSENT = object()
_MAX_PLANS = 4096
_MAX_PLANNED_KEYS = 200_000  # keys in all cached plans (a plan's size follows its key count; ~90 B a key)
_MAX_KEYS_OF_A_CACHED_PLAN = 1024  # a span with more keys than this (rare) is planned each time
if _PLAN_COLUMNS != (
    "session_id", "user_id", "tenant_id", "run_id", "agent_name", "agent_id", "node_id", "node_type", "turn_id",
    "runtime_id", "runtime_state", "operation", "model", "provider", "input", "output", "input_tokens",
    "output_tokens", "cost_cents", "error_type", "ttl_days", "metadata",
):  # fmt: skip
    raise RuntimeError("COLUMN_KEYS changed: update the unpacking in SpanMapper.map_span")


def _message_field(key: str, prefix: str, infix: str) -> tuple[int, str] | None:
    """``(index, field)`` of a flattened message key of one family, else None (indices in canonical form only)."""
    index, dot, tail = key[len(prefix) :].partition(".")
    if not (dot and index.isascii() and index.isdigit() and str(int(index)) == index and tail.startswith(infix)):
        return None
    field = tail[len(infix) :]
    return (int(index), field) if field else None


def _message_plan(keys: tuple[str, ...], chosen: dict[str, tuple[int, int]]) -> tuple[tuple, set[int]]:
    """Per column with no attribute of its own: the flattened message keys of the first family of
    ``MESSAGE_FAMILIES`` the span has (a fixed order, so a span rebuilt with its keys in another order maps the same).

    Returns ``((column, family, ((index, field, position), ...), flatten_back), ...)`` and the positions to leave
    out of the leftovers (a family whose indices run 0..n-1 rebuilds exactly; any other is also kept as it came).
    """
    found: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    for position, key in enumerate(keys):
        if not key.startswith(("gen_ai.", "llm.")) or key in _KEY_INDEX:
            continue
        for column, prefix, infix in MESSAGE_FAMILIES:
            if column not in chosen and key.startswith(prefix):
                hit = _message_field(key, prefix, infix)
                if hit is not None:
                    found.setdefault((column, prefix), []).append((hit[0], hit[1], position))
    plan, dropped, done = [], set(), set()
    for column, prefix, _ in MESSAGE_FAMILIES:
        fields = found.get((column, prefix))
        if not fields or column in done:
            continue
        done.add(column)
        fields.sort(key=itemgetter(0, 2))
        indices = {index for index, _, _ in fields}
        exact = indices == set(range(len(indices))) and len({(i, f) for i, f, _ in fields}) == len(fields)
        if exact:
            dropped.update(position for _, _, position in fields)
        plan.append((column, prefix, tuple(fields), exact))
    return tuple(plan), dropped


class _Plan:
    __slots__ = ("columns", "leftover_keys", "leftovers", "aliases", "messages", "usd_cost_at")

    def __init__(self, keys: tuple[str, ...]) -> None:
        none_at, absent_at = len(keys), len(keys) + 1  # values are extended with (None, _ABSENT)
        chosen: dict[str, tuple[int, int]] = {}  # column -> (rank, position of its key)
        for i, key in enumerate(keys):
            hit = _KEY_INDEX.get(key)
            if hit is not None and hit[1] < chosen.get(hit[0], (99, 0))[0]:
                chosen[hit[0]] = (hit[1], i)
        picks = [chosen[c][1] if c in chosen else (absent_at if c in _PLAN_TEXT else none_at) for c in _PLAN_COLUMNS]
        self.columns = itemgetter(*picks)
        self.messages, dropped = _message_plan(keys, chosen)
        # the markers are runlake's own notes for attributes_of_row: one a span brings itself is not kept
        dropped.update(i for i, key in enumerate(keys) if key in _MARKER_KEYS)
        self.usd_cost_at = keys.index(USD_COST) if USD_COST in keys and "cost_cents" not in chosen else None
        leftover_at = [i for i, k in enumerate(keys) if k not in _KEY_INDEX and i not in dropped]
        self.leftover_keys = tuple(keys[i] for i in leftover_at)
        # one extra position so itemgetter always returns a tuple; zip() stops at the last key
        self.leftovers = itemgetter(*leftover_at, none_at)
        self.aliases = tuple(
            (key, i, chosen[_KEY_INDEX[key][0]][1])
            for i, key in enumerate(keys)
            if key in _KEY_INDEX and chosen[_KEY_INDEX[key][0]][1] != i
        )


def _sdk_internals_known() -> bool:
    """Whether this SDK keeps span fields and attribute dicts where the fast path reads them (checked once)."""
    try:
        attributes = BoundedAttributes(attributes={"k": 1})
        span = _ReadableSpan("probe", resource=Resource({}), attributes=attributes, start_time=0)
        fields = ("_name", "_context", "_parent", "_start_time", "_kind", "_status", "_resource", "_events")
        return (
            all(hasattr(span, f) for f in fields)
            and span._attributes is attributes
            and attributes._dict == {"k": 1}
            and attributes._immutable
        )
    except Exception:  # noqa: BLE001 - any surprise: use the public properties only
        return False


# the SDK's own span classes: their fields are read directly (subclasses and foreign spans go through properties);
# attributes: the plain dict inside BoundedAttributes instead of the Mapping ABC's items() (the slow part)
_SDK_SPAN_TYPES = frozenset({_ReadableSpan, _SdkSpan}) if _sdk_internals_known() else frozenset()
_BoundedAttributes = BoundedAttributes if _SDK_SPAN_TYPES else None


class SpanMapper:
    """Turns ReadableSpans into row tuples in ``SPAN_COLUMNS`` order.

    ``default_tenant`` applies when a span names none; ``force_tenant`` overrides what spans claim (ingest
    with an API key), and ``force_user`` the user they claim (ingest with a ``user`` key). ``redact``, when
    given (a ``runlake.redact.Redactor`` or a ``str -> str``), cleans the row by the rule of ``redact_attribute``
    (free text, metadata, events, leftover attributes; ids and names kept), the rule the OTLP forwarder applies too.
    """

    def __init__(
        self,
        default_tenant: str = DEFAULT_TENANT,
        force_tenant: str | None = None,
        redact: Any = None,
        keep_runtime_state: bool = True,
        force_user: str | None = None,
    ) -> None:
        self.default_tenant = default_tenant
        self.keep_runtime_state = keep_runtime_state
        self.force_tenant = force_tenant
        self.force_user = force_user
        self.redact = redact
        self._resource_cache: dict[int, tuple[Any, str | None, str | None]] = {}
        self._plans: dict[tuple[str, ...], _Plan] = {}
        self._planned_keys = 0

    def map_span(self, span: Any, record: str = "end") -> tuple:
        """One row; raises ValueError for a span that cannot be stored (no ids or start time)."""
        if type(span) in _SDK_SPAN_TYPES:  # the SDK's own spans: read their fields, skip the read-only proxies
            start_time, context, parent = span._start_time, span._context, span._parent
            attributes = span._attributes
            if type(attributes) is _BoundedAttributes:
                attributes = attributes._dict if attributes._immutable else attributes.copy()
            elif type(attributes) is not dict:
                attributes = span.attributes or {}
            events = span.events if span._events else ()
            name, kind, status, resource = span._name, span._kind, span._status, span._resource
        else:
            start_time, context, parent = span.start_time, span.context, span.parent
            attributes = span.attributes or {}
            if type(attributes) is not dict:
                attributes = dict(attributes.items())
            events, name, kind, status, resource = span.events, span.name, span.kind, span.status, span.resource
        if not isinstance(start_time, int) or context is None or not context.span_id:
            raise ValueError(f"span {name!r} has no start time or span id")
        end_time = span.end_time if record == "end" else None
        if not INT64_MIN <= start_time <= INT64_MAX or (
            type(end_time) is int and not INT64_MIN <= end_time <= INT64_MAX
        ):  # the lake keeps int64 nanoseconds (years 1677-2262): a unit slip must not reach the day folder
            raise ValueError(f"span {name!r} has a time outside the int64 nanosecond range (years 1677-2262)")

        keys = tuple(attributes)
        plan = self._plans.get(keys)
        if plan is None:
            plan = _Plan(keys)
            if len(keys) <= _MAX_KEYS_OF_A_CACHED_PLAN:
                if len(self._plans) >= _MAX_PLANS or self._planned_keys + len(keys) > _MAX_PLANNED_KEYS:
                    self._plans.clear()
                    self._planned_keys = 0
                self._plans[keys] = plan
                self._planned_keys += len(keys)
        values = [*attributes.values(), None, _ABSENT]
        (
            session_id, user_id, tenant_id, run_id, agent_name, agent_id, node_id, node_type, turn_id,
            runtime_id, runtime_state, operation, model, provider, input_text, output_text, input_tokens,
            output_tokens, cost_cents, error_type, ttl, metadata,
        ) = plan.columns(values)  # fmt: skip
        leftover = dict(zip(plan.leftover_keys, plan.leftovers(values))) if plan.leftover_keys else None
        for key, i, chosen in plan.aliases:  # aliases that differ from their column's value stay in the leftovers
            if values[i] != values[chosen]:
                if leftover is None:
                    leftover = {}
                leftover[key] = values[i]
        redact = self.redact
        assembled = None  # with redact: the columns assembled from messages (already redacted field by field)
        if plan.messages:
            for column, prefix, fields, exact in plan.messages:
                text = _messages_json(values, fields, keys, redact)
                if redact is not None:
                    assembled = (assembled or ()) + (column,)
                if column == "input":
                    input_text = text
                else:
                    output_text = text
                if exact:
                    if leftover is None:
                        leftover = {}
                    leftover[MESSAGES_FROM[column]] = prefix
        if plan.usd_cost_at is not None:
            dollars = values[plan.usd_cost_at]
            dollars = None if isinstance(dollars, bool) else _as_float(dollars)
            cost_cents = dollars * 100 if dollars is not None else None
        if input_tokens is not None:
            input_tokens = _as_count(input_tokens)
        if output_tokens is not None:
            output_tokens = _as_count(output_tokens)
        if ttl is not None:
            ttl = _as_ttl_days(ttl)
        if cost_cents is not None:
            cost_cents = _as_cost(cost_cents)
        if not isinstance(input_text, str):
            input_text = None if input_text is _ABSENT else _text(input_text)
        if not isinstance(output_text, str):
            output_text = None if output_text is _ABSENT else _text(output_text)
        if not isinstance(runtime_state, str):
            runtime_state = None if runtime_state is _ABSENT else _text(runtime_state)
        if not isinstance(metadata, str):
            metadata = None if metadata is _ABSENT else _text(metadata)

        span_type, derived_type = classify(attributes, parent is not None)
        span_id = f"{context.span_id:016x}"
        if node_type is None and derived_type is not None:
            node_type = derived_type
        if span_type == RUN:  # a run is named by its own span, whatever it inherited
            run_id = span_id
        if span_type == NODE and not node_id:
            node_id = name
        tenant = self.force_tenant or tenant_id or self.default_tenant
        if self.force_user is not None:
            user_id = self.force_user
        status_code = _STATUS_BY_ID.get(id(status.status_code)) or _STATUS_NAMES.get(status.status_code.value, "UNSET")
        events_json, exception_message = _events_json(events) if events else (None, None)
        status_message = status.description or exception_message
        hit = self._resource_cache.get(id(resource))
        if hit is not None and hit[0] is resource:
            service, resource_json = hit[1], hit[2]
        else:
            service, resource_json = _resource_of(resource, self._resource_cache)
        if not ttl or ttl < 1:
            ttl = DEFAULT_TTL_DAYS
        elif ttl > MAX_TTL_DAYS:
            ttl = MAX_TTL_DAYS
        if redact is not None:  # the rule of redact_attribute, column by column (see there)
            if input_text and not (assembled and "input" in assembled):
                input_text = redact(input_text)
            if output_text and not (assembled and "output" in assembled):
                output_text = redact(output_text)
            status_message = redact(status_message) if status_message else status_message
            if metadata:
                metadata = redact_json_text(metadata, redact)
            if events_json:
                events_json = _redacted_events_json(events, redact)
            if leftover:
                leftover = redact_attributes(leftover, redact)
        return (
            record,
            span_type,
            tenant if type(tenant) is str else _as_text(tenant),
            session_id if session_id is None or isinstance(session_id, str) else _as_text(session_id),
            user_id if user_id is None or isinstance(user_id, str) else _as_text(user_id),
            run_id if run_id is None or isinstance(run_id, str) else _as_text(run_id),
            f"{context.trace_id:032x}",
            span_id,
            f"{parent.span_id:016x}" if parent is not None else None,
            name,
            _KIND_BY_ID.get(id(kind)) or _KIND_NAMES.get(kind.value, "INTERNAL"),
            start_time,
            end_time,
            status_code,
            status_message,
            error_type if error_type is None or isinstance(error_type, str) else _as_text(error_type),
            agent_name if agent_name is None or isinstance(agent_name, str) else _as_text(agent_name),
            agent_id if agent_id is None or isinstance(agent_id, str) else _as_text(agent_id),
            node_id if node_id is None or isinstance(node_id, str) else _as_text(node_id),
            node_type if node_type is None or isinstance(node_type, str) else _as_text(node_type),
            turn_id if turn_id is None or isinstance(turn_id, str) else _as_text(turn_id),
            runtime_id if runtime_id is None or isinstance(runtime_id, str) else _as_text(runtime_id),
            runtime_state if self.keep_runtime_state else None,
            operation if operation is None or isinstance(operation, str) else _as_text(operation),
            model if model is None or isinstance(model, str) else _as_text(model),
            provider if provider is None or isinstance(provider, str) else _as_text(provider),
            input_text,
            output_text,
            input_tokens,
            output_tokens,
            cost_cents,
            ttl,
            service,
            metadata,
            _fast_json(leftover) if leftover else None,
            events_json,
            resource_json,
        )


def _messages_json(
    values: list[Any], fields: tuple[tuple[int, str, int], ...], keys: tuple[str, ...] = (), redact: Any = None
) -> str:
    """A flattened message list as JSON: ``[{field: value, ...}, ...]`` in index order. With ``redact``, each value
    is cleaned as its flattened attribute (``keys[position]``) would be."""
    messages: list[dict[str, Any]] = []
    last = None
    for index, field, position in fields:
        if index != last:
            messages.append({})
            last = index
        value = values[position]
        messages[-1][field] = value if redact is None else redact_attribute(keys[position], value, redact)
    return _fast_json(messages)


def _finite_or_null(value: Any) -> Any:
    """``value`` with every NaN and infinity (inside lists, tuples and dicts too) as None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    return value


def _flatten_messages(attributes: dict[str, Any], prefix: str, text: Any) -> bool:
    """Put a column assembled by ``_messages_json`` back as the family's flattened keys; False if it cannot be."""
    infix = next((i for _, p, i in MESSAGE_FAMILIES if p == prefix), None)
    if infix is None or not isinstance(text, str):
        return False
    try:
        messages = json.loads(text)
    except ValueError:
        return False
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        return False
    for index, message in enumerate(messages):
        for field, value in message.items():
            attributes.setdefault(f"{prefix}{index}.{infix}{field}", value)
    return True


# ---- redaction: one rule for the lake and for forwarding ---------------------------------------------------------
# ``redact`` is a ``runlake.redact.Redactor`` (key-aware: ``redact_item`` / ``redact_value``) or any ``str -> str``
# (strings only). The lake (``SpanMapper.map_span``) and the OTLP forwarder (``runlake.state_policy.StateGuard``) both
# clean a span with the functions below, so a collector gets exactly what the lake gets:
# - kept as they are: ids and names that are join keys or classify the span (``REDACTION_KEEPS``: the attributes of
#   the session, user, tenant, run, agent, node, turn and runtime id columns, node type, operation, model, provider,
#   error type, token counts, cost, TTL, the span-kind keys), span names, trace and span ids, resource attributes;
# - ``runlake.runtime.state``: left to the runtime-state policy (``runlake.state_policy``), redacted on by default;
# - ``runlake.metadata`` (JSON): parsed and redacted as a structure, so the value under a key naming a secret goes;
# - every other attribute value (input, output and leftovers alike), of the span or of its events: ``redact_item``
#   (replaced whole under a key naming a secret, e.g. ``db.password``; strings and string arrays redacted);
# - event names and the status message: redacted as text.
_REDACTED_COLUMNS = frozenset({"input", "output", "metadata", "runtime_state"})
REDACTION_KEEPS = frozenset(
    {
        *(key for column, (reads, writes) in COLUMN_KEYS.items() if column not in _REDACTED_COLUMNS for key in reads),
        *(key for column, (reads, writes) in COLUMN_KEYS.items() if column not in _REDACTED_COLUMNS for key in writes),
        SPAN_TYPE,
        "openinference.span.kind",
        "traceloop.span.kind",
        "llm.request.type",
        RUNTIME_CLEARED,
    }
)


def _redact_strings(value: Any, redact: Any) -> Any:
    """Strings of a value redacted with a plain ``str -> str`` (tuples stay tuples)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_strings(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_strings(v, redact) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact_strings(v, redact) for v in value)
    return value


def redact_json_text(text: str, redact: Any) -> str:
    """A JSON document redacted as a structure (with a ``Redactor``: the value under a key naming a secret replaced
    whole), re-encoded compactly; text that is not JSON is redacted as text."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return redact(text)
    structured = getattr(redact, "redact_value", None)
    return to_json(structured(parsed) if structured is not None else _redact_strings(parsed, redact))


def redact_attribute(key: str, value: Any, redact: Any, span: bool = True) -> Any:
    """One attribute's value cleaned by the rule above (``span=False``: of an event, where no runtime-state policy
    applies, so a ``runlake.runtime.state`` there is redacted like any other value)."""
    if key in REDACTION_KEEPS or (span and key == RUNTIME_STATE):
        return value
    if key == METADATA and isinstance(value, str):
        return redact_json_text(value, redact) if value else value
    item = getattr(redact, "redact_item", None)
    if item is None:
        return _redact_strings(value, redact)
    cleaned = item(key, value)
    return tuple(cleaned) if isinstance(value, tuple) and isinstance(cleaned, list) else cleaned


def redact_attributes(attributes: Mapping[str, Any], redact: Any, span: bool = True) -> dict[str, Any]:
    """Attributes cleaned by the rule above (a new dict)."""
    return {key: redact_attribute(key, value, redact, span) for key, value in attributes.items()}


def redact_event(name: str, attributes: Mapping[str, Any] | None, redact: Any) -> tuple[str, dict[str, Any]]:
    """An event's name and attributes cleaned by the rule above."""
    name = redact(name) if isinstance(name, str) and name else name
    return name, redact_attributes(attributes or {}, redact, span=False)


def run_row(span_row: tuple, aggregate: Sequence[float] | None) -> tuple:
    """The ``runs/`` index row of a run span row; ``aggregate`` is (nodes, failed, in, out, cost)."""
    row = [span_row[i] if i >= 0 else None for i in _RUN_FROM_SPAN]
    nodes, failed, tokens_in, tokens_out, cost = aggregate or (0, 0, 0, 0, 0.0)
    named = _RUN_INDEX
    row[named["node_count"]] = int(nodes)
    row[named["failed_nodes"]] = int(failed)
    # a run's own usage wins over the sum of its nodes (frameworks often put the total on the agent span)
    if row[named["input_tokens"]] is None:
        row[named["input_tokens"]] = min(int(tokens_in), INT64_MAX)  # a sum of int64 values can pass it
    if row[named["output_tokens"]] is None:
        row[named["output_tokens"]] = min(int(tokens_out), INT64_MAX)
    if row[named["cost_cents"]] is None:
        row[named["cost_cents"]] = float(cost)
    return tuple(row)


_WRITE_BACK = tuple((column, writes) for column, (_, writes) in COLUMN_KEYS.items())


def attributes_of_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild a span's attributes from a stored row: leftover JSON plus columns under canonical keys."""
    extra = row.get("attributes")
    attributes: dict[str, Any] = json.loads(extra) if extra else {}
    get = row.get
    flattened = set()
    for column, marker in MESSAGES_FROM.items():
        prefix = attributes.pop(marker, None)
        if prefix is not None and _flatten_messages(attributes, prefix, get(column)):
            flattened.add(column)
    for column, writes in _WRITE_BACK:
        value = get(column)
        if value is None or column in flattened:
            continue
        if column == "tenant_id" and value == DEFAULT_TENANT and TENANT_ID not in attributes:
            continue
        for key in writes:
            if key not in attributes:
                attributes[key] = value
    span_type = row.get("span_type")
    if span_type in (RUN, NODE, TURN):
        attributes.setdefault(SPAN_TYPE, span_type)
    return attributes
