"""runlake: keep, query and cheaply expire the execution history of AI agents.

Instrument with ``configure`` + ``run`` / ``node`` / ``turn`` (or any OTel GenAI / OpenInference
instrumentation); read back with ``HistoryDB``.
"""

from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor

from .history import HistoryDB
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
from .service import ExecutionHistoryService
from .sessions import SessionStore

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
