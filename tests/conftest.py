"""Shared fixtures: a lake folder per test and runlake configured to write into it."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from opentelemetry.exporter.runlake.layout import is_data_file

import runlake

HOSTILE_IDS = [
    "../x",
    "a/b",
    "=",
    "%",
    "a=b/c%2F..",
    "x" * 300,
    "über 🙂 会话",
    "0123456789",
    ".hidden",
    "_underscore",
    "~",
    "",
    "line\nbreak\ttab\x00nul",
]


# ---- the documented shapes (design.md §2): the exact keys of every dict runlake returns ------------------------
RUN_KEYS = {
    "run_id",
    "session_id",
    "started_at",
    "ended_at",
    "input_content",
    "output_content",
    "status",
    "metadata",
    "metrics",
}
TRACE_KEYS = {
    "trace_id",
    "session_id",
    "run_id",
    "agent_name",
    "user_id",
    "started_at",
    "ended_at",
    "status",
    "metadata",
    "spans",
}
SPAN_KEYS = {
    "span_id",
    "trace_id",
    "name",
    "parent_span_id",
    "started_at",
    "ended_at",
    "status",
    "attributes",
    "events",
}
HISTORY_KEYS = {
    "run_id",
    "status",
    "started_at",
    "duration",
    "input",
    "output",
    "node_count",
    "tokens_used",
    "cost_cents",
}
LOGS_KEYS = {"run_id", "nodes", "errors", "final_output", "summary"}
NODE_KEYS = {"id", "type", "input", "output", "time", "status", "error_message", "metadata"}
SUMMARY_KEYS = {"total_nodes", "successful_nodes", "failed_nodes", "total_duration", "tokens_used", "cost_cents"}


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return tmp_path / "lake"


@pytest.fixture
def configured(lake: Path) -> Iterator[Path]:
    """runlake configured on a fresh lake; flushed and closed after the test."""
    runlake.configure(lake, service_name="tests")
    try:
        yield lake
    finally:
        runlake.shutdown()


def lake_files(root: Path, table: str | None = None) -> list[Path]:
    base = root / table if table else root
    return sorted(p for p in base.rglob("*") if p.is_file())


def read_table(root: Path, table: str) -> pa.Table:
    files = [p for p in lake_files(root, table) if is_data_file(p.name)]
    if not files:
        return pa.table({})
    return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")


def python_env(**extra: str) -> dict[str, str]:
    """Environment for a child Python that imports this checkout's packages."""
    env = dict(os.environ)
    env.update(extra)
    return env


PYTHON = sys.executable
