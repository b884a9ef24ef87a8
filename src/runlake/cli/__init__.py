"""The ``runlake`` command line: generate a demo history, and read runs, traces, history, logs, statistics and SQL.

Every command takes ``--state-url`` (the lake folder or a ``file://`` URL, and for the commands that read, ``gc``,
``compact`` and ``forward`` also an ``s3://bucket/prefix``: ``RemoteStateUrl``; else ``$RUNLAKE_STATE_URL``; else
``./runlake-data``) and ``--json`` (exactly what ``HistoryDB`` returns, as JSON, and nothing else on stdout).

More commands (``serve``, ``compact``, ``forward``, ``import``) are registered on the module-level ``app`` by
other modules, for example::

    from runlake.cli import DEFAULT_STATE_URL, AsJson, StateUrl, app, open_db

    @app.command()
    def compact(state_url: StateUrl = DEFAULT_STATE_URL, as_json: AsJson = False) -> None: ...

and listed in ``COMMAND_MODULES`` so that ``main()`` imports them before it runs the app.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import importlib
import json
import math
import os
import re
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, NoReturn

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL, STATE_URL_ENV, STATE_URL_ENVS
from rich.console import Console
from rich.panel import Panel
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from ..history import HistoryDB

__all__ = [
    "COMMAND_MODULES",
    "DEFAULT_STATE_URL",
    "STATE_URL_ENV",
    "AsJson",
    "RemoteStateUrl",
    "StateUrl",
    "app",
    "fail",
    "main",
    "open_db",
    "print_json",
]

# Modules that add commands to ``app`` (imported by ``main()`` before the app runs).
COMMAND_MODULES: list[str] = ["runlake.cli.ops"]

app = typer.Typer(
    name="runlake",
    help=(
        "Keep, query and expire AI agents' execution history: OpenTelemetry spans in a Parquet lake, "
        "read back with DuckDB in PraisonAI and CodexOS shapes.\n\n"
        "Start with `runlake demo`, then try `runlake history` and `runlake logs RUN_ID`. Every command "
        "reads the lake given by `--state-url`, else `$RUNLAKE_STATE_URL`, else `$PRAISONAI_STATE_URL`, "
        "else `./runlake-data`."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals can hold prompts and credentials
    context_settings={"help_option_names": ["-h", "--help"]},
)

_PRECEDENCE = (
    "Precedence: --state-url if given, else $RUNLAKE_STATE_URL, else $PRAISONAI_STATE_URL, else ./runlake-data."
)


def _state_url_option(metavar: str, what: str) -> Any:
    """``--state-url`` with the environment variables runlake reads, saying what kind of lake the command takes."""
    return typer.Option(
        "--state-url",
        envvar=list(STATE_URL_ENVS),
        show_envvar=True,
        metavar=metavar,
        help=f"{what} {_PRECEDENCE}",
    )


# commands that need a local folder (demo, sessions, import)
StateUrl = Annotated[str, _state_url_option("PATH|file://URL", "Lake folder (or file:// URL).")]
# commands that take an s3:// lake too (open_db, _lake_root(..., remote_ok=True))
RemoteStateUrl = Annotated[
    str,
    _state_url_option(
        "PATH|file://URL|s3://BUCKET/PREFIX", "Lake folder, file:// URL, or s3://bucket/prefix (S3 or S3-compatible)."
    ),
]
AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help=(
            "Machine output as indented JSON, nothing else on stdout (history, runs, traces, logs: the dicts HistoryDB "
            "returns)."
        ),
    ),
]
Limit = Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many rows.")]

_STATUS_STYLES = {
    "completed": "green",
    "ok": "green",
    "failed": "red",
    "error": "red",
    "running": "yellow",
}
_MISSING = Text("—", style="dim")


# ---- shared helpers (also for commands registered by other modules) -----------------------------------------
_PIPE_WIDTH = 240  # output to a file or a pipe: no terminal to fit, so tables keep their columns


def _stdout_closed() -> NoReturn:
    """Stop quietly because the reader of stdout went away (``runlake history | head -1``, a pager quit early).

    Exit status 0, no message: the reader took what it wanted, so nothing failed. Not 1, which rich and some click
    versions use, nor death by SIGPIPE (141, what C tools do): either makes ``set -o pipefail`` scripts fail for a
    plain ``| head``, and a message would be noise on stderr. stdout is pointed at /dev/null first, so that the
    interpreter's last flush of what is still buffered cannot fail and print "Exception ignored ... BrokenPipeError"
    (https://docs.python.org/3/library/signal.html#note-on-sigpipe). ``SystemExit`` rather than ``typer.Exit``: it
    passes the commands' ``except Exception`` blocks, which would report it as an error.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no file descriptor (a test's captured stdout): nothing to flush into a pipe
        pass
    raise SystemExit(0)


