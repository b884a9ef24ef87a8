"""HistoryDB: every field of the PraisonAI and CodexOS shapes, seed 000's behaviours, SQL views, TTL."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from pathlib import Path

import pytest
from conftest import HISTORY_KEYS, LOGS_KEYS, NODE_KEYS, RUN_KEYS, SPAN_KEYS, TRACE_KEYS, lake_files
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

import runlake
from runlake.instrument import shifted_clock


def workload(lake: Path) -> dict[str, str]:
    """Three runs in one session (one failed), one in another session; simulated times and durations."""
    ids: dict[str, str] = {}
    runlake.configure(lake)
    try:
        with shifted_clock(-3600, frozen=True) as advance:
            with runlake.run("triager", "s1", user_id="u1", input="Process PR #42", metadata={"pr": 42}) as r:
                with runlake.node("planner", type="llm", input="plan it", metadata={"temp": 0.1}) as n:
                    advance(8)
                    n.set_output("the plan")
                    n.set_usage(input_tokens=1000, output_tokens=250)
                    n.set_cost(cents=25)
                with runlake.node("lint", type="tool", input={"path": "a.py"}) as n:
                    advance(37.2)
                    n.set_output({"issues": 0})
                r.set_output("No issues found")
                ids["ok"] = r.run_id
            advance(60)
            with pytest.raises(ValueError):
                with runlake.run("triager", "s1", user_id="u1", input="Process PR #43") as r:
                    ids["failed"] = r.run_id
                    with runlake.node("planner", type="llm"):
                        advance(1)
                    with runlake.node("fetch", type="tool"):
                        advance(2)
                        raise ValueError("repository not found")
            advance(60)
            with runlake.run("researcher", "s1", user_id="u2", input="q") as r:
                ids["newest"] = r.run_id
                advance(0.25)
            with runlake.run("researcher", "s2", user_id="u1", input="other") as r:
                ids["other_session"] = r.run_id
    finally:
        runlake.shutdown()
    return ids


@pytest.fixture
def history(lake: Path) -> tuple[runlake.HistoryDB, dict[str, str]]:
    ids = workload(lake)
    return runlake.HistoryDB(lake), ids


def test_get_runs_shape_and_order(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    runs = db.get_runs("s1")
    assert [r["run_id"] for r in runs] == [ids["newest"], ids["failed"], ids["ok"]], "newest started_at first"
    for r in runs:
        assert set(r) == RUN_KEYS
        assert isinstance(r["started_at"], float) and isinstance(r["ended_at"], float)
        assert r["session_id"] == "s1"
    ok = runs[2]
    assert ok["status"] == "completed" and ok["input_content"] == "Process PR #42"
    assert ok["output_content"] == "No issues found"
    assert ok["metadata"] == {"agent_name": "triager", "pr": 42}
    assert ok["metrics"]["duration_ms"] == pytest.approx(45_200, abs=1e-6)  # frozen clock: exactly the simulated time
    failed = runs[1]
    assert failed["status"] == "error" and failed["metrics"] == {"error": "ValueError: repository not found"}
    assert failed["output_content"] is None


def test_limits_and_unconfigured(history: tuple[runlake.HistoryDB, dict[str, str]], caplog, monkeypatch) -> None:
    db, ids = history
    assert len(db.get_runs("s1", limit=None)) == 3
    assert [r["run_id"] for r in db.get_runs("s1", limit=1)] == [ids["newest"]]
    assert db.get_runs("s1", limit=0) == [] and db.get_runs("s1", limit=-1) == []
    assert db.get_traces(limit=0) == []
    assert db.get_runs("no-such-session") == []
    monkeypatch.delenv("RUNLAKE_STATE_URL", raising=False)
    monkeypatch.delenv("PRAISONAI_STATE_URL", raising=False)
    bare = runlake.HistoryDB()
    with caplog.at_level(logging.WARNING):
        assert bare.get_runs("s1") == [] and bare.get_traces() == []
    messages = [r.getMessage() for r in caplog.records]
    assert "get_runs() called but no state_url configured; returning []" in messages
    assert "get_traces() called but no state_url configured; returning []" in messages


def test_praisonai_state_url_env(history, lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLAKE_STATE_URL", raising=False)
    monkeypatch.setenv("PRAISONAI_STATE_URL", f"file://{lake}")
    assert len(runlake.HistoryDB().get_runs("s1")) == 3


def test_get_traces_fills_spans(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    traces = db.get_traces(session_id="s1")
    assert [t["run_id"] for t in traces] == [ids["newest"], ids["failed"], ids["ok"]]
    for t in traces:
        assert set(t) == TRACE_KEYS
        assert t["spans"] and all(set(s) == SPAN_KEYS for s in t["spans"])
        assert {s["trace_id"] for s in t["spans"]} == {t["trace_id"]}
    ok = traces[2]
    assert ok["status"] == "ok" and ok["agent_name"] == "triager" and ok["user_id"] == "u1"
    assert ok["metadata"] == {"pr": 42}
    names = [s["name"] for s in ok["spans"]]
    assert names == ["invoke_agent triager", "chat planner", "execute_tool lint"]
    root, planner, _ = ok["spans"]
    assert root["parent_span_id"] is None and planner["parent_span_id"] == root["span_id"]
    assert planner["attributes"]["gen_ai.usage.input_tokens"] == 1000
    assert planner["attributes"]["llm.token_count.prompt"] == 1000
    assert planner["attributes"]["session.id"] == "s1" and planner["attributes"]["input.value"] == "plan it"
    assert planner["status"] == "ok" and planner["ended_at"] - planner["started_at"] == pytest.approx(8, abs=1e-6)
    failed = traces[1]
    assert failed["status"] == "error"
    fetch = [s for s in failed["spans"] if s["name"] == "execute_tool fetch"][0]
    assert fetch["status"] == "error" and fetch["attributes"]["error.type"] == "ValueError"
    assert fetch["events"][0]["name"] == "exception"
    assert fetch["events"][0]["attributes"]["exception.message"] == "repository not found"


def test_get_traces_by_user_and_all(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    by_user = db.get_traces(user_id="u1")
    assert [t["run_id"] for t in by_user] == [ids["other_session"], ids["failed"], ids["ok"]]
    assert all(t["spans"] for t in by_user)
    assert [t["run_id"] for t in db.get_traces(user_id="u1", limit=1)] == [ids["other_session"]]
    assert len(db.get_traces()) == 4
    assert [t["run_id"] for t in db.get_traces(session_id="s1", user_id="u2")] == [ids["newest"]]


def test_get_history_shape(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    items = db.get_history()
    assert [i["run_id"] for i in items][-1] == ids["ok"] and len(items) == 4
    ok = items[-1]
    assert set(ok) == HISTORY_KEYS
    assert ok == {
        "run_id": ids["ok"],
        "status": "completed",
        "started_at": ok["started_at"],
        "duration": "45.2s",
        "input": "Process PR #42",
        "output": "No issues found",
        "node_count": 2,
        "tokens_used": 1250,
        "cost_cents": 25,
    }
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ok["started_at"])
    failed = [i for i in items if i["run_id"] == ids["failed"]][0]
    assert failed["status"] == "failed" and failed["node_count"] == 2 and failed["duration"] == "3s"
    assert [i["run_id"] for i in db.get_history(agent_id="researcher")] == [ids["other_session"], ids["newest"]]
    assert [i["run_id"] for i in db.get_history(skip=1, limit=2)] == [i["run_id"] for i in items[1:3]]
    assert db.get_history(limit=0) == [] and db.get_history(agent_id="nobody") == []
    with pytest.raises(ValueError):
        db.get_history(skip=-1)


def test_get_logs_shape(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    logs = db.get_logs(ids["ok"])
    assert set(logs) == LOGS_KEYS and logs["run_id"] == ids["ok"]
    assert logs["final_output"] == "No issues found" and logs["errors"] == []
    planner, lint = logs["nodes"]
    assert set(planner) == NODE_KEYS
    assert planner == {
        "id": "planner",
        "type": "llm",
        "input": "plan it",
        "output": "the plan",
        "time": "8s",
        "status": "completed",
        "error_message": None,
        "metadata": {"temp": 0.1},
    }
    assert lint["type"] == "tool" and lint["input"] == '{"path": "a.py"}' and lint["time"] == "37.2s"
    assert logs["summary"] == {
        "total_nodes": 2,
        "successful_nodes": 2,
        "failed_nodes": 0,
        "total_duration": "45.2s",
        "tokens_used": 1250,
        "cost_cents": 25,
    }
    failed = db.get_logs(ids["failed"])
    assert failed["summary"]["failed_nodes"] == 1 and failed["summary"]["successful_nodes"] == 1
    assert failed["nodes"][1]["status"] == "failed"
    assert failed["nodes"][1]["error_message"] == "ValueError: repository not found"
    assert {
        "node_id": "fetch",
        "error_type": "ValueError",
        "error_message": "ValueError: repository not found",
    } in failed["errors"]
    assert failed["final_output"] is None
    with pytest.raises(LookupError, match="not found"):
        db.get_logs("no-such-run")


def test_scoped_reads(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, ids = history
    u2 = db.scoped(tenant_id="default", user_id="u2")
    assert [i["run_id"] for i in u2.get_history()] == [ids["newest"]]
    with pytest.raises(LookupError):
        u2.get_logs(ids["ok"])
    assert db.scoped(tenant_id="other").get_history() == []
    assert [r["run_id"] for r in u2.get_runs("s1")] == [ids["newest"]]


def test_truncated_parquet_file_is_skipped_with_a_warning(history, lake: Path, caplog) -> None:
    db, ids = history
    runs_before = db.get_runs("s1")
    victim = next(p for p in lake_files(lake, "spans") if "session=s1" in str(p))
    victim.write_bytes(victim.read_bytes()[:100])
    junk = victim.parent / "part-zzz-junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    (victim.parent / ".part-hidden.parquet").write_bytes(b"hidden half-written file")
    with caplog.at_level(logging.WARNING):
        traces = db.get_traces(session_id="s1")
        runs = db.get_runs("s1")
    assert traces == [], "the only span file of that session is unreadable: no rows, but no failed query"
    assert runs == runs_before and runs, "runs are read from the runs/ index, which is intact"
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert str(victim) in warnings and str(junk) in warnings and ".part-hidden" not in warnings
    assert len(db.get_history()) == 4, "the runs index is intact and other sessions still read"
    assert [r["run_id"] for r in db.get_runs("s2")] == [ids["other_session"]]
    assert db.sql("SELECT count(*) FROM spans").fetchall()[0][0] > 0


def test_sql_views(history: tuple[runlake.HistoryDB, dict[str, str]]) -> None:
    db, _ = history
    rel = db.sql("SELECT span_type, count(*) AS n FROM spans GROUP BY span_type ORDER BY span_type")
    assert rel.fetchall() == [("node", 4), ("run", 4)]
    runs = db.sql("SELECT agent_name, count(*), sum(input_tokens) FROM runs GROUP BY 1 ORDER BY 1").fetchall()
    assert runs == [("researcher", 2, 0), ("triager", 2, 1000)]
    row = db.sql("SELECT duration_ms, start_time FROM spans WHERE node_id = 'planner' AND input_tokens = 1000")
    duration, start = row.fetchall()[0]
    assert duration == pytest.approx(8000, abs=1e-6) and isinstance(start, dt.datetime)
    empty = runlake.HistoryDB(Path(db.root) / "nowhere")
    assert empty.sql("SELECT count(*) FROM spans").fetchall() == [(0,)]


def test_foreign_instrumentation_is_classified(configured: Path) -> None:
    tracer = trace.get_tracer("openinference.instrumentation.x")
    with tracer.start_as_current_span(
        "Agent.run",
        attributes={"openinference.span.kind": "AGENT", "session.id": "oi", "user.id": "u9", "input.value": "question"},
    ) as agent_span:
        with tracer.start_as_current_span(
            "ChatCompletion",
            attributes={
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-x",
                "llm.token_count.prompt": 11,
                "llm.token_count.completion": 4,
                "output.value": "answer",
            },
        ):
            pass
        with tracer.start_as_current_span("search", attributes={"traceloop.span.kind": "tool"}) as tool:
            tool.set_status(Status(StatusCode.ERROR, "timeout"))
        agent_span.set_attribute("output.value", "final")
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [run] = db.get_runs("oi")  # children inherited the session from their run
    assert run["input_content"] == "question" and run["output_content"] == "final"
    logs = db.get_logs(run["run_id"])
    assert [(n["id"], n["type"], n["status"]) for n in logs["nodes"]] == [
        ("ChatCompletion", "llm", "completed"),
        ("search", "tool", "failed"),
    ]
    assert logs["summary"]["tokens_used"] == 15 and logs["errors"][0]["error_message"] == "timeout"
    assert db.get_history()[0]["node_count"] == 2 and db.get_history()[0]["tokens_used"] == 15


def test_decorators_sync_and_async(configured: Path) -> None:
    @runlake.step(type="tool")
    def add(a: int, b: int) -> int:
        return a + b

    @runlake.step(type="llm", name="think")
    async def think(q: str) -> str:
        return q.upper()

    @runlake.agent("calc", session_id="deco")
    def calc(x: int) -> int:
        return add(x, 1)

    @runlake.agent()
    async def shouter(q: str, session_id: str) -> str:
        return await think(q)

    assert calc(2) == 3
    assert asyncio.run(shouter("hi", session_id="deco")) == "HI"
    with pytest.raises(ZeroDivisionError):
        runlake.agent("boom", session_id="deco")(lambda: 1 / 0)()
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    runs = db.get_runs("deco")
    assert [(r["metadata"]["agent_name"], r["status"]) for r in runs] == [
        ("boom", "error"),
        ("shouter", "completed"),
        ("calc", "completed"),
    ]
    assert runs[1]["output_content"] == "HI" and runs[1]["input_content"] == '{"q": "hi", "session_id": "deco"}'
    nodes = db.get_logs(runs[2]["run_id"])["nodes"]
    assert [(n["id"], n["type"], n["output"]) for n in nodes] == [("add", "tool", "3")]
    assert db.get_logs(runs[1]["run_id"])["nodes"][0]["id"] == "think"


def test_configure_adds_to_an_existing_provider(lake: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    runlake.configure(lake)  # makes sure an SDK provider is installed globally
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    theirs = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(theirs))  # the application's own pipeline
    assert runlake.configure(lake / "again") is provider, "added to the existing provider, not replaced"
    with runlake.run("a", "both"):
        pass
    runlake.shutdown()
    assert [s.name for s in theirs.get_finished_spans()] == ["invoke_agent a"]
    assert len(runlake.HistoryDB(lake / "again").get_runs("both")) == 1
    assert runlake.HistoryDB(lake).get_runs("both") == [], "the replaced pipeline no longer receives spans"
    theirs.shutdown()


def test_ttl_is_exact_per_run(lake: Path) -> None:
    runlake.configure(lake)
    day = 86_400
    try:
        for age_days, ttl in [(2, 1), (2, 3), (5, 3), (40, 30), (10, 30), (31, 30)]:
            with shifted_clock(-age_days * day):
                with runlake.run("a", f"s-{age_days}-{ttl}", ttl_days=ttl):
                    with runlake.node("n1"):
                        pass
                    with runlake.node("n2"):
                        pass
    finally:
        runlake.shutdown()
    db = runlake.HistoryDB(lake)
    assert len(db.get_history()) == 6
    now = dt.datetime.now(dt.timezone.utc)
    # kept through day D+N, removed from D+N+1: ages 2/ttl 1, 5/ttl 3, 40/30 and 31/30 expire
    result = db.cleanup_expired(now=now)
    assert result == {"executions_deleted": 4, "nodes_deleted": 8}
    left = sorted(i["run_id"] for i in db.get_history())
    assert len(left) == 2
    assert {r["session_id"] for t in db.get_traces() for r in [t]} == {"s-2-3", "s-10-30"}
    assert db.cleanup_expired(now=now) == {"executions_deleted": 0, "nodes_deleted": 0}
    assert db.cleanup_expired(now=now, max_age_days=5, dry_run=True) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert len(db.get_history()) == 2, "a dry run deletes nothing"
    assert db.cleanup_expired(now=now, max_age_days=5) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert not [p for p in (lake / "spans").rglob("session=s-10-30")]


def test_run_totals_agree_across_history_logs_and_statistics(configured: Path) -> None:
    """An agent span that reports its run's total usage and cost wins over the sum of its nodes, everywhere."""
    with runlake.run("totals", session_id="t-s", user_id="t-u") as reported:
        reported.set_usage(input_tokens=400, output_tokens=100)
        reported.set_cost(cents=9.0)
        with runlake.node("llm1", type="llm") as node:
            node.set_usage(input_tokens=100, output_tokens=20)
            node.set_cost(cents=2.0)
    with runlake.run("totals", session_id="t-s", user_id="t-u") as summed:  # no own figures: its nodes' sum
        for name in ("a", "b"):
            with runlake.node(name, type="llm") as node:
                node.set_usage(input_tokens=10, output_tokens=5)
                node.set_cost(cents=1.25)
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    history = {item["run_id"]: item for item in db.get_history()}
    expected = {reported.run_id: (500, 9), summed.run_id: (30, 3)}  # 2.5 cents rounds half up to 3
    for run_id, (tokens, cents) in expected.items():
        summary = db.get_logs(run_id)["summary"]
        assert (history[run_id]["tokens_used"], history[run_id]["cost_cents"]) == (tokens, cents)
        assert (summary["tokens_used"], summary["cost_cents"]) == (tokens, cents)
    statistics = runlake.ExecutionHistoryService(db).statistics(user_id="t-u")
    assert (statistics["tokens_used"], statistics["cost_cents"]) == (530, 12)  # 9 + 2.5 = 11.5 -> 12


