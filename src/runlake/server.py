"""``runlake serve``: an HTTP server (FastAPI on uvicorn) over the lake.

- ``POST /v1/traces``: OTLP/HTTP receiver (protobuf or JSON, gzip/deflate), written through the same
  mapping and writer as the in-process exporter (one ``RunlakeSpanExporter`` per tenant, ``force_tenant``).
- ``GET /api/v1/agents/history``, ``/api/v1/agents/logs``: CodexOS shapes; ``GET /api/v1/runs``,
  ``/api/v1/traces``: PraisonAI shapes; ``GET /api/v1/agents/stats``, ``/api/v1/agents/{id}/performance``:
  ``ExecutionHistoryService``.
- ``WS /api/v1/agents/ws``: live execution events of spans arriving through ingest.
- A background task deletes expired partitions (TTL) every ``ttl_interval_s``; another compacts quiet partitions
  every ``compact_interval_s`` (ingest writes small sessions into one shared file per day, ``min_session_rows``).

See docs/server.md for the endpoints, keys, limits and the durability choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import anyio
import duckdb
import typer
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, Response
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import resolve_state_url
from opentelemetry.sdk.trace.export import SpanExportResult
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from . import otlp
from .api_models import (
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
    WsParams,
)
from .auth import (
    WS_SUBPROTOCOL_PREFIX,
    KeysError,
    KeyStore,
    Principal,
    key_from_headers,
    key_from_subprotocols,
    load_keys,
)
from .events import EventBuilder, EventHub, Subscriber
from .history import HistoryDB, iso_time
from .ingest_log import IngestLog, IngestLogLocked, StorageUnavailable
from .service import ExecutionHistoryService

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_PORT",
    "DEFAULT_TTL_INTERVAL_S",
    "ServerSettings",
    "create_app",
    "serve",
    "serve_command",
]

DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
DEFAULT_MAX_BODY_BYTES = 8 << 20  # 8 MiB, on the wire and after decompression
DEFAULT_TTL_INTERVAL_S = 24 * 3600.0
DEFAULT_FLUSH_INTERVAL_S = 2.0
DEFAULT_COMPACT_INTERVAL_S = 600.0
DEFAULT_COMPACT_OLDER_THAN_MIN = 10.0
DEFAULT_MIN_SESSION_ROWS = 256  # sessions with fewer rows in a flush share one file per day until compaction
DEFAULT_WS_QUEUE = 1000  # events buffered per WebSocket connection; past it the oldest are dropped
DEFAULT_MAX_PENDING_INGEST = 64  # OTLP requests in progress; past it: 429 + Retry-After
MAX_PAGE = 1000  # the cap of every `limit` parameter
RETRY_AFTER_S = 2
WS_SUBPROTOCOL = "runlake"

_logger = logging.getLogger("runlake.server")
_ANONYMOUS = Principal(tenant_id=None, user_id=None, role="admin", name="anonymous (--no-auth)")
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
_PREVIEW = 2000  # characters of input/output carried in WebSocket events


class Durability(str, Enum):
    log = "log"  # answer once the request is in the ingest log; Parquet written every flush interval
    sync = "sync"  # answer once the rows are in Parquet part files (group commit)
    buffered = "buffered"  # answer once the rows are buffered in memory


@dataclass
class ServerSettings:
    """Everything ``create_app`` needs; ``serve`` builds it from the command line."""

    root: Path
    keys: KeyStore = field(default_factory=KeyStore)
    no_auth: bool = False
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    ttl_interval_s: float | None = DEFAULT_TTL_INTERVAL_S
    durability: Durability = Durability.log
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S
    ingest_log_dir: Path | None = None  # default <root>/.ingest-log
    fsync: bool = False
    ws_queue_size: int = DEFAULT_WS_QUEUE
    max_pending_ingest: int = DEFAULT_MAX_PENDING_INGEST
    ingest_threads: int = 4
    min_session_rows: int = DEFAULT_MIN_SESSION_ROWS
    compact_interval_s: float | None = DEFAULT_COMPACT_INTERVAL_S
    compact_older_than_minutes: float = DEFAULT_COMPACT_OLDER_THAN_MIN


# ---- errors ------------------------------------------------------------------------------------------------------
class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# ---- request bodies ----------------------------------------------------------------------------------------------
async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it passes ``limit`` bytes (Content-Length checked first)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyError(413, f"body of {int(declared)} bytes is over the limit of {limit} bytes")
        except ValueError:
            raise BodyError(400, "Content-Length is not a number") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decompress(data: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding`` (gzip or deflate), never producing more than ``limit`` bytes (no bombs)."""
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}[encoding]
    out = bytearray()
    pending = data
    while pending:
        inflater = zlib.decompressobj(wbits)
        try:
            out += inflater.decompress(pending, limit + 1 - len(out))
            if len(out) > limit or inflater.unconsumed_tail:
                raise BodyError(413, f"decompressed body is over the limit of {limit} bytes")
            if not inflater.eof:
                raise BodyError(400, f"{encoding} body is truncated")
        except zlib.error as error:
            raise BodyError(400, f"body is not valid {encoding}: {error}") from None
        # gzip allows several members one after the other; anything else after the stream is an error
        pending = inflater.unused_data if encoding != "deflate" else b""
        if encoding == "deflate" and inflater.unused_data:
            raise BodyError(400, "deflate body has trailing data")
    return bytes(out)


