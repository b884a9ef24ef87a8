"""The runtime-state policy: limits and redaction of ``runlake.runtime.state``, and the exporter-side guard.

``runlake.configure`` builds a ``StatePolicy`` from its options (``OPTIONS``), installs it with ``set_policy`` and
wraps its exporters in a ``StateGuard``; ``turn().set_state`` checks state with ``prepare_state``; ``SessionStore``
(``runlake.sessions``) applies the same checks to what it writes. This module depends on neither
``runlake.instrument`` nor ``runlake.sessions``, so both import it at module level. See docs/sessions.md.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.exporter.runlake import mapping as m
from opentelemetry.exporter.runlake.writer import ForkSafeLock
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import Status

from .redact import Redactor
from .redact import resolve as resolve_redactor

__all__ = [
    "DEFAULT_MAX_RUNTIME_BYTES",
    "DEFAULT_MAX_TURN_BYTES",
    "OPTIONS",
    "StateGuard",
    "StatePolicy",
    "current_policy",
    "prepare_state",
    "set_policy",
]

# The warnings about refused state keep the logger name they had when this code lived in runlake.sessions, so log
# filters and configurations that name "runlake.sessions" still see them.
_logger = logging.getLogger("runlake.sessions")

DEFAULT_MAX_TURN_BYTES = 1024  # PraisonAI's guidance: <= 1 KB per turn ...
DEFAULT_MAX_RUNTIME_BYTES = 10 * 1024  # ... and <= 10 KB per runtime
MAX_ID_CHARS = 1024
OPTIONS = ("max_turn_state_bytes", "max_runtime_state_bytes", "redact_runtime_state", "redact")


# ---- policy: limits and redaction -------------------------------------------------------------------------
def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive number of bytes, got {value!r}")
    return value


@dataclass(frozen=True)
class StatePolicy:
    """Limits and redaction applied to runtime state before it reaches a span (and so disk or a collector)."""

    max_turn_bytes: int = DEFAULT_MAX_TURN_BYTES
    max_runtime_bytes: int = DEFAULT_MAX_RUNTIME_BYTES
    redactor: Redactor | Callable[[str], str] | None = field(
        default_factory=lambda: resolve_redactor(True, default_on=True)
    )

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> StatePolicy:
        """From ``runlake.configure`` options: ``max_turn_state_bytes``, ``max_runtime_state_bytes``,
        ``redact_runtime_state`` (True by default; False, a ``Redactor`` or a ``str -> str`` callable)."""
        return cls(
            _positive_int("max_turn_state_bytes", options.get("max_turn_state_bytes", DEFAULT_MAX_TURN_BYTES)),
            _positive_int("max_runtime_state_bytes", options.get("max_runtime_state_bytes", DEFAULT_MAX_RUNTIME_BYTES)),
            resolve_redactor(options.get("redact_runtime_state"), default_on=True),
        )


_policy = StatePolicy()


def set_policy(policy: StatePolicy) -> None:
    """Called by ``runlake.configure``: the policy of ``turn().set_state`` and of stores built without their own."""
    global _policy
    _policy = policy


def current_policy() -> StatePolicy:
    return _policy


def _redact_tree(value: Any, redactor: Redactor | Callable[[str], str] | None) -> Any:
    if redactor is None:
        return value
    if isinstance(redactor, Redactor):
        return redactor.redact_value(value)
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, Mapping):
        return {(redactor(k) if isinstance(k, str) else k): _redact_tree(v, redactor) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_tree(v, redactor) for v in value]
    return value


def _bad_id(value: Any, what: str, allow_none: bool = False) -> str | None:
    """Why ``value`` cannot be an id, or None when it can."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        return f"{what} must be a string, got {type(value).__name__}"
    if not value:
        return f"{what} must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{what} is {len(value)} characters long (at most {MAX_ID_CHARS})"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return f"{what} is not valid Unicode text (lone surrogate)"
    return None


def _describe(session_id: Any, runtime_id: Any, turn_id: Any = None) -> str:
    def short(value: Any) -> str:
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "...'"

    where = f"session {short(session_id)} runtime {short(runtime_id)}"
    return where + (f" turn {short(turn_id)}" if turn_id is not None else "")


