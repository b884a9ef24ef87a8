"""The state of one server: a writer per tenant (and what a 200 means for it), readers, live events, and the
background tasks (TTL, compaction, ingest-log checkpoints)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from .. import otlp
from ..auth import Principal
from ..events import EventBuilder, EventHub
from ..history import HistoryDB, iso_time
from ..ingest_log import IngestLog, StorageUnavailable
from ..service import ExecutionHistoryService
from .settings import Durability, ServerSettings

_logger = logging.getLogger("runlake.server")
ANONYMOUS = Principal(tenant_id=None, user_id=None, role="admin", name="anonymous (--no-auth)")


class TenantSink:
    """The exporter of one tenant (``force_tenant``), and what a 200 means for it.

    ``log``: the request is in the ingest log (see ``IngestLog``); rows are buffered and written at each
    checkpoint. ``sync``: the rows are in part files (renamed into place) before the answer; requests
    arriving while a write is in progress share the next one (group commit), so N concurrent clients cost
    one file per partition per write, not N. ``buffered``: the rows are in the writer's memory buffer,
    written by its background thread once ``flush_interval_s`` old.
    """

    def __init__(self, root: Path, tenant: str | None, settings: ServerSettings, on_events: Callable) -> None:
        self.tenant = tenant
        self.sync = settings.durability == Durability.sync
        options: dict[str, Any] = {
            "force_tenant": tenant,
            "flush_interval_s": settings.flush_interval_s,
            "keep_runtime_state": True,  # mirroring was the sending application's choice
            "min_session_rows": settings.min_session_rows,
        }
        if self.sync:
            # nothing is written behind the commit's back: no row limits, no background thread
            options.update(max_part_rows=1 << 31, max_part_bytes=1 << 40, background_flush=False)
        elif settings.durability == Durability.log:
            options.update(background_flush=False)  # the checkpoint flushes, then drops the log segments
        self.exporter = RunlakeSpanExporter(root, **options)
        self._builder = EventBuilder()
        self._on_events = on_events
        self.exporter.listeners.append(self._listen)
        self._export_lock = threading.Lock()
        self._cond = threading.Condition()
        self._added = 0  # requests whose rows are in the writer's buffer
        self._durable = 0  # ... of which all are on disk
        self._failed_through = 0  # ... of which the last write failed
        self._failure = ""
        self._flushing = False
        self.requests = 0
        self.spans = 0

    def _listen(self, rows: list[tuple], run_rows: list[tuple]) -> None:
        events = self._builder.events(rows, run_rows) if self._on_events.wanted() else []
        if events:
            self._on_events(events)

    def ingest(
        self,
        spans: list,
        log: IngestLog | None = None,
        record: tuple[str, bytes] | None = None,
        timeout_s: float = 30.0,
        user: str | None = None,
    ) -> int:
        """Store ``spans`` (logging ``record`` = (media, body) first when ``log`` is given); ``user``: store them
        under this user whatever they claim (a ``user`` key writes only its own runs, as it reads only those).

        Returns the number the mapping refused. Raises ``StorageUnavailable``: nothing was accepted.
        """
        writer = self.exporter.writer
        if log is None and writer.failing is not None and not writer.flush():  # is the lake back? try it
            raise StorageUnavailable(f"the lake cannot be written: {writer.failing}")
        if log is not None and record is not None and writer.failing is not None and self._buffer_full(record[1]):
            # backpressure: past the cap the writer would drop rows of requests already answered 200
            raise StorageUnavailable(
                f"the lake cannot be written ({writer.failing}) and the write buffer is full; retry later"
            )
        segment = log.append(self.tenant, *record, user=user) if log is not None and record is not None else None
        try:
            with self._export_lock:
                before = self.exporter.rejected_spans
                self.exporter.force_user = user  # per request: one writer serves every user of the tenant
                try:
                    result = self.exporter.export(spans)
                finally:
                    self.exporter.force_user = None
                rejected = self.exporter.rejected_spans - before
                failing = writer.failing
                self._added += 1
                ticket = self._added
        finally:
            if segment is not None:
                log.done(segment)
        if result is SpanExportResult.FAILURE and not rejected and failing is None:
            raise RuntimeError("the exporter refused the batch; see the server log")
        if self.sync and not self._commit(ticket, timeout_s):
            raise StorageUnavailable(f"the lake cannot be written: {self._failure}")
        self.requests += 1
        self.spans += len(spans) - rejected
        return rejected

    def _buffer_full(self, body: bytes) -> bool:
        """Would the rows of ``body`` pass the writer's buffer cap, even after trying to write the buffer?

        Twice the body's size estimates what its rows add (rows repeat some columns). An empty buffer is never
        full: the request is taken, and its own write tells whether the lake is back.
        """
        writer = self.exporter.writer
        if not writer.buffered_bytes or writer.buffered_bytes + 2 * len(body) <= writer.max_buffer_bytes:
            return False
        return not writer.flush()  # is the lake back? then the buffer is empty now

    def _commit(self, ticket: int, timeout_s: float) -> bool:
        """Wait until every row of request ``ticket`` is on disk (True) or its write failed (False)."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._cond:
                while True:
                    if self._durable >= ticket:
                        return True
                    if self._failed_through >= ticket:
                        return False
                    if not self._flushing:
                        self._flushing = True
                        break
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        self._failure = "timed out waiting for the write"
                        return False
                    self._cond.wait(remaining)
            target = self._added  # every request up to here has its rows in the buffer
            ok = False
            try:
                ok = self.exporter.writer.flush() and self.exporter.writer.failing is None
            finally:
                with self._cond:
                    self._flushing = False
                    if ok:
                        self._durable = max(self._durable, target)
                    else:
                        self._failed_through = max(self._failed_through, target)
                        self._failure = self.exporter.writer.failing or "write failed"
                    self._cond.notify_all()

    def flush(self) -> bool:
        """Write everything buffered; True if all of it reached part files."""
        return self.exporter.force_flush()

    def stats(self) -> dict[str, Any]:
        return {"tenant_id": self.tenant, "requests": self.requests, "spans": self.spans, **self.exporter.stats}

    def shutdown(self) -> None:
        self.exporter.shutdown()


