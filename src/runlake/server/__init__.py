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

from typing import Any

from .command import is_loopback, serve, serve_command
from .settings import (
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
    ServerSettings,
)

__all__ = [
    "DEFAULT_COMPACT_INTERVAL_S",
    "DEFAULT_COMPACT_OLDER_THAN_MIN",
    "DEFAULT_FLUSH_INTERVAL_S",
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MAX_PENDING_INGEST",
    "DEFAULT_MIN_SESSION_ROWS",
    "DEFAULT_PORT",
    "DEFAULT_TTL_INTERVAL_S",
    "DEFAULT_WS_QUEUE",
    "Durability",
    "ServerSettings",
    "create_app",
    "is_loopback",
    "serve",
    "serve_command",
]


def __getattr__(name: str) -> Any:
    """``create_app`` (and the ``app`` submodule) on first use: importing the server package for the ``serve``
    command's options (every ``runlake`` command line does) then does not load FastAPI."""
    if name in ("create_app", "app"):
        from importlib import import_module

        module = import_module(f"{__name__}.app")
        return module if name == "app" else module.create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "app", "create_app"])