@pytest.mark.parametrize(("exact", "whole"), [(0.5, 1), (1.5, 2), (2.5, 3), (2.4999, 2), (0.0, 0), (None, 0)])
def test_whole_cents_rounds_halves_up(exact: float | None, whole: int) -> None:
    from runlake.history import whole_cents

    assert whole_cents(exact) == whole


def test_history_counts_the_nodes_of_a_run_in_progress(configured: Path) -> None:
    """A run that has not ended has only its start row in the index: history counts its nodes so far."""
    with runlake.run("slow", session_id="p-s") as running:
        for name in ("a", "b"):
            with runlake.node(name, type="llm") as node:
                node.set_usage(input_tokens=10, output_tokens=5)
                node.set_cost(cents=1.0)
        runlake.force_flush()  # the nodes are on disk, the run is not over
        for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
            [item] = db.get_history()
            assert item["run_id"] == running.run_id and item["status"] == "running"
            assert (item["node_count"], item["tokens_used"], item["cost_cents"]) == (2, 30, 2)
            summary = db.get_logs(running.run_id)["summary"]
            assert (summary["total_nodes"], summary["tokens_used"], summary["cost_cents"]) == (2, 30, 2)


def test_a_node_on_the_day_before_its_run_is_in_its_logs_and_trace(lake: Path) -> None:
    """A node's clock a little behind its run's across midnight files the node under the day before the run's: the
    logs and the trace find it as history counts it (they read the run's days, then a day either side when the
    exporter counted more nodes than those days hold)."""
    from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("skew")
    midnight = int(dt.datetime(2026, 4, 2, tzinfo=dt.timezone.utc).timestamp()) * 10**9
    attrs = {"runlake.span.type": "run", "session.id": "s-skew", "user.id": "u", "gen_ai.agent.name": "a"}
    run = tracer.start_span("run", attributes=attrs, start_time=midnight + 100_000_000)
    context = trace.set_span_in_context(run)
    for name, start in (("skewed", midnight - 100_000_000), ("normal", midnight + 200_000_000)):
        node_attrs = {"runlake.span.type": "node", "runlake.node.id": name, "runlake.node.type": "tool"}
        tracer.start_span(name, context=context, attributes=node_attrs, start_time=start).end(start + 50_000_000)
    run.end(midnight + 400_000_000)
    provider.shutdown()
    assert {p.name for p in lake.rglob("day=*")} == {"day=2026-04-01", "day=2026-04-02"}
    run_id = f"{run.get_span_context().span_id:016x}"
    for db in (runlake.HistoryDB(lake), runlake.HistoryDB(lake, index_max_rows=1)):
        [item] = db.get_history()
        assert item["node_count"] == 2
        logs = db.get_logs(run_id)
        assert [n["id"] for n in logs["nodes"]] == ["skewed", "normal"] and logs["summary"]["total_nodes"] == 2
        for trace_dict in (*db.get_traces(user_id="u"), *db.get_traces(session_id="s-skew")):
            assert sorted(s["name"] for s in trace_dict["spans"]) == ["normal", "run", "skewed"]


