"""The terminal rendering of each shape the commands show: history, a session's runs, traces, sessions and one
session, a run's logs, statistics (in all, per node type, per user), SQL results and what ``gc`` removed.

Each takes the data as ``HistoryDB`` (or ``SessionStore``, ``ExecutionHistoryService``) returns it; ``--json``
prints that data instead, with ``runlake.cli.output.print_json``.
"""

from __future__ import annotations

import datetime as dt
import decimal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.panel import Panel
from rich.text import Text

from .output import (
    _clip,
    _Col,
    _count,
    _duration,
    _empty,
    _failures,
    _json_default,
    _local_time,
    _ms,
    _number,
    _print_table,
    _rate,
    _red,
    _safe,
    _status,
    _stdout,
    _zone,
    _zone_caption,
)

if TYPE_CHECKING:
    from ..history import HistoryDB


_RUN_ID = _Col("run", keep=10)
_STATUS = _Col("status", keep=9)
_STARTED = _Col("started", keep=7)
_DURATION = _Col("duration", justify="right", keep=6)


def _print_history(console: Console, items: list[dict[str, Any]], title: str | None = None) -> None:
    cols = [
        _RUN_ID,
        _STATUS,
        _STARTED,
        _DURATION,
        _Col("input", text=True, max_width=48, keep=8),
        _Col("output", text=True, max_width=40, keep=3),
        _Col("nodes", justify="right", keep=2),
        _Col("tokens", justify="right", keep=5),
        _Col("cost ¢", justify="right", keep=5),
    ]
    rows = [
        [
            Text(item["run_id"] or "—"),
            _status(item["status"]),
            _local_time(item["started_at"]),
            Text(item["duration"] or "—"),
            _clip(item["input"]),
            _clip(item["output"]),
            _number(item["node_count"]),
            _number(item["tokens_used"]),
            _number(item["cost_cents"]),
        ]
        for item in items
    ]
    _print_table(console, cols, rows, title, _zone_caption())


def _print_session_runs(console: Console, runs: list[dict[str, Any]], session_id: str) -> None:
    cols = [
        _RUN_ID,
        _Col("agent", text=True, max_width=20, keep=7),
        _STATUS,
        _STARTED,
        _DURATION,
        _Col("input", text=True, max_width=44, keep=4),
        _Col("output / error", text=True, max_width=48, keep=3),
    ]
    rows = []
    for run in runs:
        error = (run.get("metrics") or {}).get("error")
        rows.append(
            [
                Text(run["run_id"] or "—"),
                _clip((run.get("metadata") or {}).get("agent_name"), 40),
                _status(run["status"]),
                _local_time(run["started_at"]),
                _duration(run["started_at"], run["ended_at"]),
                _clip(run["input_content"]),
                _red(_clip(error, 200)) if error else _clip(run["output_content"]),
            ]
        )
    _print_table(console, cols, rows, f"Runs of session {session_id}", _zone_caption())


_RUN_WORDS = {"ok": "completed", "error": "failed"}  # a trace's status in the words of a run's (runs, history)


def _print_traces(console: Console, traces: list[dict[str, Any]], title: str, with_run: bool = False) -> None:
    """Traces, or with ``with_run`` the runs that root them (run id, duration, run status words)."""
    cols = [
        _RUN_ID if with_run else _Col("trace", keep=10),
        _Col("session", text=True, max_width=28, keep=8),
        _Col("agent", text=True, max_width=20, keep=7),
        _Col("user", text=True, max_width=20, keep=4),
        _STATUS,
        _STARTED,
    ]
    if with_run:
        cols.append(_DURATION)
    cols.append(_Col("spans", justify="right", keep=3))
    rows = []
    for trace in traces:
        row = [
            Text(trace["run_id"] if with_run else trace["trace_id"]),
            _clip(trace["session_id"], 60),
            _clip(trace["agent_name"], 40),
            _clip(trace["user_id"], 40),
            _status(_RUN_WORDS.get(trace["status"], trace["status"]) if with_run else trace["status"]),
            _local_time(trace["started_at"]),
        ]
        if with_run:
            row.append(_duration(trace["started_at"], trace["ended_at"]))
        row.append(_number(len(trace["spans"])))
        rows.append(row)
    _print_table(console, cols, rows, title, _zone_caption())


