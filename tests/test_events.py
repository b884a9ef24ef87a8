"""Live events from spans of other instrumentations (no run id on their nodes), in the order OTLP sends them."""

from __future__ import annotations

import datetime as dt

from opentelemetry import trace
from opentelemetry.exporter.runlake.mapping import COL, SpanMapper
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from runlake.events import EventBuilder


def genai_trace(agent: str, nodes: int = 2, with_turn: bool = False) -> list:
    """One OTel GenAI trace (invoke_agent run, chat nodes, optionally under a turn-like chain span), finished spans
    in the order the SDK hands them over: children first."""
    collected = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("genai-app")
    run_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": agent, "session.id": "s-ev"}
    with tracer.start_as_current_span(f"invoke_agent {agent}", attributes=run_attrs):
        with tracer.start_as_current_span("step"):  # a plain span between run and nodes
            for i in range(nodes):
                with tracer.start_as_current_span(f"chat {i}", attributes={"gen_ai.operation.name": "chat"}):
                    pass
    if not with_turn:
        return [s for s in collected.get_finished_spans() if s.name != "step"]
    return list(collected.get_finished_spans())


def rows_of(spans: list) -> list[tuple]:
    mapper = SpanMapper()
    return [mapper.map_span(s) for s in spans]


def test_nodes_before_their_run_in_one_request_get_the_real_run_id() -> None:
    spans = genai_trace("ev-agent", with_turn=True)
    run_id = f"{spans[-1].context.span_id:016x}"
    events = EventBuilder().events(rows_of(spans))
    assert [e["type"] for e in events] == ["execution_started", "node_executed", "node_executed", "execution_completed"]
    assert {e["run_id"] for e in events} == {run_id}, "no made-up trace: id, one execution_started"
    assert {e["agent_id"] for e in events} == {"ev-agent"}
    # the run's own start, though a node came first: its span is in the same request
    started = f"{dt.datetime.fromtimestamp(spans[-1].start_time / 1e9, dt.timezone.utc):%Y-%m-%dT%H:%M:%S}"
    assert events[0]["data"]["started_at"].startswith(started) and events[0]["timestamp"].startswith(started)


def test_nodes_of_a_run_seen_in_an_earlier_request_are_joined_by_trace() -> None:
    builder = EventBuilder()
    first = genai_trace("ev-a")
    builder.events(rows_of(first))
    later_nodes = rows_of(genai_trace("ev-b"))
    # a node of the first trace arriving late, alone: its parent is not in the request, its trace's run was seen
    late = rows_of(first)[0]
    events = builder.events([late, *later_nodes])
    first_run = f"{first[-1].context.span_id:016x}"
    late_events = [e for e in events if e["trace_id"] == late[COL["trace_id"]]]
    assert late_events and {e["run_id"] for e in late_events} == {first_run}


def test_a_node_whose_run_was_never_seen_is_named_by_its_trace() -> None:
    spans = genai_trace("ev-c")
    node_rows = rows_of(spans)[:-1]  # the run span has not arrived
    events = EventBuilder().events(node_rows)
    trace = f"{spans[0].context.trace_id:032x}"
    assert {e["run_id"] for e in events} == {f"trace:{trace}"}
    assert events[0]["type"] == "execution_started" and events[0]["data"]["input"] is None


def test_a_node_after_its_run_ended_goes_to_the_runs_user_and_agent_without_a_new_start() -> None:
    """A step that runs on after its run ended (its node naming no user, no run, no agent) arrives in a later
    request: no second ``execution_started`` for a run that completed, and the run's user and agent, so a user's
    connection sees the node it can read in the logs (it was sent with user and agent null)."""
    collected = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    tracer = provider.get_tracer("late")
    attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "ag", "session.id": "s", "user.id": "u"}
    run = tracer.start_span("invoke_agent ag", attributes=attrs)
    chat = {"gen_ai.operation.name": "chat"}
    late = tracer.start_span("chat", context=trace.set_span_in_context(run), attributes=chat)
    run.end()
    late.end()
    [run_span, late_span] = sorted(collected.get_finished_spans(), key=lambda s: s.name != "invoke_agent ag")
    builder = EventBuilder()
    assert [e["type"] for e in builder.events(rows_of([run_span]))] == ["execution_started", "execution_completed"]
    events = builder.events(rows_of([late_span]))
    assert [(e["type"], e["user_id"], e["agent_id"]) for e in events] == [("node_executed", "u", "ag")]
    assert events[0]["run_id"] == f"{run_span.context.span_id:016x}"