def test_statistics_cover_the_window_up_to_now_only(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``statistics(days, now)``: runs that started in ``[now - days, now]``, naive ``now`` as UTC, boundaries to the
    nanosecond; a run whose clock went back (end before start) counts 0 ms, never a negative duration."""
    import time

    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from runlake.service import ExecutionHistoryService

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("window")
    noon = dt.datetime(2026, 3, 5, 12, tzinfo=dt.timezone.utc)
    at = int(noon.timestamp()) * 10**9
    day = 86_400 * 10**9
    for name, start, end in (
        ("cutoff", at - day, at - day + 10**9),  # exactly at the window's start: in
        ("before", at - day - 1, at - day + 10**9),  # 1 ns earlier: out
        ("now", at, at + 10**9),  # exactly at now: in
        ("future", at + 3_600 * 10**9, at + 3_601 * 10**9),  # after now: out
        ("stepped-back", at - 10**9, at - 2 * 10**9),  # end before start: 0 ms
    ):
        attrs = {"runlake.span.type": "run", "session.id": f"s-{name}", "user.id": "u", "gen_ai.agent.name": "a"}
        tracer.start_span(name, attributes=attrs, start_time=start).end(end_time=end)
    provider.shutdown()
    service = ExecutionHistoryService(lake)
    aware = service.statistics(user_id="u", days=1, now=noon)
    assert aware["total_executions"] == 3 and aware["until"] == "2026-03-05T12:00:00Z"
    assert aware["avg_duration_ms"] == pytest.approx((1000 + 1000 + 0) / 3, abs=0.01)
    with monkeypatch.context() as m:
        m.setenv("TZ", "America/Los_Angeles")
        time.tzset()
        naive = service.statistics(user_id="u", days=1, now=noon.replace(tzinfo=None))
    time.tzset()
    assert {k: naive[k] for k in aware} == aware
    assert service.statistics(days=1, now=dt.datetime.max)["until"] == "9999-12-31T23:59:59Z"
    with pytest.raises(ValueError, match="before the year 1"):
        service.statistics(days=1, now=dt.datetime.min)
    assert {r["run_id"]: r for r in runlake.HistoryDB(lake).get_runs("s-stepped-back")}.popitem()[1]["metrics"] == {
        "duration_ms": 0.0
    }
    [(negative,)] = runlake.HistoryDB(lake).sql("SELECT count(*) FROM spans WHERE duration_ms < 0").fetchall()
    assert negative == 0


def test_a_run_in_progress_counts_its_nodes_not_usage_set_as_it_began(configured: Path) -> None:
    """Usage or cost set on a run span as it starts is in its start row; while it runs, history and logs both give
    the nodes' figures so far (history gave the start row's, logs the nodes': two answers for one run)."""
    tracer = trace.get_tracer("early-usage")
    attrs = {"runlake.span.type": "run", "session.id": "e-s", "gen_ai.agent.name": "early",
             "gen_ai.usage.input_tokens": 999, "runlake.cost.cents": 50}  # fmt: skip
    run = tracer.start_span("early", attributes=attrs)
    with trace.use_span(run, end_on_exit=False):
        for name in ("a", "b"):
            with runlake.node(name, type="llm") as node:
                node.set_usage(input_tokens=10, output_tokens=0)
                node.set_cost(cents=1.0)
    runlake.force_flush()
    run_id = f"{run.get_span_context().span_id:016x}"
    try:
        for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
            [item] = db.get_history()
            summary = db.get_logs(run_id)["summary"]
            assert item["status"] == "running"
            assert (item["tokens_used"], item["cost_cents"]) == (20, 2)
            assert (summary["tokens_used"], summary["cost_cents"]) == (20, 2)
    finally:
        run.end()


def test_logs_say_each_error_once_and_a_handled_exception_is_no_error(configured: Path) -> None:
    """A run that fails with its failing node's message lists that error once; a node that recorded an exception it
    handled (status not ERROR) completed, with no error message."""
    with pytest.raises(RuntimeError):
        with runlake.run("errs", session_id="e-1") as failing:
            with runlake.node("handled", type="tool"):
                trace.get_current_span().record_exception(ValueError("retried and fine"))
            with runlake.node("boom", type="tool"):
                raise RuntimeError("boom")
    runlake.force_flush()
    logs = runlake.HistoryDB(configured).get_logs(failing.run_id)
    assert [e["error_message"] for e in logs["errors"]] == ["RuntimeError: boom"]
    handled = next(n for n in logs["nodes"] if n["id"] == "handled")
    assert handled["status"] == "completed" and handled["error_message"] is None


def test_history_and_statistics_find_an_agent_by_its_id_on_every_path(configured: Path) -> None:
    """``agent_id`` names an agent by name or by ``gen_ai.agent.id``, with the runs index in memory or not; the
    success rate leaves runs in progress out (completed / finished)."""
    from runlake.service import ExecutionHistoryService

    tracer = trace.get_tracer("agent-ids")
    attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "Triager", "gen_ai.agent.id": "agent-42",
             "session.id": "a-s"}  # fmt: skip
    for status in ("ok", "ok", "error"):
        with tracer.start_as_current_span("invoke_agent Triager", attributes=attrs) as span:
            if status == "error":
                span.set_status(Status(StatusCode.ERROR, "failed"))
    running = tracer.start_span("invoke_agent Triager", attributes=attrs)
    runlake.force_flush()
    try:
        for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
            assert len(db.get_history(agent_id="agent-42")) == len(db.get_history(agent_id="Triager")) == 4
            stats = ExecutionHistoryService(db).statistics(agent_id="agent-42")
            assert stats["total_executions"] == 4 and stats["running_executions"] == 1
            assert stats["success_rate"] == round(2 / 3, 4)
    finally:
        running.end()


