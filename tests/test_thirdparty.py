"""Spans from other instrumentations become runs and nodes: OpenInference, OTel GenAI, OpenLLMetry.

The end-to-end test uses the real ``openinference-instrumentation-openai`` and the real ``openai`` client, pointed at
a tiny OpenAI-compatible server that this test runs on 127.0.0.1 (a test fixture, not product code).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry import trace
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Status, StatusCode

import runlake


def fake_openai_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        return {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": body["model"],
            "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": f"echo: {prompt}"}}
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        }

    return app


@pytest.fixture
def openai_server() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(fake_openai_app(), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.01)  # polling the server's own readiness flag, bounded
    assert server.started, "fake OpenAI server did not start"
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_openinference_openai_calls_appear_as_llm_nodes(configured: Path, openai_server: str) -> None:
    openai = pytest.importorskip("openai")
    from openinference.instrumentation.openai import OpenAIInstrumentor

    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=trace.get_tracer_provider())
    try:
        client = openai.OpenAI(base_url=openai_server, api_key="sk-test-not-a-real-key")
        with runlake.run("oi-agent", session_id="oi-e2e", input="say hi twice") as r:
            for question in ("hi", "again"):
                answer = client.chat.completions.create(
                    model="gpt-test", messages=[{"role": "user", "content": question}]
                )
            r.set_output(answer.choices[0].message.content)
    finally:
        instrumentor.uninstrument()
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [run] = db.get_runs("oi-e2e")
    logs = db.get_logs(run["run_id"])
    assert [n["type"] for n in logs["nodes"]] == ["llm", "llm"]
    assert all(n["status"] == "completed" for n in logs["nodes"])
    assert "again" in logs["nodes"][1]["input"] and "echo: again" in logs["nodes"][1]["output"]
    assert logs["summary"]["tokens_used"] == 2 * 17
    [item] = db.get_history(agent_id="oi-agent")  # the fake server's own FastAPI spans are runs of their own
    assert item["tokens_used"] == 34 and item["node_count"] == 2
    model = db.sql("SELECT DISTINCT model FROM spans WHERE span_type = 'node'").fetchall()
    assert model == [("gpt-test",)]


def test_genai_semconv_spans(configured: Path) -> None:
    tracer = trace.get_tracer("some.genai.framework")
    with tracer.start_as_current_span(
        "invoke_agent planner",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "planner",
            "gen_ai.conversation.id": "genai-1",
            "gen_ai.input.messages": '[{"role":"user","parts":[{"type":"text","content":"plan"}]}]',
        },
    ):
        with tracer.start_as_current_span(
            "chat gpt-5",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-5",
                "gen_ai.provider.name": "openai",
                "gen_ai.usage.input_tokens": 100,
                "gen_ai.usage.output_tokens": 20,
                "gen_ai.output.messages": '[{"role":"assistant","parts":[{"type":"text","content":"ok"}]}]',
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool search",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "search",
                "gen_ai.tool.call.arguments": '{"query":"flaky test"}',
            },
        ) as tool:
            tool.set_attribute("error.type", "TimeoutError")
            tool.set_status(Status(StatusCode.ERROR, "search timed out"))
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [run] = db.get_runs("genai-1")
    assert run["metadata"]["agent_name"] == "planner" and '"plan"' in run["input_content"]
    logs = db.get_logs(run["run_id"])
    llm, tool_node = logs["nodes"]
    assert (llm["id"], llm["type"], llm["status"]) == ("chat gpt-5", "llm", "completed")
    assert '"ok"' in llm["output"] and logs["summary"]["tokens_used"] == 120
    assert (tool_node["id"], tool_node["type"], tool_node["status"]) == ("search", "tool", "failed")
    assert logs["errors"][0] == {"node_id": "search", "error_type": "TimeoutError", "error_message": "search timed out"}
    assert tool_node["input"] == '{"query":"flaky test"}'  # gen_ai.tool.call.arguments
    model = db.sql("SELECT model, provider FROM spans WHERE operation = 'chat'").fetchall()
    assert model == [("gpt-5", "openai")]


def test_openllmetry_traceloop_spans(configured: Path) -> None:
    tracer = trace.get_tracer("traceloop.sdk")
    with tracer.start_as_current_span(
        "support.workflow",
        attributes={
            "traceloop.span.kind": "workflow",
            "traceloop.entity.name": "support",
            "traceloop.entity.input": "my order is late",
            "traceloop.association.properties.session_id": "tl-1",
            "traceloop.association.properties.user_id": "tl-user",
        },
    ) as wf:
        with tracer.start_as_current_span(
            "lookup_order.task",
            attributes={
                "traceloop.span.kind": "task",
                "traceloop.entity.output": "order 7 shipped",
                "traceloop.association.properties.session_id": "tl-1",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "openai.chat",
            attributes={
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.usage.prompt_tokens": 30,
                "gen_ai.usage.completion_tokens": 9,
                "traceloop.association.properties.session_id": "tl-1",
                "gen_ai.prompt.0.role": "system",
                "gen_ai.prompt.0.content": "You track orders.",
                "gen_ai.prompt.1.role": "user",
                "gen_ai.prompt.1.content": "my order is late",
                "gen_ai.completion.0.finish_reason": "stop",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.content": "it shipped",
            },  # as opentelemetry-instrumentation-openai 0.40 sets them: no span kind, no gen_ai.operation.name
        ):
            pass
        wf.set_attribute("traceloop.entity.output", "it shipped")
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [run] = db.get_runs("tl-1")
    assert run["input_content"] == "my order is late" and run["output_content"] == "it shipped"
    assert run["metadata"]["agent_name"] == "support"
    logs = db.get_logs(run["run_id"])
    assert [n["id"] for n in logs["nodes"]] == ["lookup_order.task", "openai.chat"]
    assert logs["nodes"][0]["output"] == "order 7 shipped" and logs["summary"]["tokens_used"] == 39
    assert logs["nodes"][1]["type"] == "llm" and run["metadata"].get("user_id", "tl-user") == "tl-user"
    assert db.get_history()[0]["tokens_used"] == 39 and db.get_traces(user_id="tl-user")
    # the flattened message lists become the llm node's input and output, and come back flattened as they were sent
    assert json.loads(logs["nodes"][1]["input"]) == [
        {"role": "system", "content": "You track orders."},
        {"role": "user", "content": "my order is late"},
    ]
    assert json.loads(logs["nodes"][1]["output"]) == [
        {"finish_reason": "stop", "role": "assistant", "content": "it shipped"}
    ]
    [chat] = [s for s in db.get_traces(session_id="tl-1")[0]["spans"] if s["name"] == "openai.chat"]
    assert chat["attributes"]["gen_ai.prompt.1.content"] == "my order is late"
    assert chat["attributes"]["gen_ai.completion.0.finish_reason"] == "stop"
    rebuilt = ("input.", "output.", "runlake.input", "runlake.output")
    assert not any(key.startswith(rebuilt) for key in chat["attributes"])


def test_openinference_messages_and_cost_in_dollars(configured: Path) -> None:
    tracer = trace.get_tracer("openinference.instrumentation.test")
    with runlake.run("oi-agent", session_id="oi-cost") as r:
        with tracer.start_as_current_span(
            "ChatCompletion",
            attributes={
                "openinference.span.kind": "LLM",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": "hi",
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.content": "hello",
                "llm.cost.total": 0.0125,
            },  # no input.value / output.value: the messages are the node's text
        ):
            pass
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [node] = db.get_logs(r.run_id)["nodes"]
    assert json.loads(node["input"]) == [{"role": "user", "content": "hi"}]
    assert json.loads(node["output"]) == [{"role": "assistant", "content": "hello"}]
    _, [(cents,)] = db.sql_rows("SELECT cost_cents FROM spans WHERE node_type = 'llm'")
    assert cents == pytest.approx(1.25)
    assert db.get_history()[0]["cost_cents"] == 1  # CodexOS's whole cents


def _exporter_only_provider(lake: Path, simple: bool) -> tuple:
    """A provider with the runlake exporter and nothing else: the `OTEL_TRACES_EXPORTER=runlake` set-up, in which no
    processor hands a run's session or run id down to its children (as with spans ingested by `runlake serve`)."""
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider()
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter) if simple else BatchSpanProcessor(exporter))
    return provider, provider.get_tracer("other-instrumentation")


