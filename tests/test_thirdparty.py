"""Spans from other instrumentations become runs and nodes: OpenInference, OTel GenAI, OpenLLMetry.

The end-to-end test uses the real ``openinference-instrumentation-openai`` and the real ``openai`` client, pointed at
a tiny OpenAI-compatible server that this test runs on 127.0.0.1 (a test fixture, not product code).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry import trace
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