def _print_sessions(console: Console, listed: list[dict[str, Any]], title: str) -> None:
    cols = [
        _Col("session", text=True, max_width=36, keep=10),
        _Col("user", text=True, max_width=20, keep=6),
        _Col("agent", text=True, max_width=20, keep=7),
        _Col("runs", justify="right", keep=8),
        _Col("messages", justify="right", keep=5),
        _Col("created", keep=4),
        _Col("updated", keep=9),
    ]
    rows = [
        [
            _clip(item["session_id"], 80),
            _clip(item["user_id"], 40),
            _clip(item["agent_name"], 40),
            _number(item["run_count"]),
            _number(item["message_count"]),
            _local_time(item["created_at"]),
            _local_time(item["updated_at"]),
        ]
        for item in listed
    ]
    _print_table(console, cols, rows, title, _zone_caption())


def _print_session(console: Console, exported: dict[str, Any]) -> None:
    session = exported["session_id"]
    if exported["messages"]:
        cols = [
            _Col("time", keep=8),
            _Col("role", keep=9),
            _Col("agent", text=True, max_width=20, keep=4),
            _Col("run", keep=3),
            _Col("content", text=True, keep=7),
        ]
        rows = [
            [
                _local_time(message["timestamp"]),
                Text(message["role"], style="cyan" if message["role"] == "user" else "green"),
                _clip((message.get("metadata") or {}).get("agent_name"), 40),
                Text((message.get("metadata") or {}).get("run_id") or "—"),
                _clip(message["content"], 400),
            ]
            for message in exported["messages"]
        ]
        _print_table(console, cols, rows, f"Session {_safe(session)}: {_count(len(rows), 'message')}", _zone_caption())
    else:
        _empty(f"Session {session} has no messages.")
    state = exported["runtime_state"]
    if state:
        cols = [
            _Col("runtime", text=True, max_width=24, keep=9),
            _Col("turn", text=True, max_width=24, keep=8),
            _Col("state", text=True, keep=7),
        ]
        rows = [
            [_clip(runtime, 60), _clip(turn, 60), _clip(value, 400)]
            for runtime, turns in state.items()
            for turn, value in turns.items()
        ]
        _print_table(console, cols, rows, f"Runtime state: {_count(len(rows), 'turn')}")


def _run_status(row: dict[str, Any]) -> str:
    if row.get("end_time_unix_nano") is None:
        return "running"
    return "failed" if row.get("status_code") == "ERROR" else "completed"


