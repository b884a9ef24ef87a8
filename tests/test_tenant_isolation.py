"""One tenant's writes never change another tenant's answers, even when both stored the same spans (a collector
fanning one stream out to two tenants' keys, an import into two tenants, a tenant that reuses a run id it learned).

The in-memory runs index is shared by every scoped view of a HistoryDB (the server holds one for all keys), so it
must keep a span's row per tenant and find a run id per tenant.
"""

from __future__ import annotations

from pathlib import Path

from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import runlake
from runlake.history import HistoryDB
from runlake.service import ExecutionHistoryService


def _recorded_run(tmp_path: Path) -> tuple[str, list]:
    """The spans of one run with two nodes, as the SDK handed them to exporters."""
    memory = InMemorySpanExporter()
    provider = runlake.configure(tmp_path / "first-copy")
    provider.add_span_processor(SimpleSpanProcessor(memory))
    try:
        with runlake.run("bot", "s-1", user_id="u-1", input="hello") as run:
            with runlake.node("think", type="llm") as node:
                node.set_usage(input_tokens=3, output_tokens=4)
            with runlake.node("lookup", type="tool"):
                pass
            run.set_output("bye")
    finally:
        runlake.shutdown()
    return run.run_id, list(memory.get_finished_spans())


def _answers(db: HistoryDB, run_id: str) -> dict:
    logs = db.get_logs(run_id)
    return {
        "history": [h["run_id"] for h in db.get_history()],
        "logs": [n["id"] for n in logs["nodes"]],
        "tokens": logs["summary"]["tokens_used"],
        "runs": [r["run_id"] for r in db.get_runs("s-1")],
        "traces": [(t["run_id"], len(t["spans"])) for t in db.get_traces()],
        "user traces": [t["run_id"] for t in db.get_traces(user_id="u-1", limit=5)],
        "executions": ExecutionHistoryService(db).statistics()["total_executions"],
    }


def test_the_same_spans_in_two_tenants_are_each_tenants_own(tmp_path: Path) -> None:
    run_id, spans = _recorded_run(tmp_path)
    lake = tmp_path / "lake"
    for tenant in ("tenant-a", "tenant-b"):
        exporter = RunlakeSpanExporter(lake, force_tenant=tenant, background_flush=False)
        exporter.export(spans)
        exporter.shutdown()
    db = HistoryDB(lake)
    expected = {
        "history": [run_id],
        "logs": ["think", "lookup"],
        "tokens": 7,
        "runs": [run_id],
        "traces": [(run_id, 3)],
        "user traces": [run_id],
        "executions": 1,
    }
    for tenant in ("tenant-a", "tenant-b"):
        assert _answers(db.scoped(tenant_id=tenant), run_id) == expected, tenant
    # the whole lake holds both copies, one per tenant
    assert [h["run_id"] for h in db.get_history()] == [run_id, run_id]


def test_a_users_view_of_a_shared_trace_holds_only_that_users_spans(tmp_path: Path) -> None:
    """A trace where alice's run hands off to a run for bob, under an HTTP span (a run of no user, as a root span of
    another instrumentation is): a reader scoped to alice sees alice's run and nodes, never bob's run, nodes or
    text; bob the other way round; an unscoped reader sees all."""
    from opentelemetry import trace

    lake = tmp_path / "lake"
    runlake.configure(lake)
    try:
        with trace.get_tracer("web").start_as_current_span("POST /chat"):
            with runlake.run("front", "s-shared", user_id="alice", input="alice's question") as front:
                with runlake.node("alice-think", type="llm", input="alice's prompt"):
                    pass
                with runlake.run("specialist", "s-shared", user_id="bob", input="BOB PRIVATE INPUT") as back:
                    with runlake.node("bob-lookup", type="tool", input="bob's query"):
                        pass
                    back.set_output("BOB PRIVATE OUTPUT")
                front.set_output("alice's answer")
    finally:
        runlake.shutdown()
    db = HistoryDB(lake)

    def names(view: HistoryDB, **query) -> set[str]:
        traces = view.get_traces(**query)
        assert len(traces) == 1
        return {s["name"] for s in traces[0]["spans"]}

    alice_sees = {"invoke_agent front", "chat alice-think"}
    bob_sees = {"invoke_agent specialist", "execute_tool bob-lookup"}
    for query in ({}, {"session_id": "s-shared"}, {"user_id": "alice"}):
        assert names(db.scoped(user_id="alice"), **query) == alice_sees, query
    assert names(db.scoped(user_id="bob")) == bob_sees
    assert names(db) == alice_sees | bob_sees | {"POST /chat"}
    assert "BOB PRIVATE" not in str(db.scoped(user_id="alice").get_traces())
    assert [n["id"] for n in db.scoped(user_id="alice").get_logs(front.run_id)["nodes"]] == ["alice-think"]
    assert [n["id"] for n in db.scoped(user_id="bob").get_logs(back.run_id)["nodes"]] == ["bob-lookup"]


