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
