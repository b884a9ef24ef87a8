"""Runtime-state mirroring (PraisonAI's session-store API) on the lake.

Every ``set_runtime_state`` is a *turn span* (``runlake.span.type=turn``, ``runlake.runtime.id``,
``runlake.turn.id``, ``runlake.runtime.state`` = JSON) written through a real OpenTelemetry SDK provider and a real
``RunlakeSpanExporter`` into the session's partition, synchronously: when the call returns True the part file is
on disk and every process reads it. ``runlake.turn(...).set_state(...)`` puts the same attributes on the turn span
of the application's own pipeline. ``clear_runtime_state`` writes a *tombstone* turn span
(``runlake.runtime.cleared`` = ``"runtime"`` or ``"all"``); reads take, per (runtime, turn), the latest state row
newer than every tombstone covering it. See docs/sessions.md.

The policy that guards the state (limits, redaction, ``StateGuard``) is in ``runlake.state_policy``; its public names
are re-exported here.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake import mapping as m
from opentelemetry.exporter.runlake.layout import (
    DEFAULT_STATE_URL,
    DEFAULT_TENANT,
    RUNS,
    SPANS,
    LakeRoot,
    data_files,
    day_dirs,
    mixed_dir,
    resolve_state_url,
    session_dirs,
    session_files,
    session_of_folder,
    table_files,
)
from opentelemetry.exporter.runlake.mapping import SPANS_SCHEMA
from opentelemetry.exporter.runlake.writer import ForkSafeLock, conform, write_part
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from . import instrument as _instrument
from .query import FIRST_RUN_OF_TRACE, LATEST_ROW, LakeReader
from .redact import Redactor
from .redact import resolve as resolve_redactor
from .state_policy import (  # the policy lives in its own module (runlake.instrument needs it too); re-exported here
    DEFAULT_MAX_RUNTIME_BYTES,
    DEFAULT_MAX_TURN_BYTES,
    OPTIONS,
    StateGuard,
    StatePolicy,
    _bad_id,
    _describe,
    _encode_state,
    _forget_tally,
    _positive_int,
    _runtime_fits,
    current_policy,
    prepare_state,
    set_policy,
)

__all__ = [
    "CLEARED",
    "DEFAULT_MAX_RUNTIME_BYTES",
    "DEFAULT_MAX_TURN_BYTES",
    "OPTIONS",
    "SessionStore",
    "StateGuard",
    "StatePolicy",
    "current_policy",
    "prepare_state",
    "set_policy",
]

_logger = logging.getLogger(__name__)

CLEARED = m.RUNTIME_CLEARED  # tombstone marker: "runtime" (the one in runlake.runtime.id) or "all"
CLEARED_RUNTIME, CLEARED_ALL = m.CLEARED_RUNTIME, m.CLEARED_ALL
_TRACER = "runlake.sessions"


# ---- the store ---------------------------------------------------------------------------------------------
class _DurableWrite(SpanProcessor):
    """Exports each ended span at once and writes it to disk; remembers per span whether that worked."""

    def __init__(self, exporter: RunlakeSpanExporter) -> None:
        self.exporter = exporter
        self.results: dict[int, bool] = {}

    def on_end(self, span: ReadableSpan) -> None:
        ok = False
        try:
            ok = self.exporter.export([span]) is SpanExportResult.SUCCESS
            ok = self.exporter.force_flush() and ok
        except Exception:  # noqa: BLE001
            _logger.exception("runlake: writing a runtime-state span failed")
        self.results[span.context.span_id] = ok

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)


_clock_lock = ForkSafeLock()
_last_ns = 0


def _next_ns() -> int:
    """Instrumentation time (honours ``shifted_clock``), strictly increasing within a second of the last one so
    that two sets in a row never tie."""
    global _last_ns
    now = _instrument._now_ns()
    with _clock_lock:
        if _last_ns - 1_000_000_000 < now <= _last_ns:
            now = _last_ns + 1
        _last_ns = max(_last_ns, now)
    return now


def _configured_forwarders() -> list[SpanProcessor]:
    """The OTLP forwarders of ``runlake.configure``'s pipeline, so store writes reach the collector too."""
    from .forward import ForwardingProcessor

    pipeline = _instrument._pipeline
    return [p for p in pipeline.processors if isinstance(p, ForwardingProcessor)] if pipeline is not None else []