def test_session_traces_and_times_hold_for_clocks_behind_and_ahead(lake: Path) -> None:
    """A session's runs whose clocks went wrong: one that ended before it started (a clock stepped back across
    midnight) and one that starts tomorrow (a client a day ahead) while another still runs are in the session's
    traces on every path (the session's days were read from its first start to its last end, or to today); a run
    that starts in the last nanosecond of a day is shown on that day (a float rounded it into the next)."""
    from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("clocks")
    today = dt.datetime.combine(dt.datetime.now(dt.timezone.utc).date(), dt.time(), dt.timezone.utc)
    midnight = int(today.timestamp()) * 10**9
    attrs = {"runlake.span.type": "run", "session.id": "clocks", "user.id": "u", "gen_ai.agent.name": "a"}
    day = 86_400 * 10**9
    spans = {
        "early": (midnight - 3 * day, midnight - 3 * day + 10**9),
        "stepped-back": (midnight - day + 10**9, midnight - day - 10**9),  # ends the day before it started
        "last-ns": (midnight - 2 * day - 1, midnight - 2 * day + 10**9),
        "ahead": (midnight + day + 600 * 10**9, midnight + day + 601 * 10**9),
    }
    ids = {}
    for name, (start, end) in spans.items():
        span = tracer.start_span(name, attributes=attrs, start_time=start)
        span.end(end_time=end)
        ids[name] = f"{span.get_span_context().span_id:016x}"
    running = tracer.start_span("running", attributes=attrs, start_time=midnight - day + 3600 * 10**9)
    exporter.force_flush()
    try:
        for db in (runlake.HistoryDB(lake), runlake.HistoryDB(lake, index_max_rows=0)):
            in_traces = {t["run_id"] for t in db.get_traces(session_id="clocks")}
            assert set(ids.values()) <= in_traces
            started = {h["run_id"]: h["started_at"] for h in db.get_history()}
            last_day = (today - dt.timedelta(days=2, seconds=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert started[ids["last-ns"]] == last_day  # 23:59:59 of its own day
    finally:
        running.end()