class IngestSlots:
    """OTLP requests in progress: at most ``limit`` on the server and ``tenant_limit`` of one tenant, so a tenant
    whose clients are slow (or hostile) cannot take every slot; the other tenants keep theirs. Used on the event
    loop only (no lock). ``take(None)`` counts against the server's limit alone (``--no-auth``: one caller)."""

    def __init__(self, limit: int, tenant_limit: int) -> None:
        self.limit = limit
        self.tenant_limit = tenant_limit
        self.total = 0
        self._of: dict[str, int] = {}  # tenants with requests in progress

    def take(self, tenant: str | None) -> str | None:
        """Take a slot for ``tenant``; None if taken, else why not (the 429's message)."""
        if self.total >= self.limit:
            return "too many requests in progress"
        if tenant is not None:
            held = self._of.get(tenant, 0)
            if held >= self.tenant_limit:
                return f"too many requests of this tenant in progress ({held}, its share of {self.limit} slots)"
            self._of[tenant] = held + 1
        self.total += 1
        return None

    def give_back(self, tenant: str | None) -> None:
        self.total -= 1
        if tenant is not None:
            held = self._of.pop(tenant) - 1
            if held:
                self._of[tenant] = held

    def of(self, tenant: str | None) -> int:
        return self.total if tenant is None else self._of.get(tenant, 0)