def _iso(unix_nano: int | None) -> str | None:
    if unix_nano is None:
        return None
    return dt.datetime.fromtimestamp(unix_nano / 1e9, tz=dt.timezone.utc).isoformat()


_LIVE_SQL = f"""
WITH t AS (
    SELECT runtime_id, turn_id, runtime_state, span_id, ttl_days,
           coalesce(end_time_unix_nano, start_time_unix_nano) AS ts,
           json_extract_string(attributes, '$."{CLEARED}"') AS cleared
    FROM {{files}}
    WHERE span_type = 'turn' AND record = 'end' AND session_id = ? AND tenant_id = ?
),
all_cleared AS (SELECT max(ts) AS ts FROM t WHERE cleared = '{CLEARED_ALL}'),
runtime_cleared AS (SELECT runtime_id, max(ts) AS ts FROM t WHERE cleared = '{CLEARED_RUNTIME}' GROUP BY runtime_id)
SELECT t.runtime_id, t.turn_id, t.runtime_state, t.span_id, t.ts,
       min(t.ts) OVER (PARTITION BY t.runtime_id, t.turn_id) AS first_ts
FROM t CROSS JOIN all_cleared LEFT JOIN runtime_cleared ON runtime_cleared.runtime_id = t.runtime_id
WHERE t.cleared IS NULL AND t.runtime_state IS NOT NULL AND t.runtime_id IS NOT NULL AND t.turn_id IS NOT NULL
  AND t.ts > coalesce(all_cleared.ts, -1) AND t.ts > coalesce(runtime_cleared.ts, -1) {{where}}
QUALIFY row_number() OVER (PARTITION BY t.runtime_id, t.turn_id ORDER BY t.ts DESC, t.span_id DESC) = 1
ORDER BY first_ts, t.turn_id
"""  # the latest state of each turn, in the order turns were first set (since the last clear), as a dict keeps keys

_TOMBSTONES_SQL = f"""
SELECT json_extract_string(attributes, '$."{CLEARED}"') AS cleared, runtime_id,
       max(coalesce(end_time_unix_nano, start_time_unix_nano)) AS ts
FROM {{files}}
WHERE span_type = 'turn' AND record = 'end' AND session_id = ? AND tenant_id = ?
  AND json_extract_string(attributes, '$."{CLEARED}"') IN ('{CLEARED_ALL}', '{CLEARED_RUNTIME}')
GROUP BY ALL
"""


