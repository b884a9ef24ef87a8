"""OpenTelemetry span exporter writing agent runs, nodes and turns to a Parquet lake.

``RunlakeSpanExporter`` goes in a ``BatchSpanProcessor``; ``RunStartProcessor`` beside it records the start
of every run so that a run in progress (or one whose process died) is visible as running.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from .layout import DEFAULT_STATE_URL, DEFAULT_TENANT, ObjectPath, resolve_lake, resolve_state_url
from .mapping import COL, NODE, RUN, RUN_ID, SpanMapper, classify, run_row
from .writer import ForkSafeLock, LakeWriter, reset_in_forked_child

__all__ = [
    "AutoConfiguredSpanExporter",
    "RunlakeBatchSpanProcessor",
    "RunlakeSpanExporter",
    "RunStartProcessor",
    "auto_configured_on",
    "resolve_lake",
    "resolve_state_url",
]
__version__ = "0.1.0"

_logger = logging.getLogger(__name__)
_MAX_TRACKED_RUNS = 100_000
# Spans exported again (a client's retry after a timeout or a 503, a replayed file) must not count twice in their
# run's totals: the nodes counted and the runs whose index row was written are remembered, the newest this many
# (a hash each, a run's with its totals: a retry within the last 50,000-100,000 nodes and 20,000 runs is recognised;
# ~15 MB at most, measured).
_MAX_REMEMBERED_SPANS = 100_000
_MAX_REMEMBERED_RUNS = 20_000


def _env_number(name: str, default: float, kind: Callable[[str], float] = int) -> float:
    text = os.environ.get(name)
    if not text:
        return default
    try:
        return kind(text)
    except ValueError:
        _logger.warning("runlake: ignoring %s=%r (not a number); using %s", name, text, default)
        return default


# bounds of the exit hook below: the provider's queues (forwarding to a collector that is down included), then the lake
_EXIT_PROVIDER_FLUSH_S = 10.0
_EXIT_LAKE_FLUSH_S = 30.0


def _within(seconds: float, work: Callable[[], Any], what: str) -> bool:
    """Run ``work`` on a daemon thread and wait at most ``seconds``: at exit a flush that hangs (a collector or object
    store that does not answer, a processor that ignores its timeout) must not hold the process."""
    worker = threading.Thread(target=work, name="runlake-exit-flush", daemon=True)
    try:
        worker.start()
    except RuntimeError:  # Python 3.12.0-3.12.1 refuse new threads in atexit hooks: flush here, unbounded
        work()
        return True
    worker.join(seconds)
    if worker.is_alive():
        _logger.warning("runlake: %s at exit did not finish within %.0f s; not waiting longer", what, seconds)
        return False
    return True


def _flush_before_s3_finalizes(exporter: RunlakeSpanExporter) -> None:
    """Make what is queued at exit reach S3 before pyarrow shuts its S3 client down.

    pyarrow finalizes S3 in an ``atexit`` hook registered when ``pyarrow.fs`` is imported; a TracerProvider made
    before that import shuts down (and flushes) after it, too late to upload. This hook is registered later, so it
    runs earlier: it flushes the global provider's queues and this exporter's buffers while S3 still works, each
    within a bound (``_EXIT_PROVIDER_FLUSH_S``, ``_EXIT_LAKE_FLUSH_S``) so that exit is never held longer.
    """
    ref = weakref.ref(exporter)

    def flush() -> None:
        live = ref()
        if live is None or live._shutdown:
            return
        try:
            from opentelemetry import trace

            force_flush = getattr(trace.get_tracer_provider(), "force_flush", None)
            if callable(force_flush):
                bound = _EXIT_PROVIDER_FLUSH_S
                _within(bound, lambda: force_flush(int(bound * 1000)), "flushing the span processors")
            if not _within(_EXIT_LAKE_FLUSH_S, live.force_flush, f"writing the last rows to {live.root}"):
                live._store_unreachable_at_exit = True  # the provider's shutdown, which comes next, must not retry
        except Exception:  # noqa: BLE001 - never raise at exit
            _logger.debug("runlake: flush at exit failed", exc_info=True)

    atexit.register(flush)


class RunlakeSpanExporter(SpanExporter):
    """Writes spans as Parquet partitioned by tenant, TTL, day and session, plus a ``runs/`` index.

    With no arguments it configures itself from the environment (``RUNLAKE_STATE_URL``, else
    ``PRAISONAI_STATE_URL``), as the SDK does when it builds exporters named in ``OTEL_TRACES_EXPORTER``.
    The lake is a folder, a ``file://`` URL or ``s3://bucket/prefix`` (S3 or S3-compatible; endpoint from the URL's
    ``endpoint_override``, else ``RUNLAKE_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``;
    credentials from the standard AWS variables). ``tenant_id`` else ``RUNLAKE_TENANT_ID`` (``default``);
    ``max_part_rows`` else ``RUNLAKE_MAX_PART_ROWS`` (100,000) and ``max_part_bytes`` else ``RUNLAKE_MAX_PART_BYTES``
    (64 MiB): a partition's buffer that reaches either becomes a part file; ``max_buffer_bytes`` else
    ``RUNLAKE_MAX_BUFFER_BYTES`` (256 MiB); ``flush_interval_s`` else ``RUNLAKE_FLUSH_INTERVAL_S`` (5).
    ``export()`` never raises: failures return ``FAILURE``, are logged once and counted in ``stats``.
    Runtime state (``runlake.runtime.state``) is stored only with ``keep_runtime_state`` (else
    ``RUNLAKE_MIRROR_RUNTIME_STATE`` = ``1``/``true``/``yes``/``on``): mirroring is opt-in. ``redact`` (a
    ``runlake.redact.Redactor``, or any ``str -> str`` for strings only) cleans each row before it is stored
    (``mapping.redact_attribute``).
    ``min_session_rows`` (else ``RUNLAKE_MIN_SESSION_ROWS``, default 0 = off): sessions with fewer rows in a flush
    share one file per day (``session=~mixed``) instead of one small file each; compaction later merges each closed
    day into one file there. For ingest servers and other writers that see many sessions at once.
    """

    def __init__(
        self,
        state_url: str | os.PathLike[str] | None = None,
        *,
        tenant_id: str | None = None,
        force_tenant: str | None = None,
        redact: Callable[[str], str] | None = None,
        keep_runtime_state: bool | None = None,
        max_part_rows: int | None = None,
        max_part_bytes: int | None = None,
        max_buffer_bytes: int | None = None,
        flush_interval_s: float | None = None,
        background_flush: bool = True,
        min_session_rows: int | None = None,
    ) -> None:
        root = resolve_lake(state_url)
        if root is None:
            root = Path(DEFAULT_STATE_URL)
            _logger.warning(
                "runlake: no state URL given (argument, RUNLAKE_STATE_URL or PRAISONAI_STATE_URL); writing to %s",
                os.path.abspath(root),
            )
        if isinstance(root, Path):  # the folder the path names now: a later chdir (daemons do) must not split the lake
            root = Path(os.path.abspath(root))
        self.root = root
        self._mapper = SpanMapper(
            default_tenant=tenant_id or os.environ.get("RUNLAKE_TENANT_ID") or DEFAULT_TENANT,
            force_tenant=force_tenant,
            redact=redact,
            keep_runtime_state=(
                keep_runtime_state
                if keep_runtime_state is not None
                else os.environ.get("RUNLAKE_MIRROR_RUNTIME_STATE", "").lower() in ("1", "true", "yes", "on")
            ),
        )
        self._writer = LakeWriter(
            root,
            max_part_rows=int(max_part_rows or _env_number("RUNLAKE_MAX_PART_ROWS", 100_000)),
            max_part_bytes=int(max_part_bytes or _env_number("RUNLAKE_MAX_PART_BYTES", 64 << 20)),
            max_buffer_bytes=int(max_buffer_bytes or _env_number("RUNLAKE_MAX_BUFFER_BYTES", 256 << 20)),
            flush_interval_s=float(flush_interval_s or _env_number("RUNLAKE_FLUSH_INTERVAL_S", 5.0, float)),
            background=background_flush,
            min_session_rows=int(
                min_session_rows if min_session_rows is not None else _env_number("RUNLAKE_MIN_SESSION_ROWS", 0)
            ),
        )
        # per run: [nodes, failed nodes, input tokens, output tokens, cost]; bounded, oldest evicted
        self._run_totals: OrderedDict[str, list[float]] = OrderedDict()
        # span id -> the run it is in (spans that are not roots), to place a node whose parent came earlier
        self._owners: OrderedDict[str, str] = OrderedDict()
        # trace id -> "parent:<span id>" keys of totals of nodes no run has claimed yet (for the root run)
        self._pending_by_trace: dict[str, set[str]] = {}
        # span id -> parent span id, for spans whose run was not known when they came (bounded, oldest evicted)
        self._parents: OrderedDict[str, str] = OrderedDict()
        # hashes of the nodes already counted (two generations of sets: the older one goes when the newer is half
        # the cap), and of the runs whose row was written -> the totals it carried
        self._counted_nodes: tuple[set[int], set[int]] = (set(), set())
        self._ended_runs: OrderedDict[int, list[float]] = OrderedDict()
        self._totals_lock = ForkSafeLock()  # its writer resets itself in a forked child too
        self._shutdown = False
        self._store_unreachable_at_exit = False
        self.rejected_spans = 0
        self.queue_dropped: Callable[[], int] | None = None  # set by a RunlakeBatchSpanProcessor in front of this
        self._logged_bad_span = False
        # called with each batch's span rows and runs-index rows (a run's row carries its totals: nodes, tokens, cost)
        self.listeners: list[Callable[[list[tuple], list[tuple]], None]] = []
        if isinstance(root, ObjectPath):
            _flush_before_s3_finalizes(self)

    # ---- SpanExporter -----------------------------------------------------------------------------------
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._shutdown:
            return SpanExportResult.FAILURE
        try:
            span_rows, run_rows = self.map_spans(spans)
            ok = self._writer.add(span_rows, run_rows)
            for listener in self.listeners:
                try:
                    listener(span_rows, run_rows)
                except Exception:  # noqa: BLE001 - a listener must never break the export
                    _logger.exception("runlake: span listener failed")
        except Exception:  # noqa: BLE001 - never raise into the application
            _logger.exception("runlake: export failed")
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS if ok and len(span_rows) == len(spans) else SpanExportResult.FAILURE

    def map_spans(self, spans: Sequence[ReadableSpan]) -> tuple[list[tuple], list[tuple]]:
        """Rows for the spans table and the runs index; a span that cannot be mapped is counted, not fatal."""
        span_rows: list[tuple] = []
        run_rows: list[tuple] = []
        map_span = self._mapper.map_span
        for span in spans:
            try:
                row = map_span(span)
            except Exception as error:  # noqa: BLE001
                self.rejected_spans += 1
                if not self._logged_bad_span:
                    self._logged_bad_span = True
                    _logger.error(
                        "runlake: skipped a span that cannot be stored (%s: %s); further ones are only counted",
                        type(error).__name__,
                        error,
                    )
                continue
            span_rows.append(row)
        self._account(span_rows, run_rows)
        return span_rows, run_rows

    def _account(self, span_rows: list[tuple], run_rows: list[tuple]) -> None:
        """Sum nodes, tokens and cost per run so the run's index row carries them.

        A node that names no run (spans of other instrumentations that repeat no run id) counts for the nearest run
        above it in the span tree: children usually arrive before their parents, so its figures wait under its
        parent's span id and move up as each ancestor arrives; what no run claims goes to the trace's root run
        (``HistoryDB.get_logs`` decides the same way when it reads). A node exported again counts once, and a run
        exported again gets the totals its first row carried (``_MAX_REMEMBERED_*``): readers keep one row per
        span, so the totals must not count the copies either.
        """
        ty, rid, tid, sid, pid = COL["span_type"], COL["run_id"], COL["trace_id"], COL["span_id"], COL["parent_span_id"]
        st, tin, tout, cost = COL["status_code"], COL["input_tokens"], COL["output_tokens"], COL["cost_cents"]
        start, tenant = COL["start_time_unix_nano"], COL["tenant_id"]
        with self._totals_lock:
            totals, owners, pending, parents = self._run_totals, self._owners, self._pending_by_trace, self._parents
            (counted, counted_before), ended = self._counted_nodes, self._ended_runs

            def place(parent: str) -> tuple[str | None, str]:
                """(the run above ``parent``, or None and the span id to wait under): up through spans that came
                before their run (a plain span under a run may end before its own children)."""
                for _ in range(64):
                    owner = owners.get(parent)
                    if owner is not None:
                        return owner, parent
                    above = parents.get(parent)
                    if above is None:
                        return None, parent
                    parent = above
                return None, parent

            def entry(key: str) -> list[float]:
                acc = totals.get(key)
                if acc is None:
                    acc = totals[key] = [0, 0, 0, 0, 0.0]
                    if len(totals) > _MAX_TRACKED_RUNS:
                        totals.popitem(last=False)
                return acc

            for row in span_rows:
                span_id, parent = row[sid], row[pid]
                waits_under = None  # the span id this row's figures wait under while its run is unknown
                if row[ty] == RUN:
                    owner = span_id
                elif row[rid]:
                    owner = row[rid]
                elif parent is not None:
                    owner, waits_under = place(parent)
                else:
                    owner = None
                if owner is not None:  # for children that arrive later
                    owners[span_id] = owner
                    if len(owners) > _MAX_TRACKED_RUNS:
                        owners.popitem(last=False)
                elif parent is not None:  # its run is not known yet: children that come later walk up through it
                    parents[span_id] = parent
                    if len(parents) > _MAX_TRACKED_RUNS:
                        parents.popitem(last=False)
                if owner is not None or waits_under is not None:
                    key = owner if owner is not None else "parent:" + waits_under
                else:
                    key = "trace:" + row[tid]
                if key.startswith("parent:"):
                    waiting_keys = pending.setdefault(row[tid], set())
                    waiting_keys.add(key)
                    if len(waiting_keys) > _MAX_TRACKED_RUNS:  # parents that never come (their totals go too)
                        waiting_keys.pop()
                    if len(pending) > _MAX_TRACKED_RUNS:
                        pending.pop(next(iter(pending)))
                if pending:  # figures of nodes below this span, waiting for it
                    waiting = totals.pop("parent:" + span_id, None)
                    keys_of_trace = pending.get(row[tid])
                    if keys_of_trace is not None:  # no longer waiting: the trace's root run need not collect it
                        keys_of_trace.discard("parent:" + span_id)
                        if not keys_of_trace:
                            del pending[row[tid]]
                    if waiting is not None:
                        acc = entry(key)
                        for i, value in enumerate(waiting):
                            acc[i] += value
                if row[ty] == NODE:
                    seen = hash((row[sid], row[tid], row[start], row[tenant]))
                    if seen in counted or seen in counted_before:
                        continue
                    counted.add(seen)
                    if len(counted) >= _MAX_REMEMBERED_SPANS // 2:
                        counted_before, counted = counted, set()
                        self._counted_nodes = (counted, counted_before)
                    acc = entry(key)
                    acc[0] += 1
                    acc[1] += row[st] == "ERROR"
                    acc[2] += row[tin] or 0
                    acc[3] += row[tout] or 0
                    acc[4] += row[cost] or 0.0
            for row in span_rows:
                if row[ty] == RUN:
                    acc = totals.pop(row[rid], None)
                    if row[pid] is None:  # a root run also owns the nodes no run above them claimed
                        keys = ["trace:" + row[tid], *pending.pop(row[tid], ())]
                        for key in keys:
                            extra = totals.pop(key, None)
                            if extra is not None:
                                acc = [a + b for a, b in zip(acc, extra)] if acc else extra
                    seen = hash((row[sid], row[tid], row[start], row[tenant]))
                    earlier = ended.pop(seen, None)  # exported before: its row's totals, plus nodes come since
                    if earlier is not None:
                        acc = [a + b for a, b in zip(acc, earlier)] if acc else earlier
                    ended[seen] = list(acc) if acc else [0, 0, 0, 0, 0.0]
                    if len(ended) > _MAX_REMEMBERED_RUNS:
                        ended.popitem(last=False)
                    run_rows.append(run_row(row, acc))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        try:
            return self._writer.flush()
        except Exception:  # noqa: BLE001
            _logger.exception("runlake: flush failed")
            return False

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        try:
            if self._store_unreachable_at_exit:  # the exit hook's flush did not finish in its bound: no second try
                self._writer.stop()
            else:
                self._writer.close()
        except Exception:  # noqa: BLE001
            _logger.exception("runlake: shutdown flush failed")
        lost = self._writer.unwritten_rows
        if lost:  # the lake refused the last flush, or did not answer it: say what goes with the process
            _logger.error(
                "runlake: shutting down with %d rows not written to %s (%s); they are lost",
                lost,
                self._writer.root,
                self._writer.failing or "a write that did not finish in time",
            )

    # ---- extras -------------------------------------------------------------------------------------------
    def record_start(self, span: ReadableSpan) -> None:
        """Buffer a ``start`` row for a run that has just begun (called from ``on_start``; no I/O here)."""
        if self._shutdown:
            return
        try:
            row = self._mapper.map_span(span, record="start")
            if row[COL["span_type"]] == RUN:
                self._writer.add([row], [run_row(row, None)], write=False)  # the application's thread: no I/O
        except Exception:  # noqa: BLE001 - never raise into the application
            _logger.debug("runlake: could not record a run start", exc_info=True)

    @property
    def stats(self) -> dict[str, Any]:
        """Counters for monitoring: rows and files written, failures, drops, values stored as null, rejected spans,
        spans a ``RunlakeBatchSpanProcessor`` queue had no room for (``queue_dropped_spans``)."""
        w = self._writer.stats
        return {
            "rows_written": w.rows_written,
            "files_written": w.files_written,
            "failed_writes": w.failed_writes,
            "dropped_rows": w.dropped_rows,
            "repaired_values": w.repaired_values,
            "rejected_spans": self.rejected_spans,
            "queue_dropped_spans": self.queue_dropped() if self.queue_dropped is not None else 0,
            "buffered_rows": self._writer.buffered_rows,
            "failing": self._writer.failing,
        }

    @property
    def writer(self) -> LakeWriter:
        return self._writer

    @property
    def force_user(self) -> str | None:
        """The user every mapped span is stored under (None: the user the span names); the ingest server sets
        it per request for ``user`` keys, so a key cannot write runs as another user of its tenant."""
        return self._mapper.force_user

    @force_user.setter
    def force_user(self, user: str | None) -> None:
        self._mapper.force_user = user


class RunStartProcessor(SpanProcessor):
    """Records run starts, and passes a run's session, user, tenant, TTL and run id on to child spans.

    Spans made by other instrumentations inside a runlake run thereby land in the run's session
    partition and count towards the run.
    """

    _INHERITED = (
        "gen_ai.conversation.id",
        "session.id",
        "user.id",
        "runlake.tenant.id",
        "runlake.ttl_days",
        "runlake.run.id",
    )

    def __init__(self, exporter: RunlakeSpanExporter) -> None:
        self._exporter = exporter

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            parent = span.parent
            if parent is not None and not parent.is_remote:
                from opentelemetry import trace

                parent_span = trace.get_current_span(parent_context)
                parent_attrs = getattr(parent_span, "attributes", None)
                if parent_attrs:
                    own = span.attributes or {}
                    for key in self._INHERITED:
                        if key not in own and key in parent_attrs:
                            span.set_attribute(key, parent_attrs[key])
            if classify(span.attributes or {}, parent is not None)[0] == RUN:
                span.set_attribute(RUN_ID, f"{span.context.span_id:016x}")  # children inherit this run
            self._exporter.record_start(span)
        except Exception:  # noqa: BLE001 - never raise into the application
            _logger.debug("runlake: on_start failed", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        pass

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class AutoConfiguredSpanExporter(RunlakeSpanExporter):
    """The exporter of ``OTEL_TRACES_EXPORTER=runlake`` (the ``opentelemetry_traces_exporter`` entry point).

    The SDK's auto-configuration installs its TracerProvider, then builds each named exporter and puts it behind a
    ``BatchSpanProcessor``: nothing there sees spans start. So this exporter adds a ``RunStartProcessor`` to that
    provider, as ``runlake.configure`` does: runs in progress are visible as running, and a nested run or another
    instrumentation's span that names no session or user gets its parent's, without a code change.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        provider = trace.get_tracer_provider()
        self.provider = provider if isinstance(provider, TracerProvider) else None
        if self.provider is not None:
            provider.add_span_processor(RunStartProcessor(self))
            _AUTO_CONFIGURED.add(self)
        else:  # built outside the SDK's auto-configuration: an exporter like any other
            _logger.debug("runlake: no SDK TracerProvider installed; run starts are not recorded")


