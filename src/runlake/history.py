"""``HistoryDB``: the documented shapes (PraisonAI runs and traces, CodexOS history and logs) from the lake.

A session is read through its own folders; cross-session listings read the small ``runs/`` index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Callable
from typing import Any

import duckdb
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    LakeRoot,
    day_dirs,
    day_files,
    remove_dir,
    resolve_lake,
    session_files,
    table_files,
)
from opentelemetry.exporter.runlake.mapping import attributes_of_row

from .query import LATEST_ROW, LakeReader

_logger = logging.getLogger(__name__)

_RUN_STATUS = {"ERROR": "error"}  # PraisonAI: running | completed | error
_TRACE_STATUS = {"ERROR": "error"}  # PraisonAI: running | ok | error


def epoch_seconds(unix_nano: int | None) -> float | None:
    return None if unix_nano is None else unix_nano / 1e9


def iso_time(unix_nano: int | None) -> str | None:
    if unix_nano is None:
        return None
    moment = dt.datetime.fromtimestamp(unix_nano / 1e9, tz=dt.timezone.utc)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_duration(start_ns: int | None, end_ns: int | None) -> str | None:
    """CodexOS-style durations: ``"45s"``, ``"45.2s"``, ``"0.035s"``; ``None`` while running."""
    if start_ns is None or end_ns is None:
        return None
    seconds = max(end_ns - start_ns, 0) / 1e9
    text = f"{seconds:.3f}" if seconds < 1 else f"{seconds:.1f}"
    return text.rstrip("0").rstrip(".") + "s" if "." in text else text + "s"


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError(f"{what} is not a JSON object")
    return value


def _codexos_status(row: dict[str, Any]) -> str:
    if row["end_time_unix_nano"] is None:
        return "running"
    return "failed" if row["status_code"] == "ERROR" else "completed"


def _cents(value: float | None) -> int:
    return int(round(value or 0))


class HistoryDB:
    """Read agent history from a runlake lake.

    ``state_url``: a folder, a ``file://`` URL or ``s3://bucket/prefix``, else ``RUNLAKE_STATE_URL``, else
    ``PRAISONAI_STATE_URL``. ``root`` is a ``Path`` for a local lake and a ``layout.ObjectPath`` on S3.
    ``tenant_id`` / ``user_id`` scope every read (the server passes the caller's).
    """

    def __init__(
        self,
        state_url: str | os.PathLike[str] | None = None,
        *,
        tenant_id: str | None = None,
        user_id: str | None = None,
        _reader: LakeReader | None = None,
    ) -> None:
        self.root: LakeRoot | None = resolve_lake(state_url)
        self.tenant_id = tenant_id
        self.user_id = user_id
        self._reader = _reader or LakeReader()

    def scoped(self, tenant_id: str | None = None, user_id: str | None = None) -> HistoryDB:
        """The same lake, seen by one tenant (and one user); shares the DuckDB connection."""
        scoped = HistoryDB.__new__(HistoryDB)
        scoped.root, scoped._reader = self.root, self._reader
        scoped.tenant_id, scoped.user_id = tenant_id, user_id
        return scoped

    # ---- helpers ----
    def _unconfigured(self, method: str) -> bool:
        if self.root is None:
            _logger.warning("%s() called but no state_url configured; returning []", method)
            return True
        return False

    def _scope_sql(self, params: list[Any]) -> str:
        clauses = ""
        if self.tenant_id is not None:
            clauses += " AND tenant_id = ?"
            params.append(self.tenant_id)
        if self.user_id is not None:
            clauses += " AND user_id = ?"
            params.append(self.user_id)
        return clauses

    def _session_lister(self, session_id: str) -> Callable[[], list[LakeRoot]]:
        return lambda: session_files(self.root, session_id, self.tenant_id)

    def _runs_lister(self) -> Callable[[], list[LakeRoot]]:
        return lambda: table_files(self.root, RUNS, self.tenant_id)

    def _index_rows(self, where: str, params: list[Any], order_limit: str = "") -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {{files}} WHERE true {where} {LATEST_ROW} {order_limit}"
        return self._reader.rows(sql, self._runs_lister(), params)

    @staticmethod
    def _each(rows: list[dict[str, Any]], build: Callable[[dict[str, Any]], dict[str, Any]], what: str) -> list:
        out = []
        for row in rows:
            try:
                out.append(build(row))
            except (ValueError, TypeError, KeyError) as error:
                _logger.warning("skipping %s %s: cannot be read (%s)", what, row.get("span_id"), error)
        return out

    # ---- PraisonAI ----
    def get_runs(self, session_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs of one session, newest ``started_at`` first (PraisonAI's run dicts)."""
        if self._unconfigured("get_runs") or (limit is not None and limit <= 0):
            return []
        params: list[Any] = [session_id]
        sql = f"""SELECT * FROM {{files}} WHERE span_type = 'run' AND session_id = ? {self._scope_sql(params)}
                  {LATEST_ROW} ORDER BY start_time_unix_nano DESC"""
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        rows = self._reader.rows(sql, self._session_lister(session_id), params)
        return self._each(rows, self._run_dict, "run")

    @staticmethod
    def _run_dict(row: dict[str, Any]) -> dict[str, Any]:
        ended = row["end_time_unix_nano"]
        status = "running" if ended is None else _RUN_STATUS.get(row["status_code"], "completed")
        metadata = {"agent_name": row["agent_name"], **_json_object(row["metadata"], "metadata")}
        if status == "error":
            metrics: dict[str, Any] = {"error": row["status_message"] or row["error_type"] or "error"}
        elif ended is not None:
            metrics = {"duration_ms": (ended - row["start_time_unix_nano"]) / 1e6}
        else:
            metrics = {}
        return {
            "run_id": row["run_id"],
            "session_id": row["session_id"],
            "started_at": epoch_seconds(row["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "input_content": row["input"],
            "output_content": row["output"],
            "status": status,
            "metadata": metadata,
            "metrics": metrics,
        }

    def get_traces(
        self, session_id: str | None = None, user_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Traces (one per trace id, described by its root run) with their spans, newest first."""
        if self._unconfigured("get_traces") or (limit is not None and limit <= 0):
            return []
        if session_id is not None:
            runs = self._session_root_runs(session_id, user_id, limit)
        else:
            params: list[Any] = []
            where = self._scope_sql(params)
            if user_id is not None:
                where += " AND user_id = ?"
                params.append(user_id)
            order = "ORDER BY start_time_unix_nano DESC"
            if limit is not None:
                order += " LIMIT ?"
                params.append(int(limit))
            runs = self._index_rows(where + " AND parent_span_id IS NULL", params, order)
        spans_by_trace = self._spans_of(runs)
        return self._each(runs, lambda r: self._trace_dict(r, spans_by_trace.get(r["trace_id"], [])), "trace")

    def _session_root_runs(self, session_id: str, user_id: str | None, limit: int | None) -> list[dict]:
        params: list[Any] = [session_id]
        where = self._scope_sql(params)
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        sql = (
            f"WITH latest AS (SELECT * FROM {{files}} WHERE span_type = 'run' AND session_id = ? {where} "
            f"{LATEST_ROW}) SELECT * FROM latest QUALIFY row_number() OVER (PARTITION BY trace_id "
            "ORDER BY parent_span_id IS NULL DESC, start_time_unix_nano) = 1 "
            "ORDER BY start_time_unix_nano DESC"
        )
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return self._reader.rows(sql, self._session_lister(session_id), params)

    def _spans_of(self, runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """All spans of the runs' traces, read session by session."""
        traces_by_session: dict[str, set[str]] = {}
        for run in runs:
            traces_by_session.setdefault(run["session_id"] or "", set()).add(run["trace_id"])
        out: dict[str, list[dict[str, Any]]] = {}
        for session_id, trace_ids in traces_by_session.items():
            params: list[Any] = [sorted(trace_ids)]
            sql = (
                f"SELECT * FROM {{files}} WHERE list_contains(?, trace_id) {LATEST_ROW} "
                "ORDER BY start_time_unix_nano, parent_span_id IS NOT NULL, span_id"
            )
            for row in self._reader.rows(sql, self._session_lister(session_id), params):
                out.setdefault(row["trace_id"], []).append(row)
        return out

    def _trace_dict(self, run: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
        ended = run["end_time_unix_nano"]
        return {
            "trace_id": run["trace_id"],
            "session_id": run["session_id"],
            "run_id": run["run_id"],
            "agent_name": run["agent_name"],
            "user_id": run["user_id"],
            "started_at": epoch_seconds(run["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "status": "running" if ended is None else _TRACE_STATUS.get(run["status_code"], "ok"),
            "metadata": _json_object(run["metadata"], "metadata"),
            "spans": [self._span_dict(s) for s in spans],
        }

    @staticmethod
    def _span_dict(row: dict[str, Any]) -> dict[str, Any]:
        ended = row["end_time_unix_nano"]
        status = "running" if ended is None else ("error" if row["status_code"] == "ERROR" else "ok")
        return {
            "span_id": row["span_id"],
            "trace_id": row["trace_id"],
            "name": row["name"],
            "parent_span_id": row["parent_span_id"],
            "started_at": epoch_seconds(row["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "status": status,
            "attributes": attributes_of_row(row),
            "events": json.loads(row["events"]) if row["events"] else [],
        }

    # ---- CodexOS ----
    def get_history(self, agent_id: str | None = None, skip: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Execution history items, newest first (CodexOS ``GET /api/v1/agents/history``)."""
        if skip < 0 or limit < 0:
            raise ValueError("skip and limit must not be negative")
        if self._unconfigured("get_history") or limit == 0:
            return []
        params: list[Any] = []
        where = self._scope_sql(params)
        if agent_id is not None:
            where += " AND (agent_name = ? OR agent_id = ?)"
            params += [agent_id, agent_id]
        params += [int(limit), int(skip)]
        rows = self._index_rows(where, params, "ORDER BY start_time_unix_nano DESC, run_id LIMIT ? OFFSET ?")
        return self._each(rows, self._history_item, "run")

    @staticmethod
    def _history_item(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": row["run_id"],
            "status": _codexos_status(row),
            "started_at": iso_time(row["start_time_unix_nano"]),
            "duration": format_duration(row["start_time_unix_nano"], row["end_time_unix_nano"]),
            "input": row["input"],
            "output": row["output"],
            "node_count": row["node_count"] or 0,
            "tokens_used": (row["input_tokens"] or 0) + (row["output_tokens"] or 0),
            "cost_cents": _cents(row["cost_cents"]),
        }

    def find_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's index row (in this scope), or None."""
        if self.root is None:
            return None
        params: list[Any] = [run_id]
        rows = self._index_rows(" AND run_id = ?" + self._scope_sql(params), params, "LIMIT 1")
        return rows[0] if rows else None

    def get_logs(self, run_id: str) -> dict[str, Any]:
        """Node-level logs of one run (CodexOS ``GET /api/v1/agents/logs``). Unknown run: ``LookupError``."""
        if self.root is None:
            raise LookupError(f"run {run_id!r} not found: no state_url configured")
        run = self.find_run(run_id)
        if run is None:
            raise LookupError(f"run {run_id!r} not found")
        params: list[Any] = [run_id, run["trace_id"], run["parent_span_id"] is None]
        sql = (
            f"SELECT * FROM {{files}} WHERE span_type = 'node' AND (run_id = ? OR "
            f"(run_id IS NULL AND trace_id = ? AND ?)) {LATEST_ROW} ORDER BY start_time_unix_nano, span_id"
        )
        nodes = self._reader.rows(sql, self._session_lister(run["session_id"] or ""), params)
        node_dicts = self._each(nodes, self._node_dict, "node")
        failed = [n for n in nodes if n["status_code"] == "ERROR"]
        errors = [
            {"node_id": n["node_id"], "error_type": n["error_type"], "error_message": n["status_message"]}
            for n in failed
        ]
        if run["status_code"] == "ERROR" and run["status_message"] not in {e["error_message"] for e in errors}:
            errors.append({"node_id": None, "error_type": run["error_type"], "error_message": run["status_message"]})
        tokens = sum((n["input_tokens"] or 0) + (n["output_tokens"] or 0) for n in nodes)
        cost = sum(n["cost_cents"] or 0 for n in nodes)
        return {
            "run_id": run_id,
            "nodes": node_dicts,
            "errors": errors,
            "final_output": run["output"],
            "summary": {
                "total_nodes": len(nodes),
                "successful_nodes": sum(1 for n in nodes if n["status_code"] != "ERROR"),
                "failed_nodes": len(failed),
                "total_duration": format_duration(run["start_time_unix_nano"], run["end_time_unix_nano"]),
                "tokens_used": tokens or (run["input_tokens"] or 0) + (run["output_tokens"] or 0),
                "cost_cents": _cents(cost or run["cost_cents"]),
            },
        }

    @staticmethod
    def _node_dict(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["node_id"],
            "type": row["node_type"],
            "input": row["input"],
            "output": row["output"],
            "time": format_duration(row["start_time_unix_nano"], row["end_time_unix_nano"]),
            "status": _codexos_status(row),
            "error_message": row["status_message"] if row["status_code"] == "ERROR" else None,
            "metadata": _json_object(row["metadata"], "metadata"),
        }

    # ---- SQL ----
    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation for ``query`` over views ``spans`` and ``runs`` (docs/schema.md)."""
        con = self._reader.views(self.root, self.tenant_id)
        return con.sql(query)

    # ---- TTL ----
    def cleanup_expired(
        self, now: dt.datetime | None = None, max_age_days: int | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete every day partition whose TTL has passed, by removing folders (every object under the day's
        prefix on S3); true counts of what went.

        A run started on UTC day D with ``ttl_days`` N is kept through day D+N and removed from day D+N+1.
        ``max_age_days``, when given, also removes anything older than that, whatever its own TTL.
        ``dry_run`` counts what would go and deletes nothing.
        """
        if self.root is None:
            _logger.warning("cleanup_expired() called but no state_url configured; nothing to do")
            return {"executions_deleted": 0, "nodes_deleted": 0}
        today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).date()
        expired: dict[str, list[LakeRoot]] = {RUNS: [], SPANS: []}
        for table in (RUNS, SPANS):
            for _, ttl, day, folder in day_dirs(self.root, table, self.tenant_id):
                try:
                    day_date = dt.date.fromisoformat(day)
                except ValueError:
                    continue
                keep = ttl if max_age_days is None else min(ttl, max_age_days)
                if day_date + dt.timedelta(days=keep) < today:
                    expired[table].append(folder)
        runs = self._count(RUNS, expired[RUNS], "count(DISTINCT span_id)")
        nodes = self._count(SPANS, expired[SPANS], "count(*) FILTER (WHERE span_type = 'node' AND record = 'end')")
        for folder in [] if dry_run else expired[RUNS] + expired[SPANS]:
            remove_dir(folder)
        return {"executions_deleted": runs, "nodes_deleted": nodes}

    def _count(self, table: str, folders: list[LakeRoot], aggregate: str) -> int:
        files: list[LakeRoot] = []
        for folder in folders:
            files.extend(day_files(folder, table))
        if not files:
            return 0
        rows = self._reader.rows(f"SELECT {aggregate} AS n FROM {{files}}", lambda: files)
        return int(rows[0]["n"]) if rows else 0


__all__ = ["HistoryDB"]