class SessionStore:
    """PraisonAI's runtime-state store API on a runlake lake (docs/sessions.md).

    ``state_url``: folder or ``file://`` URL, else ``RUNLAKE_STATE_URL`` / ``PRAISONAI_STATE_URL``, else the lake
    of ``runlake.configure``, else ``./runlake-data`` (with a warning). ``tenant_id`` (else ``RUNLAKE_TENANT_ID``,
    else ``default``) scopes reads and writes. ``ttl_days``: TTL of the turn spans it writes.
    ``max_turn_bytes`` / ``max_runtime_bytes`` / ``redact``: limits and state redaction (default: those of
    ``runlake.configure``, else 1 KB, 10 KB and the default ``Redactor``; ``redact=False`` turns it off).
    ``mirror_runtime_state=False`` makes every set a no-op. ``span_processors``: extra processors (for example a
    ``BatchSpanProcessor(OTLPSpanExporter())``) that also receive the turn spans, to forward them to a collector.
    """

    def __init__(
        self,
        state_url: str | os.PathLike[str] | None = None,
        *,
        tenant_id: str | None = None,
        ttl_days: int = 30,
        max_turn_bytes: int | None = None,
        max_runtime_bytes: int | None = None,
        redact: bool | Redactor | Callable[[str], str] | None = None,
        mirror_runtime_state: bool = True,
        span_processors: Iterable[SpanProcessor] = (),
        _reader: LakeReader | None = None,
    ) -> None:
        root = resolve_state_url(state_url)
        if root is None:
            exporter = _instrument.current_exporter()
            root = exporter.root if exporter is not None else None
        if root is not None and not isinstance(root, Path):
            raise ValueError(
                f"SessionStore keeps runtime state in a local lake; {root} is on an object store, which it does not "
                "support yet. Give SessionStore(state_url=...) a folder."
            )
        if root is None:
            root = Path(DEFAULT_STATE_URL)
            _logger.warning(
                "runlake: SessionStore has no state URL (argument, RUNLAKE_STATE_URL, PRAISONAI_STATE_URL or "
                "runlake.configure); using ./runlake-data"
            )
        if int(ttl_days) < 1:
            raise ValueError(f"ttl_days must be at least 1, got {ttl_days}")
        self.root = root
        self.tenant_id = tenant_id or os.environ.get("RUNLAKE_TENANT_ID") or DEFAULT_TENANT
        self.ttl_days = int(ttl_days)
        self._limits = (max_turn_bytes, max_runtime_bytes)
        for name, value in (("max_turn_bytes", max_turn_bytes), ("max_runtime_bytes", max_runtime_bytes)):
            if value is not None:
                _positive_int(name, value)
        self._redact = redact
        if redact is not None:
            resolve_redactor(redact, default_on=True)  # validate now
        self.mirror_runtime_state = bool(mirror_runtime_state)
        self._extra_processors = list(span_processors)
        self._reader = _reader or LakeReader()
        self._lock = threading.Lock()
        self._provider: TracerProvider | None = None
        self._durable: _DurableWrite | None = None
        self._warned_off = False
        self._closed = False

    # ---- configuration ----
    @property
    def policy(self) -> StatePolicy:
        base = current_policy()
        turn, runtime = self._limits
        return StatePolicy(
            turn if turn is not None else base.max_turn_bytes,
            runtime if runtime is not None else base.max_runtime_bytes,
            base.redactor if self._redact is None else resolve_redactor(self._redact, default_on=True),
        )

    def _mirroring(self, mirror_enabled: bool) -> bool:
        if not mirror_enabled or not self.mirror_runtime_state:
            return False
        if _instrument.current_exporter() is not None and not _instrument.mirror_runtime_state_enabled():
            if not self._warned_off:
                self._warned_off = True
                _logger.warning(
                    "runlake: runtime state is not mirrored: runlake.configure() was called without "
                    "mirror_runtime_state=True (mirroring is opt-in); set_runtime_state() writes nothing"
                )
            return False
        return True

    def _tracer(self) -> tuple[Any, _DurableWrite]:
        with self._lock:
            if self._closed:
                raise RuntimeError("this SessionStore is closed")
            if self._provider is None:
                global_provider = trace.get_tracer_provider()
                resource = getattr(global_provider, "resource", None) or Resource.create({})
                provider = TracerProvider(
                    sampler=ALWAYS_ON,  # a sampled-out state span would be a lost write
                    resource=resource,
                    shutdown_on_exit=False,
                    span_limits=SpanLimits(
                        max_attribute_length=SpanLimits.UNSET, max_span_attribute_length=SpanLimits.UNSET
                    ),
                )
                exporter = RunlakeSpanExporter(
                    self.root, tenant_id=self.tenant_id, background_flush=False, keep_runtime_state=True
                )
                self._durable = _DurableWrite(exporter)
                provider.add_span_processor(self._durable)
                for processor in self._extra_processors:
                    provider.add_span_processor(processor)
                self._provider = provider
            return self._provider.get_tracer(_TRACER), self._durable  # type: ignore[return-value]

    def _emit(self, name: str, attributes: dict[str, Any]) -> bool:
        """Write one turn span to disk (True when it is there), then forward it like the application's spans."""
        tracer, durable = self._tracer()
        at = _next_ns()
        span = tracer.start_span(name, context=Context(), attributes=attributes, start_time=at)
        span.end(end_time=at)
        ok = durable.results.pop(span.get_span_context().span_id, False)
        for forwarder in _configured_forwarders():
            try:
                forwarder.on_end(span)  # type: ignore[arg-type]
            except Exception:  # noqa: BLE001 - the lake has it; forwarding counts its own losses
                _logger.debug("runlake: could not forward a runtime-state span", exc_info=True)
        return ok

    def _base_attributes(self, session_id: str, ttl_days: int) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            m.SPAN_TYPE: m.TURN,
            "gen_ai.conversation.id": session_id,
            "session.id": session_id,
            "openinference.span.kind": "CHAIN",
            m.TTL_DAYS: ttl_days,
        }
        if self.tenant_id != DEFAULT_TENANT:
            attributes[m.TENANT_ID] = self.tenant_id
        return attributes

    # ---- reads ----
    def _files(self, session_id: str) -> Callable[[], list[Path]]:
        return lambda: session_files(self.root, session_id, self.tenant_id)

    def _live_rows(
        self, session_id: str, runtime_id: str | None = None, turn_id: str | None = None
    ) -> list[dict[str, Any]]:
        where, params = "", [session_id, self.tenant_id]
        if runtime_id is not None:
            where += " AND t.runtime_id = ?"
            params.append(runtime_id)
        if turn_id is not None:
            where += " AND t.turn_id = ?"
            params.append(turn_id)
        try:
            return self._reader.rows(_LIVE_SQL.replace("{where}", where), self._files(session_id), params)
        except duckdb.BinderException as error:  # only older files without the turn columns: no state
            _logger.debug("runlake: no runtime-state columns in session %r (%s)", session_id, error)
            return []

    @staticmethod
    def _state_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
        try:
            value = json.loads(row["runtime_state"])
        except ValueError as error:
            _logger.warning("runlake: skipping runtime state of span %s: not JSON (%s)", row["span_id"], error)
            return None
        if value is None:
            return {}  # JSON null reads as {} (PraisonAI)
        if not isinstance(value, dict):
            _logger.warning(
                "runlake: skipping runtime state of span %s: a JSON %s, not an object", row["span_id"], type(value)
            )
            return None
        return value

    def _runtime_sizes(self, session_id: str, runtime_id: str) -> dict[str, int]:
        return {
            row["turn_id"]: len(row["runtime_state"].encode("utf-8")) for row in self._live_rows(session_id, runtime_id)
        }

    # ---- PraisonAI API ----
    def set_runtime_state(
        self,
        session_id: str,
        runtime_id: str,
        turn_id: str,
        state: dict[str, Any],
        mirror_enabled: bool = True,
    ) -> bool:
        """Save one turn's state. True when it is on disk, or when mirroring is off (nothing is written then);
        False, with a warning saying why, when it is refused (bad ids or state, over a limit) or cannot be written.
        Never raises."""
        try:
            if not self._mirroring(mirror_enabled):
                return True
            policy = self.policy
            caller = "set_runtime_state"
            text = _encode_state(state, session_id, runtime_id, turn_id, policy, caller)
            if text is None:
                return False
            size = len(text.encode("utf-8"))
            where = _describe(session_id, runtime_id, turn_id)
            if not _runtime_fits(
                self._runtime_sizes(session_id, runtime_id), turn_id, size, policy, caller, where, runtime_id
            ):
                return False
            attributes = self._base_attributes(session_id, self.ttl_days)
            attributes.update({m.RUNTIME_ID: runtime_id, m.TURN_ID: turn_id, m.RUNTIME_STATE: text})
            if self._emit(f"turn {turn_id}", attributes):
                return True
            _logger.warning(
                "runlake: set_runtime_state: could not write to %s (%s); the row is kept in memory and retried "
                "with the next write or close()",
                self.root,
                where,
            )
            return False
        except Exception:  # noqa: BLE001 - never raise into the application
            _logger.exception("runlake: set_runtime_state failed (%s)", _describe(session_id, runtime_id, turn_id))
            return False

    def get_runtime_state(self, session_id: str, runtime_id: str, turn_id: str | None = None) -> dict[str, Any]:
        """One turn's state (``turn_id`` given) or ``{turn_id: state}`` for the runtime; ``{}`` when missing.
        Fresh copies every call."""
        for value, what, optional in (
            (session_id, "session_id", False),
            (runtime_id, "runtime_id", False),
            (turn_id, "turn_id", True),
        ):
            problem = _bad_id(value, what, allow_none=optional)
            if problem:
                _logger.warning("runlake: get_runtime_state: %s; returning {}", problem)
                return {}
        rows = self._live_rows(session_id, runtime_id, turn_id)
        if turn_id is not None:
            state = self._state_of(rows[0]) if rows else None
            return state if state is not None else {}
        out: dict[str, Any] = {}
        for row in rows:
            state = self._state_of(row)
            if state is not None:
                out[row["turn_id"]] = state
        return out

    def clear_runtime_state(self, session_id: str, runtime_id: str | None = None, *, purge: bool = True) -> bool:
        """Drop one runtime's state, or all of the session's (``runtime_id=None``).

        A tombstone makes it take effect for every reader at once; with ``purge`` (default) the part files holding
        the cleared state are then rewritten without it (see ``purge_runtime_state``). Never raises.
        """
        try:
            for value, what, optional in ((session_id, "session_id", False), (runtime_id, "runtime_id", True)):
                problem = _bad_id(value, what, allow_none=optional)
                if problem:
                    _logger.warning("runlake: clear_runtime_state: nothing cleared: %s", problem)
                    return False
            _forget_tally(session_id, runtime_id)
            # the tombstone lives at least as long as any row it hides, or those rows would come back
            params: list[Any] = [session_id, self.tenant_id]
            sql = "SELECT max(ttl_days) AS ttl FROM {files} WHERE span_type = 'turn' AND session_id = ? "
            sql += "AND tenant_id = ?"
            if runtime_id is not None:
                sql += " AND runtime_id = ?"
                params.append(runtime_id)
            rows = self._reader.rows(sql, self._files(session_id), params)
            ttl = max(self.ttl_days, int((rows[0]["ttl"] if rows else None) or 0))
            attributes = self._base_attributes(session_id, ttl)
            attributes[CLEARED] = CLEARED_ALL if runtime_id is None else CLEARED_RUNTIME
            if runtime_id is not None:
                attributes[m.RUNTIME_ID] = runtime_id
            if not self._emit("clear_runtime_state", attributes):
                _logger.warning(
                    "runlake: clear_runtime_state: could not write the tombstone to %s; not cleared yet (it is kept "
                    "in memory and retried with the next write or close())",
                    self.root,
                )
                return False
            if purge:
                try:
                    self.purge_runtime_state(session_id)
                except Exception:  # noqa: BLE001 - the tombstone already hides it; TTL removes it
                    _logger.exception("runlake: clear_runtime_state: cleared, but purging the files failed")
            return True
        except Exception:  # noqa: BLE001 - never raise into the application
            _logger.exception("runlake: clear_runtime_state failed (%s)", _describe(session_id, runtime_id))
            return False

    def purge_runtime_state(self, session_id: str) -> int:
        """Rewrite the session's part files that still hold state hidden by a tombstone, with that state removed;
        returns how many rows were cleaned. Each file is replaced like compaction does (new file first, then the
        old one removed), so readers never miss a row."""
        marks = self._reader.rows(_TOMBSTONES_SQL, self._files(session_id), [session_id, self.tenant_id])
        all_at = max((r["ts"] for r in marks if r["cleared"] == CLEARED_ALL), default=-1)
        runtime_at: dict[str, int] = {}
        for r in marks:
            if r["cleared"] == CLEARED_RUNTIME and r["runtime_id"] is not None:
                runtime_at[r["runtime_id"]] = max(runtime_at.get(r["runtime_id"], -1), r["ts"])
        if all_at < 0 and not runtime_at:
            return 0
        cleaned = 0
        for path in session_files(self.root, session_id, self.tenant_id):
            try:
                cleaned += self._purge_file(path, session_id, all_at, runtime_at)
            except FileNotFoundError:
                continue  # compacted or expired meanwhile
            except Exception as error:  # noqa: BLE001 - one bad file must not stop the rest
                _logger.warning("runlake: could not purge cleared runtime state from %s (%s)", path, error)
        return cleaned

    def _purge_file(self, path: Path, session_id: str, all_at: int, runtime_at: Mapping[str, int]) -> int:
        names = set(pq.read_schema(path).names)
        if not {"runtime_state", "runtime_id", "span_type", "session_id", "tenant_id"} <= names:
            return 0
        table = pq.read_table(path)
        ends = table.column("end_time_unix_nano").to_pylist() if "end_time_unix_nano" in names else None
        starts = table.column("start_time_unix_nano").to_pylist()
        states = table.column("runtime_state").to_pylist()
        kinds, sessions = table.column("span_type").to_pylist(), table.column("session_id").to_pylist()
        tenants, runtimes = table.column("tenant_id").to_pylist(), table.column("runtime_id").to_pylist()
        mask = []
        for i, state in enumerate(states):
            at = (ends[i] if ends is not None and ends[i] is not None else starts[i]) or 0
            hidden = (
                state is not None
                and kinds[i] == m.TURN
                and sessions[i] == session_id
                and tenants[i] == self.tenant_id
                and (at <= all_at or at <= runtime_at.get(runtimes[i], -1))
            )
            mask.append(hidden)
        count = sum(mask)
        if not count:
            return 0
        column = pc.if_else(pa.array(mask), pa.nulls(len(mask), pa.string()), table.column("runtime_state"))
        table = table.set_column(table.schema.get_field_index("runtime_state"), "runtime_state", column)
        if not path.parent.is_dir():
            return 0
        write_part(SPANS, path.parent, conform(table, SPANS_SCHEMA))
        path.unlink(missing_ok=True)
        return count

    def export_session(self, session_id: str) -> dict[str, Any]:
        """``{"session_id", "messages", "runtime_state"}`` as PraisonAI's session file has them: messages from the
        session's runs (one root run per trace: its input as ``user``, its output as ``assistant``), oldest first;
        runtime state as ``{runtime_id: {turn_id: state}}`` (``{}`` when there is none)."""
        problem = _bad_id(session_id, "session_id")
        if problem:
            _logger.warning("runlake: export_session: %s", problem)
            return {"session_id": session_id, "messages": [], "runtime_state": {}}
        sql = (
            f"WITH runs AS (SELECT * FROM {{files}} WHERE span_type = 'run' AND session_id = ? AND tenant_id = ? "
            f"{LATEST_ROW}) SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY trace_id "
            f"ORDER BY {FIRST_RUN_OF_TRACE}) = 1 ORDER BY start_time_unix_nano, span_id"
        )
        messages: list[dict[str, Any]] = []
        for run in self._reader.rows(sql, self._files(session_id), [session_id, self.tenant_id]):
            metadata = {"run_id": run["run_id"], "agent_name": run["agent_name"]}
            start, end = run["start_time_unix_nano"], run["end_time_unix_nano"]
            if run["input"] is not None:
                messages.append(_message("user", run["input"], start, metadata))
            if run["output"] is not None:
                messages.append(_message("assistant", run["output"], end if end is not None else start, metadata))
        runtime_state: dict[str, dict[str, Any]] = {}
        for row in self._live_rows(session_id):
            state = self._state_of(row)
            if state is not None:
                runtime_state.setdefault(row["runtime_id"], {})[row["turn_id"]] = state
        return {"session_id": session_id, "messages": messages, "runtime_state": runtime_state}

    def list_sessions(
        self, user_id: str | None = None, limit: int | None = None, *, include_state_only: bool = True
    ) -> list[dict[str, Any]]:
        """Sessions newest first: ``{"session_id", "id", "user_id", "agent_name", "created_at", "updated_at",
        "message_count", "run_count"}``.

        Sessions with runs come from the ``runs/`` index. With ``include_state_only`` (and no ``user_id``), sessions
        that only hold runtime state are found from the names and times of the ``session=`` folders, without
        opening a file (their ``user_id``/``agent_name`` are None and their times are those of the last write).
        """
        if limit is not None and limit <= 0:
            return []
        params: list[Any] = [self.tenant_id]
        where = ""
        if user_id is not None:
            where = " AND user_id = ?"
            params.append(user_id)
        sql = f"""
            WITH runs AS (SELECT * FROM {{files}} WHERE session_id IS NOT NULL AND tenant_id = ? {where} {LATEST_ROW}),
            roots AS (SELECT * FROM runs QUALIFY row_number() OVER (PARTITION BY session_id, trace_id
                      ORDER BY {FIRST_RUN_OF_TRACE}) = 1)
            SELECT session_id, arg_max(user_id, start_time_unix_nano) AS user_id,
                   arg_max(agent_name, start_time_unix_nano) AS agent_name,
                   min(start_time_unix_nano) AS created,
                   max(coalesce(end_time_unix_nano, start_time_unix_nano)) AS updated,
                   count(*) AS run_count, count(input) + count(output) AS message_count
            FROM roots GROUP BY session_id"""
        rows = self._reader.rows(sql, lambda: table_files(self.root, RUNS, self.tenant_id), params)
        sessions = {
            r["session_id"]: {
                "session_id": r["session_id"],
                "id": r["session_id"],
                "user_id": r["user_id"],
                "agent_name": r["agent_name"],
                "created": r["created"],
                "updated": r["updated"],
                "message_count": int(r["message_count"]),
                "run_count": int(r["run_count"]),
            }
            for r in rows
        }
        if include_state_only and user_id is None:
            for session_id, first, last in self._session_folders():
                if session_id in sessions:
                    continue
                sessions[session_id] = {
                    "session_id": session_id,
                    "id": session_id,
                    "user_id": None,
                    "agent_name": None,
                    "created": first,
                    "updated": last,
                    "message_count": 0,
                    "run_count": 0,
                }
        ordered = sorted(sessions.values(), key=lambda s: (s["updated"] or 0, s["session_id"]), reverse=True)
        if limit is not None:
            ordered = ordered[:limit]
        for entry in ordered:
            entry["created_at"] = _iso(entry.pop("created"))
            entry["updated_at"] = _iso(entry.pop("updated"))
        return ordered

    def _session_folders(self) -> list[tuple[str, int, int]]:
        """(session id, first and last time in ns) of every session with a ``session=`` folder of this tenant (write
        times), or rows in a shared ``session=~mixed`` folder (compacted days, small ingested sessions: the rows'
        span times, from their narrow columns)."""
        found: dict[str, list[int]] = {}
        mixed: list[LakeRoot] = []  # the shared folders (listed again should a file go while they are read)
        for _, _, _, day_dir in day_dirs(self.root, SPANS, self.tenant_id):
            for folder in session_dirs(day_dir):
                session_id = session_of_folder(folder)
                if session_id is None:  # a hashed long id: its rows name it
                    session_id = self._session_in(folder)
                if not session_id:
                    continue
                try:
                    stat = folder.stat()
                except FileNotFoundError:
                    continue
                times = found.setdefault(session_id, [stat.st_mtime_ns, stat.st_mtime_ns])
                times[0] = min(times[0], stat.st_mtime_ns)
                times[1] = max(times[1], stat.st_mtime_ns)
            # after the session folders: compaction writes its merged file here before removing the folders it
            # merged, so a session that left its folder meanwhile is found in it (never missed)
            mixed.append(mixed_dir(day_dir))

        def mixed_files() -> list[LakeRoot]:
            return [file for folder in mixed for file in data_files(folder)]

        sql = (
            "SELECT session_id, min(start_time_unix_nano) AS first, "
            "max(coalesce(end_time_unix_nano, start_time_unix_nano)) AS last FROM {files} "
            "WHERE session_id IS NOT NULL AND session_id <> '' GROUP BY session_id"
        )
        for row in self._reader.rows(sql, mixed_files):  # no files: no rows
            times = found.setdefault(row["session_id"], [row["first"], row["last"]])
            times[0] = min(times[0], row["first"])
            times[1] = max(times[1], row["last"])
        return [(k, v[0], v[1]) for k, v in found.items()]

    @staticmethod
    def _session_in(folder: Path) -> str | None:
        for path in data_files(folder):
            try:
                values = pq.read_table(path, columns=["session_id"]).column(0).drop_null()
            except Exception:  # noqa: BLE001 - unreadable: try the next part
                continue
            if len(values):
                return values[0].as_py()
        return None

    # ---- lifecycle ----
    def close(self) -> None:
        """Write anything a failed write left in memory and release the exporter."""
        with self._lock:
            provider, self._provider = self._provider, None
            self._closed = True
        if provider is not None:
            provider.shutdown()

    def __enter__(self) -> SessionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SessionStore({str(self.root)!r}, tenant_id={self.tenant_id!r})"


def _message(role: str, content: str, at_ns: int, metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {"role": role, "content": content, "timestamp": at_ns / 1e9, "metadata": dict(metadata)}
