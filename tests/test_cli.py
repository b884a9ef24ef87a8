"""The ``runlake`` command line and the demo workload, on real lakes written through the real instrumentation."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import HISTORY_KEYS, LOGS_KEYS, NODE_KEYS, RUN_KEYS, SPAN_KEYS, SUMMARY_KEYS, TRACE_KEYS
from test_exporter import tmpfs  # noqa: F401 - a fixture: a real tmpfs made read-only by the test
from typer.testing import CliRunner

import runlake
from runlake import HistoryDB
from runlake.cli import app
from runlake.demo import generate_workload

WIDE = {"COLUMNS": "220"}

runner = CliRunner()


def cli(*args: object, env: dict[str, str] | None = None):
    """Invoke the app in-process; stdout and stderr are kept apart (click >= 8.2)."""
    result = runner.invoke(app, [str(a) for a in args], env={**WIDE, **(env or {})})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"unexpected exception: {result.exception!r}\n{result.output}") from result.exception
    return result


def cli_json(*args: object, env: dict[str, str] | None = None):
    result = cli(*args, "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # nothing but JSON on stdout


def lake_sql(lake: Path, query: str) -> list[tuple]:
    return HistoryDB(lake).sql(query).fetchall()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    lake = tmp_path_factory.mktemp("cli") / "demo lake"  # a space, to exercise quoting
    return lake, generate_workload(lake, sessions=14, seed=11)


# ---- demo ---------------------------------------------------------------------------------------------------
def test_demo_command_writes_a_lake_and_shows_history_logs_sql_and_next_steps(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    result = cli("demo", "--state-url", lake, "--sessions", 6, "--seed", 2)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for heading in ("Latest runs", "One run's logs", "Summary:", "Per agent", "The lake", "Try next:"):
        assert heading in out
    for agent in ("bug-triager", "researcher", "support-bot"):
        assert agent in out  # the SQL aggregate has a row per agent
    assert "running" in out  # the newest run is still open
    # where the lake is: absolute path, file count and size as on disk
    assert str(lake.resolve()) in out
    parts = [p for p in lake.rglob("*.parquet") if not p.name.startswith((".", "_"))]
    assert parts and re.search(rf"\b{len(parts)} Parquet files\b", out)
    # the suggested commands are real: the logs command names a run that exists
    match = re.search(r"runlake logs ([0-9a-f]{16}) --state-url (\S+)", out)
    assert match and Path(match.group(2)) == lake.resolve()
    logs = cli_json("logs", match.group(1), "--state-url", match.group(2))
    assert logs["run_id"] == match.group(1) and logs["nodes"]
    for command in ("runlake history --state-url", "runlake sql ", "runlake runs ", "runlake traces --user "):
        assert command in out
    # and the history it shows is in the lake
    history = cli_json("history", "--limit", 3, "--state-url", lake)
    assert all(item["run_id"] in out for item in history)


def test_demo_json_is_the_workload_summary(tmp_path: Path) -> None:
    summary = cli_json("demo", "--state-url", tmp_path / "lake", "--sessions", 3, "--seed", 4)
    assert summary["sessions"] == 3 and summary["runs"] >= 3
    assert summary["state_url"] == str((tmp_path / "lake").resolve())


def test_generate_workload_matches_what_the_lake_holds(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    db = HistoryDB(lake)
    history = db.get_history(limit=10_000)
    assert len(history) == summary["runs"] >= 14
    statuses = [item["status"] for item in history]
    assert statuses.count("failed") == summary["failed_runs"] >= 1
    assert statuses.count("running") == summary["running_runs"] == 1
    assert history[0]["run_id"] in summary["running_run_ids"]  # the open run is the newest
    [(sessions, users, agents)] = lake_sql(
        lake, "SELECT count(DISTINCT session_id), count(DISTINCT user_id), list(DISTINCT agent_name) FROM runs"
    )
    assert (sessions, users) == (summary["sessions"], summary["users"]) and users >= 3
    assert set(agents) == {"bug-triager", "researcher", "support-bot"} == set(summary["runs_by_agent"])
    [(nodes, failed_nodes, node_types, turns, tokens, cost)] = lake_sql(
        lake,
        "SELECT count(*) FILTER (WHERE span_type = 'node'), "
        "count(*) FILTER (WHERE span_type = 'node' AND status_code = 'ERROR'), "
        "list(DISTINCT node_type) FILTER (WHERE span_type = 'node'), count(*) FILTER (WHERE span_type = 'turn'), "
        "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)), sum(cost_cents) FROM spans",
    )
    assert (nodes, failed_nodes, turns) == (summary["nodes"], summary["failed_nodes"], summary["turns"])
    assert {"llm", "tool", "retrieval", "router"} <= set(node_types)
    assert tokens == summary["tokens"] > 0 and cost == pytest.approx(summary["cost_cents"], abs=0.01)
    [(models, errors, with_metadata)] = lake_sql(
        lake,
        "SELECT list(DISTINCT model) FILTER (WHERE model IS NOT NULL), "
        "list(DISTINCT error_type) FILTER (WHERE error_type IS NOT NULL), "
        "count(*) FILTER (WHERE metadata IS NOT NULL) FROM spans",
    )
    assert len(models) >= 2 and len(errors) >= 2 and with_metadata > 0
    # spread over the past week, nothing in the future
    now = dt.datetime.now(dt.timezone.utc).timestamp()
    [(first, last, days)] = lake_sql(
        lake, "SELECT min(start_time_unix_nano), max(end_time_unix_nano), count(DISTINCT day) FROM runs"
    )
    assert now - 8 * 86_400 < first / 1e9 and last / 1e9 < now and days >= 3
    # the runs called out in the summary have what they claim
    for run_id in summary["runs_with_failed_nodes"]:
        logs = db.get_logs(run_id)
        assert logs["summary"]["failed_nodes"] >= 1 and logs["final_output"]
    for run_id in summary["failed_run_ids"]:
        errors = db.get_logs(run_id)["errors"]  # the run failed: its error is listed once (node's or its own)
        assert errors and len({e["error_message"] for e in errors}) == len(errors)


def test_generate_workload_is_reproducible_for_a_seed(tmp_path: Path) -> None:
    def shape(lake: Path) -> list[tuple]:
        return lake_sql(
            lake, "SELECT agent_name, session_id, user_id, input, status_code, node_count FROM runs ORDER BY start_time"
        )

    ids = ("state_url", "failed_run_ids", "runs_with_failed_nodes", "running_run_ids")
    one = generate_workload(tmp_path / "one", sessions=5, seed=21)
    two = generate_workload(tmp_path / "two", sessions=5, seed=21)
    other = generate_workload(tmp_path / "three", sessions=5, seed=22)
    assert {k: v for k, v in one.items() if k not in ids} == {k: v for k, v in two.items() if k not in ids}
    assert shape(tmp_path / "one") == shape(tmp_path / "two") != shape(tmp_path / "three")
    assert other["runs"] and other["sessions"] == 5


# ---- read commands ------------------------------------------------------------------------------------------
def test_history_json_and_table(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    items = cli_json("history", "--limit", 5, "--state-url", lake)
    assert len(items) == 5 and all(set(item) == HISTORY_KEYS for item in items)
    assert [i["started_at"] for i in items] == sorted((i["started_at"] for i in items), reverse=True)
    assert items[0]["status"] == "running" and items[0]["duration"] is None
    later = cli_json("history", "--skip", 5, "--limit", 5, "--state-url", lake)
    assert not {i["run_id"] for i in items} & {i["run_id"] for i in later}
    bots = cli_json("history", "--agent", "support-bot", "--limit", 1000, "--state-url", lake)
    assert len(bots) == summary["runs_by_agent"]["support-bot"]
    assert cli_json("history", "--agent", "support-bot", "--limit", 0, "--state-url", lake) == bots  # 0: all
    every_run = cli_json("runs", "--limit", 0, "--state-url", lake)
    assert len(every_run) > 20 and len({t["trace_id"] for t in every_run}) == len(every_run)

    table = cli("history", "--limit", 5, "--state-url", lake)
    assert table.exit_code == 0 and table.stderr == ""
    assert all(item["run_id"] in table.stdout for item in items)
    assert "this machine's time zone" in table.stdout and "running" in table.stdout
    none = cli("history", "--agent", "nobody", "--state-url", lake)
    assert none.exit_code == 0 and "No runs of agent 'nobody'." in none.stdout


def test_logs_json_and_table(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    run_id = summary["runs_with_failed_nodes"][-1]
    logs = cli_json("logs", run_id, "--state-url", lake)
    assert set(logs) == LOGS_KEYS and logs["run_id"] == run_id
    assert logs["nodes"] and all(set(node) == NODE_KEYS for node in logs["nodes"])
    assert set(logs["summary"]) == SUMMARY_KEYS
    assert logs["summary"]["total_nodes"] == len(logs["nodes"])
    failed = [n for n in logs["nodes"] if n["status"] == "failed"]
    assert failed and logs["summary"]["failed_nodes"] == len(failed) and logs["errors"]

    table = cli("logs", run_id, "--state-url", lake)
    assert table.exit_code == 0
    out = table.stdout
    assert f"Run {run_id}" in out and "completed" in out and "Errors (" in out and "Summary:" in out
    assert failed[0]["id"] in out and failed[0]["error_message"].split(":")[0] in out
    assert "final output" in out


def test_stats_summary_per_agent_and_per_user(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    ((total, failed, running),) = lake_sql(
        lake,
        "SELECT count(*), count(*) FILTER (WHERE status_code = 'ERROR' AND end_time_unix_nano IS NOT NULL), "
        "count(*) FILTER (WHERE end_time_unix_nano IS NULL) FROM runs "
        f"WHERE start_time_unix_nano >= {time.time_ns() - 30 * 86_400 * 10**9}",
    )
    figures = cli_json("stats", "--state-url", lake)
    assert figures["total_executions"] == total > 0
    assert (figures["failed_executions"], figures["running_executions"]) == (failed, running)
    assert figures["completed_executions"] == total - failed - running
    table = cli("stats", "--state-url", lake)
    assert table.exit_code == 0 and table.stderr == ""
    assert f"{total:,}: {total - failed - running:,} completed, {failed:,} failed, {running:,} running" in table.stdout

    agent = "support-bot"
    mine = cli_json("stats", "--agent", agent, "--state-url", lake)
    assert mine["agent_id"] == agent and mine["total_executions"] == summary["runs_by_agent"][agent]
    assert mine["node_types"] and sum(t["count"] for t in mine["node_types"].values()) == mine["total_nodes"]
    shown = cli("stats", "--agent", agent, "--state-url", lake).stdout
    assert f"Agent {agent}" in shown and "Per node type" in shown
    assert all(node_type in shown for node_type in mine["node_types"])

    per_user = cli_json("stats", "--per-user", "--state-url", lake)
    assert sum(f["total_executions"] for f in per_user.values()) == total
    shown = cli("stats", "--per-user", "--state-url", lake).stdout
    assert all(user in shown for user in per_user if user != "null")
    assert cli_json("stats", "--user", "nobody", "--state-url", lake)["total_executions"] == 0
    assert (
        "No runs of user 'nobody' in the last 30 days." in cli("stats", "--user", "nobody", "--state-url", lake).stdout
    )
    for clash in (["--per-user", "--user", "x"], ["--user", "x", "--agent", "y"]):
        refused = cli("stats", *clash, "--state-url", lake)
        assert refused.exit_code == 2 and "runlake:" in refused.stderr


@pytest.mark.parametrize("columns", [20, 30, 45])
def test_stats_keeps_every_value_in_a_narrow_terminal(demo: tuple[Path, dict], columns: int) -> None:
    """The summary is figure / value pairs: a narrow terminal wraps both columns rather than dropping the values."""
    from rich.cells import cell_len

    lake, _ = demo
    figures = cli_json("stats", "--state-url", lake)
    result = cli("stats", "--state-url", lake, env={"COLUMNS": str(columns)})
    assert result.exit_code == 0 and result.stderr == ""
    assert "not shown" not in result.stdout, result.stdout
    lines = result.stdout.splitlines()
    assert max(cell_len(line) for line in lines) <= columns, result.stdout
    rows = [line.split("│")[1:3] for line in lines if line.count("│") == 3]  # the body: │ figure │ value │
    names = "".join(name.strip() for name, _ in rows).replace(" ", "")  # a name may be cut across lines
    values = " ".join(value.strip() for _, value in rows)
    assert all(name.replace(" ", "") in names for name in ("executions", "success rate", "tokens", "last run"))
    assert f"{figures['total_executions']:,}:" in values and f"{figures['success_rate']:.1%}" in values, values


def test_sessions_list_and_one_session_with_runtime_state(demo: tuple[Path, dict], tmp_path: Path) -> None:
    lake, _ = demo
    store = runlake.SessionStore(lake)
    listed = cli_json("sessions", "--limit", 5, "--state-url", lake)
    assert listed == store.list_sessions(limit=5) and len(listed) == 5
    table = cli("sessions", "--limit", 5, "--state-url", lake)
    assert table.exit_code == 0 and all(item["session_id"] in table.stdout for item in listed)
    user = listed[0]["user_id"]
    mine = cli_json("sessions", "--user", user, "--limit", 100, "--state-url", lake)
    assert mine and {item["user_id"] for item in mine} == {user}

    session = max(listed, key=lambda item: item["message_count"])["session_id"]
    exported = cli_json("sessions", session, "--state-url", lake)
    assert exported == store.export_session(session) and exported["messages"]
    shown = cli("sessions", session, "--state-url", lake).stdout
    assert f"Session {session}: {len(exported['messages'])} messages" in shown

    # runtime state (a lake of its own: the demo's is read by other tests)
    other = tmp_path / "state lake"
    with runlake.SessionStore(other) as writer:
        assert writer.set_runtime_state("chat/1", "native", "turn-1", {"tool_calls": ["call-1"]})
        assert writer.set_runtime_state("chat/1", "native", "turn-2", {"tool_calls": ["call-2"]})
    exported = cli_json("sessions", "chat/1", "--state-url", other)
    assert exported["runtime_state"] == {
        "native": {"turn-1": {"tool_calls": ["call-1"]}, "turn-2": {"tool_calls": ["call-2"]}}
    }
    shown = cli("sessions", "chat/1", "--state-url", other).stdout
    assert "Runtime state: 2 turns" in shown and "call-2" in shown and "has no messages" in shown
    assert any(item["session_id"] == "chat/1" for item in cli_json("sessions", "--state-url", other))
    assert "No messages or runtime state in session nope" in cli("sessions", "nope", "--state-url", other).stdout
    assert cli("sessions", "--state-url", tmp_path / "missing").exit_code == 1
    empty = cli("sessions", " ", "--state-url", other)
    assert empty.exit_code == 2 and "SESSION_ID is empty" in empty.stderr


def test_logs_of_an_unknown_run_exits_1_with_a_message(demo: tuple[Path, dict]) -> None:
    lake, _ = demo
    for args in (("logs", "0000000000000000"), ("logs", "nope", "--json")):
        result = cli(*args, "--state-url", lake)
        assert result.exit_code == 1
        assert result.stdout == ""
        assert "not found" in result.stderr and "Traceback" not in result.output


def test_sql_table_json_and_errors(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    query = "SELECT agent_name, count(*) AS n, max(start_time) AS latest FROM runs GROUP BY 1 ORDER BY 1"
    rows = cli_json("sql", query, "--state-url", lake)
    assert [set(r) for r in rows] == [{"agent_name", "n", "latest"}] * 3
    assert {r["agent_name"]: r["n"] for r in rows} == summary["runs_by_agent"]
    dt.datetime.fromisoformat(rows[0]["latest"])  # timestamps come out as ISO strings
    table = cli("sql", query, "--state-url", lake)
    assert table.exit_code == 0 and all(agent in table.stdout for agent in summary["runs_by_agent"])
    spans = cli_json("sql", "SELECT count(*) AS n FROM spans WHERE span_type = 'node'", "--state-url", lake)
    assert spans == [{"n": summary["nodes"]}]

    for bad, message in (("SELEC 1", "syntax error"), ("SELECT nope FROM runs", "nope")):
        result = cli("sql", bad, "--state-url", lake)
        assert result.exit_code == 1 and result.stdout == ""
        assert message in result.stderr and "Traceback" not in result.output
    capped = cli("sql", "SELECT * FROM range(30)", "--max-rows", 10, "--state-url", lake)
    assert capped.exit_code == 0 and "Only the first 10 rows" in capped.stdout


def test_runs_and_traces(demo: tuple[Path, dict]) -> None:
    lake, summary = demo
    latest = cli_json("runs", "--limit", 4, "--state-url", lake)  # no session: latest root runs, as traces
    assert len(latest) == 4 and all(set(t) == TRACE_KEYS for t in latest)
    session = latest[0]["session_id"]
    runs = cli_json("runs", session, "--state-url", lake)
    assert runs and all(set(r) == RUN_KEYS and r["session_id"] == session for r in runs)
    assert runs[0]["status"] == "running" and runs[0]["run_id"] == latest[0]["run_id"]
    failed_id = summary["failed_run_ids"][0]
    [(failed_session,)] = lake_sql(lake, f"SELECT session_id FROM runs WHERE run_id = '{failed_id}'")
    failed = {r["run_id"]: r for r in cli_json("runs", failed_session, "--state-url", lake)}[failed_id]
    assert failed["status"] == "error" and failed["metrics"]["error"] and failed["ended_at"] > failed["started_at"]

    user = latest[1]["user_id"]
    traces = cli_json("traces", "--user", user, "--limit", 50, "--state-url", lake)
    assert traces and all(t["user_id"] == user and set(t) == TRACE_KEYS for t in traces)
    assert all(set(s) == SPAN_KEYS for t in traces for s in t["spans"])
    assert all(len(t["spans"]) >= 2 for t in traces if t["status"] != "running")  # the run and its nodes
    in_session = cli_json("traces", "--session", session, "--state-url", lake)
    assert {t["session_id"] for t in in_session} == {session}

    table = cli("traces", "--user", user, "--state-url", lake)
    assert table.exit_code == 0 and user in table.stdout and traces[0]["trace_id"] in table.stdout
    table = cli("runs", session, "--state-url", lake)
    assert table.exit_code == 0 and f"Runs of session {session}" in table.stdout
    latest_table = cli("runs", "--limit", 50, "--state-url", lake).stdout
    assert latest_table.count("\n") > 4
    assert "completed" in latest_table and not re.search(r"\b(ok|error)\b", latest_table), "run words, as runs SESSION"


def test_hostile_session_ids_and_long_text(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    long_input = "line one\n" + "x" * 5000
    sessions = ["../x", "a/b", "über 🙂", "[red]s[/red] %2F=~", "esc\x1b[2J"]
    runlake.configure(lake)
    try:
        for session in sessions:
            with runlake.run("bot", session, user_id="u/../1", input=long_input) as run:
                with runlake.node("lookup", type="tool", input={"q": session}) as node:
                    node.set_output("ok")
                run.set_output("done")
    finally:
        runlake.shutdown()

    for session in sessions:
        runs = cli_json("runs", session, "--state-url", lake)
        assert len(runs) == 1 and runs[0]["session_id"] == session
        assert runs[0]["input_content"] == long_input  # never truncated in JSON
        traces = cli_json("traces", "--session", session, "--state-url", lake)
        assert len(traces) == 1 and traces[0]["session_id"] == session and len(traces[0]["spans"]) == 2
        table = cli("runs", session, "--state-url", lake)
        shown = session.replace("\x1b", "\\x1b")  # terminal escapes are shown, not obeyed
        assert table.exit_code == 0 and shown in table.stdout and "\x1b" not in table.stdout
        assert "…" in table.stdout and "x" * 200 not in table.stdout  # truncated in tables
    users = cli_json("traces", "--user", "u/../1", "--state-url", lake)
    assert len(users) == len(sessions)
    missing = cli("runs", "../nope", "--state-url", lake)
    assert missing.exit_code == 0 and "No runs in session ../nope." in missing.stdout
    none = cli("traces", "--session", "a/b/c", "--state-url", lake)
    assert none.exit_code == 0 and "No traces in session a/b/c." in none.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lake"]  # nothing escaped the lake


# ---- gc -----------------------------------------------------------------------------------------------------
def test_gc_removes_expired_partitions_and_prints_counts(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    summary = generate_workload(lake, sessions=8, seed=5, days=5)
    bots = summary["runs_by_agent"].get("support-bot", 0)
    assert bots > 0
    [(bot_nodes,)] = lake_sql(
        lake,
        "SELECT count(*) FROM spans s JOIN runs r USING (run_id) "
        "WHERE s.span_type = 'node' AND r.agent_name = 'support-bot'",
    )
    today = dt.datetime.now(dt.timezone.utc).date()

    nothing = cli("gc", "--now", today.isoformat(), "--state-url", lake)
    assert nothing.exit_code == 0 and "Nothing has expired" in nothing.stdout
    # support-bot keeps 7 days, the others 30 or 90: eight days on, exactly the support-bot history goes
    counts = cli_json("gc", "--now", (today + dt.timedelta(days=8)).isoformat(), "--state-url", lake)
    assert counts == {"executions_deleted": bots, "nodes_deleted": bot_nodes}
    left = dict(lake_sql(lake, "SELECT agent_name, count(*) FROM runs GROUP BY 1"))
    assert left == {a: n for a, n in summary["runs_by_agent"].items() if a != "support-bot"}

    result = cli("gc", "--now", "2100-01-01", "--state-url", lake)
    assert result.exit_code == 0
    rest = summary["runs"] - bots
    assert f"{rest} executions" in result.stdout and f"{summary['nodes'] - bot_nodes} nodes" in result.stdout
    assert not list(lake.rglob("*.parquet")) and not list(lake.rglob("day=*"))
    assert "No runs in this lake yet." in cli("history", "--state-url", lake).stdout

    bad = cli("gc", "--now", "yesterday", "--state-url", lake)
    assert bad.exit_code == 2 and "YYYY-MM-DD" in bad.stderr


# ---- state URL, errors, help ---------------------------------------------------------------------------------
def test_missing_lake_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    for args in (
        ("history",),
        ("runs",),
        ("runs", "s1"),
        ("traces",),
        ("logs", "abc"),
        ("sql", "SELECT 1"),
        ("gc", "--now", "2100-01-01"),
    ):
        result = cli(*args, "--state-url", missing)
        assert result.exit_code == 1, args
        assert "no lake at" in result.stderr and str(missing) in result.stderr and result.stdout == ""
        assert "Traceback" not in result.output
    assert not missing.exists()  # reading never creates it
    bad_url = cli("history", "--state-url", "sqlite:///agent_state.db")
    assert bad_url.exit_code == 1 and "file://" in bad_url.stderr
    demo_on_s3 = cli("demo", "--state-url", "s3://bucket/lake")  # writes stay local-only in the CLI
    assert demo_on_s3.exit_code == 1 and "file://" in demo_on_s3.stderr


def test_state_url_precedence_flag_then_env_then_default(demo: tuple[Path, dict], tmp_path: Path) -> None:
    lake, summary = demo
    assert len(cli_json("history", "--limit", 1000, env={"RUNLAKE_STATE_URL": str(lake)})) == summary["runs"]
    flag_wins = cli_json("history", "--limit", 1, "--state-url", lake, env={"RUNLAKE_STATE_URL": str(tmp_path / "x")})
    assert len(flag_wins) == 1
    env_ignored = cli("history", "--state-url", tmp_path / "x", env={"RUNLAKE_STATE_URL": str(lake)})
    assert env_ignored.exit_code == 1
    file_url = cli_json("history", "--limit", 2, "--state-url", lake.resolve().as_uri())
    assert len(file_url) == 2
    help_text = cli("history", "--help").stdout
    assert "RUNLAKE_STATE_URL" in help_text and "Precedence" in help_text and "./runlake-data" in help_text


@pytest.mark.parametrize("command", ["demo", "runs", "traces", "history", "logs", "stats", "sessions", "sql", "gc"])
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = cli(command, "--help")
    assert result.exit_code == 0
    assert "Example" in result.stdout and f"runlake {command}" in result.stdout
    assert "--state-url" in result.stdout and "--json" in result.stdout
    if command == "sql":
        assert "spans" in result.stdout and "runs" in result.stdout and "docs/schema.md" in result.stdout


def test_other_modules_can_register_commands() -> None:
    import typer

    before = list(app.registered_commands)

    def hello(name: str = "lake") -> None:
        typer.echo(f"hello {name}")

    try:
        app.command("hello")(hello)
        result = cli("hello", "--name", "there")
        assert result.exit_code == 0 and result.stdout == "hello there\n"
    finally:
        app.registered_commands[:] = before


# ---- the installed console script, in a real subprocess -----------------------------------------------------
def test_console_script_end_to_end(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("runlake")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "runlake.cli"]
    lake = tmp_path / "lake"
    env = {"PATH": str(Path(sys.executable).parent), "COLUMNS": "200", "RUNLAKE_STATE_URL": str(lake)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60)

    demo = run("demo", "--sessions", "4", "--seed", "9")
    assert demo.returncode == 0, demo.stderr
    assert "Try next:" in demo.stdout and str(lake.resolve()) in demo.stdout
    run_id = re.search(r"runlake logs ([0-9a-f]{16})", demo.stdout).group(1)
    logs = run("logs", run_id, "--json")
    assert logs.returncode == 0 and set(json.loads(logs.stdout)) == LOGS_KEYS
    bad = run("sql", "SELEC 1")
    assert bad.returncode == 1 and "syntax error" in bad.stderr and "Traceback" not in bad.stderr
    module = subprocess.run(
        [sys.executable, "-m", "runlake.cli", "history", "--json", "--limit", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert module.returncode == 0 and [set(i) for i in json.loads(module.stdout)] == [HISTORY_KEYS] * 2


def test_empty_sql_is_a_usage_error(demo: tuple[Path, dict]) -> None:
    lake, _ = demo
    result = cli("sql", "  ", "--state-url", lake)
    assert result.exit_code == 2 and "empty query" in result.stderr
    times = cli("sql", "SELECT run_id, start_time FROM runs LIMIT 2", "--state-url", lake)
    assert times.exit_code == 0 and "times in UTC" in times.stdout


def test_sql_shows_exact_values_time_zones_and_strict_json(lake: Path) -> None:
    generate_workload(lake, sessions=2, seed=3)
    query = "SELECT now() AS at, 999.99 AS price, 2024 AS year, 123.456::DOUBLE AS x, 'nan'::DOUBLE AS nan_value"
    table = cli("sql", query, "--state-url", lake)
    assert table.exit_code == 0, table.output
    row = table.stdout.splitlines()
    assert any("999.99" in line and "2024" in line and "123.456" in line for line in row), table.stdout
    assert "2,024" not in table.stdout and "1,000" not in table.stdout
    [item] = cli_json("sql", query, "--state-url", lake)  # strict JSON: json.loads would accept NaN, so check text
    assert item["price"] == 999.99 and item["nan_value"] is None and item["at"].startswith(str(dt.date.today().year))
    raw = cli("sql", query, "--json", "--state-url", lake).stdout
    assert "NaN" not in raw
    assert cli("sql", "SELECT 1", "--max-rows", 2**63 - 1, "--state-url", lake).exit_code == 2
    fractions = cli("sql", "SELECT '2026-01-01 10:00:00.123456'::TIMESTAMP AS ts", "--state-url", lake)
    assert "2026-01-01 10:00:00.123456" in fractions.stdout, "times shown exactly, as they compare in a query"


def test_stats_window_past_the_calendar_is_a_usage_error(lake: Path) -> None:
    generate_workload(lake, sessions=2, seed=3)
    result = cli("stats", "--days", 1_000_000, "--state-url", lake)
    assert result.exit_code == 2 and "Traceback" not in result.output
    with pytest.raises(ValueError, match="36,500"):
        runlake.ExecutionHistoryService(HistoryDB(lake)).statistics(days=1_000_000)
    assert cli("stats", "--days", 36_500, "--state-url", lake).exit_code == 0


def test_empty_filters_and_a_file_as_lake_get_honest_messages(lake: Path, tmp_path: Path) -> None:
    import runlake.cli_ops  # noqa: F401 - registers compact on the app

    generate_workload(lake, sessions=2, seed=3)
    assert "No runs of agent ''." in cli("history", "--agent", "", "--state-url", lake).stdout
    assert "No runs of user '' in the last 30 days." in cli("stats", "--user", "", "--state-url", lake).stdout
    not_a_lake = tmp_path / "file.txt"
    not_a_lake.write_text("x")
    for command in (["sessions"], ["sessions", "s-1"], ["compact"]):
        result = cli(*command, "--state-url", not_a_lake)
        assert result.exit_code == 1 and "is not a folder" in result.stderr, (command, result.output)


def test_sessions_name_the_lakes_other_tenants(lake: Path) -> None:
    runlake.configure(lake, tenant_id="acme corp")  # a tenant id its folder name encodes
    with runlake.run("agent", session_id="s-acme"):
        pass
    runlake.shutdown()
    text = " ".join(cli("sessions", "--state-url", lake).stdout.split())
    assert "No sessions in tenant 'default'. This lake also has tenant(s) 'acme corp': pass --tenant." in text
    listed = cli_json("sessions", "--tenant", "acme corp", "--state-url", lake)
    assert [s["session_id"] for s in listed] == ["s-acme"]


def test_output_to_a_pipe_keeps_every_column(lake: Path) -> None:
    """No terminal to fit: a table written to a pipe or a file keeps its columns (not 80 wide)."""
    import os

    generate_workload(lake, sessions=3, seed=3)
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    done = subprocess.run(
        [sys.executable, "-m", "runlake.cli", "history", "--state-url", str(lake)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "status" in line and "run" in line)
    for column in ("input", "output", "nodes", "tokens", "cost"):
        assert column in header, done.stdout
    assert "not shown" not in done.stdout


# a table of about 300 KB (far more than a pipe holds) followed by the "Only the first ... rows" line
BIG_TABLE = ("sql", "SELECT range AS n, repeat('x', 50) AS pad FROM range(5000)", "--max-rows", "4000")


@pytest.mark.parametrize("args", [BIG_TABLE, ("history", "--limit", "1000")], ids=["table-then-more", "history"])
def test_output_to_a_pipe_closed_early_ends_quietly(demo: tuple[Path, dict], args: tuple[str, ...]) -> None:
    """`runlake ... | head -1`: the reader takes one line and goes; the command stops with status 0 and says
    nothing (no traceback, no error) when its next write finds the pipe closed."""
    lake, _ = demo
    child = subprocess.Popen(
        [sys.executable, "-m", "runlake.cli", *args, "--state-url", str(lake)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = child.stdout.readline()
        child.stdout.close()
        stderr = child.stderr.read()
        returncode = child.wait(timeout=120)
    finally:
        child.kill()
        child.wait()
    assert first.strip(), "the command wrote its first line"
    assert (returncode, stderr.decode()) == (0, "")


@pytest.mark.parametrize(
    "args",
    [("history",), ("history", "--json"), ("stats",), BIG_TABLE, ("sql", "SELECT 1", "--json"), ("sql", "--help")],
)
def test_output_to_a_pipe_closed_before_the_first_write_ends_quietly(
    demo: tuple[Path, dict], args: tuple[str, ...]
) -> None:
    """`runlake history --json | true`: every write fails; tables, JSON and help alike end with status 0, stderr
    empty."""
    import os

    lake, _ = demo
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes anything
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runlake.cli", *args, "--state-url", str(lake)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.parametrize(
    ("args", "status"), [(("runs", "--bogus"), 2), (("history", "--state-url", "/nonexistent/lake"), 1)]
)
def test_an_error_whose_message_meets_a_closed_pipe_still_fails(args: tuple[str, ...], status: int) -> None:
    """`runlake runs --bogus 2>&1 | true`: the error cannot be shown, but the command failed all the same: a usage
    error ends with 2 and a runtime error with 1, not with the 0 of a reader that took what it wanted."""
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runlake.cli", *args], stdout=write_end, stderr=write_end, timeout=120
        )
    finally:
        os.close(write_end)
    assert done.returncode == status


def test_demo_twice_keeps_sessions_apart_and_says_so(lake: Path) -> None:
    first = cli_json("demo", "--state-url", lake)
    second = cli_json("demo", "--state-url", lake)
    assert not first["added_to_existing"] and second["added_to_existing"]
    sessions = [r[0] for r in lake_sql(lake, "SELECT DISTINCT session_id FROM runs")]
    assert len(sessions) == first["sessions"] + second["sessions"]
    third = cli("demo", "--state-url", lake)
    assert "The lake already held runs" in " ".join(third.stdout.split())


def test_demo_into_a_read_only_lake_fails_clearly(tmpfs: Path) -> None:  # noqa: F811 - the fixture
    from test_exporter import _remount

    (tmpfs / "lake").mkdir()
    _remount(tmpfs, "ro")
    for extra in ([], ["--json"]):
        result = cli("demo", "--state-url", tmpfs / "lake", *extra)
        assert result.exit_code == 1, (extra, result.output)
        assert "could not write the lake" in result.stderr and "Traceback" not in result.output
        assert "Wrote" not in result.stdout and "runs" not in result.stdout


def test_serve_on_a_lake_that_is_a_file_is_one_line_of_error(tmp_path: Path) -> None:
    from test_forward import free_port

    not_a_lake = tmp_path / "lake.txt"
    not_a_lake.write_text("x")
    done = subprocess.run(
        [sys.executable, "-m", "runlake.cli", "serve", "--no-auth", "--port", str(free_port())]
        + ["--durability", "log", "--state-url", str(not_a_lake)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("runlake serve:")


def test_the_time_zone_caption_names_both_sides_of_a_clock_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """Times shown from June and November in Los Angeles are PDT and PST: the caption names both."""
    import time

    from runlake.cli.output import _zone_caption

    with monkeypatch.context() as m:
        m.setenv("TZ", "America/Los_Angeles")
        time.tzset()
        caption = _zone_caption()
    time.tzset()
    assert caption.startswith("times in PST/PDT")
