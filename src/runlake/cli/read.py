"""The commands that read a lake: ``runs``, ``traces``, ``sessions``, ``history``, ``logs``, ``stats`` and ``sql``.

Each opens the lake, asks ``HistoryDB`` (or ``SessionStore``, ``ExecutionHistoryService``) and prints the result
with ``runlake.cli.render``, or as JSON with ``--json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL

from .common import AsJson, Limit, RemoteStateUrl, StateUrl, _friendly_errors, _lake_root, app, fail, no_lake, open_db
from .output import _count, _empty, _stdout, print_json
from .render import (
    _print_history,
    _print_logs,
    _print_session,
    _print_session_runs,
    _print_sessions,
    _print_sql,
    _print_stats,
    _print_stats_per_user,
    _print_traces,
)


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
