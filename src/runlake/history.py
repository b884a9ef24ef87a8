"""``HistoryDB``: the documented shapes (PraisonAI runs and traces, CodexOS history and logs) from the lake.

A session is read through its own folders; cross-session listings read the small ``runs/`` index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import threading
from collections.abc import Callable
from typing import Any

import duckdb
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    LakeRoot,
    day_dirs,
    day_of,
    resolve_lake,
    session_files,
    table_files,
)
from opentelemetry.exporter.runlake.mapping import attributes_of_row

from .query import LATEST_ROW, LakeReader, _vanished
from .ttl import expire

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


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MAX_KNOWN_RUNS = 200_000  # run id -> start day (about 120 bytes each); a larger index is searched instead
_MAX_INDEXED_FILES = 100_000


class _RunDays:
    """Run id -> the UTC day it started, i.e. the ``runs/`` day folder that holds both rows of the run, for every
    run in the index files read so far (``files``) plus runs seen in query results.

    ``find_run`` then reads one day folder instead of the whole index. The day is verified by that read: a run not
    found there (TTL, a scope that excludes it) is searched in the whole index. ``complete`` turns False for good
    once the lake holds more runs than fit; lookups then search the index. Shared by a ``HistoryDB`` and its
    ``scoped`` views: the map knows where runs are, the scope is applied by every query.
    """

    def __init__(self) -> None:
        self.days: dict[str, str] = {}
        self.files: set[str] = set()
        self.complete = True
        self._lock = threading.Lock()

    def get(self, run_id: str) -> str | None:
        return self.days.get(run_id)

    def learn(self, rows: list[dict[str, Any]], files: list[LakeRoot] | None = None) -> bool:
        """Remember where the rows' runs are; ``files``: every run of these files is among the rows.

        False when ``files`` did not fit: the map is emptied (older entries, e.g. runs gone by TTL or rewritten
        files, may have filled it) to be rebuilt from the current index; if these files alone do not fit,
        ``complete`` goes False.
        """
        with self._lock:
            if files is not None and (
                len(self.days) + len(rows) > _MAX_KNOWN_RUNS or len(self.files) + len(files) > _MAX_INDEXED_FILES
            ):
                self.days.clear()
                self.files.clear()
                if len(rows) > _MAX_KNOWN_RUNS or len(files) > _MAX_INDEXED_FILES:
                    self.complete = False
                return False
            days = self.days
            for row in rows:
                run_id, start = row.get("run_id"), row.get("start_time_unix_nano")
                if run_id and isinstance(start, int) and (run_id in days or len(days) < _MAX_KNOWN_RUNS):
                    days[run_id] = day_of(start)
            if files is not None:
                self.files.update(str(f) for f in files)
            return True


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
        self._run_days = _RunDays()

    def scoped(self, tenant_id: str | None = None, user_id: str | None = None) -> HistoryDB:
        """The same lake, seen by one tenant (and one user); shares the DuckDB connection."""
        scoped = HistoryDB.__new__(HistoryDB)
        scoped.root, scoped._reader, scoped._run_days = self.root, self._reader, self._run_days
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

    def _runs_lister(self, since: str | None = None, until: str | None = None) -> Callable[[], list[LakeRoot]]:
        return lambda: table_files(self.root, RUNS, self.tenant_id, since, until)

    def _index_rows(self, where: str, params: list[Any], order_limit: str = "") -> list[dict[str, Any]]:
        sql = f"SELECT * FROM {{files}} WHERE true {where} {LATEST_ROW} {order_limit}"
        return self._reader.rows(sql, self._runs_lister(), params)

    def _newest_index_rows(
        self, where: str, params: list[Any], order: str, skip: int, limit: int
    ) -> list[dict[str, Any]]:
        """``SELECT * ... WHERE true {where} ORDER BY {order} LIMIT limit OFFSET skip`` over the ``runs/`` index
        (one row per run), for an ``order`` that puts the newest start first: reads day folders newest first.

        A day folder holds the runs that started that day (both rows of a run), so whole days come in order and the
        walk stops once ``skip + limit`` rows are known; days are read 1, 2, 4, ... at a time, so a sparse filter
        costs a few queries, not one per day. Day folders not named like days: the whole index in one query.
        """
        days = sorted({day for _, _, day, _ in day_dirs(self.root, RUNS, self.tenant_id)}, reverse=True)
        if not all(_DAY.fullmatch(day) for day in days):
            return self._index_rows(where, [*params, limit, skip], f"{order} LIMIT ? OFFSET ?")
        sql = (
            f"WITH latest AS (SELECT * FROM {{files}} WHERE true {where} {LATEST_ROW}) "
            f"SELECT * FROM (SELECT *, count(*) OVER () AS _runlake_n, row_number() OVER ({order}) AS _runlake_i "
            "FROM latest) WHERE _runlake_i = 1 OR _runlake_i BETWEEN ? AND ? ORDER BY _runlake_i"
        )  # the first row always comes back: it carries the day's count
        out: list[dict[str, Any]] = []
        end = skip + limit
        seen = start = 0
        batch = 1
        while start < len(days) and seen < end:
            chunk = days[start : start + batch]
            start, batch = start + batch, batch * 2
            first, last = max(1, skip - seen + 1), end - seen  # the wanted positions within these days
            rows = self._reader.rows(sql, self._runs_lister(chunk[-1], chunk[0]), [*params, first, last])
            if not rows:
                continue
            seen += rows[0]["_runlake_n"]
            for row in rows:
                position = row.pop("_runlake_i")
                del row["_runlake_n"]
                if first <= position <= last:
                    out.append(row)
        return out

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
        self._run_days.learn(rows)
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
            where += " AND parent_span_id IS NULL"
            order = "ORDER BY start_time_unix_nano DESC"
            if limit is not None:
                runs = self._newest_index_rows(where, params, order, 0, int(limit))
            else:
                runs = self._index_rows(where, params, order)
        self._run_days.learn(runs)
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
        """All spans of the runs' traces, read in one query over the files of the runs' sessions."""
        if not runs:
            return {}
        sessions = list(dict.fromkeys(run["session_id"] or "" for run in runs))
        trace_ids = sorted({run["trace_id"] for run in runs})

        def files() -> list[LakeRoot]:
            found: dict[LakeRoot, None] = {}  # a day's shared files serve several sessions: each file once
            for session_id in sessions:
                found.update(dict.fromkeys(session_files(self.root, session_id, self.tenant_id)))
            return list(found)

        sql = (
            f"SELECT * FROM {{files}} WHERE list_contains(?, trace_id) {LATEST_ROW} "
            "ORDER BY start_time_unix_nano, parent_span_id IS NOT NULL, span_id"
        )
        out: dict[str, list[dict[str, Any]]] = {}
        for row in self._reader.rows(sql, files, [trace_ids]):
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
        rows = self._newest_index_rows(
            where, params, "ORDER BY start_time_unix_nano DESC, run_id", int(skip), int(limit)
        )
        self._run_days.learn(rows)
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
        """The run's index row (in this scope), or None.

        Reads only the ``runs/`` day folder of the run's start, from a map of where every run is, kept up to date
        by reading the ``run_id`` and start columns of index files not seen before.
        """
        if self.root is None:
            return None
        params: list[Any] = [run_id]
        sql = f"SELECT * FROM {{files}} WHERE run_id = ? {self._scope_sql(params)} {LATEST_ROW} LIMIT 1"
        known = self._run_days.get(run_id)
        if known is None and self._run_days.complete:
            self._index_new_runs()
            known = self._run_days.get(run_id)
            if known is None and self._run_days.complete:
                return None  # no index file (in this tenant's scope) holds the run
        if known is not None:
            rows = self._reader.rows(sql, self._runs_lister(known, known), params)
            if rows:
                return rows[0]
        # not where it was (TTL removed it, it is outside this scope) or too many runs to map: search the index,
        # reading only its run_id column first (several times cheaper than whole rows), then the days it names
        starts = self._reader.rows(
            "SELECT DISTINCT start_time_unix_nano FROM {files} WHERE run_id = ?", self._runs_lister(), [run_id]
        )
        days = {day_of(r["start_time_unix_nano"]) for r in starts if r["start_time_unix_nano"] is not None}
        for day in sorted(days - {known}, reverse=True):
            rows = self._reader.rows(sql, self._runs_lister(day, day), params)
            if rows:
                self._run_days.learn(rows)
                return rows[0]
        return None

    def _index_new_runs(self) -> None:
        """Add the runs of index files not read before to the run -> day map (two narrow columns per file)."""
        run_days = self._run_days
        sql = f"SELECT run_id, start_time_unix_nano FROM {{files}} LIMIT {_MAX_KNOWN_RUNS + 1}"
        for _ in range(2):  # a second time when the map was full of old entries and has been emptied
            if not run_days.complete:
                return
            listed: list[LakeRoot] = []

            def new_files(listed: list[LakeRoot] = listed) -> list[LakeRoot]:  # again if a file vanishes meanwhile
                listed[:] = [f for f in table_files(self.root, RUNS, self.tenant_id) if str(f) not in run_days.files]
                return listed

            rows = self._reader.rows(sql, new_files)
            if not listed or run_days.learn(rows, listed):
                return

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
        for attempt in range(3):
            con = self._reader.views(self.root, self.tenant_id)
            try:
                return con.sql(query)
            except (duckdb.IOException, duckdb.InvalidInputException) as error:
                if attempt == 2 or not _vanished(str(error)):
                    raise  # a file removed after the views were made (TTL, compaction): make them again
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- TTL ----
    def cleanup_expired(
        self, now: dt.datetime | None = None, max_age_days: int | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete every day partition whose TTL has passed; true counts of what went (``runlake.ttl``).

        A run started on UTC day D with ``ttl_days`` N is kept through day D+N and removed from day D+N+1.
        ``max_age_days``, when given, also removes anything older than that, whatever its own TTL.
        ``dry_run`` counts what would go and deletes nothing.
        """
        if self.root is None:
            _logger.warning("cleanup_expired() called but no state_url configured; nothing to do")
            return {"executions_deleted": 0, "nodes_deleted": 0}
        return expire(self.root, self._reader, self.tenant_id, now, max_age_days, dry_run)


__all__ = ["HistoryDB"]