def test_a_users_view_follows_the_user_down_the_span_tree(tmp_path: Path) -> None:
    """Spans as an ingest server gets them (no RunStartProcessor: the user and session only on agent spans): a
    nested run and llm call under alice's run are alice's (they inherit her user); bob's run and its llm call,
    handed off from alice's run, are not, even when bob's llm span names no user, run or session."""
    from opentelemetry.sdk.trace import TracerProvider

    lake = tmp_path / "lake"
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("semconv")

    def agent(name: str, **attributes: str):  # noqa: ANN202
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name, **attributes}
        return tracer.start_as_current_span(f"invoke_agent {name}", attributes=attributes)

    def chat(name: str, text: str):  # noqa: ANN202
        return tracer.start_as_current_span(
            f"chat {name}", attributes={"gen_ai.operation.name": "chat", "input.value": text}
        )

    with agent("supervisor", **{"user.id": "alice", "session.id": "s-a"}):
        with chat("plan", "alice's plan"):
            pass
        with agent("researcher"), chat("research", "alice's research"):
            pass
    with agent("front", **{"user.id": "alice", "session.id": "s-b1"}):
        with agent("specialist", **{"user.id": "bob", "session.id": "s-b2"}), chat("bob-llm", "BOB SECRET PROMPT"):
            pass
    provider.shutdown()

    def view(db: HistoryDB) -> dict[str, set[str]]:
        return {t["agent_name"]: {s["name"] for s in t["spans"]} for t in db.get_traces()}

    db = HistoryDB(lake)
    alice, bob = db.scoped(user_id="alice"), db.scoped(user_id="bob")
    supervisor = {"invoke_agent supervisor", "chat plan", "invoke_agent researcher", "chat research"}
    assert view(alice) == {"supervisor": supervisor, "front": {"invoke_agent front"}}
    assert view(bob) == {"specialist": {"invoke_agent specialist", "chat bob-llm"}}
    assert "BOB SECRET" not in str(alice.get_traces()) and "BOB SECRET" not in str(alice.get_traces(session_id="s-b1"))
    front = next(t["run_id"] for t in db.get_traces() if t["agent_name"] == "front")
    assert "BOB SECRET" not in str(alice.get_logs(front))
    assert view(db)["supervisor"] == supervisor  # the unscoped reader sees all, as before


def test_a_reused_span_id_and_a_trace_in_two_tenants_stay_apart(tmp_path: Path) -> None:
    """Runs are told apart by span id, trace id and tenant: two traces of one session reusing a span id (a worker
    whose id counter restarted) keep their own text; the same trace stored by two tenants is two traces, each with
    its own spans, for a reader of the whole lake."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator

    class Restarting(IdGenerator):
        def __init__(self) -> None:
            self.traces = 0

        def generate_span_id(self) -> int:
            return 1  # every root span the same id

        def generate_trace_id(self) -> int:
            self.traces += 1
            return self.traces

    lake = tmp_path / "lake"
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider(id_generator=Restarting())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("worker")
    for word in ("FIRST", "SECOND"):
        attributes = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "worker",
            "session.id": "s",
            "input.value": f"{word} input",
            "output.value": f"{word} output",
        }
        with tracer.start_as_current_span("invoke_agent worker", attributes=attributes):
            pass
    provider.shutdown()
    for db in (HistoryDB(lake), HistoryDB(lake, index_max_rows=0)):
        assert sorted(r["input_content"] for r in db.get_runs("s")) == ["FIRST input", "SECOND input"]
        assert sorted(h["output"] for h in db.get_history()) == ["FIRST output", "SECOND output"]

    run_id, spans = _recorded_run(tmp_path)
    two = tmp_path / "two-tenants"
    for tenant in ("tenant-a", "tenant-b"):
        copy = RunlakeSpanExporter(two, force_tenant=tenant, background_flush=False)
        copy.export(spans)
        copy.shutdown()
    for db in (HistoryDB(two), HistoryDB(two, index_max_rows=0)):
        for traces in (db.get_traces(), db.get_traces(user_id="u-1"), db.get_traces(session_id="s-1")):
            assert [(t["run_id"], len(t["spans"])) for t in traces] == [(run_id, 3), (run_id, 3)]
            for trace in traces:
                assert len({s["attributes"].get("runlake.tenant.id") for s in trace["spans"]}) == 1


def test_another_users_span_with_a_users_run_ids_stays_out_of_that_users_view(tmp_path: Path) -> None:
    """A client of another user (its key forces its user) sends a run span with the ids of this user's run and
    another start: two spans that share ids. The user's view keeps its own run's text, spans and nodes; the other
    user's span is not in it (it was shown, its input as this user's, through a cache keyed by span id alone)."""
    from opentelemetry.sdk.trace import ReadableSpan

    run_id, spans = _recorded_run(tmp_path)
    lake = tmp_path / "lake"
    admin = RunlakeSpanExporter(lake, background_flush=False)
    admin.export(spans)
    admin.shutdown()
    [run_span] = [s for s in spans if s.parent is None]
    intruder = ReadableSpan(
        "intruder",
        context=run_span.context,
        attributes={"runlake.span.type": "run", "session.id": "s-1", "gen_ai.agent.name": "bot", "input.value": "BOB"},
        start_time=run_span.start_time + 5 * 10**9,
        end_time=run_span.end_time + 5 * 10**9,
    )
    bob = RunlakeSpanExporter(lake, background_flush=False)
    bob.force_user = "u-bob"  # as the server sets it for a user key's request
    bob.export([intruder])
    bob.shutdown()
    for db in (HistoryDB(lake, user_id="u-1"), HistoryDB(lake, user_id="u-1", index_max_rows=0)):
        assert [(r["run_id"], r["input_content"]) for r in db.get_runs("s-1")] == [(run_id, "hello")]
        assert [(h["run_id"], h["input"]) for h in db.get_history()] == [(run_id, "hello")]
        [trace_dict] = db.get_traces(session_id="s-1")
        assert sorted(s["name"] for s in trace_dict["spans"]) == [
            "chat think",
            "execute_tool lookup",
            "invoke_agent bot",
        ]
        assert [n["id"] for n in db.get_logs(run_id)["nodes"]] == ["think", "lookup"]
    bobs = HistoryDB(lake, user_id="u-bob")
    assert [(h["run_id"], h["input"]) for h in bobs.get_history()] == [(run_id, "BOB")]
    assert [s["name"] for t in bobs.get_traces(session_id="s-1") for s in t["spans"]] == ["intruder"]
