"""Running the server: ``serve`` (uvicorn) and the ``runlake serve`` command line."""

from __future__ import annotations

import ipaddress
import logging
import os
from pathlib import Path
from typing import Any

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL, STATE_URL_ENVS

from ..auth import KeysError
from ..ingest_log import IngestLogLocked
from .settings import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_COMPACT_INTERVAL_S,
    DEFAULT_COMPACT_OLDER_THAN_MIN,
    DEFAULT_FLUSH_INTERVAL_S,
    DEFAULT_HOST,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_PENDING_INGEST,
    DEFAULT_MIN_SESSION_ROWS,
    DEFAULT_PORT,
    DEFAULT_TTL_INTERVAL_S,
    DEFAULT_WS_QUEUE,
    Durability,
)


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

    from .app import create_app  # FastAPI is loaded when a server starts, not for `runlake --help`

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
    state_url: str = typer.Option(
        DEFAULT_STATE_URL,
        "--state-url",
        envvar=list(STATE_URL_ENVS),
        show_envvar=True,
        metavar="PATH|file://URL",
        help="The lake. Precedence: --state-url if given, else $RUNLAKE_STATE_URL, else $PRAISONAI_STATE_URL, "
        "else ./runlake-data.",
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
        rich_help_panel="Limits",
        min=0.001,
        help="Largest OTLP request body in MiB, compressed and decompressed alike (413 past it).",
    ),
    ttl_interval_hours: float = typer.Option(
        DEFAULT_TTL_INTERVAL_S / 3600,
        "--ttl-interval-hours",
        rich_help_panel="Background tasks",
        min=0.0001,
        help="How often expired runs are deleted.",
    ),
    no_ttl: bool = typer.Option(
        False, "--no-ttl", rich_help_panel="Background tasks", help="Do not run the TTL cleanup task."
    ),
    min_session_rows: int = typer.Option(
        DEFAULT_MIN_SESSION_ROWS,
        "--min-session-rows",
        rich_help_panel="Ingest and storage",
        min=0,
        help="Sessions with fewer rows in a flush share one file per day until compaction (0: a file each).",
    ),
    compact_interval_minutes: float = typer.Option(
        DEFAULT_COMPACT_INTERVAL_S / 60,
        "--compact-interval-minutes",
        rich_help_panel="Background tasks",
        min=0.01,
        help="How often compaction runs.",
    ),
    compact_older_than: float = typer.Option(
        DEFAULT_COMPACT_OLDER_THAN_MIN,
        "--compact-older-than",
        rich_help_panel="Background tasks",
        metavar="MINUTES",
        min=0,
        help="Compact partitions with no new part for this long.",
    ),
    no_compact: bool = typer.Option(
        False, "--no-compact", rich_help_panel="Background tasks", help="Do not run compaction in the background."
    ),
    durability: Durability = typer.Option(
        Durability.log,
        "--durability",
        rich_help_panel="Ingest and storage",
        help="When an OTLP request is answered 200. log: once it is in the ingest log (replayed after a "
        "crash); part files are written every --flush-interval-s. sync: once its spans are in part files "
        "(group commit; many small files). buffered: once buffered in memory; a crash can lose the last "
        "--flush-interval-s seconds.",
    ),
    flush_interval_s: float = typer.Option(
        DEFAULT_FLUSH_INTERVAL_S,
        "--flush-interval-s",
        rich_help_panel="Ingest and storage",
        min=0.01,
        help="log and buffered modes: how often buffered rows become part files (and queries see them).",
    ),
    ingest_log_dir: Path | None = typer.Option(
        None,
        "--ingest-log-dir",
        rich_help_panel="Ingest and storage",
        help="log mode: where the ingest log lives (default: the lake's .ingest-log folder).",
    ),
    fsync: bool = typer.Option(
        False,
        "--fsync",
        rich_help_panel="Ingest and storage",
        help="log mode: fsync every logged request (power-loss safe).",
    ),
    ws_queue_size: int = typer.Option(
        DEFAULT_WS_QUEUE,
        "--ws-queue-size",
        rich_help_panel="Limits",
        min=1,
        help="Events buffered per WebSocket client (oldest dropped).",
    ),
    max_pending_ingest: int = typer.Option(
        DEFAULT_MAX_PENDING_INGEST,
        "--max-pending-ingest",
        rich_help_panel="Limits",
        min=1,
        help="OTLP requests in progress at once; more get 429 with Retry-After.",
    ),
    max_pending_ingest_per_tenant: int | None = typer.Option(
        None,
        "--max-pending-ingest-per-tenant",
        rich_help_panel="Limits",
        min=1,
        show_default="half of --max-pending-ingest, rounded up",
        help="OTLP requests of one tenant (all its keys) in progress at once; more get 429 with Retry-After, so "
        "one tenant's slow or stalled clients cannot take the other tenants' slots. Not applied with --no-auth.",
    ),
    body_timeout_s: float = typer.Option(
        DEFAULT_BODY_TIMEOUT_S,
        "--body-timeout-s",
        rich_help_panel="Limits",
        min=0.01,
        help="Deadline for a whole OTLP body, counted from the end of the request's headers: a body not received "
        "by then gets 408 and frees its slot, so slow or stalled clients cannot hold ingest slots (raise it for "
        "big bodies over slow links).",
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
            max_pending_ingest_per_tenant=max_pending_ingest_per_tenant,
            body_timeout_s=body_timeout_s,
        )
    except (KeysError, ValueError, IngestLogLocked) as error:
        typer.echo(f"runlake serve: {error}", err=True)
        raise typer.Exit(2) from None
    except OSError as error:  # a lake or ingest log folder that cannot be made or written, a port in use
        typer.echo(f"runlake serve: {error}", err=True)
        raise typer.Exit(1) from None
