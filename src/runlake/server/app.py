"""``create_app``: the FastAPI app over one lake (settings checked, runtime made, routers and error handlers
added, background tasks started and stopped with the app's lifespan)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import duckdb
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from opentelemetry.exporter.runlake.layout import resolve_state_url
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth import KeysError, KeyStore, load_keys
from ..ingest_log import StorageUnavailable
from . import api, ingest, live
from .runtime import Runtime
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_COMPACT_INTERVAL_S,
    DEFAULT_COMPACT_OLDER_THAN_MIN,
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PENDING_INGEST,
    DEFAULT_MAX_PENDING_INGEST_PER_TENANT,
    DEFAULT_MIN_SESSION_ROWS,
    DEFAULT_TTL_INTERVAL_S,
    DEFAULT_WS_QUEUE,
    RETRY_AFTER_S,
    Durability,
    ServerSettings,
)

_logger = logging.getLogger("runlake.server")


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
    max_pending_ingest_per_tenant: int | None = DEFAULT_MAX_PENDING_INGEST_PER_TENANT,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    min_session_rows: int = DEFAULT_MIN_SESSION_ROWS,
    compact_interval_s: float | None = DEFAULT_COMPACT_INTERVAL_S,
    compact_older_than_minutes: float = DEFAULT_COMPACT_OLDER_THAN_MIN,
) -> FastAPI:
    """The FastAPI app over the lake at ``state_url`` (else ``RUNLAKE_STATE_URL``).

    ``keys``: a ``KeyStore``; else keys are loaded from ``keys_file`` and ``RUNLAKE_API_KEYS``. Without any
    key, ``no_auth=True`` is required (``serve`` allows it only on a loopback address). ``ttl_interval_s``
    None switches the TTL task off. ``durability``: ``log`` (default), ``sync`` or ``buffered``; see
    ``TenantSink`` and docs/server.md. ``min_session_rows``: ingest writes sessions with fewer rows per flush
    into one shared file per day (``session=~mixed``); ``compact_interval_s`` (None: off) runs compaction in the
    background: days quiet for ``compact_older_than_minutes`` are merged (a closed day into one file).
    ``max_pending_ingest``: OTLP requests in progress at once, of which one tenant's at most
    ``max_pending_ingest_per_tenant`` (None: half, rounded up); ``body_timeout_s``: deadline for a whole body.
    """
    root = resolve_state_url(state_url)
    if root is None:
        raise ValueError("no state URL: give one (--state-url) or set RUNLAKE_STATE_URL or PRAISONAI_STATE_URL")
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
    if ws_queue_size < 1 or max_pending_ingest < 1 or flush_interval_s <= 0 or body_timeout_s <= 0:
        raise ValueError("ws_queue_size, max_pending_ingest, flush_interval_s and body_timeout_s must be positive")
    if max_pending_ingest_per_tenant is not None and max_pending_ingest_per_tenant < 1:
        raise ValueError("max_pending_ingest_per_tenant must be positive (or None: half of max_pending_ingest)")
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
        max_pending_ingest_per_tenant=max_pending_ingest_per_tenant,
        body_timeout_s=body_timeout_s,
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
        denials = live.DeniedHandshakeFilter()  # installed once uvicorn has configured its loggers
        logging.getLogger("uvicorn.error").addFilter(denials)
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
            logging.getLogger("uvicorn.error").removeFilter(denials)
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
    app.include_router(api.router)
    app.include_router(ingest.router)
    app.include_router(live.router)
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

    app.add_middleware(UnexpectedErrors)


class UnexpectedErrors:
    """Answer anything unexpected with the JSON 500 ``{"detail": "internal server error"}``, logged once with its
    traceback, and let the connection live on.

    A middleware, not ``exception_handler(Exception)``: Starlette runs such a handler in its outermost middleware,
    which re-raises after answering, so uvicorn logged the traceback a second time and closed the client's
    keep-alive connection. Here nothing propagates. If the response had already begun, no 500 can be sent: the
    error is logged and the unfinished response is left to uvicorn, which closes that connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception:  # noqa: BLE001 - the documented 500, for anything the handlers above did not answer
            _logger.exception("runlake: unexpected error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                await JSONResponse({"detail": "internal server error"}, 500)(scope, receive, send)