def _print_logs(console: Console, logs: dict[str, Any], run: dict[str, Any] | None) -> None:
    header = Text.assemble(("Run ", "bold"), (logs["run_id"], "bold"))
    if run is not None:
        header.append("  ")
        header.append_text(_status(_run_status(run)))
        for label, value in (
            ("agent", run.get("agent_name")),
            ("session", run.get("session_id")),
            ("user", run.get("user_id")),
        ):
            if value:
                header.append(f"  {label} ", style="dim")
                header.append_text(_clip(value, 60))
        start = run.get("start_time_unix_nano")
        if start is not None:
            header.append("  started ", style="dim")
            header.append_text(_local_time(start / 1e9))
            header.append(f" ({_zone()})", style="dim")
    console.print(header, soft_wrap=True)

    nodes = logs["nodes"]
    if nodes:
        cols = [
            _Col("#", justify="right", keep=1, style="dim"),
            _Col("node", text=True, max_width=24, keep=10),
            _Col("type", keep=7),
            _STATUS,
            _Col("time", justify="right", keep=6),
            _Col("input", text=True, max_width=36, keep=3),
            _Col("output / error", text=True, max_width=56, keep=4),
        ]
        rows = []
        for number, node in enumerate(nodes, 1):
            error = node.get("error_message")
            rows.append(
                [
                    Text(str(number)),
                    _clip(node["id"], 60),
                    _clip(node["type"], 16),
                    _status(node["status"]),
                    Text(node["time"] or "—"),
                    _clip(node["input"]),
                    _red(_clip(error, 200)) if error else _clip(node["output"]),
                ]
            )
        _print_table(console, cols, rows)
    else:
        console.print(Text("No nodes recorded for this run.", style="dim"))

    errors = logs["errors"]
    if errors:
        console.print(Text(f"Errors ({len(errors)})", style="bold red"))
        for error in errors:
            where = f"node {error['node_id']}" if error.get("node_id") else "run"
            line = Text("  • ", style="red")
            line.append(f"{where}: ", style="bold")
            line.append_text(_clip(error.get("error_message") or error.get("error_type") or "error", 300))
            console.print(line, soft_wrap=True)

    summary = logs["summary"]
    console.print(
        Text.assemble(
            ("Summary: ", "bold"),
            f"{_count(summary['total_nodes'], 'node')} (",
            (f"{summary['successful_nodes']} ok", "green"),
            ", ",
            (f"{summary['failed_nodes']} failed", "red" if summary["failed_nodes"] else ""),
            f"), duration {summary['total_duration'] or 'still running'}, "
            f"{summary['tokens_used']:,} tokens, {summary['cost_cents']}¢",
        ),
        soft_wrap=True,
    )
    final = logs["final_output"]
    if final is not None:
        text = final if len(final) <= 1000 else final[:999] + "…"
        console.print(Panel(Text(text), title="final output", title_align="left", expand=False))


def _print_stats(console: Console, figures: dict[str, Any], title: str) -> None:
    """One run summary as a two-column table, then (for an agent) a row per node type."""
    executions = (
        f"{figures['total_executions']:,}: {figures['completed_executions']:,} completed, "
        f"{figures['failed_executions']:,} failed, {figures['running_executions']:,} running"
    )
    rows = [
        ("executions", Text(executions)),
        ("success rate", _rate(figures["success_rate"])),
        (
            "tokens",
            Text(f"{figures['tokens_used']:,} ({figures['input_tokens']:,} in, {figures['output_tokens']:,} out)"),
        ),
        ("cost", Text(f"{figures['cost_cents']:,} ¢ (average {_number(figures['avg_cost_cents'])} ¢ per run)")),
        ("nodes", Text(f"{figures['total_nodes']:,} ({figures['failed_nodes']:,} failed)")),
        ("duration avg", _ms(figures["avg_duration_ms"])),
        ("duration p50 / p95", Text.assemble(_ms(figures["p50_duration_ms"]), " / ", _ms(figures["p95_duration_ms"]))),
        ("duration max", _ms(figures["max_duration_ms"])),
        ("first run", _local_time(figures["first_execution_at"])),
        ("last run", _local_time(figures["last_execution_at"])),
    ]
    # both columns shrink and wrap, so a narrow terminal still shows every figure with its value (the value would
    # otherwise be the first column to go); below ~19 columns the names go, the values stay
    cols = [
        _Col("figure", text=True, keep=9, wrap=True, min_width=6),
        _Col("value", text=True, keep=10, wrap=True, min_width=6),
    ]
    _print_table(console, cols, [[Text(name, style="bold"), value] for name, value in rows], title, _zone_caption())
    node_types = figures.get("node_types") or {}
    if node_types:
        cols = [
            _Col("node type", keep=9),
            _Col("nodes", justify="right", keep=8),
            _Col("failed", justify="right", keep=7),
            _Col("success", justify="right", keep=6),
            _Col("tokens", justify="right", keep=4),
            _Col("cost ¢", justify="right", keep=3),
            _Col("p50", justify="right", keep=5),
            _Col("p95", justify="right", keep=5),
        ]
        rows_by_type = [
            [
                Text(name),
                _number(f["count"]),
                _failures(f["failed"]),
                _rate(f["success_rate"]),
                _number(f["tokens_used"]),
                _number(f["cost_cents"]),
                _ms(f["p50_duration_ms"]),
                _ms(f["p95_duration_ms"]),
            ]
            for name, f in node_types.items()
        ]
        _print_table(console, cols, rows_by_type, "Per node type")