class _StdoutConsole(Console):
    """The console of every command's output on stdout: a closed pipe ends the command quietly (``_stdout_closed``)
    instead of rich's default (exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        _stdout_closed()


def _stdout() -> Console:
    console = _StdoutConsole(highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def _stderr() -> Console:
    return Console(stderr=True, highlight=False)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: str) -> str:
    """``text`` with control characters (terminal escapes among them) shown as ``\\xNN`` instead of obeyed."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` on stderr (no traceback) and exit with ``code``."""
    _stderr().print(Text(_safe(f"runlake: {message}"), style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout (plain, no colour, no wrapping; NaN and infinities as null)."""
    value = _finite(value)
    text = json.dumps(value, indent=2, ensure_ascii=False, default=_json_default)
    try:
        try:
            sys.stdout.write(text + "\n")
        except UnicodeEncodeError:  # a stdout that cannot encode the data: same JSON, \u-escaped
            sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=True, default=_json_default) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()


def _lake_root(state_url: str, remote_ok: bool = False) -> Path:
    """The lake's root: a folder, or (for commands that only read, with ``remote_ok``) an ``s3://`` lake."""
    from opentelemetry.exporter.runlake.layout import resolve_lake, resolve_state_url

    try:
        root = resolve_lake(state_url) if remote_ok else resolve_state_url(state_url)
    except ValueError as error:
        fail(str(error))
    if root is None:
        fail(f"no lake given: pass --state-url or set ${STATE_URL_ENV}")
    return root


def no_lake(root: Path) -> NoReturn:
    """Exit 1 saying the lake folder is missing, and how to give one or make one."""
    fail(
        f"no lake at {root.resolve()}: the folder does not exist. "
        f"Pass --state-url or set ${STATE_URL_ENV}; `runlake demo --state-url {shlex.quote(str(root))}` "
        "creates an example lake."
    )


def open_db(state_url: str) -> HistoryDB:
    """A ``HistoryDB`` on an existing lake; a missing folder is a clear error (exit 1), not a traceback."""
    from opentelemetry.exporter.runlake.layout import is_remote

    from ..history import HistoryDB

    root = _lake_root(state_url, remote_ok=True)
    if is_remote(root):
        return HistoryDB(root)
    if not root.exists():
        no_lake(root)
    if not root.is_dir():
        fail(f"{root.resolve()} is not a folder; a runlake lake is a folder")
    return HistoryDB(root)


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn storage and query failures into a one-line message and exit code 1."""
    import duckdb

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except duckdb.Error as error:
        fail(f"query failed: {error}")
    except OSError as error:
        fail(f"cannot read the lake: {error}")


# ---- formatting ---------------------------------------------------------------------------------------------
def _clip(value: Any, limit: int = 120) -> Text:
    """One line of at most ``limit`` characters (whitespace collapsed, ellipsis when cut) for a table cell."""
    if value is None:
        return _MISSING.copy()
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=_json_default)
    text = _safe(" ".join(text.split()))
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return Text(text)


def _red(text: Text) -> Text:
    text.stylize("red")
    return text


def _status(status: str | None) -> Text:
    if not status:
        return _MISSING.copy()
    return Text(status, style=_STATUS_STYLES.get(status, ""))


def _as_datetime(moment: float | str | dt.datetime | None) -> dt.datetime | None:
    if moment is None:
        return None
    if isinstance(moment, dt.datetime):
        return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)
    if isinstance(moment, str):
        try:
            parsed = dt.datetime.fromisoformat(moment.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)
    return dt.datetime.fromtimestamp(float(moment), tz=dt.timezone.utc)


def _local_time(moment: float | str | dt.datetime | None) -> Text:
    """Local, readable ISO time (``2025-06-01 14:03:22``); the table caption names the zone."""
    when = _as_datetime(moment)
    if when is None:
        return _MISSING.copy() if moment is None else Text(str(moment))
    return Text(when.astimezone().strftime("%Y-%m-%d %H:%M:%S"))


def _zone() -> str:
    now = dt.datetime.now().astimezone()
    return now.tzname() or now.strftime("%z")


def _count(n: int, noun: str) -> str:
    """``1 node``, ``2 nodes``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _zone_caption() -> str:
    return f"times in {_zone()}, this machine's time zone"


def _duration(started: float | None, ended: float | None) -> Text:
    from ..history import format_duration

    if started is None or ended is None:
        return _MISSING.copy()
    return Text(format_duration(int(started * 1e9), int(ended * 1e9)) or "—")


def _number(value: Any) -> Text:
    if value is None:
        return _MISSING.copy()
    if isinstance(value, bool):
        return Text(str(value))
    if isinstance(value, int):
        return Text(f"{value:,}")
    if isinstance(value, decimal.Decimal):
        value = float(value)
    if isinstance(value, float):
        return Text(f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.1f}")
    return Text(str(value))


def _empty(message: str) -> None:
    _stdout().print(Text(_safe(message), style="dim"), soft_wrap=True)


@dataclass
class _Col:
    """A table column. ``text`` columns shrink (with an ellipsis) to fit; the others keep their width.

    When even the shrunk table does not fit the terminal, columns with the lowest ``keep`` go first. A text column
    is shown down to ``min_width`` characters (default ``_MIN_TEXT``); with ``wrap`` its cells take more lines
    instead of an ellipsis (words longer than the column are cut across lines): for short values that must be read
    whole, like the figures of ``runlake stats``.
    """

    header: str
    text: bool = False
    max_width: int | None = None
    keep: int = 5
    justify: Literal["left", "right"] = "left"
    style: str | None = None
    wrap: bool = False
    min_width: int | None = None


_MIN_TEXT = 16  # a free-text column narrower than this is not worth showing


def _fit_table(
    cols: Sequence[_Col],
    rows: Sequence[Sequence[Text]],
    title: str | None = None,
    caption: str | None = None,
    width: int | None = None,
) -> tuple[Table, list[str]]:
    """A table whose column widths fit ``width`` (the terminal); returns it with the headers left out."""
    width = width or _stdout().width
    natural = []
    for index, col in enumerate(cols):
        size = max([len(col.header), *(row[index].cell_len for row in rows)])
        natural.append(min(size, col.max_width) if col.text and col.max_width else size)
    active = list(range(len(cols)))
    while True:
        texts = [i for i in active if cols[i].text]
        room = width - (3 * len(active) + 1) - sum(natural[i] for i in active if not cols[i].text)
        shortest = sum(min(natural[i], _MIN_TEXT if cols[i].min_width is None else cols[i].min_width) for i in texts)
        if room >= shortest or len(active) <= 1:
            break
        active.remove(min(active, key=lambda i: (cols[i].keep, -i)))
    widths = {i: natural[i] for i in active if not cols[i].text}
    remaining = max(room, 0)
    ordered = sorted(texts, key=lambda i: natural[i])
    for done, index in enumerate(ordered):
        share = remaining // (len(ordered) - done)
        widths[index] = max(1, min(natural[index], share))
        remaining -= widths[index]
    table = Table(
        title=Text(_safe(title)) if isinstance(title, str) else title,  # data in titles is never markup
        title_justify="left",
        title_style="bold",
        caption=caption,
        caption_justify="left",
        caption_style="dim",
        header_style="bold",
    )
    for index in active:
        col = cols[index]
        table.add_column(
            Text(_safe(col.header)),
            justify=col.justify,
            style=col.style,
            no_wrap=not col.wrap,
            overflow="fold" if col.wrap else "ellipsis",
            width=widths[index],
        )
    for row in rows:
        table.add_row(*(row[i] for i in active))
    return table, [cols[i].header for i in range(len(cols)) if i not in active]


def _print_table(
    console: Console,
    cols: Sequence[_Col],
    rows: Sequence[Sequence[Text]],
    title: str | None = None,
    caption: str | None = None,
) -> None:
    table, hidden = _fit_table(cols, rows, title, caption, console.width)
    console.print(table)
    if hidden:
        names = ", ".join(hidden) if len(hidden) <= 6 else f"{len(hidden)} columns: {', '.join(hidden[:4])}, …"
        console.print(
            Text(f"(not shown for lack of width: {names}; widen the terminal or use --json)", style="dim"),
            soft_wrap=True,
        )


# ---- rendering of HistoryDB shapes --------------------------------------------------------------------------
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


# ---- commands ----------------------------------------------------------------------------------------------
DEMO_SQL = """SELECT agent_name AS agent,
       count(*) AS runs,
       count(*) FILTER (WHERE status_code = 'ERROR') AS failed,
       round(100.0 * count(*) FILTER (WHERE status_code = 'ERROR') / count(*), 1) AS failure_pct,
       sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens,
       round(sum(coalesce(cost_cents, 0)), 2) AS cost_cents,
       round(median(duration_ms) / 1000, 1) AS median_s
FROM runs GROUP BY agent_name ORDER BY runs DESC, agent"""


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


@app.command()
def demo(
    state_url: StateUrl = DEFAULT_STATE_URL,
    sessions: Annotated[int, typer.Option(min=1, max=100_000, help="How many sessions to generate.")] = 12,
    seed: Annotated[int, typer.Option(help="Seed of the workload's random choices (content, timing, failures).")] = 7,
    days: Annotated[int, typer.Option(min=1, max=3650, help="Spread the history over this many past days.")] = 7,
    as_json: AsJson = False,
) -> None:
    """Write a realistic agent history into a lake through the real instrumentation, then show it.

    Three agents (bug-triager, researcher, support-bot) serve several users across sessions spread over the
    last days: llm, tool, retrieval and router nodes, token usage, cost, retries, failed nodes, failed runs
    and one run still in progress. Time is simulated, so it takes a second or two. Then it prints the latest
    history, one run's logs, a SQL aggregate per agent, where the lake is and what to try next.
    Runs are added to whatever the lake already holds. `--json` prints only the workload summary.

    **Example:**

        runlake demo --state-url ./runlake-data --sessions 20 --seed 1
    """
    from ..demo import DemoWriteError, generate_workload, lake_usage

    root = _lake_root(state_url)  # a bad URL fails before anything is written
    if root.exists() and not root.is_dir():
        fail(f"{root.resolve()} is not a folder; a runlake lake is a folder")
    with _friendly_errors():
        try:
            summary = generate_workload(state_url, sessions=sessions, seed=seed, days=days)
        except (ValueError, DemoWriteError) as error:
            fail(str(error))
    if as_json:
        print_json(summary)
        return

    console = _stdout()
    root, files, size = lake_usage(state_url)
    db = open_db(str(root))
    console.print(Rule("runlake demo", align="left"), width=min(console.width, 100))
    console.print(
        Text.assemble(
            "Wrote ",
            (f"{summary['runs']} runs", "bold"),
            " (",
            (f"{summary['failed_runs']} failed", "red"),
            ", ",
            (f"{summary['running_runs']} still running", "yellow"),
            f") with {summary['nodes']} nodes ({summary['failed_nodes']} failed) and {summary['turns']} turns, "
            f"in {summary['sessions']} sessions of {summary['users']} users over the last {days} days, "
            "through runlake.run / node / turn.",
            " The lake already held runs: the tables below show them too." if summary["added_to_existing"] else "",
        ),
        soft_wrap=True,
    )

    with _friendly_errors():
        console.print()
        items = db.get_history(limit=10)
        _print_history(console, items, "Latest runs   (runlake history)")

        example = (summary["runs_with_failed_nodes"] or summary["failed_run_ids"] or [None])[-1]
        if example is None and items:
            example = items[0]["run_id"]
        example_row = db.find_run(example) if example is not None else None
        if example is not None:
            console.print()
            console.print(Text(f"One run's logs   (runlake logs {example})", style="bold"))
            _print_logs(console, db.get_logs(example), example_row)

        console.print()
        columns, rows = db.sql_rows(DEMO_SQL) or ([], [])
        _print_sql(console, columns, rows, "Per agent   (runlake sql)")

    lake = shlex.quote(str(root))
    console.print()
    console.print(Rule("The lake", align="left"), width=min(console.width, 100))
    console.print(Text(str(root), style="bold"), soft_wrap=True)
    console.print(
        f"{files} Parquet files, {_human_bytes(size)}: "
        "spans/ partitioned by day and session, runs/ (the index) by day.",
        soft_wrap=True,
    )
    console.print()
    console.print(Text("Try next:", style="bold"))
    # double quotes: the query holds single quotes and nothing a POSIX shell expands inside double quotes
    query = (
        '"SELECT node_type, count(*) AS nodes, round(avg(duration_ms)) AS avg_ms, '
        "count(*) FILTER (WHERE status_code = 'ERROR') AS failed "
        "FROM spans WHERE span_type = 'node' GROUP BY 1 ORDER BY 2 DESC\""
    )
    commands = [f"runlake history --state-url {lake}"]
    if example is not None:
        commands.append(f"runlake logs {example} --state-url {lake}")
    if example_row and example_row.get("session_id"):
        commands.append(f"runlake runs {shlex.quote(example_row['session_id'])} --state-url {lake}")
    if example_row and example_row.get("user_id"):
        commands.append(f"runlake traces --user {shlex.quote(example_row['user_id'])} --state-url {lake}")
    commands += [
        f"runlake sql {query} --state-url {lake}",
        f"runlake history --json --limit 3 --state-url {lake}",
    ]
    if "serve" in _command_names():
        commands.append(f"runlake serve --no-auth --state-url {lake}   # http://127.0.0.1:8000/docs")
    commands.append(f"export {STATE_URL_ENV}={lake}   # then --state-url can be left out")
    for command in commands:
        console.print(Text("  ") + Text(command, style="cyan"), soft_wrap=True)


def _command_names() -> set[str]:
    names = set()
    for info in app.registered_commands:
        names.add(info.name or (info.callback.__name__.replace("_", "-") if info.callback else ""))
    return names


@app.command()
def runs(
    session_id: Annotated[
        str | None,
        typer.Argument(metavar="SESSION_ID", help="Session id; leave out to list the latest runs across all sessions."),
    ] = None,
    limit: Limit = 20,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Runs of one session, newest first (PraisonAI `get_runs`); without a session, the latest runs of all.

    Without SESSION_ID it lists the latest root runs across sessions with their session, agent and user
    (PraisonAI `get_traces`; `--json` then prints those trace dicts, spans included).

    **Example:**

        runlake runs supp-1a2b3c4d --limit 5
    """
    db = open_db(state_url)
    with _friendly_errors():
        if session_id is not None:
            result = db.get_runs(session_id, limit=limit)
        else:
            result = db.get_traces(limit=limit)
    if as_json:
        print_json(result)
        return
    if not result:
        _empty(f"No runs in session {session_id}." if session_id is not None else "No runs in this lake yet.")
        return
    if session_id is not None:
        _print_session_runs(_stdout(), result, session_id)
    else:
        _print_traces(_stdout(), result, "Latest runs across sessions", with_run=True)


@app.command()
def traces(
    session: Annotated[str | None, typer.Option("--session", "-s", help="Only this session.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user.")] = None,
    limit: Limit = 20,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Traces, newest first, each described by its first run (its root), with its span count (PraisonAI
    `get_traces`).

    **Example:**

        runlake traces --user user-alice --limit 10
    """
    db = open_db(state_url)
    with _friendly_errors():
        result = db.get_traces(session_id=session, user_id=user, limit=limit)
    if as_json:
        print_json(result)
        return
    scope = []
    if session is not None:
        scope.append(f"in session {session}")
    if user is not None:
        scope.append(f"of user {user}")
    if not result:
        _empty(f"No traces {' '.join(scope)}." if scope else "No traces in this lake yet.")
        return
    _print_traces(_stdout(), result, " ".join(["Traces", *scope]))


@app.command()
def sessions(
    session: Annotated[
        str | None,
        typer.Argument(metavar="[SESSION_ID]", help="Show this session: its messages and runtime state."),
    ] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's sessions.")] = None,
    tenant: Annotated[
        str | None,
        typer.Option(
            "--tenant", envvar="RUNLAKE_TENANT_ID", help="The tenant whose sessions to read (default: default)."
        ),
    ] = None,
    limit: Limit = 20,
    state_url: StateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Sessions, newest first; with a SESSION_ID, that session's messages and runtime state (PraisonAI's session
    file: each root run's input and output, then state by runtime and turn; `SessionStore`, docs/sessions.md).

    **Examples:**

        runlake sessions --user user-alice
        runlake sessions rese-d1a4c01e --json
    """
    from ..sessions import SessionStore

    if session is not None and not session.strip():
        fail("SESSION_ID is empty: give a session id, or none to list the sessions", code=2)
    root = _lake_root(state_url)
    if not root.exists():
        no_lake(root)
    if not root.is_dir():
        fail(f"{root.resolve()} is not a folder; a runlake lake is a folder")
    store = SessionStore(root, tenant_id=tenant)
    with _friendly_errors():
        if session is None:
            listed = store.list_sessions(user_id=user, limit=limit)
        else:
            exported = store.export_session(session)
    if session is None:
        if as_json:
            print_json(listed)
        elif not listed:
            who = f" of user {user!r}" if user is not None else ""
            _empty(f"No sessions{who} in tenant {store.tenant_id!r}.{_other_tenants(root, store.tenant_id)}")
        else:
            _print_sessions(_stdout(), listed, f"Sessions of {user}" if user is not None else "Latest sessions")
        return
    if as_json:
        print_json(exported)
        return
    if not exported["messages"] and not exported["runtime_state"]:
        _empty(
            f"No messages or runtime state in session {session} (tenant {store.tenant_id!r})."
            + _other_tenants(root, store.tenant_id)
        )
        return
    _print_session(_stdout(), exported)


def _other_tenants(root: Path, tenant: str) -> str:
    """A hint naming the lake's other tenants (sessions are read one tenant at a time), or nothing."""
    from opentelemetry.exporter.runlake.layout import tenants

    others = [t for t in tenants(root, "spans") if t != tenant]
    if not others:
        return ""
    shown = ", ".join(repr(t) for t in others[:5]) + (", …" if len(others) > 5 else "")
    return f" This lake also has tenant(s) {shown}: pass --tenant."


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


@app.command()
def history(
    agent: Annotated[str | None, typer.Option("--agent", "-a", help="Only this agent (name or id).")] = None,
    skip: Annotated[int, typer.Option("--skip", min=0, help="Skip this many of the newest runs.")] = 0,
    limit: Limit = 20,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Execution history, newest first: status, duration, tokens, cost (CodexOS `/api/v1/agents/history`).

    **Example:**

        runlake history --agent bug-triager --skip 20 --limit 20
    """
    db = open_db(state_url)
    with _friendly_errors():
        items = db.get_history(agent_id=agent, skip=skip, limit=limit)
    if as_json:
        print_json(items)
        return
    if not items:
        if skip:
            _empty(f"No runs{f' of agent {agent!r}' if agent is not None else ''} after skipping {skip}.")
        else:
            _empty(f"No runs of agent {agent!r}." if agent is not None else "No runs in this lake yet.")
        return
    title = f"Runs of {agent}" if agent is not None else "Latest runs"
    if skip:
        title += f" (after skipping {skip})"
    _print_history(_stdout(), items, title)


@app.command()
def logs(
    run_id: Annotated[str, typer.Argument(metavar="RUN_ID", help="The run's id (as shown by `runlake history`).")],
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Node-level logs of one run: nodes, errors, final output and summary (CodexOS `/api/v1/agents/logs`).

    An unknown run id prints a message on stderr and exits with 1.

    **Example:**

        runlake logs 5f1c2e9a0b7d4c31 --state-url ./runlake-data
    """
    db = open_db(state_url)
    with _friendly_errors():
        try:
            result = db.get_logs(run_id)
        except LookupError:
            fail(f"run {run_id!r} not found in the lake at {db.root.resolve() if db.root else state_url}")
        run = None if as_json else db.find_run(run_id)
    if as_json:
        print_json(result)
        return
    _print_logs(_stdout(), result, run)


@app.command()
def stats(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Only this user's runs.")] = None,
    agent: Annotated[
        str | None, typer.Option("--agent", "-a", help="Only this agent (name or id), with figures per node type.")
    ] = None,
    per_user: Annotated[bool, typer.Option("--per-user", help="One row per user instead of one summary.")] = False,
    days: Annotated[
        int, typer.Option("--days", "-d", min=1, max=36_500, help="The window: runs started in the last N days.")
    ] = 30,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Execution statistics of the last days: counts, success rate, tokens, cost, durations (CodexOS
    `get_execution_statistics`, `get_agent_performance_metrics`, per user).

    **Examples:**

        runlake stats --days 7
        runlake stats --agent bug-triager
        runlake stats --per-user --json
    """
    from ..service import ExecutionHistoryService

    if per_user and (user is not None or agent is not None):
        fail("--per-user shows every user; leave out --user and --agent", code=2)
    if user is not None and agent is not None:
        fail("give --user or --agent, not both", code=2)
    service = ExecutionHistoryService(open_db(state_url))
    with _friendly_errors():
        if per_user:
            result: dict[str, Any] = service.statistics_per_user(days)
        else:
            result = service.statistics(user_id=user, agent_id=agent, days=days)
    if as_json:
        print_json(result)
        return
    console = _stdout()
    window = f"the last {_count(days, 'day')}"
    if per_user:
        if not result:
            _empty(f"No runs in {window}.")
            return
        _print_stats_per_user(console, result, window)
        return
    if not result["total_executions"]:
        who = f" of agent {agent!r}" if agent is not None else f" of user {user!r}" if user is not None else ""
        _empty(f"No runs{who} in {window}.")
        return
    title = f"Agent {agent}" if agent is not None else f"User {user}" if user is not None else "All runs"
    _print_stats(console, result, f"{title}, {window}")


def _ms(value: float | None) -> Text:
    """A duration given in milliseconds, in the unit that reads best."""
    if value is None:
        return _MISSING.copy()
    if value < 1000:
        return Text(f"{value:,.0f} ms")
    if value < 120_000:
        return Text(f"{value / 1000:,.1f} s")
    return Text(f"{value / 60_000:,.1f} min")


def _failures(count: int) -> Text:
    """A count of failures, red when there are any."""
    return _red(_number(count)) if count else _number(count)


def _rate(value: float | None) -> Text:
    return _MISSING.copy() if value is None else Text(f"{value:.1%}")


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


@app.command()
def sql(
    query: Annotated[
        str, typer.Argument(metavar="QUERY", help="A DuckDB SQL query over the views `spans` and `runs`.")
    ],
    max_rows: Annotated[
        int,
        typer.Option(
            "--max-rows", min=1, max=10_000_000, help="Show at most this many rows in the table (not with --json)."
        ),
    ] = 200,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Run DuckDB SQL over the lake's views `spans` and `runs`.

    `spans` has one row per span (runs, nodes, turns), `runs` one row per run (the index); both add
    `start_time`, `end_time`, `duration_ms` and `day` (docs/schema.md lists the columns; times are UTC). The
    result is a table (values exact, times in UTC); `--json` prints a list of row dicts. A SQL error prints DuckDB's
    message and exits with 1. The query runs with your own file access, as in the duckdb shell (`COPY ... TO`,
    `read_csv(...)` and `ATTACH` work).

    **Example:**

        runlake sql "SELECT agent_name, count(*) AS runs FROM runs GROUP BY 1 ORDER BY 2 DESC"
    """
    import duckdb

    if not query.strip():
        fail('empty query: give one statement, e.g. runlake sql "SELECT count(*) FROM runs"', code=2)
    db = open_db(state_url)
    try:
        result = db.sql_rows(query, None if as_json else max_rows + 1)
        columns, rows = result if result is not None else ([], [])
        more = not as_json and len(rows) > max_rows
        rows = rows[:max_rows] if more else rows
    except duckdb.Error as error:
        fail(f"SQL error: {error}")
    except OSError as error:
        fail(f"cannot read the lake: {error}")
    except Exception as error:  # noqa: BLE001 - e.g. a value Python cannot represent: one line, not a traceback
        fail(f"SQL error: {type(error).__name__}: {error}")
    if as_json:
        print_json([dict(zip(columns, row)) for row in rows])
        return
    console = _stdout()
    if result is None:
        _empty("Statement executed; it returns no rows.")
        return
    _print_sql(console, columns, rows)
    if not rows:
        _empty("(no rows)")
    if more:
        _empty(f"Only the first {max_rows} rows are shown; raise --max-rows or use --json for all.")


@app.command()
def gc(
    now: Annotated[
        str | None,
        typer.Option("--now", metavar="YYYY-MM-DD", help="Take this UTC day as today (default: the real today)."),
    ] = None,
    max_age_days: Annotated[
        int | None,
        typer.Option("--max-age-days", min=1, help="Also remove anything older than this, whatever its own TTL."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Delete expired history: every day partition whose TTL has passed goes, folder by folder.

    A run started on UTC day D with `ttl_days` N is kept through day D+N and removed from day D+N+1.
    Prints how many executions and nodes were deleted (`--json`: the dict `HistoryDB.cleanup_expired` returns).
    Expired folders vanish from readers at once; the command waits until their files are deleted. A folder that
    cannot be removed (read-only disk, permissions) is named in the error (exit 1) and not counted.

    **Example:**

        runlake gc --now 2030-01-01 --state-url ./runlake-data
    """
    today: dt.datetime | None = None
    if now is not None:
        try:
            today = dt.datetime.combine(dt.date.fromisoformat(now), dt.time(12), tzinfo=dt.timezone.utc)
        except ValueError:
            fail(f"--now must be a day as YYYY-MM-DD, got {now!r}", code=2)
    from ..ttl import ExpireError

    db = open_db(state_url)
    error: ExpireError | None = None
    try:
        with _friendly_errors():
            try:
                counts = db.cleanup_expired(now=today, max_age_days=max_age_days, dry_run=dry_run)
            except ExpireError as failed:  # some folders could not be removed: report the rest, then fail
                counts, error = failed.counts, failed
    finally:
        _finish_deletes()
    if as_json:
        print_json(counts)
    elif error is None or counts["executions_deleted"] or counts["nodes_deleted"]:
        _print_gc(counts, db, state_url, today, dry_run)
    if error is not None:
        fail(str(error))


def _finish_deletes(patience_s: float = 1.0) -> None:
    """Expired folders are hidden at once but deleted in the background: finish before the process exits."""
    from ..ttl import pending_deletes, wait_for_deletes

    if wait_for_deletes(timeout=patience_s):
        return
    _stderr().print(Text(f"runlake: removing {pending_deletes()} expired folders…", style="dim"), soft_wrap=True)
    wait_for_deletes()


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


def main() -> None:
    """Entry point of the ``runlake`` console script."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    app(prog_name="runlake")