_AUTO_CONFIGURED: weakref.WeakSet[AutoConfiguredSpanExporter] = weakref.WeakSet()


def auto_configured_on(provider: Any) -> list[AutoConfiguredSpanExporter]:
    """The ``OTEL_TRACES_EXPORTER=runlake`` exporters the SDK's auto-configuration attached to ``provider``."""
    return [exporter for exporter in list(_AUTO_CONFIGURED) if exporter.provider is provider]


def _sdk_queue(processor: BatchSpanProcessor) -> Any:
    """The SDK processor's bounded deque of ended spans (``_batch_processor._queue`` from SDK 1.33, ``queue``
    before), or None if this SDK keeps it elsewhere (then drops are not counted)."""
    for queue in (
        getattr(getattr(processor, "_batch_processor", None), "_queue", None),
        getattr(processor, "queue", None),
    ):
        if queue is not None and getattr(queue, "maxlen", None):
            return queue
    return None


class _HandedCount(SpanExporter):
    """The exporter behind a batch processor, counting the spans handed to it (only the processor's one export
    thread, or a flush holding its export lock, calls it)."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.exporter = exporter
        self.handed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.handed += len(spans)
        return self.exporter.export(spans)

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self) -> None:
        self.exporter.shutdown()


class RunlakeBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's ``BatchSpanProcessor`` with a queue sized for bursts and a count of what a full queue drops.

    The SDK drops a span when its queue is full (a burst the export thread cannot keep up with), saying so once and
    counting it nowhere. Here the drops are counted — spans ended, less those handed to the exporter and those still
    queued: exact whenever the queue is at rest (``dropped_spans``; ``counts_to``'s ``stats``, normally the lake's
    exporter, as ``queue_dropped_spans``) — the first is logged with the remedy, the total again at shutdown.
    Defaults: ``max_queue_size`` 16,384 and ``max_export_batch_size`` 2,048 (the SDK's 2,048 and 512 overflow at a few
    thousand spans a second from several threads), unless given or set by ``OTEL_BSP_MAX_QUEUE_SIZE`` /
    ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``. The queue stays bounded: memory is at most that many ended spans.
    """

    DEFAULT_MAX_QUEUE_SIZE = 16_384
    DEFAULT_MAX_EXPORT_BATCH_SIZE = 2_048

    def __init__(
        self,
        span_exporter: SpanExporter,
        max_queue_size: int | None = None,
        schedule_delay_millis: float | None = None,
        max_export_batch_size: int | None = None,
        export_timeout_millis: float | None = None,
        *,
        counts_to: RunlakeSpanExporter | None = None,
    ) -> None:
        if max_queue_size is None and not os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"):
            max_queue_size = self.DEFAULT_MAX_QUEUE_SIZE
        batch_from_env = bool(os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"))
        if (
            max_export_batch_size is None
            and not batch_from_env
            and isinstance(max_queue_size, int)
            and max_queue_size > 0
        ):
            max_export_batch_size = min(self.DEFAULT_MAX_EXPORT_BATCH_SIZE, max_queue_size)
        self._handed = _HandedCount(span_exporter)
        super().__init__(
            self._handed, max_queue_size, schedule_delay_millis, max_export_batch_size, export_timeout_millis
        )
        self._queue = _sdk_queue(self)
        self._count_lock = threading.Lock()
        self._stopped = False
        self._ended = 0  # spans put in the queue (sampled, before shutdown)
        self._told = False
        if counts_to is not None:
            counts_to.queue_dropped = lambda: self.dropped_spans
        reset_in_forked_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """A child gets the parent's lock as it was (maybe held by a thread that does not exist there), and the SDK
        empties the child's queue: a new lock, counts from zero."""
        self._count_lock = threading.Lock()
        self._ended = self._handed.handed = 0

    @property
    def dropped_spans(self) -> int:
        queue = self._queue
        if queue is None:
            return 0
        return max(self._ended - self._handed.handed - len(queue), 0)

    def on_end(self, span: ReadableSpan) -> None:
        queue = self._queue
        if queue is None or self._stopped or not (span.context and span.context.trace_flags.sampled):
            super().on_end(span)
            return
        full = len(queue) >= queue.maxlen
        with self._count_lock:
            self._ended += 1
        super().on_end(span)
        if full and not self._told:
            self._told = True
            _logger.error(
                "runlake: the span queue is full (max_queue_size=%d): spans are dropped before they reach the lake, "
                "and counted (stats['queue_dropped_spans']); raise max_queue_size for bursts this size",
                queue.maxlen,
            )

    def shutdown(self) -> None:
        self._stopped = True
        super().shutdown()
        dropped = self.dropped_spans
        if dropped:
            _logger.error(
                "runlake: %d spans were dropped because the span queue was full (max_queue_size=%d)",
                dropped,
                self._queue.maxlen if self._queue is not None else 0,
            )