# ---- ingest: one exporter per tenant, group commit -----------------------------------------------------------
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

    def _listen(self, rows: list[tuple]) -> None:
        events = self._builder.events(rows) if self._on_events.wanted() else []
        if events:
            self._on_events(events)

    def ingest(
        self,
        spans: list,
        log: IngestLog | None = None,
        record: tuple[str, bytes] | None = None,
        timeout_s: float = 30.0,
    ) -> int:
        """Store ``spans`` (logging ``record`` = (media, body) first when ``log`` is given).

        Returns the number the mapping refused. Raises ``StorageUnavailable``: nothing was accepted.
        """
        writer = self.exporter.writer
        if log is None and writer.failing is not None and not writer.flush():  # is the lake back? try it
            raise StorageUnavailable(f"the lake cannot be written: {writer.failing}")
        segment = log.append(self.tenant, *record) if log is not None and record is not None else None
        try:
            with self._export_lock:
                before = self.exporter.rejected_spans
                result = self.exporter.export(spans)
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


class _EventSink:
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
        self.events = _EventSink(self.hub)
        self._sinks: dict[str | None, TenantSink] = {}
        self._sinks_lock = threading.Lock()
        self.pending_ingest = 0
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
            return _ANONYMOUS
        return self.settings.keys.authenticate(key)

    async def ttl_loop(self, interval_s: float) -> None:
        """Expire day folders every ``interval_s``; their files are deleted by ``runlake.ttl``'s background thread
        (hidden from readers at once; what a stopped server leaves is swept by the next run)."""
        from .ttl import ExpireError

        while True:
            started = time.time()
            try:
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
        """Merge quiet partitions (and drain the shared per-day files) in the background."""
        from .compact import compact

        while True:
            await asyncio.sleep(interval_s)
            started = time.time()
            try:
                summary = await asyncio.to_thread(compact, self.settings.root, self.settings.compact_older_than_minutes)
                self.compact_last = {"at": iso_time(int(started * 1e9)), "ok": True, **summary.as_dict()}
                if summary.partitions:
                    _logger.info("runlake compaction: %s", summary.as_dict())
            except Exception as error:  # noqa: BLE001 - the loop must survive one bad run
                self.compact_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error)}
                _logger.exception("runlake compaction failed")
            self.compact_runs += 1

    # ---- the ingest log ----
    def replay(self) -> None:
        """Lock the ingest log and store what a previous run acknowledged but had not written."""
        if self.log is None:
            return
        segments, self._left_over = self._left_over, []
        for path in segments:
            for tenant, media, body in IngestLog.read(path):
                try:
                    decoded = otlp.decode_request(body, media)
                except otlp.OTLPDecodeError as error:  # cannot happen for a logged body; never block start-up
                    _logger.error("runlake ingest log %s: a record cannot be decoded (%s)", path.name, error)
                    continue
                if decoded.spans:
                    self.sink(tenant).ingest(decoded.spans)
                self.replayed["requests"] += 1
                self.replayed["spans"] += len(decoded.spans)
        if segments:
            self.replayed["segments"] = len(segments)
            self.log.adopt(segments)
            ok = self.checkpoint()
            _logger.warning(
                "runlake: replayed %d request(s), %d span(s) from %d ingest log segment(s) left by the last run%s",
                self.replayed["requests"],
                self.replayed["spans"],
                len(segments),
                "" if ok else "; the lake cannot be written yet, the segments are kept",
            )

    def warm(self) -> None:
        """``HistoryDB.warm``: first point reads then parse no footer. A failure only costs speed."""
        try:
            started = time.perf_counter()
            footers = self.history.warm()
            _logger.info("runlake serve: warmed %d footers in %.2f s", footers, time.perf_counter() - started)
        except Exception:  # noqa: BLE001 - reads work cold as well
            _logger.warning("runlake serve: warming the read caches failed", exc_info=True)

    def checkpoint(self) -> bool:
        """Flush every writer, then drop the log segments whose requests are now in part files."""
        if self.log is None:
            return all([sink.flush() for sink in self.sinks()])
        with self._checkpoint_lock:
            segments = self.log.rotate()
            ok = all([sink.flush() for sink in self.sinks()])  # every sink, even after one fails
            self.log.retire(segments, flushed=ok)
            self.checkpoints += 1
            if not ok:
                _logger.error("runlake: checkpoint failed: the lake cannot be written; the ingest log is kept")
            return ok

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


