"""runlake's instrumentation API: ``configure``, ``run`` / ``node`` / ``turn`` and the decorators.

Spans carry the OTel GenAI and OpenInference attributes (so any backend recognises them) plus a small
``runlake.*`` namespace for what neither convention has.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import json
import logging
import math
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.runlake import (
    RunlakeBatchSpanProcessor,
    RunlakeSpanExporter,
    RunStartProcessor,
    auto_configured_on,
)
from opentelemetry.exporter.runlake import mapping as m
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter
from opentelemetry.trace import Status, StatusCode

from . import redact as _redact
from . import state_policy as _state_policy
from .forward import ForwardingProcessor, exports_otlp, forwarding_settings

_logger = logging.getLogger(__name__)
_TRACER_NAME = "runlake"
F = TypeVar("F", bound=Callable[..., Any])

_NODE_OPERATIONS = {"llm": "chat", "tool": "execute_tool", "retrieval": "retrieval", "embedding": "embeddings"}
_NODE_KINDS = {
    "llm": "LLM",
    "tool": "TOOL",
    "retrieval": "RETRIEVER",
    "embedding": "EMBEDDING",
    "reranker": "RERANKER",
    "guardrail": "GUARDRAIL",
    "agent": "AGENT",
}


# ---- time: real by default; the demo shifts it to spread history over past days --------------------------
_time_offset_ns: contextvars.ContextVar[int] = contextvars.ContextVar("runlake_time_offset_ns", default=0)
_frozen_ns: contextvars.ContextVar[int | None] = contextvars.ContextVar("runlake_frozen_ns", default=None)


def _now_ns() -> int:
    frozen = _frozen_ns.get()
    return (time.time_ns() if frozen is None else frozen) + _time_offset_ns.get()


@contextlib.contextmanager
def shifted_clock(offset_seconds: float, frozen: bool = False) -> Iterator[Callable[[float], None]]:
    """Run instrumentation as if the clock were shifted; yields ``advance(seconds)``.

    Used to generate realistic past history (``runlake demo``, benchmarks) through the real API. With
    ``frozen`` the clock stands still except for ``advance``, so durations are exactly the simulated ones.
    """
    token = _time_offset_ns.set(_time_offset_ns.get() + int(offset_seconds * 1e9))
    frozen_token = _frozen_ns.set(_frozen_ns.get() or time.time_ns()) if frozen else None

    def advance(seconds: float) -> None:
        _time_offset_ns.set(_time_offset_ns.get() + int(seconds * 1e9))

    try:
        yield advance
    finally:
        _time_offset_ns.reset(token)
        if frozen_token is not None:
            _frozen_ns.reset(frozen_token)


# ---- configuration ------------------------------------------------------------------------------------------
@dataclass
class _Pipeline:
    provider: TracerProvider
    exporter: RunlakeSpanExporter
    processors: list[SpanProcessor]
    options: dict[str, Any] = field(default_factory=dict)


class _PipelineSlot(SpanProcessor):
    """The one processor runlake adds to a provider; ``configure`` swaps what it feeds.

    Re-configuring therefore never leaves dead processors attached to the application's provider.
    """

    def __init__(self) -> None:
        self.processors: tuple[SpanProcessor, ...] = ()

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        for processor in self.processors:
            processor.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return _flush_within(self.processors, _deadline(timeout_millis))


def _deadline(timeout_millis: float) -> float:
    return time.monotonic() + max(float(timeout_millis), 0.0) / 1000


def _flush_within(processors: Iterable[Any], deadline: float) -> bool:
    """Flush each processor in turn with what is left of one shared deadline (not the full timeout each, which would
    add up); once it has passed the rest are not asked (their queues stay for their own threads) and it is False."""
    ok = True
    for processor in processors:
        left = int((deadline - time.monotonic()) * 1000)
        if left <= 0:
            return False
        ok = bool(processor.force_flush(left)) and ok
    return ok


_pipeline: _Pipeline | None = None
_BATCH_OPTIONS = ("max_queue_size", "schedule_delay_millis", "max_export_batch_size", "export_timeout_millis")
_EXPORTER_OPTIONS = (
    "tenant_id",
    "max_part_rows",
    "max_part_bytes",
    "max_buffer_bytes",
    "flush_interval_s",
    "min_session_rows",
)


def _slot_of(provider: TracerProvider) -> _PipelineSlot:
    slot = getattr(provider, "_runlake_slot", None)
    if slot is None:
        slot = _PipelineSlot()
        provider.add_span_processor(slot)
        provider._runlake_slot = slot  # type: ignore[attr-defined]
    return slot


def configure(
    state_url: str | os.PathLike[str] | None = None,
    service_name: str | None = None,
    *,
    otlp_endpoint: str | None = None,
    otlp_protocol: str | None = None,
    otlp_headers: Mapping[str, str] | str | None = None,
    **options: Any,
) -> TracerProvider:
    """Set up tracing into the runlake lake and return the TracerProvider.

    If the application already has an SDK TracerProvider, runlake adds to it; otherwise a new provider is
    created and installed globally (a global provider that is not the SDK's is a ``RuntimeError``). Calling again
    builds and checks the new pipeline, swaps it in, then flushes and closes the previous one: a call that fails
    leaves the previous one working. A relative lake path is made absolute now.
    Options: ``tenant_id``, ``mirror_runtime_state`` (default False), ``max_part_rows``, ``max_part_bytes``,
    ``max_buffer_bytes``, ``flush_interval_s``, ``min_session_rows`` (exporter: for an application that serves many
    sessions at once, with ``runlake compact`` run regularly); ``max_queue_size`` (16,384), ``schedule_delay_millis``,
    ``max_export_batch_size`` (2,048), ``export_timeout_millis`` (the lake's ``RunlakeBatchSpanProcessor``, which
    counts what a full queue drops in the exporter's ``stats["queue_dropped_spans"]``).

    Forwarding: ``otlp_endpoint`` (else ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``),
    ``otlp_protocol`` ``"grpc"`` (default) or ``"http/protobuf"``, ``otlp_headers`` (dict or ``k=v,k2=v2``) add
    the stock OTLP exporter in its own BatchSpanProcessor; ``otlp_timeout_s`` bounds each export (5 s).

    Runtime state and redaction (docs/sessions.md): ``redact`` (all attributes; default False),
    ``redact_runtime_state`` (default True), ``max_turn_state_bytes`` (1024), ``max_runtime_state_bytes`` (10240).
    """
    global _pipeline, _final_forwarding_stats
    known = {*_BATCH_OPTIONS, *_EXPORTER_OPTIONS, *_state_policy.OPTIONS, "mirror_runtime_state", "otlp_timeout_s"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"runlake.configure() got unknown option(s): {', '.join(sorted(unknown))}")
    forwarding = forwarding_settings(otlp_endpoint, otlp_protocol, otlp_headers)  # bad settings fail first
    policy = _state_policy.StatePolicy.from_options(options)
    redact = _redact.resolve(options.get("redact"), default_on=False)
    exporter = RunlakeSpanExporter(  # the guard below decides about runtime state; the exporter keeps what passes
        state_url, redact=redact, keep_runtime_state=True, **{k: options[k] for k in _EXPORTER_OPTIONS if k in options}
    )
    if isinstance(exporter.root, Path) and exporter.root.exists() and not exporter.root.is_dir():
        raise ValueError(f"runlake.configure(): the state URL {exporter.root} is a file; a lake is a folder")
    if _current_run.get() is not None:
        _logger.warning(
            "runlake.configure() inside an open run: the run's start and earlier spans went to the previous "
            "pipeline, the rest go to the new one (configure before starting runs)"
        )
    provider = _sdk_provider(service_name)  # before anything is built: a provider runlake cannot use is an error
    if forwarding is not None and otlp_endpoint is None and exports_otlp(provider):
        _logger.info(
            "runlake: the TracerProvider already sends spans to an OTLP exporter; not forwarding a second copy to %s "
            "from the OTEL_EXPORTER_OTLP_* settings (pass otlp_endpoint= to forward anyway)",
            forwarding[0],
        )
        forwarding = None
    # runtime state reaches the lake only when mirroring is on, and redacted, whatever code set the attribute
    guard = _state_policy.StateGuard(exporter, bool(options.get("mirror_runtime_state", False)), policy)
    batch_options = {k: options[k] for k in _BATCH_OPTIONS if k in options}
    # the new pipeline is built (and its options checked) before the old one is touched: a configure that fails leaves
    # the old one working, and spans keep flowing into one pipeline or the other while they are swapped
    processors: list[SpanProcessor] = [RunStartProcessor(guard)]  # type: ignore[arg-type]  # passes record_start on
    try:
        processors.append(RunlakeBatchSpanProcessor(guard, counts_to=exporter, **batch_options))
        if forwarding is not None:
            endpoint, protocol, headers = forwarding
            timeout_s = float(options.get("otlp_timeout_s", 5.0))
            mirror = bool(options.get("mirror_runtime_state", False))

            def guarded(otlp: SpanExporter) -> SpanExporter:  # the collector gets what the lake gets, no more
                return _state_policy.StateGuard(otlp, mirror, policy, redact_attributes=redact)

            processors.append(
                ForwardingProcessor(endpoint, protocol, headers, timeout_s, timeout_s, wrap=guarded, **batch_options)
            )
    except BaseException:
        _close(_Pipeline(provider, exporter, processors))
        raise
    previous, _pipeline = _pipeline, _Pipeline(provider, exporter, processors, dict(options))
    _final_forwarding_stats = None
    _slot_of(provider).processors = tuple(processors)
    _state_policy.set_policy(policy)
    for other in auto_configured_on(provider):
        _logger.warning(
            "runlake.configure(): this application also runs with OTEL_TRACES_EXPORTER=runlake (lake %s), so every "
            "span is stored twice, by that exporter and by this pipeline (lake %s); readers count each once, but it "
            "costs the bytes: use one or the other",
            other.root,
            exporter.root,
        )
    if previous is not None:
        _close(previous)
    return provider


def _sdk_provider(service_name: str | None) -> TracerProvider:
    """The global SDK TracerProvider, made and installed if there is none yet; a clear error if the application set
    one that is not the SDK's (OpenTelemetry lets the global provider be set only once, so it cannot be replaced)."""
    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        if service_name:
            _logger.info("runlake: keeping the existing TracerProvider's resource; service_name ignored")
        return current
    if isinstance(current, trace.ProxyTracerProvider):  # none set yet
        resource = Resource.create({"service.name": service_name} if service_name else {})
        trace.set_tracer_provider(TracerProvider(resource=resource))
        current = trace.get_tracer_provider()  # set only once per process: another thread may have won
        if isinstance(current, TracerProvider):
            return current
    raise RuntimeError(
        f"runlake.configure(): the global TracerProvider ({type(current).__module__}.{type(current).__qualname__}) "
        "is not an OpenTelemetry SDK TracerProvider, and OpenTelemetry does not let it be replaced once set; "
        "install an SDK TracerProvider instead (or add runlake's RunStartProcessor and a BatchSpanProcessor of a "
        "RunlakeSpanExporter to the SDK provider you use)"
    )


def _close(pipeline: _Pipeline) -> dict[str, Any] | None:
    """Detach ``pipeline`` from its provider if still attached, flush and close it; its final forwarding counts."""
    slot = getattr(pipeline.provider, "_runlake_slot", None)
    if slot is not None and slot.processors == tuple(pipeline.processors):
        slot.processors = ()
    for processor in reversed(pipeline.processors):
        processor.shutdown()
    pipeline.exporter.shutdown()
    return _forwarding_stats_of(pipeline)


def _forwarding_stats_of(pipeline: _Pipeline) -> dict[str, Any] | None:
    for processor in pipeline.processors:
        if isinstance(processor, ForwardingProcessor):
            return processor.stats
    return None


_final_forwarding_stats: dict[str, Any] | None = None


def shutdown() -> None:
    """Flush and close runlake's pipeline; the application's provider keeps working."""
    global _pipeline, _final_forwarding_stats
    pipeline, _pipeline = _pipeline, None
    if pipeline is None:
        return
    _final_forwarding_stats = _close(pipeline)


def force_flush(timeout_millis: int = 30_000) -> bool:
    """Export and write everything buffered so far; True when all of it reached disk (and the collector, if
    forwarding) within ``timeout_millis``, one deadline for all of it: the lake first, forwarding with what is left."""
    pipeline = _pipeline
    if pipeline is None:
        return True
    deadline = _deadline(timeout_millis)
    lake = [p for p in pipeline.processors if not isinstance(p, ForwardingProcessor)]
    ok = _flush_within(lake, deadline)
    ok = pipeline.exporter.force_flush(max(int((deadline - time.monotonic()) * 1000), 0)) and ok
    forwarders = [p for p in pipeline.processors if isinstance(p, ForwardingProcessor)]
    return _flush_within(forwarders, deadline) and ok


def forwarding_stats() -> dict[str, Any] | None:
    """Counts of spans forwarded to the OTLP collector (and of those that did not get there), if forwarding; after
    ``shutdown()`` the final counts of the pipeline it closed."""
    pipeline = _pipeline
    if pipeline is None:
        return dict(_final_forwarding_stats) if _final_forwarding_stats is not None else None
    return _forwarding_stats_of(pipeline)


def current_exporter() -> RunlakeSpanExporter | None:
    """The exporter of the pipeline ``configure`` set up, if any."""
    return _pipeline.exporter if _pipeline else None


def mirror_runtime_state_enabled() -> bool:
    return bool(_pipeline and _pipeline.options.get("mirror_runtime_state", False))


# ---- spans ----------------------------------------------------------------------------------------------------
def _to_text(value: Any) -> str:
    """A value as span text: strings as they are, bytes decoded (UTF-8, bad bytes replaced), JSON-like values
    (dicts, lists, numbers) as JSON — always valid JSON, whatever their keys; NaN and infinities become ``null`` —
    and any other object as its ``str``."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, (dict, list, tuple, int, float, bool)):
        return str(value)
    try:
        return json.dumps(value, ensure_ascii=False, default=str, allow_nan=False)
    except (TypeError, ValueError):  # keys that are not strings, a container holding itself, NaN or an infinity
        return json.dumps(_jsonable(value, set()), ensure_ascii=False, default=str, allow_nan=False)


def _jsonable(value: Any, seen: set[int]) -> Any:
    """``value`` with every mapping key made a string, any cycle cut and NaN / infinities as null (JSON has no
    such numbers), for ``json.dumps``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return "<cycle>"
        seen = seen | {id(value)}
        if isinstance(value, dict):
            return {str(k): _jsonable(v, seen) for k, v in value.items()}
        return [_jsonable(v, seen) for v in value]
    return value


def _count(value: Any, name: str) -> int:
    """A token count: a number from 0 to 2**63 - 1 (a float is rounded); anything else, text and booleans too (as
    ``set_cost`` refuses them), is a clear error."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a number of tokens, got {value!r}")
    try:
        number = round(float(value)) if not isinstance(value, int) else int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number of tokens, got {value!r}") from None
    if not 0 <= number <= m.INT64_MAX:
        raise ValueError(f"{name} must be between 0 and 2**63 - 1, got {value!r}")
    return number


def _ttl_days(value: Any) -> int:
    """``ttl_days`` as a whole number of days from 1 to ``MAX_TTL_DAYS``; anything else (text, booleans, fractions)
    is a clear error."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"ttl_days must be a whole number of days, got {value!r}")
    try:
        days = int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"ttl_days must be a whole number of days, got {value!r}") from None
    if days != value:
        raise ValueError(f"ttl_days must be a whole number of days, got {value!r}")
    if not 1 <= days <= m.MAX_TTL_DAYS:
        raise ValueError(f"ttl_days must be from 1 to {m.MAX_TTL_DAYS:,} (100 years), got {value!r}")
    return days


@dataclass
class _RunContext:
    run_id: str
    session_id: str
    user_id: str | None
    tenant_id: str | None
    ttl_days: int


_current_run: contextvars.ContextVar[_RunContext | None] = contextvars.ContextVar("runlake_run", default=None)


class SpanHandle:
    """What ``run`` / ``node`` / ``turn`` yield: record output, usage, cost and metadata on the span."""

    def __init__(self, span: trace.Span, metadata: Mapping[str, Any] | None = None) -> None:
        self.span = span
        self._metadata: dict[str, Any] = dict(metadata or {})
        self.output: Any = None
        if self._metadata:
            span.set_attribute(m.METADATA, _to_text(self._metadata))

    def set_output(self, output: Any) -> None:
        """Record the output; ``None`` records nothing (as if no output was set)."""
        self.output = output
        if output is not None:
            self.span.set_attribute("output.value", _to_text(output))

    def set_usage(self, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """Token counts: whole numbers from 0 to 2**63 - 1 (a ``ValueError`` otherwise, before anything is set)."""
        attrs: dict[str, int] = {}
        if input_tokens is not None:
            input_tokens = _count(input_tokens, "input_tokens")
            attrs["gen_ai.usage.input_tokens"] = attrs["llm.token_count.prompt"] = input_tokens
        if output_tokens is not None:
            output_tokens = _count(output_tokens, "output_tokens")
            attrs["gen_ai.usage.output_tokens"] = attrs["llm.token_count.completion"] = output_tokens
        if input_tokens is not None and output_tokens is not None:
            attrs["llm.token_count.total"] = min(input_tokens + output_tokens, m.INT64_MAX)
        self.span.set_attributes(attrs)

    def set_cost(self, cents: float) -> None:
        """The cost in cents: a finite number (a ``ValueError`` otherwise: text, booleans, NaN and infinities)."""
        if isinstance(cents, (str, bytes, bool)):
            raise ValueError(f"cents must be a number, got {cents!r}")
        try:
            value = float(cents)
        except (TypeError, ValueError):
            raise ValueError(f"cents must be a number, got {cents!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"cents must be a finite number, got {cents!r}")
        self.span.set_attribute(m.COST_CENTS, value)

    def set_model(self, model: str, provider: str | None = None) -> None:
        self.span.set_attribute("gen_ai.request.model", model)
        self.span.set_attribute("llm.model_name", model)
        if provider:
            self.span.set_attribute("gen_ai.provider.name", provider)

    def set_metadata(self, metadata: Mapping[str, Any] | None = None, **more: Any) -> None:
        self._metadata.update(metadata or {}, **more)
        self.span.set_attribute(m.METADATA, _to_text(self._metadata))

    @property
    def span_id(self) -> str:
        return f"{self.span.get_span_context().span_id:016x}"

    @property
    def trace_id(self) -> str:
        return f"{self.span.get_span_context().trace_id:032x}"


class RunHandle(SpanHandle):
    @property
    def run_id(self) -> str:
        return self.span_id


class TurnHandle(SpanHandle):
    def __init__(self, span: trace.Span, session_id: str | None, runtime_id: str, turn_id: str) -> None:
        super().__init__(span)
        self.session_id = session_id
        self.runtime_id = runtime_id
        self.turn_id = turn_id

    def set_state(self, state: Mapping[str, Any]) -> bool:
        """Mirror this turn's runtime state on its span (docs/sessions.md). Never raises.

        Mirroring off (the default): nothing is recorded and True is returned, like PraisonAI's
        ``mirror_enabled=False``. On: the state is checked, redacted and size-limited (``state_policy.prepare_state``);
        False, with a warning saying why, when it is refused or the span no longer records.
        """
        if not mirror_runtime_state_enabled():
            return True
        if not self.span.is_recording():
            _logger.warning("runlake: turn %r: set_state after the turn ended (or unsampled); not stored", self.turn_id)
            return False
        limits = getattr(self.span, "_limits", None)  # the SDK span's SpanLimits: a longer text would be cut
        max_length = getattr(limits, "max_span_attribute_length", None)
        prepared = _state_policy.prepare_state(
            state, self.session_id, self.runtime_id, self.turn_id, max_length=max_length
        )
        if prepared is None:
            return False
        self.span.set_attribute(m.RUNTIME_STATE, prepared)
        return True


# (provider, its tracer): the SDK returns the same Tracer for the same provider and name, so it is looked up once per
# provider rather than per span (6-9 µs each). The global provider is checked on every span (a global read): it is set
# once per process, and a provider that replaces the proxy invalidates the entry.
_tracer_entry: tuple[Any, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    global _tracer_entry
    provider = trace.get_tracer_provider()
    entry = _tracer_entry
    if entry is None or entry[0] is not provider:
        entry = _tracer_entry = (provider, provider.get_tracer(_TRACER_NAME))
        if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):  # the spans go nowhere
            _warn_once(
                "no-provider",
                "runlake: no OpenTelemetry SDK TracerProvider is set up, so runs and nodes are not recorded; "
                "call runlake.configure() first (or run under opentelemetry-instrument)",
            )
    return entry[1]


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: Any) -> None:
    """A warning about how the API is used, once per process and kind (not once per span)."""
    if key not in _warned:
        _warned.add(key)
        _logger.warning(message, *args)


@contextlib.contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[trace.Span]:
    """A current span for the block; an exception marks it failed and propagates."""
    span = _tracer().start_span(name, attributes=attributes, start_time=_now_ns())
    try:
        # what trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False) does,
        # without its generator: make the span current, and restore the previous context before anything else
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            yield span
        finally:
            otel_context.detach(token)
    except BaseException as error:
        _failed(span, error)
        raise
    finally:
        span.end(end_time=_now_ns())


def _failed(span: trace.Span, error: BaseException) -> None:
    """Mark the span failed, except for a generator closed early and a clean ``sys.exit()`` (code 0 or None);
    KeyboardInterrupt and cancellation stay errors, as OTel's ``use_span`` records them."""
    if isinstance(error, SystemExit) and error.code in (0, None):
        return
    if not isinstance(error, GeneratorExit):
        span.set_attribute("error.type", type(error).__qualname__)
        span.record_exception(error, timestamp=_now_ns())
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))


