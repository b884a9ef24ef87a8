"""runlake: keep, query and cheaply expire the execution history of AI agents.

Instrument with ``configure`` + ``run`` / ``node`` / ``turn`` (or any OTel GenAI / OpenInference
instrumentation); read back with ``HistoryDB``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor

from .instrument import (
    agent,
    configure,
    current_exporter,
    force_flush,
    forwarding_stats,
    node,
    run,
    shutdown,
    step,
    turn,
)

if TYPE_CHECKING:
    from .history import HistoryDB
    from .service import ExecutionHistoryService
    from .sessions import SessionStore

# the read side is imported on first use: an instrumented application imports runlake for ``run`` / ``node`` and
# need not load DuckDB (~0.1 s and ~40 MB) to write spans
_READ_SIDE = {"HistoryDB": "history", "ExecutionHistoryService": "service", "SessionStore": "sessions"}


def __getattr__(name: str) -> Any:
    module = _READ_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module 'runlake' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_READ_SIDE])


__all__ = [
    "ExecutionHistoryService",
    "HistoryDB",
    "RunStartProcessor",
    "RunlakeSpanExporter",
    "SessionStore",
    "agent",
    "configure",
    "current_exporter",
    "force_flush",
    "forwarding_stats",
    "node",
    "run",
    "shutdown",
    "step",
    "turn",
]
__version__ = "0.1.0"