# ---- the app --------------------------------------------------------------------------------------------------
_AUTH_HELP = "send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No key or an unknown key"},
    422: {"model": ErrorBody, "description": "Invalid or unknown query parameters"},
    503: {"model": ErrorBody, "description": "The lake cannot be read right now; retry after Retry-After"},
}


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def _principal(request: Request) -> Principal:
    runtime = _runtime(request)
    key = key_from_headers(request.headers)
    principal = runtime.authenticate(key)
    if principal is None:
        message = f"missing API key: {_AUTH_HELP}" if key is None else "invalid API key"
        raise HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})
    return principal


Caller = Annotated[Principal, Depends(_principal)]


def _history(request: Request, principal: Principal) -> HistoryDB:
    return _runtime(request).history.scoped(principal.tenant_id, principal.read_user)


def _service(request: Request, principal: Principal) -> ExecutionHistoryService:
    return _runtime(request).service.scoped(principal.tenant_id, principal.read_user)


def create_app(
    state_url: str | os.PathLike[str] | None = None,
    *,
    keys: KeyStore | None = None,
    keys_file: str | os.PathLike[str] | None = None,
    no_auth: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ttl_interval_s: float | None = DEFAULT_TTL_INTERVAL_S,
    durability: Durability | str = Durability.log,
    flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
    ingest_log_dir: str | os.PathLike[str] | None = None,
    fsync: bool = False,
    ws_queue_size: int = DEFAULT_WS_QUEUE,
    max_pending_ingest: int = DEFAULT_MAX_PENDING_INGEST,
    min_session_rows: int = DEFAULT_MIN_SESSION_ROWS,
    compact_interval_s: float | None = DEFAULT_COMPACT_INTERVAL_S,
    compact_older_than_minutes: float = DEFAULT_COMPACT_OLDER_THAN_MIN,
) -> FastAPI:
    """The FastAPI app over the lake at ``state_url`` (else ``RUNLAKE_STATE_URL``).

    ``keys``: a ``KeyStore``; else keys are loaded from ``keys_file`` and ``RUNLAKE_API_KEYS``. Without any
    key, ``no_auth=True`` is required (``serve`` allows it only on a loopback address). ``ttl_interval_s``
    None switches the TTL task off. ``durability``: ``log`` (default), ``sync`` or ``buffered``; see
    ``TenantSink`` and docs/server.md. ``min_session_rows``: ingest writes sessions with fewer rows per flush
    into one shared file per day; ``compact_interval_s`` (None: off) runs compaction in the background, which
    moves them into their own partitions once quiet for ``compact_older_than_minutes``.
    """
    root = resolve_state_url(state_url)
    if root is None:
        raise ValueError("no state URL: give one (--state-url) or set RUNLAKE_STATE_URL")
    if keys is None:
        keys = load_keys(keys_file)
    if not no_auth and not len(keys):
        raise KeysError(
            "no API keys configured: give a keys file (--keys-file) or RUNLAKE_API_KEYS, "
            "or run with --no-auth on a loopback address"
        )
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be positive")
    if ttl_interval_s is not None and ttl_interval_s <= 0:
        raise ValueError("ttl_interval_s must be positive (or None to switch the TTL task off)")
    if compact_interval_s is not None and compact_interval_s <= 0:
        raise ValueError("compact_interval_s must be positive (or None to switch compaction off)")
    if ws_queue_size < 1 or max_pending_ingest < 1 or flush_interval_s <= 0:
        raise ValueError("ws_queue_size, max_pending_ingest and flush_interval_s must be positive")
    settings = ServerSettings(
        root=root,
        keys=keys,
        no_auth=no_auth,
        max_body_bytes=int(max_body_bytes),
        ttl_interval_s=ttl_interval_s,
        durability=Durability(durability),
        flush_interval_s=flush_interval_s,
        ingest_log_dir=Path(ingest_log_dir) if ingest_log_dir else None,
        fsync=fsync,
        ws_queue_size=ws_queue_size,
        max_pending_ingest=max_pending_ingest,
        min_session_rows=max(int(min_session_rows), 0),
        compact_interval_s=compact_interval_s,
        compact_older_than_minutes=compact_older_than_minutes,
    )
    runtime = Runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime.events.loop = asyncio.get_running_loop()
        await anyio.to_thread.run_sync(runtime.replay)
        if runtime.log is not None:
            runtime.checkpoint_task = asyncio.create_task(
                runtime.checkpoint_loop(settings.flush_interval_s), name="runlake-checkpoint"
            )
        if settings.ttl_interval_s is not None:
            runtime.ttl_task = asyncio.create_task(runtime.ttl_loop(settings.ttl_interval_s), name="runlake-ttl")
        if settings.compact_interval_s is not None:
            runtime.compact_task = asyncio.create_task(
                runtime.compact_loop(settings.compact_interval_s), name="runlake-compact"
            )
        # the runs index and compacted files' footers, loaded while the first requests are already served
        runtime.warm_task = asyncio.create_task(asyncio.to_thread(runtime.warm), name="runlake-warm")
        _logger.info(
            "runlake serve: lake %s, %s, durability %s",
            root,
            "no auth" if no_auth else f"{len(keys)} API key(s)",
            settings.durability.value,
        )
        try:
            yield
        finally:
            for task in (runtime.ttl_task, runtime.compact_task, runtime.checkpoint_task, runtime.warm_task):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            runtime.events.loop = None
            await anyio.to_thread.run_sync(runtime.shutdown)

    app = FastAPI(
        title="runlake",
        version="0.1.0",
        summary="AI-agent execution history over a Parquet lake: OTLP ingest, history, logs, stats, live events",
        description=(
            "Authenticate with `Authorization: Bearer <key>` or `X-API-Key: <key>`. A user key reads only its "
            'own runs; an admin key reads its tenant. Errors are JSON `{"detail": ...}` (OTLP errors on '
            "`/v1/traces` are `google.rpc.Status` in the request's encoding, as OTLP/HTTP requires)."
        ),
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    _install_error_handlers(app)
    _add_api_routes(app)
    _add_ingest_route(app)
    _add_websocket_route(app)
    return app


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StorageUnavailable)
    async def storage_unavailable(request: Request, error: StorageUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(duckdb.IOException)
    @app.exception_handler(OSError)
    async def read_failure(request: Request, error: Exception) -> JSONResponse:
        _logger.error("runlake: reading the lake failed: %s", error)
        return JSONResponse(
            {"detail": f"the lake cannot be read right now: {type(error).__name__}"},
            503,
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        _logger.exception("runlake: unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error"}, 500)


def _add_api_routes(app: FastAPI) -> None:
    @app.get("/healthz", response_model=HealthResponse, tags=["meta"], summary="Liveness and readiness")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/api/v1/agents/history",
        response_model=list[HistoryItem],
        responses=_ERRORS,
        tags=["CodexOS"],
        summary="Execution history, newest first",
    )
    def agent_history(request: Request, principal: Caller, params: Annotated[HistoryParams, Query()]) -> Any:
        return _history(request, principal).get_history(params.agent_id, params.skip, params.limit)

    @app.get(
        "/api/v1/agents/logs",
        response_model=LogsResponse,
        responses={**_ERRORS, 404: {"model": ErrorBody, "description": "No such run (or not yours)"}},
        tags=["CodexOS"],
        summary="Node-level logs of one execution",
    )
    def agent_logs(request: Request, principal: Caller, params: Annotated[LogsParams, Query()]) -> Any:
        try:
            return _history(request, principal).get_logs(params.run_id)
        except LookupError:
            raise HTTPException(404, f"run {params.run_id!r} not found") from None

    @app.get(
        "/api/v1/agents/stats",
        response_model=StatsResponse,
        responses=_ERRORS,
        tags=["CodexOS"],
        summary="Execution statistics of a user (or, for an admin key without user_id, of the tenant)",
    )
    async def agent_stats(request: Request, principal: Caller, params: Annotated[StatsParams, Query()]) -> Any:
        user_id = params.user_id if params.user_id is not None else principal.read_user
        return await _service(request, principal).get_execution_statistics(user_id, params.days)

    @app.get(
        "/api/v1/agents/{agent_id}/performance",
        response_model=PerformanceResponse,
        responses=_ERRORS,
        tags=["CodexOS"],
        summary="Performance of one agent, with figures per node type",
    )
    async def agent_performance(
        request: Request,
        principal: Caller,
        agent_id: Annotated[str, PathParam(min_length=1, max_length=1024)],
        params: Annotated[PerformanceParams, Query()],
    ) -> Any:
        return await _service(request, principal).get_agent_performance_metrics(agent_id, params.days)

    @app.get(
        "/api/v1/runs",
        response_model=list[RunItem],
        responses=_ERRORS,
        tags=["PraisonAI"],
        summary="Runs of a session, newest first",
    )
    def runs(request: Request, principal: Caller, params: Annotated[RunsParams, Query()]) -> Any:
        return _history(request, principal).get_runs(params.session_id, params.limit)

    @app.get(
        "/api/v1/traces",
        response_model=list[TraceItem],
        responses=_ERRORS,
        tags=["PraisonAI"],
        summary="Traces with their spans, newest first",
    )
    def traces(request: Request, principal: Caller, params: Annotated[TracesParams, Query()]) -> Any:
        return _history(request, principal).get_traces(params.session_id, params.user_id, params.limit)

    @app.get(
        "/api/v1/status",
        responses={**_ERRORS, 403: {"model": ErrorBody, "description": "Not an admin key"}},
        tags=["meta"],
        summary="Ingest, WebSocket and TTL counters (admin keys)",
    )
    def status(request: Request, principal: Caller) -> dict[str, Any]:
        if not principal.is_admin:
            raise HTTPException(403, "an admin key is required")
        runtime = _runtime(request)
        sinks = [s.stats() for s in runtime.sinks() if principal.tenant_id in (None, s.tenant)]
        return {
            "uptime_s": round(time.time() - runtime.started_at, 1),
            "durability": runtime.settings.durability.value,
            "ingest": sinks,
            "ingest_log": None
            if runtime.log is None or principal.tenant_id is not None
            else {
                "folder": str(runtime.log.folder),
                "requests_logged": runtime.log.appended,
                "checkpoints": runtime.checkpoints,
                "replayed_at_start": runtime.replayed,
            },
            "websocket": {
                "connections": len(runtime.hub.subscribers),
                "events_published": runtime.hub.published,
                "events_dropped": runtime.hub.dropped,
            },
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


def _otlp_error(media: str, status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    media = media if media == otlp.PROTOBUF else otlp.JSON
    body = otlp.encode_status(media, _GRPC_CODES.get(status, 2), message)
    return Response(body, status, headers=headers, media_type=media)


def _add_ingest_route(app: FastAPI) -> None:
    @app.post(
        "/v1/traces",
        tags=["OTLP"],
        summary="OTLP/HTTP trace receiver (ExportTraceServiceRequest, protobuf or JSON, gzip or deflate)",
        response_class=Response,
        responses={
            200: {"description": "ExportTraceServiceResponse; partial_success counts rejected spans"},
            400: {"description": "Malformed protobuf / JSON / gzip (google.rpc.Status)"},
            401: {"description": "No key or an unknown key"},
            413: {"description": "Body (or decompressed body) over the limit"},
            415: {"description": "Content-Type other than application/x-protobuf or application/json"},
            429: {"description": "Too many requests in progress; retry after Retry-After"},
            503: {"description": "The lake cannot be written; retry after Retry-After"},
        },
    )
    async def ingest(request: Request) -> Response:
        runtime = _runtime(request)
        settings = runtime.settings
        media = otlp.media_type(request.headers.get("content-type")) or otlp.JSON
        key = key_from_headers(request.headers)
        principal = runtime.authenticate(key)
        if principal is None:
            message = f"missing API key: {_AUTH_HELP}" if key is None else "invalid API key"
            return _otlp_error(media, 401, message, {"WWW-Authenticate": "Bearer"})
        if otlp.media_type(request.headers.get("content-type")) is None:
            return _otlp_error(
                media,
                415,
                f"Content-Type must be {otlp.PROTOBUF} or {otlp.JSON}, got {request.headers.get('content-type')!r}",
            )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            return _otlp_error(media, 415, f"Content-Encoding {encoding!r} is not supported (use gzip or deflate)")
        if runtime.pending_ingest >= settings.max_pending_ingest:
            return _otlp_error(media, 429, "too many requests in progress", {"Retry-After": str(RETRY_AFTER_S)})
        runtime.pending_ingest += 1
        try:
            body = await read_body(request, settings.max_body_bytes)
            sink = runtime.sink(principal.tenant_id)
            decoded, rejected = await anyio.to_thread.run_sync(
                _decode_and_store,
                body,
                encoding,
                media,
                settings.max_body_bytes,
                sink,
                runtime.log,
                limiter=runtime.ingest_limiter,
            )
        except BodyError as error:
            return _otlp_error(media, error.status, error.message)
        except otlp.OTLPDecodeError as error:
            return _otlp_error(media, 400, str(error))
        except StorageUnavailable as error:
            _logger.error("runlake ingest: %s", error)
            return _otlp_error(media, 503, str(error), {"Retry-After": str(RETRY_AFTER_S)})
        except Exception:  # noqa: BLE001
            _logger.exception("runlake ingest failed")
            return _otlp_error(media, 500, "internal server error")
        finally:
            runtime.pending_ingest -= 1
        message = decoded.error_message
        if rejected:  # refused by the mapping (not by the decoder)
            decoded.rejected += rejected
            message = decoded.error_message or f"{rejected} span(s) could not be stored"
        return Response(otlp.encode_response(media, decoded.rejected, message), 200, media_type=media)


def _decode_and_store(
    body: bytes, encoding: str, media: str, limit: int, sink: TenantSink, log: IngestLog | None
) -> tuple[otlp.DecodedRequest, int]:
    if encoding in ("gzip", "x-gzip", "deflate"):
        body = decompress(body, encoding, limit)
    decoded = otlp.decode_request(body, media)
    rejected = sink.ingest(decoded.spans, log, (media, body)) if decoded.spans else 0
    return decoded, rejected


def _add_websocket_route(app: FastAPI) -> None:
    @app.websocket("/api/v1/agents/ws")
    async def live_events(websocket: WebSocket) -> None:
        runtime: Runtime = websocket.app.state.runtime
        offered = list(websocket.scope.get("subprotocols") or [])
        key = key_from_headers(websocket.headers) or key_from_subprotocols(offered)
        principal = runtime.authenticate(key)
        if principal is None:
            message = f"missing API key: {_AUTH_HELP} (or offer subprotocol {WS_SUBPROTOCOL_PREFIX}<key>)"
            await _deny(websocket, 401, message if key is None else "invalid API key")
            return
        try:
            params = WsParams(**dict(websocket.query_params))
        except ValidationError as error:
            await _deny(websocket, 422, error.errors(include_url=False, include_context=False))
            return
        await websocket.accept(subprotocol=WS_SUBPROTOCOL if WS_SUBPROTOCOL in offered else None)
        filters = {k: v for k, v in params.model_dump().items() if v is not None}
        sub = Subscriber(principal, filters, runtime.settings.ws_queue_size)
        runtime.hub.subscribers.add(sub)
        try:
            await websocket.send_json(
                {
                    "type": "subscribed",
                    "tenant_id": principal.tenant_id,
                    "user_id": principal.read_user,
                    "role": principal.role,
                    "filters": filters,
                    "queue_size": runtime.settings.ws_queue_size,
                }
            )
            await _pump(websocket, sub)
        except WebSocketDisconnect:
            pass
        finally:
            runtime.hub.subscribers.discard(sub)


async def _deny(websocket: WebSocket, status: int, detail: Any) -> None:
    response = JSONResponse(
        {"detail": detail}, status, headers={"WWW-Authenticate": "Bearer"} if status == 401 else None
    )
    try:
        await websocket.send_denial_response(response)
    except RuntimeError:  # the server cannot send an HTTP response here: close with "policy violation"
        await websocket.close(code=1008, reason=str(detail)[:120])


async def _pump(websocket: WebSocket, sub: Subscriber) -> None:
    """Send queued events until the client goes away (a receiver task notices the close)."""

    async def receive_until_closed() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return

    closed = asyncio.create_task(receive_until_closed())
    try:
        while not closed.done():
            ready = asyncio.create_task(sub.ready.wait())
            await asyncio.wait({ready, closed}, return_when=asyncio.FIRST_COMPLETED)
            ready.cancel()
            if closed.done():
                break
            sub.ready.clear()
            if sub.unreported_drops:
                dropped, sub.unreported_drops = sub.unreported_drops, 0
                await websocket.send_json({"type": "events_dropped", "count": dropped, "total": sub.dropped})
            while sub.queue:
                await websocket.send_json(sub.queue.popleft())
    finally:
        closed.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
            await closed


# ---- running it -------------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    state_url: str | os.PathLike[str] | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    keys_file: str | os.PathLike[str] | None = None,
    no_auth: bool = False,
    log_level: str = "info",
    access_log: bool = False,
    **options: Any,
) -> None:
    """Run the server with uvicorn until interrupted (buffers are flushed on shutdown)."""
    import uvicorn

    if no_auth and not is_loopback(host):
        raise KeysError(f"--no-auth is allowed only on a loopback address (127.0.0.1, ::1, localhost), not {host!r}")
    app = create_app(state_url, keys_file=keys_file, no_auth=no_auth, **options)
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=access_log,
        ws_max_size=64 * 1024,  # clients only send close frames
        timeout_graceful_shutdown=30,
        server_header=False,
    )