@pytest.mark.parametrize("simple", [True, False], ids=["a span per export", "batched"])
def test_children_without_session_or_run_id_belong_to_the_nearest_run(lake: Path, simple: bool) -> None:
    """Nodes that repeat neither session nor run id, under an HTTP root span and an agent span that has both: each
    query finds them in the agent's run, whichever order and batches the spans arrive in, before and after
    compaction, with and without the in-memory runs index."""
    provider, tracer = _exporter_only_provider(lake, simple)
    with tracer.start_as_current_span("POST /chat", kind=trace.SpanKind.SERVER):  # a root span: a run
        with tracer.start_as_current_span(
            "invoke_agent planner",
            attributes={
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": "planner",
                "gen_ai.conversation.id": "ga-s",
                "user.id": "ga-u",
            },
        ):
            with tracer.start_as_current_span("agent loop"):  # a plain span between the run and its nodes
                with tracer.start_as_current_span(
                    "chat gpt-5",
                    attributes={
                        "gen_ai.operation.name": "chat",
                        "gen_ai.usage.input_tokens": 100,
                        "gen_ai.usage.output_tokens": 20,
                    },
                ):
                    pass
            with tracer.start_as_current_span(
                "execute_tool search",
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
            ):
                pass
    provider.shutdown()

    from runlake.compact import compact

    for compacted in (False, True):
        if compacted:
            compact(lake, older_than_minutes=0)
        for index_rows in (None, 0):
            db = runlake.HistoryDB(lake) if index_rows is None else runlake.HistoryDB(lake, index_max_rows=0)
            [planner] = db.get_runs("ga-s")
            logs = db.get_logs(planner["run_id"])
            assert [n["id"] for n in logs["nodes"]] == ["chat gpt-5", "search"], (compacted, index_rows)
            assert logs["summary"]["total_nodes"] == 2 and logs["summary"]["tokens_used"] == 120
            history = {item["run_id"]: item for item in db.get_history()}
            assert (history[planner["run_id"]]["node_count"], history[planner["run_id"]]["tokens_used"]) == (2, 120)
            [http] = [item for run_id, item in history.items() if run_id != planner["run_id"]]
            assert (http["node_count"], http["tokens_used"]) == (0, 0)
            assert db.get_logs(http["run_id"])["nodes"] == []
            [whole] = db.get_traces()  # described by the root span's run, with every span of the trace
            assert whole["run_id"] == http["run_id"] and len(whole["spans"]) == 5
            [in_session] = db.get_traces(session_id="ga-s")
            assert in_session["trace_id"] == whole["trace_id"] and len(in_session["spans"]) == 5
            [of_user] = db.get_traces(user_id="ga-u")
            assert of_user["run_id"] == planner["run_id"] and len(of_user["spans"]) == 5
            by_type = runlake.ExecutionHistoryService(db).statistics(agent_id="planner")["node_types"]
            assert {k: (v["count"], v["tokens_used"]) for k, v in by_type.items()} == {"llm": (1, 120), "tool": (1, 0)}