def _print_stats_per_user(console: Console, per_user: dict[str, dict[str, Any]], window: str) -> None:
    cols = [
        _Col("user", text=True, max_width=32, keep=9),
        _Col("runs", justify="right", keep=8),
        _Col("failed", justify="right", keep=7),
        _Col("running", justify="right", keep=3),
        _Col("success", justify="right", keep=6),
        _Col("tokens", justify="right", keep=5),
        _Col("cost ¢", justify="right", keep=5),
        _Col("p50", justify="right", keep=4),
        _Col("p95", justify="right", keep=4),
        _Col("last run", keep=2),
    ]
    rows = [
        [
            _clip(user_id) if user_id is not None else Text("(no user)", style="dim"),
            _number(f["total_executions"]),
            _failures(f["failed_executions"]),
            _number(f["running_executions"]),
            _rate(f["success_rate"]),
            _number(f["tokens_used"]),
            _number(f["cost_cents"]),
            _ms(f["p50_duration_ms"]),
            _ms(f["p95_duration_ms"]),
            _local_time(f["last_execution_at"]),
        ]
        for user_id, f in per_user.items()
    ]
    _print_table(console, cols, rows, f"Per user, {window} ({_count(len(rows), 'user')})", _zone_caption())


def _sql_cell(value: Any) -> Text:
    if value is None:
        return Text("NULL", style="dim")
    if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
        return Text(str(value))  # exact, as it could be pasted back into a query (no rounding, no separators)
    if isinstance(value, dt.datetime):
        return Text(value.isoformat(sep=" "))  # exact: fractions of a second shown when there are any
    return _clip(
        value if isinstance(value, str) else _json_default(value) if not isinstance(value, (list, dict)) else value, 200
    )


def _print_sql(
    console: Console, columns: Sequence[str], rows: Sequence[Sequence[Any]], title: str | None = None
) -> None:
    cols = []
    for index, name in enumerate(columns):
        numeric = all(
            isinstance(r[index], (int, float, decimal.Decimal)) and not isinstance(r[index], bool)
            for r in rows[:50]
            if r[index] is not None
        )
        if numeric and rows:
            cols.append(_Col(name, justify="right", keep=len(columns) - index))
        else:
            cols.append(_Col(name, text=True, max_width=60, keep=len(columns) - index))
    times = any(isinstance(v, (dt.datetime, dt.date)) for row in rows[:50] for v in row)
    _print_table(console, cols, [[_sql_cell(v) for v in row] for row in rows], title, "times in UTC" if times else None)


def _print_gc(counts: dict[str, int], db: HistoryDB, state_url: str, today: dt.datetime | None, dry_run: bool) -> None:
    day = (today or dt.datetime.now(dt.timezone.utc)).date().isoformat()
    where = db.root.resolve() if db.root else state_url
    if not counts["executions_deleted"] and not counts["nodes_deleted"]:
        _stdout().print(Text(f"Nothing has expired in {where} (today taken as {day} UTC)."), soft_wrap=True)
        return
    _stdout().print(
        Text.assemble(
            "Would remove expired partitions from " if dry_run else "Removed expired partitions from ",
            str(where),
            ": ",
            (f"{counts['executions_deleted']} executions", "bold"),
            " and ",
            (f"{counts['nodes_deleted']} nodes", "bold"),
            f" {'would be ' if dry_run else ''}deleted (today taken as {day} UTC).",
        ),
        soft_wrap=True,
    )
