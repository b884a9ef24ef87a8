"""The stores runlake is measured against in ``bench_b30.py``, fed from the same ``ReadableSpan`` stream.

(a) ``CodexOSStore``: SQLite with the CodexOS schema of seed 002 (``executions`` + ``execution_nodes``) and the
    indexes that document lists, plus one index it does not have (``executions.session_id``, which the
    PraisonAI-shaped ``get_runs(session)`` needs; CodexOS has no session column at all).
(b) ``PraisonKV``: a key-value state store in SQLite with PraisonAI's keys and record shapes
    (``praisonai/db/adapter.py``: ``run:{session}:{run}``, ``trace:{trace_id}``, ``span:{span_id}``), read the
    way ``PraisonAIDB.get_runs`` / ``get_traces`` read it: ``scan_prefix`` for the keys, then one ``get`` per key.
(c) OTLP JSON lines: the stock ``opentelemetry.exporter.otlp.json.file.FileSpanExporter`` (in bench_b30.py).

Both SQLite stores use WAL with ``synchronous=NORMAL`` (no fsync per commit; runlake does not fsync either) and
one transaction per exported batch of 512 spans, the most favourable way to load them. Nothing here is a test.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from common import percentile
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import StatusCode

_EPOCH = dt.datetime(1970, 1, 1)


def sql_time(unix_nano: int | None) -> str | None:
    """How SQLAlchemy's ``DateTime`` stores a time in SQLite: ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC)."""
    if unix_nano is None:
        return None
    return (_EPOCH + dt.timedelta(microseconds=unix_nano // 1000)).isoformat(" ", "microseconds")


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con


# =================================================================================================================
# (a) CodexOS: executions + execution_nodes
# =================================================================================================================
CODEXOS_SCHEMA = """
CREATE TABLE executions (
    id CHAR(32) NOT NULL PRIMARY KEY,
    tenant_id CHAR(32) NOT NULL,
    flow_id CHAR(32),
    user_id CHAR(32),
    session_id VARCHAR,
    status VARCHAR(20) NOT NULL,
    started_at DATETIME,
    completed_at DATETIME,
    input_data JSON,
    output_data JSON,
    logs JSON,
    error_message TEXT,
    tokens_used INTEGER,
    cost_cents INTEGER,
    ttl_days INTEGER NOT NULL DEFAULT 30
);
CREATE TABLE execution_nodes (
    id CHAR(32) NOT NULL PRIMARY KEY,
    execution_id CHAR(32) NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    node_id VARCHAR NOT NULL,
    node_type VARCHAR NOT NULL,
    input_data JSON,
    output_data JSON,
    started_at DATETIME,
    completed_at DATETIME,
    duration_ms INTEGER,
    status VARCHAR(20),
    error_message TEXT,
    metadata JSON
);
-- "Performance indexes are created for" (seed 002)
CREATE INDEX ix_executions_tenant_id ON executions (tenant_id);
CREATE INDEX ix_executions_flow_id ON executions (flow_id);
CREATE INDEX ix_executions_user_id ON executions (user_id);
CREATE INDEX ix_executions_status ON executions (status);
CREATE INDEX ix_executions_started_at ON executions (started_at);
CREATE INDEX ix_execution_nodes_execution_id ON execution_nodes (execution_id);
CREATE INDEX ix_execution_nodes_node_id ON execution_nodes (node_id);
CREATE INDEX ix_execution_nodes_status ON execution_nodes (status);
-- not in CodexOS (it has no session column): needed for the PraisonAI-shaped get_runs(session)
CREATE INDEX ix_executions_session_id ON executions (session_id);
"""


class CodexOSStore:
    """CodexOS's execution history in SQLite. Runs → ``executions``; every other span (nodes, and turns as
    ``node_type='turn'``) → ``execution_nodes``; ``tokens_used`` / ``cost_cents`` summed from the run's nodes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = _connect(path)
        self.con.executescript(CODEXOS_SCHEMA)
        self._totals: dict[str, list[float]] = {}

    # ---- ingest ----
    def ingest(self, spans: Sequence[ReadableSpan]) -> None:
        executions: list[tuple] = []
        nodes: list[tuple] = []
        totals = self._totals
        for span in spans:
            a = span.attributes
            failed = span.status.status_code is StatusCode.ERROR
            kind = a.get("runlake.span.type")
            if kind == "run":
                acc = totals.pop(a["runlake.run.id"], None) or (0, 0.0)
                executions.append(
                    (
                        a["runlake.run.id"],
                        a.get("runlake.tenant.id") or "default",
                        a.get("gen_ai.agent.name"),
                        a.get("user.id"),
                        a.get("session.id"),
                        "failed" if failed else "completed",
                        sql_time(span.start_time),
                        sql_time(span.end_time),
                        json.dumps(
                            {"input": a.get("input.value"), "metadata": json.loads(a.get("runlake.metadata") or "{}")}
                        ),
                        json.dumps({"output": a.get("output.value")}),
                        "[]",
                        span.status.description if failed else None,
                        int(acc[0]),
                        int(round(acc[1])),
                        int(a.get("runlake.ttl_days") or 30),
                    )
                )
                continue
            node_type = a.get("runlake.node.type") or ("turn" if kind == "turn" else "span")
            run_id = a.get("runlake.run.id")
            meta: dict[str, Any] = {}
            if node_type == "llm":
                tin, tout = a.get("gen_ai.usage.input_tokens") or 0, a.get("gen_ai.usage.output_tokens") or 0
                cost = a.get("runlake.cost.cents") or 0.0
                meta = {
                    "model": a.get("gen_ai.request.model"),
                    "provider": a.get("gen_ai.provider.name"),
                    "input_tokens": tin,
                    "output_tokens": tout,
                    "cost_cents": cost,
                }
                acc = totals.get(run_id)
                if acc is None:
                    acc = totals[run_id] = [0, 0.0]
                acc[0] += tin + tout
                acc[1] += cost
            nodes.append(
                (
                    f"{span.context.span_id:016x}",
                    run_id,
                    a.get("runlake.node.id") or a.get("runlake.turn.id") or span.name,
                    node_type,
                    json.dumps(a.get("input.value")),
                    json.dumps(a.get("output.value")),
                    sql_time(span.start_time),
                    sql_time(span.end_time),
                    (span.end_time - span.start_time) // 1_000_000,
                    "failed" if failed else "completed",
                    span.status.description if failed else None,
                    json.dumps(meta),
                )
            )
        con = self.con
        con.execute("BEGIN")
        if executions:
            con.executemany(f"INSERT INTO executions VALUES ({','.join('?' * 15)})", executions)
        if nodes:
            con.executemany(f"INSERT INTO execution_nodes VALUES ({','.join('?' * 12)})", nodes)
        con.execute("COMMIT")

    def close(self) -> None:
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    # ---- queries (the shapes runlake returns) ----
    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        return self.con.execute(sql, params).fetchall()

    def get_runs(self, session_id: str) -> list[dict]:
        out = []
        for r in self.rows(
            "SELECT id, session_id, started_at, completed_at, input_data, output_data, status, flow_id, error_message "
            "FROM executions WHERE session_id = ? ORDER BY started_at DESC",
            (session_id,),
        ):
            started, ended = _epoch(r[2]), _epoch(r[3])
            inp = json.loads(r[4])
            out.append(
                {
                    "run_id": r[0],
                    "session_id": r[1],
                    "started_at": started,
                    "ended_at": ended,
                    "input_content": inp.get("input"),
                    "output_content": json.loads(r[5]).get("output"),
                    "status": "error" if r[6] == "failed" else "completed",
                    "metadata": {"agent_name": r[7], **inp.get("metadata", {})},
                    "metrics": {"error": r[8]} if r[6] == "failed" else {"duration_ms": (ended - started) * 1e3},
                }
            )
        return out

    def _node_dict(self, r: tuple) -> dict:
        return {
            "id": r[2],
            "type": r[3],
            "input": json.loads(r[4]),
            "output": json.loads(r[5]),
            "time": f"{r[8] / 1e3:.3f}s",
            "status": r[9],
            "error_message": r[10],
            "metadata": json.loads(r[11]),
        }

    def get_logs(self, run_id: str) -> dict:
        run = self.rows("SELECT * FROM executions WHERE id = ?", (run_id,))
        if not run:
            raise LookupError(run_id)
        run = run[0]
        nodes = self.rows(
            "SELECT * FROM execution_nodes WHERE execution_id = ? AND node_type != 'turn' ORDER BY started_at, id",
            (run_id,),
        )
        node_dicts = [self._node_dict(n) for n in nodes]
        failed = [n for n in node_dicts if n["status"] == "failed"]
        return {
            "run_id": run_id,
            "nodes": node_dicts,
            "errors": [{"node_id": n["id"], "error_message": n["error_message"]} for n in failed],
            "final_output": json.loads(run[9]).get("output"),
            "summary": {
                "total_nodes": len(nodes),
                "successful_nodes": len(nodes) - len(failed),
                "failed_nodes": len(failed),
                "total_duration": run[7],
                "tokens_used": run[12],
                "cost_cents": run[13],
            },
        }

    def get_traces(self, user_id: str, limit: int = 10) -> list[dict]:
        runs = self.rows(
            "SELECT * FROM executions WHERE user_id = ? ORDER BY started_at DESC LIMIT ?", (user_id, limit)
        )
        ids = [r[0] for r in runs]
        by_run: dict[str, list] = {}
        if ids:
            marks = ",".join("?" * len(ids))
            for n in self.rows(
                f"SELECT * FROM execution_nodes WHERE execution_id IN ({marks}) ORDER BY started_at", ids
            ):
                by_run.setdefault(n[1], []).append(
                    {
                        "span_id": n[0],
                        "name": n[2],
                        "type": n[3],
                        "started_at": _epoch(n[6]),
                        "ended_at": _epoch(n[7]),
                        "status": "error" if n[9] == "failed" else "ok",
                        "input": json.loads(n[4]),
                        "output": json.loads(n[5]),
                        "metadata": json.loads(n[11]),
                    }
                )
        return [
            {
                "trace_id": r[0],
                "session_id": r[4],
                "run_id": r[0],
                "agent_name": r[2],
                "user_id": r[3],
                "started_at": _epoch(r[6]),
                "ended_at": _epoch(r[7]),
                "status": "error" if r[5] == "failed" else "ok",
                "metadata": json.loads(r[8]).get("metadata", {}),
                "spans": by_run.get(r[0], []),
            }
            for r in runs
        ]

    def get_history(self, agent: str, skip: int = 0, limit: int = 20) -> list[dict]:
        rows = self.rows(
            # the page first (idx_executions_flow_id), then the node count of its runs only
            "SELECT e.id, e.status, e.started_at, e.completed_at, e.input_data, e.output_data, e.tokens_used, "
            "e.cost_cents, (SELECT count(*) FROM execution_nodes n WHERE n.execution_id = e.id "
            "AND n.node_type != 'turn') FROM (SELECT * FROM executions WHERE flow_id = ? "
            "ORDER BY started_at DESC, id LIMIT ? OFFSET ?) e ORDER BY e.started_at DESC, e.id",
            (agent, limit, skip),
        )
        return [
            {
                "run_id": r[0],
                "status": r[1],
                "started_at": r[2],
                "duration": f"{_epoch(r[3]) - _epoch(r[2]):.1f}s",
                "input": json.loads(r[4]).get("input"),
                "output": json.loads(r[5]).get("output"),
                "node_count": r[8],
                "tokens_used": r[6],
                "cost_cents": r[7],
            }
            for r in rows
        ]

    def user_statistics(self, user_id: str, since: str, until: str) -> dict:
        """CodexOS ``get_execution_statistics(user_id, days=30)``: counts, success rate, tokens, cost, p50/p95, of the
        executions started in ``[since, until]``."""
        rows = self.rows(
            "SELECT status, tokens_used, cost_cents, started_at, completed_at FROM executions "
            "WHERE user_id = ? AND started_at >= ? AND started_at <= ?",
            (user_id, since, until),
        )
        return _stats([(r[0], r[1], r[2], _ms_between(r[3], r[4])) for r in rows])

    def all_user_statistics(self, since: str, until: str) -> dict[str, dict]:
        """The same statistics for every user (one report, GROUP BY user)."""
        groups: dict[str, list] = {}
        for r in self.rows(
            "SELECT user_id, status, tokens_used, cost_cents, started_at, completed_at FROM executions "
            "WHERE started_at >= ? AND started_at <= ?",
            (since, until),
        ):
            groups.setdefault(r[0], []).append((r[1], r[2], r[3], _ms_between(r[4], r[5])))
        return {u: _stats(rows) for u, rows in groups.items()}

    def p95_by_node_type(self) -> dict[str, float]:
        """p95 of ``duration_ms`` per node type, interpolated between the two closest ranks as ``percentile`` (and
        DuckDB's ``quantile_cont``) do: the two rows around position 0.95 × (n − 1), then their weighted mean."""
        rows = self.rows(
            "WITH d AS (SELECT node_type, duration_ms, "
            "row_number() OVER (PARTITION BY node_type ORDER BY duration_ms) AS rn, "
            "0.95 * (count(*) OVER (PARTITION BY node_type) - 1) AS pos FROM execution_nodes "
            "WHERE node_type != 'turn') "
            "SELECT node_type, min(duration_ms) + (max(duration_ms) - min(duration_ms)) * (pos - CAST(pos AS INTEGER)) "
            "FROM d WHERE rn - 1 BETWEEN CAST(pos AS INTEGER) AND CAST(pos AS INTEGER) + 1 "
            "GROUP BY node_type, pos ORDER BY node_type"
        )
        return dict(rows)

    def delete_before(self, day: str) -> dict[str, int]:
        """CodexOS ``cleanup_expired_executions``: every execution started before ``day``, and its nodes."""
        con = self.con
        con.execute("BEGIN")
        nodes = con.execute(
            "DELETE FROM execution_nodes WHERE execution_id IN (SELECT id FROM executions WHERE started_at < ?) "
            "AND node_type != 'turn'",
            (day,),
        ).rowcount
        con.execute(
            "DELETE FROM execution_nodes WHERE execution_id IN (SELECT id FROM executions WHERE started_at < ?)",
            (day,),
        )
        executions = con.execute("DELETE FROM executions WHERE started_at < ?", (day,)).rowcount
        con.execute("COMMIT")
        return {"executions_deleted": executions, "nodes_deleted": nodes}


def _ms_between(started: str | None, completed: str | None) -> float | None:
    """Milliseconds from ``started`` to ``completed`` (stored times), to the microsecond, as a Python service gets it
    from the datetimes SQLAlchemy returns (``completed_at - started_at``). Not in SQL: SQLite's date functions keep
    milliseconds only, so ``(julianday(completed_at) - julianday(started_at)) * 86400000`` was off by up to ~1 ms
    (each end rounded to the ms, plus float noise at Julian-day magnitudes) and its p50/p95 disagreed with runlake's
    and (b)'s; this costs ~10% more on a 100,000-run report (measured: 0.20 → 0.22 s)."""
    if started is None or completed is None:
        return None
    return (dt.datetime.fromisoformat(completed) - dt.datetime.fromisoformat(started)).total_seconds() * 1e3


def _epoch(text: str | None) -> float | None:
    if text is None:
        return None
    return (dt.datetime.fromisoformat(text) - _EPOCH).total_seconds()


def _stats(rows: list[tuple]) -> dict:
    durations = sorted(r[3] for r in rows if r[3] is not None)
    n = len(rows)
    ok = sum(1 for r in rows if r[0] == "completed")
    return {
        "executions": n,
        "completed": ok,
        "failed": n - ok,
        "success_rate": ok / n if n else None,
        "tokens": sum(r[1] or 0 for r in rows),
        "cost_cents": sum(r[2] or 0 for r in rows),
        "p50_ms": percentile(durations, 0.5),
        "p95_ms": percentile(durations, 0.95),
    }


# =================================================================================================================
# (b) PraisonAI-style key-value state store
# =================================================================================================================
class PraisonKV:
    """A state store (``get`` / ``set`` / ``scan_prefix``) in one SQLite table, filled with the records
    ``PraisonAIDB.on_run_*`` / ``on_trace_*`` / ``on_span_*`` write (each written once, in its final form)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = _connect(path)
        self.con.execute("CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    # ---- the store protocol ----
    def get(self, key: str) -> Any:
        row = self.con.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def scan_prefix(self, prefix: str) -> list[str]:
        return [
            r[0]
            for r in self.con.execute("SELECT key FROM state WHERE key >= ? AND key < ?", (prefix, prefix + "\uffff"))
        ]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*"))

    def close(self) -> None:
        self.con.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # ---- ingest ----
    def ingest(self, spans: Sequence[ReadableSpan]) -> None:
        items: list[tuple[str, str]] = []
        for span in spans:
            a = dict(span.attributes)
            failed = span.status.status_code is StatusCode.ERROR
            started, ended = span.start_time / 1e9, span.end_time / 1e9
            span_id = f"{span.context.span_id:016x}"
            trace_id = f"{span.context.trace_id:032x}"
            items.append(
                (
                    f"span:{span_id}",
                    json.dumps(
                        {
                            "span_id": span_id,
                            "trace_id": trace_id,
                            "name": span.name,
                            "parent_span_id": f"{span.parent.span_id:016x}" if span.parent else None,
                            "started_at": started,
                            "status": "error" if failed else "ok",
                            "attributes": a,
                            "events": [
                                {"name": e.name, "timestamp": e.timestamp, "attributes": dict(e.attributes or {})}
                                for e in span.events
                            ],
                            "ended_at": ended,
                        }
                    ),
                )
            )
            if a.get("runlake.span.type") != "run":
                continue
            session, run_id = a.get("session.id"), a["runlake.run.id"]
            metadata = {"agent_name": a.get("gen_ai.agent.name"), **json.loads(a.get("runlake.metadata") or "{}")}
            items.append(
                (
                    f"run:{session}:{run_id}",
                    json.dumps(
                        {
                            "run_id": run_id,
                            "session_id": session,
                            "started_at": started,
                            "input_content": a.get("input.value"),
                            "status": "error" if failed else "completed",
                            "metadata": metadata,
                            "ended_at": ended,
                            "output_content": a.get("output.value"),
                            "metrics": {"error": span.status.description}
                            if failed
                            else {"duration_ms": (span.end_time - span.start_time) / 1e6},
                        }
                    ),
                )
            )
            items.append(
                (
                    f"trace:{trace_id}",
                    json.dumps(
                        {
                            "trace_id": trace_id,
                            "session_id": session,
                            "run_id": run_id,
                            "agent_name": a.get("gen_ai.agent.name"),
                            "user_id": a.get("user.id"),
                            "started_at": started,
                            "status": "error" if failed else "ok",
                            "spans": [],
                            "metadata": metadata,
                            "ended_at": ended,
                        }
                    ),
                )
            )
        con = self.con
        con.execute("BEGIN")
        con.executemany("INSERT OR REPLACE INTO state VALUES (?, ?)", items)
        con.execute("COMMIT")

    # ---- PraisonAIDB's reads (praisonai/db/adapter.py), verbatim in logic ----
    def get_runs(self, session_id: str, limit: int | None = None) -> list[dict]:
        runs = []
        for k in self.scan_prefix(f"run:{session_id}:"):
            data = self.get(k)
            if isinstance(data, dict):
                runs.append(data)
        runs.sort(key=lambda r: r.get("started_at", 0), reverse=True)
        return runs if limit is None else runs[: max(limit, 0)]

    def _all(self, prefix: str) -> Iterator[dict]:
        """Every record under ``prefix``, one at a time (a prefix scan of keys, then ``get`` per key, as a
        PraisonAI store is read; never all of them in memory at once)."""
        for k in self.scan_prefix(prefix):
            data = self.get(k)
            if isinstance(data, dict):
                yield data

    def get_traces(self, session_id: str | None = None, user_id: str | None = None, limit: int | None = None) -> list:
        traces = list(self._all("trace:"))
        if session_id is not None:
            traces = [t for t in traces if t.get("session_id") == session_id]
        if user_id is not None:
            traces = [t for t in traces if t.get("user_id") == user_id]
        traces.sort(key=lambda t: t.get("started_at", 0), reverse=True)
        return traces if limit is None else traces[: max(limit, 0)]

    # ---- what PraisonAI has no method for, done with its keys ----
    def get_logs(self, run_id: str) -> dict:
        """Nodes of one run: ``span:{id}`` keys say nothing about their run, so every span blob is read."""
        nodes = [
            s
            for s in self._all("span:")
            if s["attributes"].get("runlake.run.id") == run_id and s["attributes"].get("runlake.span.type") == "node"
        ]
        nodes.sort(key=lambda s: s["started_at"])
        return {"run_id": run_id, "nodes": nodes}

    def get_history(self, agent: str, skip: int = 0, limit: int = 20) -> list[dict]:
        """Runs of one agent, newest first: every trace blob is read (no node_count / tokens in them)."""
        traces = [t for t in self._all("trace:") if t.get("agent_name") == agent]
        traces.sort(key=lambda t: (-t.get("started_at", 0), t["run_id"]))
        return traces[skip : skip + limit]

    def user_statistics(self, user_id: str, since: float, until: float) -> dict:
        """Counts, success rate, p50/p95 from the trace blobs (tokens and cost are only in span blobs)."""
        rows = [
            ("completed" if t["status"] == "ok" else "failed", None, None, (t["ended_at"] - t["started_at"]) * 1e3)
            for t in self._all("trace:")
            if t.get("user_id") == user_id and since <= t["started_at"] <= until
        ]
        return _stats(rows)

    def all_user_statistics(self, since: float, until: float) -> dict[str, dict]:
        groups: dict[str, list] = {}
        for t in self._all("trace:"):
            if since <= t["started_at"] <= until:
                groups.setdefault(t.get("user_id"), []).append(
                    (
                        "completed" if t["status"] == "ok" else "failed",
                        None,
                        None,
                        (t["ended_at"] - t["started_at"]) * 1e3,
                    )
                )
        return {u: _stats(rows) for u, rows in groups.items()}

    def p95_by_node_type(self) -> dict[str, float]:
        by_type: dict[str, list[float]] = {}
        for s in self._all("span:"):
            a = s["attributes"]
            if a.get("runlake.span.type") == "node":
                by_type.setdefault(a.get("runlake.node.type"), []).append((s["ended_at"] - s["started_at"]) * 1e3)
        return {t: percentile(sorted(v), 0.95) for t, v in sorted(by_type.items())}

    def delete_before(self, epoch_seconds: float) -> dict[str, int]:
        """No TTL in PraisonAI's state stores: delete every record that started before the cut-off, reading each
        record's ``started_at`` (one SQL statement, the cheapest way to do it in SQLite)."""
        con = self.con
        con.execute("BEGIN")
        runs = con.execute(
            "SELECT count(*) FROM state WHERE key >= 'run:' AND key < 'run;' "
            "AND json_extract(value, '$.started_at') < ?",
            (epoch_seconds,),
        ).fetchone()[0]
        deleted = con.execute(
            "DELETE FROM state WHERE json_extract(value, '$.started_at') < ?", (epoch_seconds,)
        ).rowcount
        con.execute("COMMIT")
        return {"executions_deleted": runs, "records_deleted": deleted}