def test_a_run_under_a_remote_parent_is_its_traces_first_run(configured: Path) -> None:
    """A run started under an incoming `traceparent` has a parent in another service: it still describes its trace
    in `get_traces()` and `get_traces(user_id=...)` (with the index in memory and without)."""
    from opentelemetry import context
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    remote = SpanContext(0x1234, 0x99, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(remote)))
    try:
        with runlake.run("callee", session_id="rp-s", user_id="rp-u") as run:
            with runlake.node("answer", type="llm"):
                pass
    finally:
        context.detach(token)
    runlake.force_flush()
    for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
        for found in (db.get_traces(), db.get_traces(user_id="rp-u"), db.get_traces(session_id="rp-s")):
            [trace_dict] = found
            assert trace_dict["run_id"] == run.run_id and trace_dict["trace_id"] == f"{0x1234:032x}"
            assert [s["name"] for s in trace_dict["spans"]] == ["invoke_agent callee", "chat answer"]


def test_a_run_whose_session_is_set_after_it_started_is_one_run(configured: Path) -> None:
    """Its start row names no session, its end row does: every listing shows the run once, finished."""
    tracer = trace.get_tracer("framework")
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper"}
    with tracer.start_as_current_span("invoke_agent helper", attributes=attributes) as agent:
        agent.set_attribute("gen_ai.conversation.id", "late-session")  # known once the conversation exists
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat"}):
            pass
    runlake.force_flush()
    run_id = f"{agent.get_span_context().span_id:016x}"
    for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
        assert [(r["run_id"], r["status"]) for r in db.get_runs("late-session")] == [(run_id, "completed")]
        assert [(h["run_id"], h["status"]) for h in db.get_history()] == [(run_id, "completed")]
        assert [t["run_id"] for t in db.get_traces()] == [run_id]
        assert db.sql_rows("SELECT run_id, end_time_unix_nano IS NULL FROM runs")[1] == [(run_id, False)]
        statistics = runlake.ExecutionHistoryService(db).statistics()
        assert (statistics["total_executions"], statistics["running_executions"]) == (1, 0)