def _encode_state(
    state: Any, session_id: Any, runtime_id: Any, turn_id: Any, policy: StatePolicy, caller: str
) -> str | None:
    """Validated, redacted, size-checked JSON of one turn's state, or None after a warning saying why."""
    where = _describe(session_id, runtime_id, turn_id)
    for value, what in ((session_id, "session_id"), (runtime_id, "runtime_id"), (turn_id, "turn_id")):
        problem = _bad_id(value, what)
        if problem:
            _logger.warning("runlake: %s: runtime state not stored: %s (%s)", caller, problem, where)
            return None
    if not isinstance(state, Mapping):
        _logger.warning(
            "runlake: %s: runtime state not stored: state must be a dict, got %s (%s)",
            caller,
            type(state).__name__,
            where,
        )
        return None
    try:
        cleaned = _redact_tree(dict(state), policy.redactor)
        text = json.dumps(cleaned, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        size = len(text.encode("utf-8"))
    except (TypeError, ValueError, RecursionError) as error:
        _logger.warning(
            "runlake: %s: runtime state not stored: it is not plain JSON (%s: %s); store ids, strings, numbers, "
            "lists and dicts only (%s)",
            caller,
            type(error).__name__,
            error,
            where,
        )
        return None
    if size > policy.max_turn_bytes:
        _logger.warning(
            "runlake: %s: runtime state not stored: %d bytes of JSON exceed the limit of %d bytes per turn (%s). "
            "Store ids and transcript slices, not full outputs, or raise the limit "
            "(SessionStore(max_turn_bytes=...) or runlake.configure(max_turn_state_bytes=...)).",
            caller,
            size,
            policy.max_turn_bytes,
            where,
        )
        return None
    return text


def _runtime_fits(
    sizes: Mapping[str, int], turn_id: str, size: int, policy: StatePolicy, caller: str, where: str, runtime_id: str
) -> bool:
    """Whether the runtime stays within its limit once ``turn_id`` holds ``size`` bytes; warns when not."""
    total = sum(v for k, v in sizes.items() if k != turn_id) + size
    if total <= policy.max_runtime_bytes:
        return True
    _logger.warning(
        "runlake: %s: runtime state not stored: it would bring the runtime to %d bytes of JSON in %d turns, over "
        "the limit of %d bytes per runtime (%s; this turn: %d bytes). Clear old turns with "
        "clear_runtime_state(session_id, runtime_id=%r) or raise the limit (SessionStore(max_runtime_bytes=...) "
        "or runlake.configure(max_runtime_state_bytes=...)).",
        caller,
        total,
        len({*sizes, turn_id}),
        policy.max_runtime_bytes,
        where,
        size,
        runtime_id,
    )
    return False


# Per-process sizes of what turn().set_state mirrored, for the per-runtime limit (bounded, oldest evicted).
_tally: OrderedDict[tuple[str, str], dict[str, int]] = OrderedDict()
_tally_lock = ForkSafeLock()
_MAX_TALLIED = 10_000


def prepare_state(
    state: Mapping[str, Any],
    session_id: str | None,
    runtime_id: str,
    turn_id: str,
    policy: StatePolicy | None = None,
    max_length: int | None = None,
) -> str | None:
    """``turn().set_state``: the state as redacted JSON within the limits, or None (with a warning). Never raises.

    The per-runtime limit counts what this process mirrored for the session's runtime (``SessionStore`` counts
    what is in the lake instead). ``max_length``: the span's attribute length limit (the SDK would cut the text).
    """
    try:
        policy = policy or _policy
        caller = "turn().set_state"
        if session_id is None:
            _logger.warning(
                "runlake: %s: runtime state not stored: turn %r is outside runlake.run(), so it has no session",
                caller,
                turn_id,
            )
            return None
        text = _encode_state(state, session_id, runtime_id, turn_id, policy, caller)
        if text is None:
            return None
        if max_length is not None and len(text) > max_length:
            _logger.warning(
                "runlake: %s: runtime state not stored for %s: its %d characters pass the TracerProvider's attribute "
                "length limit (%d, OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT / SpanLimits), which would cut it; raise the "
                "limit or use SessionStore.set_runtime_state",
                caller,
                _describe(session_id, runtime_id, turn_id),
                len(text),
                max_length,
            )
            return None
        size = len(text.encode("utf-8"))
        key = (session_id, runtime_id)
        with _tally_lock:
            sizes = _tally.get(key, {})
            if not _runtime_fits(sizes, turn_id, size, policy, caller, _describe(*key, turn_id), runtime_id):
                return None
            sizes = _tally.setdefault(key, sizes)
            sizes[turn_id] = size
            _tally.move_to_end(key)
            while len(_tally) > _MAX_TALLIED:
                _tally.popitem(last=False)
        return text
    except Exception:  # noqa: BLE001 - never raise into the application
        _logger.exception("runlake: turn().set_state: runtime state not stored")
        return None


def _forget_tally(session_id: str, runtime_id: str | None) -> None:
    with _tally_lock:
        for key in [k for k in _tally if k[0] == session_id and (runtime_id is None or k[1] == runtime_id)]:
            del _tally[key]


# ---- the exporter-side guard ------------------------------------------------------------------------------
def _with_attributes(
    span: ReadableSpan, attributes: Mapping[str, Any], events: Sequence[Event] | None = None, status: Any = None
) -> ReadableSpan:
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=span.events if events is None else events,
        links=span.links,
        kind=span.kind,
        status=span.status if status is None else status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class StateGuard(SpanExporter):
    """Wraps an exporter: drops ``runlake.runtime.state`` from every span unless mirroring is on, and redacts it
    when on — whatever code set the attribute. ``configure`` puts it in front of runlake's exporter.

    ``redact_attributes`` (optional, a ``Redactor`` or a ``str -> str``): also clean the span the way runlake's
    exporter cleans what it stores (``mapping.redact_attributes`` / ``redact_event``: free text, metadata, events,
    leftover attributes and the status description; ids, model, provider and operation names kept) — for exporters
    with no redaction of their own (OTLP forwarding), so they get what the lake gets. Spans with nothing to change
    pass through untouched. Also stands in for the exporter of ``RunStartProcessor``.
    """

    def __init__(
        self,
        exporter: SpanExporter,
        mirror: bool,
        policy: StatePolicy | None = None,
        redact_attributes: Callable[[str], str] | None = None,
    ) -> None:
        self.exporter = exporter
        self.mirror = mirror
        self.policy = policy or StatePolicy()
        self.redact_attributes = redact_attributes
        self.dropped = 0

    def clean(self, span: ReadableSpan) -> ReadableSpan:
        attributes = span.attributes
        has_state = bool(attributes) and m.RUNTIME_STATE in attributes
        redact = self.redact_attributes
        if not has_state and redact is None:
            return span
        kept = dict(attributes or {})
        if has_state and not self.mirror:
            del kept[m.RUNTIME_STATE]
            self.dropped += 1
        elif has_state and self.policy.redactor is not None:
            kept[m.RUNTIME_STATE] = self._redacted(kept[m.RUNTIME_STATE])
        if redact is None:
            return _with_attributes(span, kept)
        kept = m.redact_attributes(kept, redact)  # the runtime state passes: the policy above decided about it
        events = [Event(*m.redact_event(e.name, e.attributes, redact), e.timestamp) for e in span.events]
        status = span.status
        if status.description:
            status = Status(status.status_code, redact(status.description))
        return _with_attributes(span, kept, events=events, status=status)

    def _redacted(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            parsed = json.loads(value)
        except ValueError:
            redactor = self.policy.redactor
            return redactor(value) if redactor is not None else value
        return json.dumps(_redact_tree(parsed, self.policy.redactor), ensure_ascii=False, separators=(",", ":"))

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            cleaned = [self.clean(span) for span in spans]
        except Exception:  # noqa: BLE001 - keep the state out rather than the span
            _logger.exception("runlake: could not check spans for runtime state; dropping the attribute")
            cleaned = [
                _with_attributes(s, {k: v for k, v in (s.attributes or {}).items() if k != m.RUNTIME_STATE})
                for s in spans
            ]
        return self.exporter.export(cleaned)

    def record_start(self, span: ReadableSpan) -> None:
        self.exporter.record_start(self.clean(span))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.shutdown()
