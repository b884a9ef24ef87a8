"""``runlake serve``: an HTTP server (FastAPI on uvicorn) over the lake.

- ``POST /v1/traces``: OTLP/HTTP receiver (protobuf or JSON, gzip/deflate), written through the same
  mapping and writer as the in-process exporter (one ``RunlakeSpanExporter`` per tenant, ``force_tenant``).
- ``GET /api/v1/agents/history``, ``/api/v1/agents/logs``: CodexOS shapes; ``GET /api/v1/runs``,
  ``/api/v1/traces``: PraisonAI shapes; ``GET /api/v1/agents/stats``, ``/api/v1/agents/{id}/performance``:
  ``ExecutionHistoryService``.
- ``WS /api/v1/agents/ws``: live execution events of spans arriving through ingest.
- A background task deletes expired partitions (TTL) every ``ttl_interval_s``.

See docs/server.md for the endpoints, keys, limits and the durability choice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import struct
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
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
from opentelemetry.exporter.runlake.mapping import COL, NODE, RUN
from opentelemetry.sdk.trace.export import SpanExportResult
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocketDisconnect

from . import otlp
from .auth import (
    WS_SUBPROTOCOL_PREFIX,
    KeysError,
    KeyStore,
    Principal,
    key_from_headers,
    key_from_subprotocols,
    load_keys,
)
from .history import HistoryDB, format_duration, iso_time
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


# ---- errors ------------------------------------------------------------------------------------------------------
class StorageUnavailable(RuntimeError):
    """The lake cannot be written right now (disk full, read-only, ...): answer 503 + Retry-After."""


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


# ---- live events -----------------------------------------------------------------------------------------------
def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= _PREVIEW:
        return text
    return text[:_PREVIEW] + "…"


class EventBuilder:
    """Turns stored span rows of one tenant into CodexOS execution events (called under the export lock)."""

    def __init__(self, max_tracked: int = 10_000) -> None:
        # runs announced as started -> their agent (when known); bounded, oldest forgotten
        self._started: OrderedDict[str, str | None] = OrderedDict()
        self._max = max_tracked

    def _announce(self, run_id: str, agent: str | None) -> bool:
        if run_id in self._started:
            self._started.move_to_end(run_id)
            if agent is not None:
                self._started[run_id] = agent
            return False
        self._started[run_id] = agent
        if len(self._started) > self._max:
            self._started.popitem(last=False)
        return True

    def events(self, rows: list[tuple]) -> list[dict[str, Any]]:
        """Events in time order. A node's agent is its own, else its run's (from this batch or an earlier one)."""
        out: list[dict[str, Any]] = []
        c = COL
        agents = {
            row[c["run_id"]]: row[c["agent_name"]] or row[c["agent_id"]]
            for row in rows
            if row[c["span_type"]] == RUN and row[c["run_id"]]
        }
        for row in sorted(rows, key=lambda r: r[c["end_time_unix_nano"]] or r[c["start_time_unix_nano"]]):
            span_type = row[c["span_type"]]
            if span_type not in (RUN, NODE):
                continue
            run_id = row[c["run_id"]] or ("trace:" + row[c["trace_id"]])
            agent = row[c["agent_name"]] or row[c["agent_id"]] or agents.get(run_id) or self._started.get(run_id)
            base = {
                "tenant_id": row[c["tenant_id"]],
                "run_id": run_id,
                "trace_id": row[c["trace_id"]],
                "session_id": row[c["session_id"]],
                "user_id": row[c["user_id"]],
                "agent_id": agent,
            }
            start, end = row[c["start_time_unix_nano"]], row[c["end_time_unix_nano"]]
            failed = row[c["status_code"]] == "ERROR"
            tokens = (row[c["input_tokens"]] or 0) + (row[c["output_tokens"]] or 0)
            if self._announce(run_id, agent):
                started = {"type": "execution_started", **base, "timestamp": iso_time(start)}
                if span_type == RUN:
                    started["data"] = {"started_at": iso_time(start), "input": _preview(row[c["input"]])}
                else:
                    started["data"] = {"started_at": None, "input": None}  # first seen through a node
                out.append(started)
            if span_type == NODE:
                data = {
                    "id": row[c["node_id"]],
                    "type": row[c["node_type"]],
                    "status": "failed" if failed else "completed",
                    "time": format_duration(start, end),
                    "error_message": row[c["status_message"]] if failed else None,
                    "tokens_used": tokens,
                    "cost_cents": row[c["cost_cents"]] or 0,
                    "output": _preview(row[c["output"]]),
                }
                out.append({"type": "node_executed", **base, "timestamp": iso_time(end), "data": data})
            else:
                self._started.pop(run_id, None)
                data = {
                    "status": "failed" if failed else "completed",
                    "started_at": iso_time(start),
                    "completed_at": iso_time(end),
                    "duration": format_duration(start, end),
                    "output": _preview(row[c["output"]]),
                    "error_message": row[c["status_message"]] if failed else None,
                    "tokens_used": tokens,
                    "cost_cents": row[c["cost_cents"]] or 0,
                }
                kind = "execution_failed" if failed else "execution_completed"
                out.append({"type": kind, **base, "timestamp": iso_time(end), "data": data})
        return out


class Subscriber:
    """One WebSocket connection: a bounded queue (oldest dropped and counted) and what it may see."""

    def __init__(self, principal: Principal, filters: dict[str, str], maxlen: int) -> None:
        self.principal = principal
        self.filters = filters
        self.queue: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.dropped = 0
        self.unreported_drops = 0
        self.ready = asyncio.Event()

    def visible(self, event: dict[str, Any]) -> bool:
        p = self.principal
        if p.tenant_id is not None and event["tenant_id"] != p.tenant_id:
            return False
        if p.read_user is not None and event["user_id"] != p.read_user:
            return False
        return all(event.get(k) == v for k, v in self.filters.items())

    def offer(self, event: dict[str, Any]) -> None:
        if len(self.queue) == self.queue.maxlen:
            self.dropped += 1
            self.unreported_drops += 1
        self.queue.append(event)
        self.ready.set()


class EventHub:
    """Fans events out to the WebSocket subscribers that may see them (runs on the event loop)."""

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.published = 0

    def publish(self, events: list[dict[str, Any]]) -> None:
        self.published += len(events)
        for sub in list(self.subscribers):
            for event in events:
                if sub.visible(event):
                    sub.offer(event)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.subscribers)


# ---- the ingest log: what was answered 200 survives a crash ------------------------------------------------------
_RECORD = struct.Struct("<4sBBHII")  # magic, media (0 protobuf, 1 JSON), has tenant, tenant length, body length, crc32
_MAGIC = b"RLI1"
_MEDIA_CODES = {otlp.PROTOBUF: 0, otlp.JSON: 1}
_MEDIA_NAMES = {v: k for k, v in _MEDIA_CODES.items()}


class IngestLogLocked(RuntimeError):
    """Another ``runlake serve`` uses this ingest log folder."""


class _Segment:
    def __init__(self, path: Path, handle: Any = None) -> None:
        self.path = path
        self.handle = handle  # None once closed (or for segments found at start-up)
        self.pending = 0  # requests appended here whose rows are not yet in the writers' buffers
        self.records = 0


class IngestLog:
    """Append-only log of accepted OTLP request bodies (``durability=log``).

    A request is appended (one ``write``; ``fsync`` too if asked) before its rows go into the writers' memory
    buffers and before it is answered 200. Every flush interval a checkpoint starts a new segment, waits until
    the requests of the old ones are in the buffers, flushes every writer and then deletes the old segments.
    At start-up, segments left by a crash are replayed through the same decoding and exporter, so a crash loses
    nothing that was acknowledged (spans written just before the crash may be stored twice; every reader keeps
    one row per span id). A record torn by the crash was never acknowledged and is skipped.
    """

    def __init__(self, folder: Path, fsync: bool = False) -> None:
        self.folder = folder
        self.fsync = fsync
        self._cond = threading.Condition()
        self._current: _Segment | None = None
        self._closed: list[_Segment] = []
        self._lock_file: Any = None
        self._seq = 0
        self.appended = 0

    def open(self) -> list[Path]:
        """Lock the folder for this process; the segments a previous run left behind, oldest first."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.folder / "LOCK", "a+b")  # noqa: SIM115 - held for the life of the server
        try:
            fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise IngestLogLocked(f"ingest log {self.folder} is in use by another runlake serve") from None
        found = sorted(self.folder.glob("segment-*.log"))
        if found:
            self._seq = max(int(p.stem.split("-")[1]) for p in found)
        return found

    def adopt(self, paths: list[Path]) -> None:
        """Segments replayed at start-up: deleted by the next successful checkpoint."""
        with self._cond:
            self._closed.extend(_Segment(p) for p in paths)

    def append(self, tenant: str | None, media: str, body: bytes) -> _Segment:
        """Write one request; raises ``StorageUnavailable`` if it cannot be written (nothing accepted)."""
        tenant_bytes = (tenant or "").encode("utf-8")
        header = _RECORD.pack(
            _MAGIC,
            _MEDIA_CODES[media],
            tenant is not None,
            len(tenant_bytes),
            len(body),
            zlib.crc32(tenant_bytes + body),
        )
        with self._cond:
            segment = self._current
            try:
                if segment is None:
                    self._seq += 1
                    path = self.folder / f"segment-{self._seq:012d}.log"
                    segment = self._current = _Segment(path, open(path, "ab", buffering=0))  # noqa: SIM115
                segment.handle.write(header + tenant_bytes + body)
            except OSError as error:
                if segment is not None:  # a torn record may end this segment: continue in a new one
                    self._retire_current()
                raise StorageUnavailable(f"the ingest log cannot be written: {error}") from None
            segment.pending += 1
            segment.records += 1
            self.appended += 1
        if self.fsync:
            try:
                os.fsync(segment.handle.fileno())
            except OSError as error:
                self.done(segment)
                raise StorageUnavailable(f"the ingest log cannot be synced: {error}") from None
        return segment

    def done(self, segment: _Segment) -> None:
        """The rows of one appended request are in the writers' buffers (or its export failed)."""
        with self._cond:
            segment.pending -= 1
            self._cond.notify_all()

    def _retire_current(self) -> None:
        segment, self._current = self._current, None
        if segment is not None:
            self._closed.append(segment)

    def rotate(self, timeout_s: float = 60.0) -> list[_Segment]:
        """Close the current segment; return every closed one once its requests are all in the buffers."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._retire_current()
            segments, self._closed = self._closed, []
            while any(s.pending for s in segments) and time.monotonic() < deadline:
                self._cond.wait(max(deadline - time.monotonic(), 0.01))
            for segment in segments:
                if segment.handle is not None and not segment.pending:
                    segment.handle.close()
                    segment.handle = None
        return segments

    def retire(self, segments: list[_Segment], flushed: bool) -> None:
        """Delete segments whose rows are now in part files; keep them for the next checkpoint otherwise."""
        keep = []
        for segment in segments:
            if flushed and not segment.pending:
                with contextlib.suppress(FileNotFoundError):
                    segment.path.unlink()
            else:
                keep.append(segment)
        if keep:
            with self._cond:
                self._closed[:0] = keep

    def close(self) -> None:
        with self._cond:
            for segment in [self._current, *self._closed]:
                if segment is not None and segment.handle is not None:
                    segment.handle.close()
                    segment.handle = None
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    @staticmethod
    def read(path: Path) -> Iterator[tuple[str | None, str, bytes]]:
        """The intact records of one segment: (tenant, media type, body); stops at a torn or corrupt record."""
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            if len(data) - offset < _RECORD.size:
                _logger.warning("runlake ingest log %s: torn record at byte %d skipped", path.name, offset)
                return
            magic, media, has_tenant, tenant_len, body_len, crc = _RECORD.unpack_from(data, offset)
            start = offset + _RECORD.size
            end = start + tenant_len + body_len
            if magic != _MAGIC or media not in _MEDIA_NAMES or end > len(data):
                _logger.warning("runlake ingest log %s: torn or corrupt record at byte %d skipped", path.name, offset)
                return
            payload = data[start:end]
            if zlib.crc32(payload) != crc:
                _logger.warning("runlake ingest log %s: record at byte %d fails its checksum", path.name, offset)
                return
            tenant = payload[:tenant_len].decode("utf-8") if has_tenant else None
            yield tenant, _MEDIA_NAMES[media], payload[tenant_len:]
            offset = end


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
        options: dict[str, Any] = {"force_tenant": tenant, "flush_interval_s": settings.flush_interval_s}
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
        if log is None and writer.failing is not None and not self._commit(self._added, timeout_s):
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
        self.checkpoint_task: asyncio.Task | None = None
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
        while True:
            started = time.time()
            try:
                result = await self.service.cleanup_expired_executions(days=None)
                self.ttl_last = {"at": iso_time(int(started * 1e9)), "ok": True, **result}
                if result["executions_deleted"] or result["nodes_deleted"]:
                    _logger.info("runlake TTL: deleted %s", result)
            except Exception as error:  # noqa: BLE001 - the loop must survive one bad run
                self.ttl_last = {"at": iso_time(int(started * 1e9)), "ok": False, "error": str(error)}
                _logger.exception("runlake TTL cleanup failed")
            self.ttl_runs += 1
            await asyncio.sleep(interval_s)

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


# ---- response models (OpenAPI) ----------------------------------------------------------------------------------
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
) -> FastAPI:
    """The FastAPI app over the lake at ``state_url`` (else ``RUNLAKE_STATE_URL``).

    ``keys``: a ``KeyStore``; else keys are loaded from ``keys_file`` and ``RUNLAKE_API_KEYS``. Without any
    key, ``no_auth=True`` is required (``serve`` allows it only on a loopback address). ``ttl_interval_s``
    None switches the TTL task off. ``durability``: ``log`` (default), ``sync`` or ``buffered``; see
    ``TenantSink`` and docs/server.md.
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
        _logger.info(
            "runlake serve: lake %s, %s, durability %s",
            root,
            "no auth" if no_auth else f"{len(keys)} API key(s)",
            settings.durability.value,
        )
        try:
            yield
        finally:
            for task in (runtime.ttl_task, runtime.checkpoint_task):
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