def _inherited(run_ctx: _RunContext | None) -> dict[str, Any]:
    if run_ctx is None:
        return {}
    attrs: dict[str, Any] = {
        "gen_ai.conversation.id": run_ctx.session_id,
        "session.id": run_ctx.session_id,
        m.RUN_ID: run_ctx.run_id,
        m.TTL_DAYS: run_ctx.ttl_days,
    }
    if run_ctx.user_id:
        attrs["user.id"] = run_ctx.user_id
    if run_ctx.tenant_id:
        attrs[m.TENANT_ID] = run_ctx.tenant_id
    return attrs


@contextlib.contextmanager
def run(
    agent: str,
    session_id: str,
    user_id: str | None = None,
    tenant_id: str | None = None,
    input: Any = None,  # noqa: A002 - the public name
    ttl_days: int = 30,
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[RunHandle]:
    """One agent execution: the root of its nodes and turns. Exceptions mark it failed and propagate."""
    if not agent or not session_id:
        raise ValueError("runlake.run() needs a non-empty agent name and session_id")
    ttl_days = _ttl_days(ttl_days)
    attrs: dict[str, Any] = {
        m.SPAN_TYPE: m.RUN,
        "gen_ai.operation.name": "invoke_agent",
        "openinference.span.kind": "AGENT",
        "gen_ai.agent.name": agent,
        "gen_ai.agent.id": agent,
        "gen_ai.conversation.id": session_id,
        "session.id": session_id,
        m.TTL_DAYS: ttl_days,
    }
    if user_id:
        attrs["user.id"] = user_id
    if tenant_id:
        attrs[m.TENANT_ID] = tenant_id
    if input is not None:
        attrs["input.value"] = _to_text(input)
    if metadata:
        attrs[m.METADATA] = _to_text(dict(metadata))  # at start, so a run in progress shows it too
    with _span(f"invoke_agent {agent}", attrs) as span:
        handle = RunHandle(span, metadata)
        span.set_attribute(m.RUN_ID, handle.run_id)
        token = _current_run.set(_RunContext(handle.run_id, session_id, user_id, tenant_id, ttl_days))
        try:
            yield handle
        finally:
            _current_run.reset(token)


@contextlib.contextmanager
def node(
    node_id: str,
    type: str = "llm",  # noqa: A002 - the public name
    input: Any = None,  # noqa: A002
    metadata: Mapping[str, Any] | None = None,
) -> Iterator[SpanHandle]:
    """One step inside a run: an llm call, a tool call, a router, a retrieval, ..."""
    if node_id is None or node_id == "":
        raise ValueError("runlake.node() needs a non-empty node_id")
    run_ctx = _current_run.get()
    if run_ctx is None and not trace.get_current_span().get_span_context().is_valid:
        _warn_once(
            "orphan",
            "runlake: node %r outside any run: it is stored without a session or run (open runlake.run() first)",
            node_id,
        )
    attrs = _inherited(run_ctx)
    attrs[m.SPAN_TYPE] = m.NODE
    attrs[m.NODE_ID] = node_id
    attrs[m.NODE_TYPE] = type
    attrs["openinference.span.kind"] = _NODE_KINDS.get(type, "CHAIN")
    operation = _NODE_OPERATIONS.get(type)
    if operation:
        attrs["gen_ai.operation.name"] = operation
    if type == "tool":
        attrs["gen_ai.tool.name"] = node_id
    if input is not None:
        attrs["input.value"] = _to_text(input)
    with _span(f"{operation or type} {node_id}", attrs) as span:
        yield SpanHandle(span, metadata)


@contextlib.contextmanager
def turn(turn_id: str, runtime_id: str = "native") -> Iterator[TurnHandle]:
    """One conversation turn; its handle can mirror runtime state (``set_state``)."""
    if turn_id is None or turn_id == "":
        raise ValueError("runlake.turn() needs a non-empty turn_id")
    run_ctx = _current_run.get()
    attrs = _inherited(run_ctx)
    attrs[m.SPAN_TYPE] = m.TURN
    attrs[m.TURN_ID] = turn_id
    attrs[m.RUNTIME_ID] = runtime_id
    attrs["openinference.span.kind"] = "CHAIN"
    with _span(f"turn {turn_id}", attrs) as span:
        yield TurnHandle(span, run_ctx.session_id if run_ctx else None, runtime_id, turn_id)


# ---- decorators ------------------------------------------------------------------------------------------------
def _call_input(func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    if len(args) == 1 and not kwargs and isinstance(args[0], str):
        return args[0]
    try:
        bound = inspect.signature(func).bind_partial(*args, **kwargs)
        return {k: v for k, v in bound.arguments.items() if k not in ("self", "cls")}
    except (TypeError, ValueError):
        return {"args": list(args), "kwargs": kwargs}


def _traced(func: F, open_span: Callable[[tuple, dict], contextlib.AbstractContextManager[SpanHandle]]) -> F:
    """Wrap a sync or async function (or generator function) in the span ``open_span(args, kwargs)`` opens; its
    result is the output."""
    if inspect.isgeneratorfunction(func):
        return _traced_generator(func, open_span)
    if inspect.isasyncgenfunction(func):
        return _traced_async_generator(func, open_span)
    if inspect.iscoroutinefunction(func):

        @functools.wraps(func)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            with open_span(args, kwargs) as handle:
                result = await func(*args, **kwargs)
                handle.set_output(result)
                return result

        return async_wrapper  # type: ignore[return-value]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with open_span(args, kwargs) as handle:
            result = func(*args, **kwargs)
            handle.set_output(result)
            return result

    return wrapper  # type: ignore[return-value]


_STREAM_TEXT_CAP = 1 << 20  # characters of yielded text kept as a generator's output


class _Yielded:
    """What a decorated generator yields, as its output: the strings joined (capped), else how many items."""

    def __init__(self) -> None:
        self.items = 0
        self.parts: list[str] | None = []
        self.size = 0

    def add(self, item: Any) -> None:
        self.items += 1
        if self.parts is not None and isinstance(item, str) and self.size < _STREAM_TEXT_CAP:
            self.parts.append(item)
            self.size += len(item)
        elif not isinstance(item, str):
            self.parts = None

    def output(self, returned: Any) -> Any:
        if returned is not None:
            return returned
        if self.parts is not None and self.items:
            text = "".join(self.parts)
            return text[:_STREAM_TEXT_CAP] + ("…" if len(text) > _STREAM_TEXT_CAP else "")
        return {"items": self.items}


def _traced_generator(func: F, open_span: Callable[[tuple, dict], contextlib.AbstractContextManager[SpanHandle]]) -> F:
    """A generator function whose span lasts from the first item to the last (or to an error, or to ``close()``).

    The generator's steps run in a copy of the caller's context, taken when it is called: its span is current for
    its own body (nodes opened inside are its children) but never for the caller's code between two items."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = contextvars.copy_context()
        seen = _Yielded()

        def body() -> Any:
            with open_span(args, kwargs) as handle:
                inner = func(*args, **kwargs)
                move: Callable[..., Any] = inner.send
                value: Any = None
                while True:
                    try:
                        item = move(value)
                    except StopIteration as stop:
                        handle.set_output(seen.output(stop.value))
                        return stop.value
                    seen.add(item)
                    try:
                        value, move = (yield item), inner.send
                    except GeneratorExit:  # the consumer stopped early: what it took is the output
                        inner.close()
                        handle.set_output(seen.output(None))
                        raise
                    except BaseException as error:  # noqa: BLE001 - thrown in by the caller: pass it on
                        value, move = error, inner.throw

        steps = body()
        move: Callable[..., Any] = steps.send
        value: Any = None
        while True:
            try:
                item = ctx.run(move, value)
            except StopIteration as stop:
                return stop.value
            try:
                value, move = (yield item), steps.send
            except GeneratorExit:
                ctx.run(steps.close)
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in by the caller: into the body's context
                value, move = error, steps.throw

    return wrapper  # type: ignore[return-value]


def _traced_async_generator(
    func: F, open_span: Callable[[tuple, dict], contextlib.AbstractContextManager[SpanHandle]]
) -> F:
    """The async twin of ``_traced_generator`` (items are pulled one at a time; ``asend``/``athrow`` values are not
    passed on). From Python 3.11 each step runs in the copied context, as for the sync generator."""

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = contextvars.copy_context()
        seen = _Yielded()

        async def body() -> Any:
            with open_span(args, kwargs) as handle:
                inner = func(*args, **kwargs)
                async for item in inner:
                    seen.add(item)
                    try:
                        yield item
                    except GeneratorExit:  # the consumer stopped early: what it took is the output
                        await inner.aclose()
                        handle.set_output(seen.output(None))
                        raise
                handle.set_output(seen.output(None))

        steps = body()

        async def in_context(awaitable: Any) -> Any:
            return await awaitable

        async def step(awaitable: Any) -> Any:
            if sys.version_info >= (3, 11):
                return await asyncio.create_task(in_context(awaitable), context=ctx)  # type: ignore[call-arg]
            return await awaitable  # pragma: no cover - 3.10: the body's span stays current between items

        try:
            while True:
                try:
                    item = await step(steps.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            await step(steps.aclose())

    return wrapper  # type: ignore[return-value]


def agent(
    name: str | None = None,
    *,
    session_id: str | None = None,
    user_id: str | None = None,
    tenant_id: str | None = None,
    ttl_days: int = 30,
    metadata: Mapping[str, Any] | None = None,
) -> Callable[[F], F]:
    """Decorate a sync or async function (or generator function) as an agent run.

    The session is ``session_id``, else the call's ``session_id`` argument (by keyword or by position), else a new
    id per call; the user likewise ``user_id``, else the call's ``user_id`` argument.
    """

    def decorate(func: F) -> F:
        try:
            signature: inspect.Signature | None = inspect.signature(func)
        except (TypeError, ValueError):
            signature = None

        def argument(key: str, args: tuple, kwargs: dict) -> Any:
            """The call's ``key`` argument, passed by keyword or by position."""
            if key in kwargs or signature is None or key not in signature.parameters:
                return kwargs.get(key)
            try:
                return signature.bind_partial(*args, **kwargs).arguments.get(key)
            except TypeError:  # the call itself is wrong: calling the function says so
                return None

        def open_run(args: tuple, kwargs: dict) -> contextlib.AbstractContextManager[RunHandle]:
            return run(
                name or func.__name__,
                session_id or argument("session_id", args, kwargs) or f"session-{uuid.uuid4().hex[:12]}",
                user_id=user_id or argument("user_id", args, kwargs),
                tenant_id=tenant_id,
                input=_call_input(func, args, kwargs),
                ttl_days=ttl_days,
                metadata=metadata,
            )

        return _traced(func, open_run)

    return decorate


def step(type: str = "tool", name: str | None = None) -> Callable[[F], F]:  # noqa: A002
    """Decorate a sync or async function (or generator function) as a node of the current run."""

    def decorate(func: F) -> F:
        node_id = name or func.__name__
        return _traced(func, lambda args, kwargs: node(node_id, type=type, input=_call_input(func, args, kwargs)))

    return decorate
