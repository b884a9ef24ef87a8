"""``ExecutionHistoryService``: CodexOS's service API (cleanup, statistics, performance) over the lake.

```python
service = ExecutionHistoryService(db)          # a HistoryDB, a state URL, or None (RUNLAKE_STATE_URL)
await service.cleanup_expired_executions(days=30)  # {"executions_deleted": 150, "nodes_deleted": 1200}
await service.get_execution_statistics(user_id, days=30)
await service.get_agent_performance_metrics(agent_id, days=30)
```

Statistics read the ``runs/`` index: its in-memory copy (``runlake.run_index``) when the ``HistoryDB`` keeps one,
else the window's day folders; per-node-type figures read the ``spans/`` table for the same days, restricted to
the runs counted. The
blocking DuckDB work runs in a worker thread (``asyncio.to_thread``), so the event loop stays free.
Like ``HistoryDB.scoped``, a service scoped to a tenant (and a user) never sees anything outside it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.runlake.layout import RUNS, SPANS, day_of, table_files
from opentelemetry.exporter.runlake.mapping import MAX_COST_CENTS

from .history import HistoryDB, iso_time, owners_of_unnamed_nodes, whole_cents
from .moments import unix_nano, utc_moment
from .query import ELAPSED_NS, LakeReader

__all__ = ["ExecutionHistoryService"]

_NS_PER_DAY = 86_400 * 10**9
MAX_DAYS = 36_500  # a window of 100 years, as the longest TTL; more would reach back before year 1
_TREE_CHUNK = 2_000  # traces whose span trees are read at once (bounds the rows held in Python)
_DURATION_MS = f"({ELAPSED_NS}) / 1e6"
# Sums and means that do not depend on the order DuckDB's threads add rows in. A plain sum of doubles does (a total
# that is a half rounded either way from one call to the next; ten costs of 0.05 cents summing to 0.4999...), and so
# does DuckDB's fsum (Kahan, not exact). Costs are summed exactly as decimals of a millionth of a cent, each within
# +/-1e14 cents (more is no real cost, and keeps the sum from overflowing); durations from the integer nanoseconds.
_COST_SUM = (  # MAX_COST_CENTS: the exporter stores no more; older files may hold more
    f"sum(CASE WHEN isfinite(cost_cents) THEN greatest(least(cost_cents, {MAX_COST_CENTS:.0f}), "
    f"-{MAX_COST_CENTS:.0f})::DECIMAL(38, 6) END)"
)
_AVG_MS = f"sum({ELAPSED_NS}) / nullif(count(end_time_unix_nano), 0) / 1e6"
_SUMMARY = f"""count(*) AS total,
       count(*) FILTER (WHERE end_time_unix_nano IS NOT NULL AND status_code IS DISTINCT FROM 'ERROR') AS completed,
       count(*) FILTER (WHERE end_time_unix_nano IS NOT NULL AND status_code = 'ERROR') AS failed,
       count(*) FILTER (WHERE end_time_unix_nano IS NULL) AS running,
       coalesce(sum(input_tokens), 0) AS input_tokens,
       coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce({_COST_SUM}, 0) AS cost_cents,
       coalesce(sum(node_count), 0) AS nodes,
       coalesce(sum(failed_nodes), 0) AS failed_nodes,
       {_AVG_MS} AS avg_ms,
       quantile_cont(duration_ms, 0.5) AS p50_ms,
       quantile_cont(duration_ms, 0.95) AS p95_ms,
       max(duration_ms) AS max_ms,
       min(start_time_unix_nano) AS first_ns,
       max(start_time_unix_nano) AS last_ns"""


def _round(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def _check_days(days: Any, allow_none: bool = False) -> int | None:
    if days is None and allow_none:
        return None
    if isinstance(days, bool) or not isinstance(days, int) or days < 1 or days > MAX_DAYS:
        raise ValueError(f"days must be a whole number from 1 to {MAX_DAYS:,}, got {days!r}")
    return days


class ExecutionHistoryService:
    """Cleanup, per-user statistics and per-agent performance, as CodexOS's service offers them.

    ``db``: a ``HistoryDB`` (its root, tenant and user scope are used), or a state URL / path, or None for
    ``RUNLAKE_STATE_URL`` / ``PRAISONAI_STATE_URL``. ``tenant_id`` / ``user_id`` scope a service built from
    a URL. With no lake configured, reads return empty figures and cleanup deletes nothing.
    """

    def __init__(
        self,
        db: HistoryDB | str | os.PathLike[str] | None = None,
        *,
        tenant_id: str | None = None,
        user_id: str | None = None,
        reader: LakeReader | None = None,
    ) -> None:
        if isinstance(db, HistoryDB):
            self.db = db if tenant_id is None and user_id is None else db.scoped(tenant_id, user_id)
        else:
            self.db = HistoryDB(db, tenant_id=tenant_id, user_id=user_id)
        self._reader = reader or LakeReader()

    def scoped(self, tenant_id: str | None = None, user_id: str | None = None) -> ExecutionHistoryService:
        """The same lake seen by one tenant (and one user); shares the DuckDB connection."""
        scoped = ExecutionHistoryService.__new__(ExecutionHistoryService)
        scoped.db = self.db.scoped(tenant_id, user_id)
        scoped._reader = self._reader
        return scoped

    @property
    def root(self) -> Path | None:
        return self.db.root

    @property
    def tenant_id(self) -> str | None:
        return self.db.tenant_id

    @property
    def user_id(self) -> str | None:
        return self.db.user_id

    # ---- the CodexOS service API ------------------------------------------------------------------------------
    async def cleanup_expired_executions(self, days: int | None = 30, now: dt.datetime | None = None) -> dict[str, int]:
        """Delete executions past their own ``ttl_days`` or older than ``days`` (None: own TTL only).

        Returns ``{"executions_deleted": n, "nodes_deleted": m}``. Whole day partitions go, so a day is
        removed once all of it is past the limit.
        """
        days = _check_days(days, allow_none=True)
        return await asyncio.to_thread(self.db.cleanup_expired, now, days)

    async def get_execution_statistics(
        self, user_id: str | None = None, days: int = 30, now: dt.datetime | None = None
    ) -> dict[str, Any]:
        """Counts, success rate, tokens, cost and duration percentiles of the executions of the last ``days``.

        ``user_id`` None means every user in this service's scope (a tenant for an admin).
        """
        days = _check_days(days)
        return await asyncio.to_thread(self.statistics, user_id, None, days, now)

    async def get_agent_performance_metrics(
        self, agent_id: str, days: int = 30, now: dt.datetime | None = None
    ) -> dict[str, Any]:
        """The statistics of one agent's executions (by agent name or id), plus figures per node type."""
        if not isinstance(agent_id, str) or not agent_id:
            raise ValueError("agent_id must be a non-empty string")
        days = _check_days(days)
        return await asyncio.to_thread(self.statistics, None, agent_id, days, now)

    async def get_statistics_per_user(self, days: int = 30, now: dt.datetime | None = None) -> dict[str, Any]:
        """``get_execution_statistics`` of every user in scope at once: ``{user_id: figures}``."""
        days = _check_days(days)
        return await asyncio.to_thread(self.statistics_per_user, days, now)

    # ---- the blocking part ------------------------------------------------------------------------------------
    def _window(self, days: int, now: dt.datetime | None) -> tuple[int, int, str]:
        """``(cutoff_ns, until_ns, since_day)``: runs that started from ``days`` before ``now`` up to ``now``."""
        until_ns = unix_nano(utc_moment(now))
        cutoff_ns = until_ns - days * _NS_PER_DAY
        try:
            return cutoff_ns, until_ns, day_of(cutoff_ns)
        except OverflowError:
            raise ValueError(f"a window of {days} days before {now!r} starts before the year 1") from None

    def _lister(self, table: str, since_day: str) -> Callable[[], list[Path]]:
        root, tenant = self.root, self.tenant_id
        return lambda: table_files(root, table, tenant, since=since_day) if root is not None else []

    def _scope_sql(self, params: list[Any], users: bool = True) -> str:
        sql = ""
        if self.tenant_id is not None:
            sql += " AND tenant_id = ?"
            params.append(self.tenant_id)
        if users and self.user_id is not None:
            sql += " AND user_id = ?"
            params.append(self.user_id)
        return sql

    def _runs_where(
        self, cutoff_ns: int, until_ns: int, user_id: str | None, agent_id: str | None
    ) -> tuple[str, list[Any]]:
        params: list[Any] = [cutoff_ns, until_ns]
        where = "start_time_unix_nano >= ? AND start_time_unix_nano <= ?" + self._scope_sql(params)
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        if agent_id is not None:
            where += " AND (agent_name = ? OR agent_id = ?)"
            params += [agent_id, agent_id]
        return where, params

    def _summary_rows(
        self, where: str, params: list[Any], since_day: str, group_by_user: bool = False
    ) -> list[dict[str, Any]]:
        """The summary figures of the runs matching ``where``: from the in-memory runs index when there is one,
        else from the ``runs/`` files of the window's days."""
        if self.root is None:
            return []
        index = self.db.run_index()
        source = f"{{index}} WHERE {where}" if index is not None else "{latest}"
        key = "user_id, " if group_by_user else ""
        sql = f"""
            WITH d AS (SELECT *, CASE WHEN end_time_unix_nano IS NOT NULL THEN {_DURATION_MS} END AS duration_ms
                       FROM {source})
            SELECT {key}{_SUMMARY} FROM d {"GROUP BY user_id ORDER BY user_id" if group_by_user else ""}"""
        if index is not None:
            return index.rows(sql, params)
        return self._reader.rows(sql, self._lister(RUNS, since_day), where=where, where_params=params)

    def statistics(
        self, user_id: str | None = None, agent_id: str | None = None, days: int = 30, now: dt.datetime | None = None
    ) -> dict[str, Any]:
        """``get_execution_statistics`` / ``get_agent_performance_metrics`` without the event loop (blocking)."""
        days = _check_days(days)
        cutoff_ns, until_ns, since_day = self._window(days, now)
        where, params = self._runs_where(cutoff_ns, until_ns, user_id, agent_id)
        rows = self._summary_rows(where, params, since_day)
        row = rows[0] if rows else {}
        stats = self._figures(row)
        out: dict[str, Any] = {}
        if agent_id is not None:
            out["agent_id"] = agent_id
        else:
            out["user_id"] = user_id
        out.update(
            {
                "period_days": days,
                "since": iso_time(cutoff_ns),
                "until": iso_time(until_ns),
                **stats,
                "first_execution_at": iso_time(row.get("first_ns")),
                "last_execution_at": iso_time(row.get("last_ns")),
            }
        )
        if agent_id is not None:
            out["node_types"] = self._node_types(where, params, since_day) if stats["total_executions"] else {}
        return out

    def statistics_per_user(self, days: int = 30, now: dt.datetime | None = None) -> dict[str, dict[str, Any]]:
        """The figures of ``statistics`` for every user in scope, in one pass: ``{user_id: figures}``."""
        days = _check_days(days)
        cutoff_ns, until_ns, since_day = self._window(days, now)
        where, params = self._runs_where(cutoff_ns, until_ns, None, None)
        out: dict[str, dict[str, Any]] = {}
        for row in self._summary_rows(where, params, since_day, group_by_user=True):
            out[row["user_id"]] = {
                **self._figures(row),
                "first_execution_at": iso_time(row.get("first_ns")),
                "last_execution_at": iso_time(row.get("last_ns")),
            }
        return out

    def _traces_with_unnamed_nodes(self, cutoff_ns: int, since_day: str) -> set[str]:
        """Traces of the window holding a node that names no run."""
        params: list[Any] = [cutoff_ns]
        where = "span_type = 'node' AND run_id IS NULL AND start_time_unix_nano >= ?" + self._scope_sql(params, False)
        lister = self._lister(SPANS, since_day)
        rows = self._reader.rows("SELECT DISTINCT trace_id FROM {latest}", lister, where=where, where_params=params)
        return {r["trace_id"] for r in rows}

    def _traces_of_several_runs(self, traces: list[str], since_day: str) -> set[str]:
        """Which of ``traces`` hold more than one run (nested runs, a run under another's root)."""
        index = self.db.run_index()
        if index is not None:
            return {r["trace_id"] for r in index.of_traces(traces, ["trace_id"])}
        if not traces:
            return set()
        sql = "SELECT trace_id FROM {latest} GROUP BY trace_id HAVING count(*) > 1"
        rows = self._reader.rows(
            sql, self._lister(RUNS, since_day), where="list_contains(?, trace_id)", where_params=[traces]
        )
        return {r["trace_id"] for r in rows}

    def _unnamed_nodes_of(self, run_ids: set[str], traces: list[str], since_day: str) -> set[str]:
        """``trace_id:span_id`` of the nodes naming no run whose run (nearest above them) is in ``run_ids``; the
        traces' span trees are read a bounded number of traces at a time."""
        columns = "trace_id, span_id, parent_span_id, span_type, run_id, start_time_unix_nano"
        out: set[str] = set()
        for at in range(0, len(traces), _TREE_CHUNK):
            chunk = traces[at : at + _TREE_CHUNK]
            by_trace: dict[str, list[dict[str, Any]]] = {}
            for row in self._reader.rows(
                f"SELECT {columns} FROM {{latest}}",
                self._lister(SPANS, since_day),
                where="list_contains(?, trace_id)",
                where_params=[chunk],
            ):
                by_trace.setdefault(row["trace_id"], []).append(row)
            for trace_id, rows in by_trace.items():
                owners = owners_of_unnamed_nodes(rows)
                out.update(f"{trace_id}:{span}" for span, run in owners.items() if run in run_ids)
        return out

    @staticmethod
    def _figures(row: dict[str, Any]) -> dict[str, Any]:
        completed, failed = int(row.get("completed") or 0), int(row.get("failed") or 0)
        finished = completed + failed
        tokens_in, tokens_out = int(row.get("input_tokens") or 0), int(row.get("output_tokens") or 0)
        total = int(row.get("total") or 0)
        cost = float(row.get("cost_cents") or 0.0)
        cost = cost if math.isfinite(cost) else 0.0  # a non-finite cost stored by an older version
        return {
            "total_executions": total,
            "completed_executions": completed,
            "failed_executions": failed,
            "running_executions": int(row.get("running") or 0),
            "success_rate": round(completed / finished, 4) if finished else None,
            "tokens_used": tokens_in + tokens_out,
            "input_tokens": tokens_in,
            "output_tokens": tokens_out,
            "cost_cents": whole_cents(cost),
            "avg_cost_cents": round(cost / total, 3) if total else None,
            "total_nodes": int(row.get("nodes") or 0),
            "failed_nodes": int(row.get("failed_nodes") or 0),
            "avg_duration_ms": _round(row.get("avg_ms")),
            "p50_duration_ms": _round(row.get("p50_ms")),
            "p95_duration_ms": _round(row.get("p95_ms")),
            "max_duration_ms": _round(row.get("max_ms")),
        }

    def _node_types(self, where: str, params: list[Any], since_day: str) -> dict[str, dict[str, Any]]:
        """Per node type over the nodes of the runs counted: the nodes naming one of them, and nodes naming no run
        whose nearest run above them is one of them (as ``get_logs`` decides).

        Nodes are found through the runs already scoped, not by their own ``user_id`` (spans made by other
        instrumentations inside a run often carry none).
        """
        columns = "run_id, trace_id, parent_span_id IS NULL AS root"
        index = self.db.run_index()
        if index is not None:
            runs = index.rows(f"SELECT {columns} FROM {{index}} WHERE {where}", params)
        else:
            lister = self._lister(RUNS, since_day)
            runs = self._reader.rows(f"SELECT {columns} FROM {{latest}}", lister, where=where, where_params=params)
        run_ids = {r["run_id"] for r in runs if r["run_id"]}
        # only traces holding nodes that name no run need more than the run ids (spans of runlake's own API and of
        # other instrumentations under RunStartProcessor all name theirs): found with one narrow scan
        unnamed = self._traces_with_unnamed_nodes(params[0], since_day) & {r["trace_id"] for r in runs}
        whole: list[str] = []
        owned: list[str] = []
        if unnamed:
            shared = self._traces_of_several_runs(sorted(unnamed), since_day)
            # a trace whose one run is its root: every node naming no run is that run's (no span tree to walk)
            whole = sorted({r["trace_id"] for r in runs if r["root"] and r["trace_id"] in unnamed} - shared)
            walked = sorted(unnamed.difference(whole))
            owned = sorted(self._unnamed_nodes_of(run_ids, walked, since_day)) if walked else []
        node_params: list[Any] = [params[0], sorted(run_ids)]
        node_where = "span_type = 'node' AND start_time_unix_nano >= ? AND (list_contains(?, run_id)"
        if whole:
            node_where += " OR (run_id IS NULL AND list_contains(?, trace_id))"
            node_params.append(whole)
        if owned:
            node_where += " OR (run_id IS NULL AND list_contains(?, trace_id || ':' || span_id))"
            node_params.append(owned)
        node_where += ")" + self._scope_sql(node_params, users=False)
        sql = f"""
            WITH n AS (SELECT * FROM {{latest}})
            SELECT coalesce(node_type, 'unknown') AS node_type,
                   count(*) AS total,
                   count(*) FILTER (WHERE status_code = 'ERROR') AS failed,
                   coalesce(sum(input_tokens), 0) + coalesce(sum(output_tokens), 0) AS tokens,
                   coalesce({_COST_SUM}, 0) AS cost_cents,
                   {_AVG_MS} AS avg_ms,
                   quantile_cont({_DURATION_MS}, 0.5) AS p50_ms,
                   quantile_cont({_DURATION_MS}, 0.95) AS p95_ms
            FROM n GROUP BY 1 ORDER BY 1"""
        out: dict[str, dict[str, Any]] = {}
        for r in self._reader.rows(sql, self._lister(SPANS, since_day), where=node_where, where_params=node_params):
            total, failed = int(r["total"]), int(r["failed"])
            out[r["node_type"]] = {
                "count": total,
                "failed": failed,
                "success_rate": round((total - failed) / total, 4) if total else None,
                "tokens_used": int(r["tokens"]),
                "cost_cents": round(float(r["cost_cents"]), 3),
                "avg_duration_ms": _round(r["avg_ms"]),
                "p50_duration_ms": _round(r["p50_ms"]),
                "p95_duration_ms": _round(r["p95_ms"]),
            }
        return out
