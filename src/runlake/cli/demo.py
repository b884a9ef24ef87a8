"""``runlake demo``: write an example agent history into a lake (``runlake.demo``), then show it and what to try."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL, STATE_URL_ENV
from rich.rule import Rule
from rich.text import Text

from .common import AsJson, StateUrl, _friendly_errors, _lake_root, app, fail, open_db
from .output import _human_bytes, _stdout, print_json
from .render import _print_history, _print_logs, _print_sql

DEMO_SQL = """SELECT agent_name AS agent,
       count(*) AS runs,
       count(*) FILTER (WHERE status_code = 'ERROR') AS failed,
       round(100.0 * count(*) FILTER (WHERE status_code = 'ERROR') / count(*), 1) AS failure_pct,
       sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens,
       round(sum(coalesce(cost_cents, 0)), 2) AS cost_cents,
       round(median(duration_ms) / 1000, 1) AS median_s
FROM runs GROUP BY agent_name ORDER BY runs DESC, agent"""


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