class _OneTraceIds(RandomIdGenerator):
    """Random span ids, one fixed trace id: two root spans in one trace (workers continuing a trace id)."""

    def generate_trace_id(self) -> int:
        return 0xABCDEF


def _agent(name: str, session: str, user: str | None = None) -> dict:
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": name, "gen_ai.conversation.id": session}
    return {**attributes, "user.id": user} if user else attributes


def _chat(tokens: int) -> dict:
    return {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": tokens, "gen_ai.usage.output_tokens": 0}


@pytest.mark.parametrize("simple", [True, False], ids=["a span per export", "batched"])
def test_nested_runs_in_other_sessions_and_spans_that_end_before_their_children(lake: Path, simple: bool) -> None:
    """Run B (session s2) inside a tool node of run A (session s1); under B a plain span ends before its own llm
    child. Every shape agrees on whose nodes are whose, and a trace holds all its spans whichever session asks."""
    provider, tracer = _exporter_only_provider(lake, simple)
    with tracer.start_as_current_span("invoke_agent A", attributes=_agent("A", "s1", "u1")):
        with tracer.start_as_current_span(
            "execute_tool delegate", attributes={"gen_ai.operation.name": "execute_tool"}
        ):
            with tracer.start_as_current_span("invoke_agent B", attributes=_agent("B", "s2", "u2")):
                step = tracer.start_span("step")  # a plain span that ends before its child
                chat = tracer.start_span("b-chat", context=trace.set_span_in_context(step), attributes=_chat(15))
                step.end()
                chat.end()
    provider.shutdown()
    for db in (runlake.HistoryDB(lake), runlake.HistoryDB(lake, index_max_rows=0)):
        history = {item["run_id"]: item for item in db.get_history()}
        [run_a] = db.get_runs("s1")
        [run_b] = db.get_runs("s2")
        for run, nodes, tokens in ((run_a, ["execute_tool delegate"], 0), (run_b, ["b-chat"], 15)):
            logs = db.get_logs(run["run_id"])
            assert [n["id"] for n in logs["nodes"]] == nodes
            assert logs["summary"]["tokens_used"] == tokens == history[run["run_id"]]["tokens_used"]
            assert history[run["run_id"]]["node_count"] == len(nodes)
        for found in (db.get_traces(), db.get_traces(session_id="s2"), db.get_traces(user_id="u2")):
            [whole] = found
            assert len(whole["spans"]) == 5
        listed = {s["session_id"]: s for s in runlake.SessionStore(lake).list_sessions()}
        assert (listed["s2"]["run_count"], listed["s2"]["agent_name"]) == (1, "B")
        service = runlake.ExecutionHistoryService(db)  # per node type, each agent counts its own nodes only
        for agent, expected in (("A", {"tool": (1, 0)}), ("B", {"llm": (1, 15)})):
            by_type = service.statistics(agent_id=agent)["node_types"]
            assert {k: (v["count"], v["tokens_used"]) for k, v in by_type.items()} == expected, agent


def test_two_root_runs_in_one_trace_share_a_node_with_no_run_above_it_once(lake: Path) -> None:
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(id_generator=_OneTraceIds())
    provider.add_span_processor(BatchSpanProcessor(RunlakeSpanExporter(lake, background_flush=False)))
    tracer = provider.get_tracer("workers")
    with tracer.start_as_current_span("invoke_agent R1", attributes=_agent("R1", "s1")):
        lost = tracer.start_span("never-ends")  # the orphan's parent is never exported
        with tracer.start_as_current_span("orphan", context=trace.set_span_in_context(lost), attributes=_chat(100)):
            pass
    with tracer.start_as_current_span("invoke_agent R2", attributes=_agent("R2", "s1")):
        with tracer.start_as_current_span("r2-chat", attributes=_chat(2)):
            pass
    provider.shutdown()
    for db in (runlake.HistoryDB(lake), runlake.HistoryDB(lake, index_max_rows=0)):
        listed = [n["id"] for item in db.get_history() for n in db.get_logs(item["run_id"])["nodes"]]
        assert sorted(listed) == ["orphan", "r2-chat"]
        assert sum(item["node_count"] for item in db.get_history()) == 2
        assert runlake.ExecutionHistoryService(db).statistics()["total_nodes"] == 2


def test_message_families_and_markers_map_the_same_whatever_the_key_order_or_the_sender(tmp_path: Path) -> None:
    """Both OpenLLMetry's and OpenInference's flattened messages: the family is chosen by a fixed order, not by
    which key came first, so a span rebuilt (keys in another order) maps to the same input. A marker key a span
    brings itself is not trusted: its own output.value stays its output."""
    from opentelemetry.exporter.runlake import mapping
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("t")
    oi = {"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "from OpenInference"}
    ol = {"gen_ai.prompt.0.role": "user", "gen_ai.prompt.0.content": "from OpenLLMetry"}
    for attributes in ({**oi, **ol}, {**ol, **oi}):
        with tracer.start_as_current_span("chat", attributes={"llm.request.type": "chat", **attributes}):
            pass
    with tracer.start_as_current_span(
        "forged", attributes={"output.value": "real output", "runlake.output.messages_from": "gen_ai.prompt."}
    ):
        pass
    provider.shutdown()
    mapper = mapping.SpanMapper()
    rows = [dict(zip(mapping.SPAN_COLUMNS, mapper.map_span(s))) for s in memory.get_finished_spans()]
    assert [json.loads(r["input"])[0]["content"] for r in rows[:2]] == ["from OpenLLMetry"] * 2
    for row in rows[:2]:  # rebuilt and mapped again: the same input, both families kept
        rebuilt = mapping.attributes_of_row(row)
        assert rebuilt["llm.input_messages.0.message.content"] == "from OpenInference"
        assert rebuilt["gen_ai.prompt.0.content"] == "from OpenLLMetry"
    forged = rows[2]
    assert forged["output"] == "real output" and "messages_from" not in (forged["attributes"] or "")
    assert mapping.attributes_of_row(forged)["output.value"] == "real output"


def test_an_event_attribute_named_like_runtime_state_is_redacted() -> None:
    from opentelemetry.exporter.runlake import mapping

    from runlake.redact import default_redactor

    _, attributes = mapping.redact_event("note", {"runlake.runtime.state": "password=hunter2"}, default_redactor())
    assert "hunter2" not in json.dumps(attributes)


def test_openllmetry_agent_spans_are_runs_even_inside_a_workflow(configured: Path) -> None:
    """docs/schema.md: ``traceloop.span.kind`` ``workflow`` and ``agent`` are runs, ``task`` and ``tool`` nodes.
    An OpenLLMetry agent inside a workflow is a run of its own (its agent name, its nodes), not a node of the
    workflow: taken as a node, the agent's runs, history and per-agent figures vanish."""
    tracer = trace.get_tracer("traceloop.sdk")
    session = {"traceloop.association.properties.session_id": "tl-agent"}
    with tracer.start_as_current_span(
        "triage.workflow", attributes={"traceloop.span.kind": "workflow", "traceloop.entity.name": "triage", **session}
    ):
        with tracer.start_as_current_span(
            "researcher.agent",
            attributes={"traceloop.span.kind": "agent", "traceloop.entity.name": "researcher", **session},
        ) as agent:
            with tracer.start_as_current_span(
                "search.tool", attributes={"traceloop.span.kind": "tool", "traceloop.entity.name": "search", **session}
            ):
                pass
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    agent_run = f"{agent.get_span_context().span_id:016x}"
    by_agent = {run["metadata"]["agent_name"]: run["run_id"] for run in db.get_runs("tl-agent")}
    assert set(by_agent) == {"triage", "researcher"} and by_agent["researcher"] == agent_run
    assert [item["run_id"] for item in db.get_history(agent_id="researcher")] == [agent_run]
    assert [(n["id"], n["type"]) for n in db.get_logs(agent_run)["nodes"]] == [("search.tool", "tool")]
    _, rows = db.sql_rows("SELECT span_type FROM spans WHERE name = 'researcher.agent'")
    assert rows == [("run",)]


def test_the_first_exception_event_is_the_error_message(configured: Path) -> None:
    """docs/schema.md: ``status_message`` is the status description, else the FIRST exception event's message. A
    span that records the original failure and then the exceptions it caused (a retry, a cleanup) reports the
    original one, which is what explains the failure."""
    tracer = trace.get_tracer("framework")
    with runlake.run("fixer", session_id="exc-s") as run:
        with tracer.start_as_current_span(
            "execute_tool fetch", attributes={"gen_ai.operation.name": "execute_tool"}, record_exception=False
        ) as tool:
            tool.record_exception(TimeoutError("upstream timed out"))
            tool.record_exception(RuntimeError("retry budget exhausted"))
            tool.set_status(Status(StatusCode.ERROR))  # no description: the events say what went wrong
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    [node] = db.get_logs(run.run_id)["nodes"]
    assert node["status"] == "failed" and node["error_message"] == "upstream timed out"
    _, rows = db.sql_rows("SELECT status_code, status_message FROM spans WHERE name = 'execute_tool fetch'")
    assert rows == [("ERROR", "upstream timed out")]
    [trace_dict] = db.get_traces(session_id="exc-s")
    [span] = [s for s in trace_dict["spans"] if s["name"] == "execute_tool fetch"]
    assert [e["attributes"]["exception.message"] for e in span["events"]] == [
        "upstream timed out",
        "retry budget exhausted",
    ], "both events are kept"


def test_the_requested_model_is_the_model_and_the_response_model_is_kept(configured: Path) -> None:
    """docs/schema.md: ``model`` is ``gen_ai.request.model``, else ``gen_ai.response.model``. Providers answer with
    a dated model name ("gpt-4o-2024-08-06" for "gpt-4o"); grouping by model groups by what was asked for, and the
    response model, differing, stays in the span's attributes rather than being lost."""
    tracer = trace.get_tracer("some.genai.framework")
    with runlake.run("modeler", session_id="model-s") as run:
        with tracer.start_as_current_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat answered", attributes={"gen_ai.operation.name": "chat", "gen_ai.response.model": "gpt-4o-mini-2"}
        ):
            pass
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    query = f"SELECT name, model, attributes FROM spans WHERE run_id = '{run.run_id}' AND span_type = 'node' ORDER BY 1"
    _, rows = db.sql_rows(query)
    assert [(name, model) for name, model, _ in rows] == [("chat answered", "gpt-4o-mini-2"), ("chat gpt-4o", "gpt-4o")]
    leftovers = json.loads(rows[1][2])
    assert leftovers.get("gen_ai.response.model") == "gpt-4o-2024-08-06" and "gen_ai.request.model" not in leftovers
    [trace_dict] = db.get_traces(session_id="model-s")
    [chat] = [s for s in trace_dict["spans"] if s["name"] == "chat gpt-4o"]
    assert chat["attributes"]["gen_ai.request.model"] == "gpt-4o"
    assert chat["attributes"]["gen_ai.response.model"] == "gpt-4o-2024-08-06"