class EventSink:
    """Callable handed to the sinks: builds nothing unless someone listens; hops to the event loop."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.loop: asyncio.AbstractEventLoop | None = None

    def wanted(self) -> bool:
        return bool(self.hub.subscribers) and self.loop is not None

    def __call__(self, events: list[dict[str, Any]]) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.hub.publish, events)


class Runtime:
    """The state of one app: lake, keys, exporters per tenant, readers, hub, TTL task."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.history = HistoryDB(settings.root)
        self.service = ExecutionHistoryService(self.history)
        self.hub = EventHub()
        self.events = EventSink(self.hub)
        self._sinks: dict[str | None, TenantSink] = {}
        self._sinks_lock = threading.Lock()
        self.ingest_slots = IngestSlots(settings.max_pending_ingest, settings.tenant_pending_limit)
        self.ingest_limiter = anyio.CapacityLimiter(settings.ingest_threads)
        self.ttl_task: asyncio.Task | None = None
        self.compact_task: asyncio.Task | None = None
        self.compact_runs = 0
        self.compact_last: dict[str, Any] | None = None
        self.checkpoint_task: asyncio.Task | None = None
        self.warm_task: asyncio.Task | None = None
        self._checkpoint_lock = threading.Lock()
        self.checkpoints = 0
        self.replayed: dict[str, int] = {"segments": 0, "requests": 0, "spans": 0}
        self._dropped_mark = 0  # rows the writers had dropped when the ingest log was last known to cover them
        self.kept_for_replay = 0  # ingest log segments kept on disk because rows were dropped (counted once each)
        self._kept: list[Path] = []  # their paths, stored again once the lake takes writes
        self.replayed_after_outage: dict[str, int] = {"segments": 0, "requests": 0, "spans": 0}
        self.log: IngestLog | None = None
        self._left_over: list[Path] = []
        if settings.durability == Durability.log:  # locked now, so a second server on this log fails at once
            folder = settings.ingest_log_dir
            if folder is None:
                if not isinstance(settings.root, Path):
                    raise ValueError("a lake that is not a local folder needs --ingest-log-dir (a local folder)")
                folder = settings.root / ".ingest-log"
            self.log = IngestLog(folder, settings.fsync)
            self._left_over = self.log.open()
        self.ttl_runs = 0
        self.ttl_last: dict[str, Any] | None = None
        # TTL and compaction take turns: on an object store a merge that TTL's deletes overtake could bring expired
        # rows back (compaction checks its parts are all there before replacing them, but cannot check and replace
        # in one step; see runlake.compact._replace)
        self._maintenance = asyncio.Lock()
        self.started_at = time.time()

    def sink(self, tenant: str | None) -> TenantSink:
        sink = self._sinks.get(tenant)
        if sink is None:
            with self._sinks_lock:
                sink = self._sinks.get(tenant)
                if sink is None:
                    sink = self._sinks[tenant] = TenantSink(self.settings.root, tenant, self.settings, self.events)
        return sink

    def sinks(self) -> list[TenantSink]:
        with self._sinks_lock:
            return list(self._sinks.values())

    def authenticate(self, key: str | None) -> Principal | None:
        if self.settings.no_auth:
            return ANONYMOUS
        return self.settings.keys.authenticate(key)

    async def ttl_loop(self, interval_s: float) -> None:
        """Expire day folders every ``interval_s``; their files are deleted by ``runlake.ttl``'s background thread
        (hidden from readers at once; what a stopped server leaves is swept by the next run)."""
        from ..ttl import ExpireError

        while True:
            started = time.time()
            try:
                async with self._maintenance:
                    result = await self.service.cleanup_expired_executions(days=None)
                self.ttl_last = {"at": iso_time(int(started * 1e9)), "ok": True, **result}
                if result["executions_deleted"] or result["nodes_deleted"]:
                    _logger.info("runlake TTL: deleted %s", result)
            except ExpireError as error:  # some folders could not be removed: the rest went and are counted
                self.ttl_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error), **error.counts}
                _logger.error("runlake TTL: %s", error)
            except Exception as error:  # noqa: BLE001 - the loop must survive one bad run
                self.ttl_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error)}
                _logger.exception("runlake TTL cleanup failed")
            self.ttl_runs += 1
            await asyncio.sleep(interval_s)

    async def compact_loop(self, interval_s: float) -> None:
        """Merge quiet partitions (and drain the shared per-day files) in the background.

        A lake that cannot be compacted at all (``CompactError``: read-only, its lock file cannot be opened) is an
        expected state, not a bug: it is logged as one line when it begins or its reason changes, and once more
        when compaction works again, not at every interval. Anything else is logged with its traceback."""
        from ..compact import CompactError, compact

        failure: str | None = None  # why the last run failed, if it did
        while True:
            await asyncio.sleep(interval_s)
            started = time.time()
            try:
                async with self._maintenance:
                    summary = await asyncio.to_thread(
                        compact, self.settings.root, self.settings.compact_older_than_minutes
                    )
                self.compact_last = {"at": iso_time(int(started * 1e9)), "ok": True, **summary.as_dict()}
                if failure is not None:
                    _logger.info("runlake compaction works again (it failed before: %s)", failure)
                    failure = None
                if summary.partitions:
                    _logger.info("runlake compaction: %s", summary.as_dict())
            except CompactError as error:
                self.compact_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error)}
                if str(error) != failure:
                    _logger.warning(
                        "runlake compaction: %s; tried again every %g s, logged again when this changes",
                        error,
                        interval_s,
                    )
                failure = str(error)
            except Exception as error:  # noqa: BLE001 - the loop must survive one bad run
                self.compact_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error)}
                _logger.exception("runlake compaction failed")
                failure = f"{type(error).__name__}: {error}"
            self.compact_runs += 1

    # ---- the ingest log ----
    def replay(self) -> None:
        """Lock the ingest log and store what a previous run acknowledged but had not written."""
        if self.log is None:
            return
        segments, self._left_over = self._left_over, []
        requests, spans = self._replay_segments(segments)
        self.replayed["requests"] += requests
        self.replayed["spans"] += spans
        if segments:
            self.replayed["segments"] = len(segments)
            self.log.adopt(segments)
            ok = self.checkpoint()
            _logger.warning(
                "runlake: replayed %d request(s), %d span(s) from %d ingest log segment(s) left by the last run%s",
                requests,
                spans,
                len(segments),
                "" if ok else "; the lake cannot be written yet, the segments are kept",
            )

    def _replay_segments(self, paths: list[Path]) -> tuple[int, int]:
        """Decode and store every intact request of ``paths``: (requests, spans). Raises ``StorageUnavailable``
        if the lake fails meanwhile (what was stored stays; readers keep one row per span id)."""
        requests = spans = 0
        for path in paths:
            for tenant, media, body, user in IngestLog.read(path):
                try:
                    decoded = otlp.decode_request(body, media)
                except otlp.OTLPDecodeError as error:  # cannot happen for a logged body; never block start-up
                    _logger.error("runlake ingest log %s: a record cannot be decoded (%s)", path.name, error)
                    continue
                if decoded.spans:
                    self.sink(tenant).ingest(decoded.spans, user=user)
                requests += 1
                spans += len(decoded.spans)
        return requests, spans

    def warm(self) -> None:
        """``HistoryDB.warm``: first point reads then parse no footer. A failure only costs speed."""
        try:
            started = time.perf_counter()
            footers = self.history.warm()
            _logger.info("runlake serve: warmed %d footers in %.2f s", footers, time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - reads work cold as well
            _logger.warning("runlake serve: warming the read caches failed", exc_info=True)

    def checkpoint(self) -> bool:
        """Flush every writer, then drop the log segments whose requests are now in part files; once the lake takes
        writes again, store the segments kept during an outage (and drop them at the next checkpoint)."""
        if self.log is None:
            return all([sink.flush() for sink in self.sinks()])
        with self._checkpoint_lock:
            ok = self._checkpoint()
            if ok and self._kept and self.dropped_rows() == self._dropped_mark:
                self._replay_kept()
            return ok

    def _checkpoint(self) -> bool:
        segments = self.log.rotate()
        ok = all([sink.flush() for sink in self.sinks()])  # every sink, even after one fails
        dropped = self.dropped_rows()
        if dropped > self._dropped_mark:
            self._keep_for_replay(segments, dropped)
        else:
            self.log.retire(segments, flushed=ok)
        self.checkpoints += 1
        if not ok:
            _logger.error("runlake: checkpoint failed: the lake cannot be written; the ingest log is kept")
        return ok

    def _replay_kept(self) -> None:
        """Store the requests of the segments kept while rows were dropped, then let the next checkpoint delete
        them as it deletes any other segment (kept again if rows are dropped once more)."""
        paths, self._kept = self._kept, []
        try:
            requests, spans = self._replay_segments(paths)
        except Exception as error:  # noqa: BLE001 - the lake failed again, a segment unreadable: keep them all
            self._kept = paths + self._kept
            _logger.error("runlake: replaying kept ingest log segments stopped (kept for the next try): %s", error)
            return
        self.log.adopt(paths)
        self.replayed_after_outage["segments"] += len(paths)
        self.replayed_after_outage["requests"] += requests
        self.replayed_after_outage["spans"] += spans
        _logger.warning(
            "runlake: the lake takes writes again: stored %d request(s), %d span(s) from %d ingest log segment(s) "
            "kept while rows were dropped",
            requests,
            spans,
            len(paths),
        )

    def dropped_rows(self) -> int:
        return sum(sink.exporter.writer.stats.dropped_rows for sink in self.sinks())

    def _keep_for_replay(self, segments: list, dropped: int) -> None:
        """Rows were dropped at the buffer cap: some requests of ``segments`` (or of the segment begun since) are
        not in part files. Keep all of those segments for the next start-up's replay instead of deleting them."""
        mark = self.dropped_rows()  # drops after this are seen by the next checkpoint
        segments = [*segments, *self.log.rotate()]  # requests logged since the rotate may have lost rows as well
        self.log.keep_for_replay(segments)
        self._kept.extend(s.path for s in segments)
        self.kept_for_replay += len(segments)
        _logger.error(
            "runlake: the writers dropped %d row(s) at their buffer cap while the lake could not be written; "
            "%d ingest log segment(s) are kept in %s and stored once the lake takes writes again (or at restart)",
            dropped - self._dropped_mark,
            len(segments),
            self.log.folder,
        )
        self._dropped_mark = mark

    async def checkpoint_loop(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await anyio.to_thread.run_sync(self.checkpoint)
            except Exception:  # noqa: BLE001 - the loop must survive one bad checkpoint
                _logger.exception("runlake: checkpoint failed")

    def shutdown(self) -> None:
        try:
            self.checkpoint()
        except Exception:  # noqa: BLE001
            _logger.exception("runlake: final checkpoint failed")
        for sink in self.sinks():
            try:
                sink.shutdown()
            except Exception:  # noqa: BLE001
                _logger.exception("runlake: flushing tenant %r at shutdown failed", sink.tenant)
        if self.log is not None:
            self.log.close()