def serve_command(
    host: str = typer.Option(DEFAULT_HOST, "--host", help="Address to bind. Default loopback only; 0.0.0.0 for all."),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=0, max=65535, help="TCP port."),
    state_url: str | None = typer.Option(
        None,
        "--state-url",
        envvar="RUNLAKE_STATE_URL",
        help="The lake: a folder or file:// URL (default: $RUNLAKE_STATE_URL, then $PRAISONAI_STATE_URL).",
    ),
    keys_file: Path | None = typer.Option(
        None,
        "--keys-file",
        envvar="RUNLAKE_KEYS_FILE",
        help="API keys file, JSON or TOML: a list 'keys' of entries with key (or key_sha256), tenant_id, "
        "user_id and role (user or admin); see docs/server.md. Keys may also come from $RUNLAKE_API_KEYS.",
    ),
    no_auth: bool = typer.Option(
        False, "--no-auth", help="Run without API keys: everyone reads everything. Only on a loopback --host."
    ),
    max_body_mb: float = typer.Option(
        DEFAULT_MAX_BODY_BYTES / (1 << 20),
        "--max-body-mb",
        min=0.001,
        help="Largest OTLP request body in MiB, compressed and decompressed alike (413 past it).",
    ),
    ttl_interval_hours: float = typer.Option(
        DEFAULT_TTL_INTERVAL_S / 3600, "--ttl-interval-hours", min=0.0001, help="How often expired runs are deleted."
    ),
    no_ttl: bool = typer.Option(False, "--no-ttl", help="Do not run the TTL cleanup task."),
    min_session_rows: int = typer.Option(
        DEFAULT_MIN_SESSION_ROWS,
        "--min-session-rows",
        min=0,
        help="Sessions with fewer rows in a flush share one file per day until compaction (0: a file each).",
    ),
    compact_interval_minutes: float = typer.Option(
        DEFAULT_COMPACT_INTERVAL_S / 60, "--compact-interval-minutes", min=0.01, help="How often compaction runs."
    ),
    compact_older_than: float = typer.Option(
        DEFAULT_COMPACT_OLDER_THAN_MIN,
        "--compact-older-than",
        metavar="MINUTES",
        min=0,
        help="Compact partitions with no new part for this long.",
    ),
    no_compact: bool = typer.Option(False, "--no-compact", help="Do not run compaction in the background."),
    durability: Durability = typer.Option(
        Durability.log,
        "--durability",
        help="When an OTLP request is answered 200. log: once it is in the ingest log (replayed after a "
        "crash); part files are written every --flush-interval-s. sync: once its spans are in part files "
        "(group commit; many small files). buffered: once buffered in memory; a crash can lose the last "
        "--flush-interval-s seconds.",
    ),
    flush_interval_s: float = typer.Option(
        DEFAULT_FLUSH_INTERVAL_S,
        "--flush-interval-s",
        min=0.01,
        help="log and buffered modes: how often buffered rows become part files (and queries see them).",
    ),
    ingest_log_dir: Path | None = typer.Option(
        None, "--ingest-log-dir", help="log mode: where the ingest log lives (default <lake>/.ingest-log)."
    ),
    fsync: bool = typer.Option(False, "--fsync", help="log mode: fsync every logged request (power-loss safe)."),
    ws_queue_size: int = typer.Option(
        DEFAULT_WS_QUEUE, "--ws-queue-size", min=1, help="Events buffered per WebSocket client (oldest dropped)."
    ),
    max_pending_ingest: int = typer.Option(
        DEFAULT_MAX_PENDING_INGEST,
        "--max-pending-ingest",
        min=1,
        help="OTLP requests in progress at once; more get 429 with Retry-After.",
    ),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request."),
) -> None:
    """Serve the lake over HTTP: OTLP/HTTP ingest, history / logs / runs / traces / stats, live WebSocket events."""
    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s: %(message)s")
    try:
        serve(
            state_url,
            host,
            port,
            keys_file=keys_file,
            no_auth=no_auth,
            log_level=log_level,
            access_log=access_log,
            max_body_bytes=int(max_body_mb * (1 << 20)),
            ttl_interval_s=None if no_ttl else ttl_interval_hours * 3600,
            min_session_rows=min_session_rows,
            compact_interval_s=None if no_compact else compact_interval_minutes * 60,
            compact_older_than_minutes=compact_older_than,
            durability=durability,
            flush_interval_s=flush_interval_s,
            ingest_log_dir=ingest_log_dir,
            fsync=fsync,
            ws_queue_size=ws_queue_size,
            max_pending_ingest=max_pending_ingest,
        )
    except (KeysError, ValueError, IngestLogLocked) as error:
        typer.echo(f"runlake serve: {error}", err=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    typer.run(serve_command)
