"""``runlake serve`` end to end: the real server in a subprocess, real clients.

httpx for the API, the real OTLP/HTTP exporter (protobuf, gzip) and a hand-made OTLP/JSON body for ingest,
the ``websockets`` client for live events. Shapes are the seed's: CodexOS history/logs, PraisonAI runs/traces.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import json
import secrets
import signal
import socket
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import websockets
from conftest import HISTORY_KEYS, LOGS_KEYS, NODE_KEYS, RUN_KEYS, SPAN_KEYS, SUMMARY_KEYS, TRACE_KEYS
from google.rpc import status_pb2
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import Status, StatusCode
from server_fixtures import Server, SpanFactory, auth, new_key, otlp_exporter, send, write_keys

from runlake import HistoryDB, RunlakeSpanExporter
from runlake.otlp import PROTOBUF

pytestmark = pytest.mark.timeout(120)

MAX_BODY = 1 << 20  # the server below runs with --max-body-mb 1


@pytest.fixture(scope="module")
def keys() -> dict[str, str]:
    return {"admin": new_key(), "alice": new_key()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, str]) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("server")
    keys_file = write_keys(
        base / "keys.json",
        [
            {"key": keys["admin"], "tenant_id": "t1", "role": "admin"},
            {"key": keys["alice"], "tenant_id": "t1", "user_id": "alice", "role": "user"},
        ],
    )
    # sync durability: a 200 means the spans are in part files, so the tests can read right after ingest
    args = ["--keys-file", str(keys_file), "--max-body-mb", "1", "--no-ttl", "--durability", "sync"]
    with Server(base / "lake", args) as srv:
        yield srv
    assert "Traceback" not in srv.log()


@pytest.fixture
def api(server: Server, keys: dict[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base, headers=auth(keys["admin"]), timeout=30) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


NODES = [
    {"id": "planner", "type": "llm", "ms": 800, "in_tokens": 100, "out_tokens": 20, "cost": 2.0},
    {"id": "search", "type": "tool", "ms": 300, "in_tokens": 0, "out_tokens": 0, "cost": 0.0},
    {"id": "writer", "type": "llm", "ms": 1200, "in_tokens": 200, "out_tokens": 80, "cost": 3.0},
]


# ---- basics ------------------------------------------------------------------------------------------------------
def test_healthz_docs_and_openapi(server: Server) -> None:
    with httpx.Client(base_url=server.base) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        docs = client.get("/docs")
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/v1/traces",
        "/api/v1/agents/history",
        "/api/v1/agents/logs",
        "/api/v1/runs",
        "/api/v1/traces",
        "/api/v1/agents/stats",
        "/api/v1/agents/{agent_id}/performance",
    ):
        assert path in paths, path


def test_default_port_and_host() -> None:
    from runlake.server import DEFAULT_HOST, DEFAULT_PORT

    assert (DEFAULT_PORT, DEFAULT_HOST) == (8000, "127.0.0.1")


# ---- ingest through the real OTLP exporter, read back in the seed's shapes ---------------------------------
def test_otlp_protobuf_ingest_then_codexos_history_and_logs(server: Server, api: httpx.Client) -> None:
    factory = SpanFactory()
    agent, session = unique("triager"), unique("s")
    ok_run, ok_spans = factory.run(agent, session, "alice", NODES, input_text="Process PR #42", output_text="fine")
    bad_nodes = [NODES[0], {"id": "apply", "type": "tool", "ms": 50, "fail": True, "error": "patch rejected"}]
    bad_run, bad_spans = factory.run(agent, session, "alice", bad_nodes, fail=True)
    assert send(server, api.headers["Authorization"].split()[1], ok_spans + bad_spans) is SpanExportResult.SUCCESS

    # answered 200 only once on disk (sync durability): readable at once, no waiting
    history = api.get("/api/v1/agents/history", params={"agent_id": agent}).json()
    assert sorted(h["run_id"] for h in history) == sorted([ok_run, bad_run])
    by_id = {h["run_id"]: h for h in history}
    for item in history:
        assert set(item) == HISTORY_KEYS
    ok = by_id[ok_run]
    assert ok["status"] == "completed" and ok["input"] == "Process PR #42" and ok["output"] == "fine"
    assert ok["node_count"] == 3 and ok["tokens_used"] == 400 and ok["cost_cents"] == 5
    assert ok["duration"] == "2.4s"  # 800 + 300 + 1200 ms of nodes + 50 ms
    assert ok["started_at"].endswith("Z")
    assert by_id[bad_run]["status"] == "failed" and by_id[bad_run]["node_count"] == 2

    logs = api.get("/api/v1/agents/logs", params={"run_id": ok_run}).json()
    assert set(logs) == LOGS_KEYS and set(logs["summary"]) == SUMMARY_KEYS
    assert [n["id"] for n in logs["nodes"]] == ["planner", "search", "writer"]
    assert all(set(n) == NODE_KEYS for n in logs["nodes"])
    assert logs["nodes"][0] == {
        "id": "planner",
        "type": "llm",
        "input": "in",
        "output": "out",
        "time": "0.8s",
        "status": "completed",
        "error_message": None,
        "metadata": {},
    }
    assert logs["errors"] == [] and logs["final_output"] == "fine"
    assert logs["summary"] == {
        "total_nodes": 3,
        "successful_nodes": 3,
        "failed_nodes": 0,
        "total_duration": "2.4s",
        "tokens_used": 400,
        "cost_cents": 5,
    }
    failed = api.get("/api/v1/agents/logs", params={"run_id": bad_run}).json()
    assert failed["summary"]["failed_nodes"] == 1
    assert failed["nodes"][1]["status"] == "failed" and failed["nodes"][1]["error_message"] == "patch rejected"
    assert {"node_id": "apply", "error_type": "NodeError", "error_message": "patch rejected"} in failed["errors"]

    page = api.get("/api/v1/agents/history", params={"agent_id": agent, "skip": 1, "limit": 1}).json()
    assert len(page) == 1 and page[0]["run_id"] == history[1]["run_id"]


def test_praisonai_runs_and_traces_shapes(server: Server, api: httpx.Client, keys: dict[str, str]) -> None:
    factory = SpanFactory()
    session = unique("s")
    first, spans1 = factory.run("bot", session, "alice", NODES[:1], start_ns=time.time_ns() - 60_000_000_000)
    second, spans2 = factory.run("bot", session, "alice", NODES[:2], fail=True)
    assert send(server, keys["alice"], spans1 + spans2) is SpanExportResult.SUCCESS

    runs = api.get("/api/v1/runs", params={"session_id": session}).json()
    assert [r["run_id"] for r in runs] == [second, first]  # newest started_at first
    assert all(set(r) == RUN_KEYS for r in runs)
    assert runs[0]["status"] == "error" and runs[0]["metrics"] == {"error": "run failed"}
    assert runs[1]["status"] == "completed" and runs[1]["metrics"]["duration_ms"] == pytest.approx(850, abs=1)
    assert runs[1]["metadata"]["agent_name"] == "bot" and isinstance(runs[1]["started_at"], float)
    assert runs[1]["input_content"] == "hello" and runs[1]["output_content"] == "done"
    assert len(api.get("/api/v1/runs", params={"session_id": session, "limit": 1}).json()) == 1
    assert api.get("/api/v1/runs", params={"session_id": session, "limit": 0}).json() == []

    traces = api.get("/api/v1/traces", params={"session_id": session}).json()
    assert [t["run_id"] for t in traces] == [second, first]
    assert all(set(t) == TRACE_KEYS for t in traces)
    assert traces[0]["status"] == "error" and traces[1]["status"] == "ok" and traces[1]["user_id"] == "alice"
    assert len(traces[0]["spans"]) == 3 and all(set(s) == SPAN_KEYS for s in traces[0]["spans"])
    root = next(s for s in traces[0]["spans"] if s["parent_span_id"] is None)
    assert root["attributes"]["gen_ai.agent.name"] == "bot" and root["span_id"] == second
    by_user = api.get("/api/v1/traces", params={"user_id": "alice", "limit": 50}).json()
    assert {first, second} <= {t["run_id"] for t in by_user}


def test_hand_made_otlp_json_body(server: Server, api: httpx.Client) -> None:
    trace_id, run_span, node_span = secrets.token_hex(16), secrets.token_hex(8), secrets.token_hex(8)
    session, agent = unique("json-s"), unique("json-agent")
    now = time.time_ns()

    def attr(key: str, value: dict) -> dict:
        return {"key": key, "value": value}

    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [attr("service.name", {"stringValue": "json-client"})]},
                "scopeSpans": [
                    {
                        "scope": {"name": "hand-made", "version": "1"},
                        "spans": [
                            {
                                "traceId": trace_id.upper(),  # hex is case-insensitive
                                "spanId": run_span,
                                "name": f"invoke_agent {agent}",
                                "kind": "SPAN_KIND_SERVER",  # enum by name
                                "startTimeUnixNano": str(now - 5_000_000_000),  # 64-bit ints as strings
                                "endTimeUnixNano": str(now),
                                "attributes": [
                                    attr("gen_ai.operation.name", {"stringValue": "invoke_agent"}),
                                    attr("gen_ai.agent.name", {"stringValue": agent}),
                                    attr("session.id", {"stringValue": session}),
                                    attr("user.id", {"stringValue": "json-user"}),
                                    attr("output.value", {"stringValue": "json done"}),
                                ],
                                "status": {"code": 1},  # enum by number
                            },
                            {
                                "traceId": trace_id,
                                "spanId": node_span,
                                "parentSpanId": run_span,
                                "name": "chat gpt",
                                "kind": 3,
                                "startTimeUnixNano": now - 4_000_000_000,  # or as numbers
                                "endTimeUnixNano": now - 1_000_000_000,
                                "attributes": [
                                    attr("gen_ai.operation.name", {"stringValue": "chat"}),
                                    attr("session.id", {"stringValue": session}),
                                    attr("gen_ai.usage.input_tokens", {"intValue": "120"}),
                                    attr("gen_ai.usage.output_tokens", {"intValue": 30}),
                                    attr("runlake.cost.cents", {"doubleValue": 1.5}),
                                    attr("llm.streaming", {"boolValue": True}),
                                    attr("tags", {"arrayValue": {"values": [{"stringValue": "a"}]}}),
                                    attr("extra", {"kvlistValue": {"values": [attr("k", {"intValue": "1"})]}}),
                                ],
                                "events": [
                                    {"timeUnixNano": str(now - 2_000_000_000), "name": "retry", "attributes": []}
                                ],
                                "status": {"code": "STATUS_CODE_ERROR", "message": "rate limited"},
                                "someFutureField": {"ignored": True},  # receivers ignore unknown fields
                            },
                            {"traceId": "not-hex", "spanId": node_span, "name": "bad ids"},
                            {"traceId": trace_id, "spanId": secrets.token_hex(8), "name": "no times"},
                        ],
                    }
                ],
            }
        ]
    }
    response = api.post("/v1/traces", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "2"
    assert "not 32 hex characters" in partial["errorMessage"] and "start_time_unix_nano" in partial["errorMessage"]

    [item] = api.get("/api/v1/agents/history", params={"agent_id": agent}).json()
    assert item["run_id"] == run_span and item["node_count"] == 1 and item["tokens_used"] == 150
    logs = api.get("/api/v1/agents/logs", params={"run_id": run_span}).json()
    assert logs["nodes"][0]["status"] == "failed" and logs["nodes"][0]["error_message"] == "rate limited"
    assert logs["nodes"][0]["time"] == "3s" and logs["summary"]["cost_cents"] == 2
    [trace] = api.get("/api/v1/traces", params={"session_id": session}).json()
    node = next(s for s in trace["spans"] if s["span_id"] == node_span)
    assert node["attributes"]["llm.streaming"] is True and node["attributes"]["tags"] == ["a"]
    assert node["attributes"]["extra"] == {"k": 1} and node["events"][0]["name"] == "retry"


def test_otlp_ok_status_and_typed_array_attributes_are_stored_as_sent(server: Server, api: httpx.Client) -> None:
    """Through the real OTLP exporter (protobuf): a span whose status is OK (code 1) is stored as ``OK``, not
    ``UNSET`` (docs/schema.md: ``UNSET`` / ``OK`` / ``ERROR``; SQL over ``status_code`` tells an explicit success
    from no status), and array attributes of ints, bools and doubles keep their JSON types in ``attributes`` (as the
    in-process exporter stores them), so ``[3, 5]`` does not come back as ``["3", "5"]``."""
    factory = SpanFactory()
    session, agent = unique("typed-s"), unique("typed")
    run_id, spans = factory.run(agent, session, None, NODES[:1])
    node = factory.tracer.start_span(
        "scored",
        context=trace_api.set_span_in_context(trace_api.NonRecordingSpan(spans[-1].get_span_context())),
        attributes={
            "runlake.span.type": "node",
            "runlake.run.id": run_id,
            "session.id": session,
            "retry.delays_ms": (3, 5),
            "flags": (True, False),
            "scores": (0.5, 1.25),
            "tags": ("a", "b"),
        },
    )
    node.set_status(Status(StatusCode.OK))
    node.end()
    scored = factory.memory.get_finished_spans()[-1]
    assert scored.name == "scored" and scored.status.status_code is StatusCode.OK
    assert send(server, api.headers["Authorization"].split()[1], [*spans, scored]) is SpanExportResult.SUCCESS

    _, rows = HistoryDB(server.lake).sql_rows(
        f"SELECT name, status_code, attributes FROM spans WHERE session_id = '{session}' ORDER BY name"
    )
    by_name = {name: (code, attributes) for name, code, attributes in rows}
    assert set(by_name) == {f"invoke_agent {agent}", "node planner", "scored"}
    assert by_name["scored"][0] == "OK" and by_name["node planner"][0] == "UNSET"
    stored = json.loads(by_name["scored"][1])
    assert stored["retry.delays_ms"] == [3, 5] and stored["flags"] == [True, False]
    assert stored["scores"] == [0.5, 1.25] and stored["tags"] == ["a", "b"]
    [trace] = api.get("/api/v1/traces", params={"session_id": session}).json()
    [span] = [s for s in trace["spans"] if s["name"] == "scored"]
    assert span["status"] == "ok" and span["attributes"]["flags"] == [True, False]
    assert span["attributes"]["retry.delays_ms"] == [3, 5] and span["attributes"]["scores"] == [0.5, 1.25]


def test_otlp_json_lone_surrogates_are_stored_as_replacement_characters(server: Server, api: httpx.Client) -> None:
    """JavaScript's JSON.stringify escapes a string cut inside an emoji as a lone surrogate ("\\ud83d"); protobuf
    refuses such a string, which refused the whole request (400, every span lost). Now it is stored with U+FFFD, as
    runlake stores such text everywhere else, and every span of the request is stored."""
    session, trace_id = unique("surrogate-s"), secrets.token_hex(16)
    now = time.time_ns()
    run_ids = [secrets.token_hex(8) for _ in range(3)]

    def run_span(run_id: str, name: str, output: str, extra: tuple[dict, ...] = ()) -> dict:
        attributes = [
            {"key": "runlake.span.type", "value": {"stringValue": "run"}},
            {"key": "session.id", "value": {"stringValue": session}},
            {"key": "input.value", "value": {"stringValue": "SMILE"}},
            {"key": "output.value", "value": {"stringValue": output}},
            *extra,
        ]
        return {
            "traceId": trace_id,
            "spanId": run_id,
            "name": name,
            "startTimeUnixNano": str(now - 2_000_000_000),
            "endTimeUnixNano": str(now),
            "attributes": attributes,
        }

    spans = [
        run_span(run_ids[0], "intact", "all fine"),
        run_span(run_ids[1], "cut", "CUT", ({"key": "note LOW", "value": {"stringValue": "x"}},)),
        run_span(run_ids[2], "RAW", "raw"),
    ]
    text = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]})
    text = text.replace("SMILE", "smile \\ud83d\\ude42")  # an intact pair, escaped: one emoji
    text = text.replace("CUT", "truncated \\ud83d").replace("LOW", "\\udc00")  # lone surrogates, escaped
    body = text.encode().replace(b"RAW", b"raw \xed\xa0\xbd")  # and one encoded as if UTF-8 (WTF-8)
    response = api.post("/v1/traces", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    assert "partialSuccess" not in response.json()

    runs = {run["run_id"]: run for run in api.get("/api/v1/runs", params={"session_id": session}).json()}
    assert set(runs) == set(run_ids)
    assert runs[run_ids[0]]["output_content"] == "all fine"
    assert runs[run_ids[1]]["output_content"] == "truncated \ufffd"
    assert {run["input_content"] for run in runs.values()} == {"smile \U0001f642"}
    [trace] = api.get("/api/v1/traces", params={"session_id": session}).json()
    by_id = {span["span_id"]: span for span in trace["spans"]}
    assert by_id[run_ids[1]]["attributes"]["note \ufffd"] == "x"
    assert by_id[run_ids[2]]["name"] == "raw \ufffd"


def test_protobuf_partial_success_for_invalid_spans(server: Server, api: httpx.Client) -> None:
    factory = SpanFactory()
    _, spans = factory.run(unique("pb"), unique("s"), None, NODES[:1])
    request = encode_spans(spans)
    broken = request.resource_spans[0].scope_spans[0].spans.add()
    broken.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    broken.span_id = b"\x00" * 8
    broken2 = request.resource_spans[0].scope_spans[0].spans.add()
    broken2.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    broken2.end_time_unix_nano = broken2.start_time_unix_nano - 1
    response = api.post("/v1/traces", content=request.SerializeToString(), headers={"Content-Type": PROTOBUF})
    assert response.status_code == 200 and response.headers["content-type"] == PROTOBUF
    parsed = ExportTraceServiceResponse.FromString(response.content)
    assert parsed.partial_success.rejected_spans == 2
    assert "span_id must be 8 bytes" in parsed.partial_success.error_message

    response = api.post(
        "/v1/traces", content=encode_spans(spans).SerializeToString(), headers={"Content-Type": PROTOBUF}
    )
    assert ExportTraceServiceResponse.FromString(response.content).HasField("partial_success") is False


# ---- bad input -------------------------------------------------------------------------------------------------
def _status(response: httpx.Response) -> status_pb2.Status:
    assert response.headers["content-type"] == PROTOBUF
    return status_pb2.Status.FromString(response.content)


def test_ingest_bad_input(server: Server, api: httpx.Client) -> None:
    pb = {"Content-Type": PROTOBUF}
    js = {"Content-Type": "application/json"}
    bad_pb = api.post("/v1/traces", content=b"\x0a\xff\xff\xff\xff\x0f garbage", headers=pb)
    assert bad_pb.status_code == 400 and "protobuf" in _status(bad_pb).message
    for body in (b"{nope", b"[1, 2]", json.dumps({"resourceSpans": "x"}).encode(), b"\xff\xfe"):
        bad_json = api.post("/v1/traces", content=body, headers=js)
        assert bad_json.status_code == 400, body
        assert bad_json.json()["message"], body
    wrong_type = api.post("/v1/traces", content=b"{}", headers={"Content-Type": "text/plain"})
    assert wrong_type.status_code == 415 and "Content-Type" in wrong_type.json()["message"]
    wrong_encoding = api.post("/v1/traces", content=b"{}", headers={**js, "Content-Encoding": "br"})
    assert wrong_encoding.status_code == 415

    # over the limit on the wire
    too_big = api.post("/v1/traces", content=b"0" * (MAX_BODY + 1), headers=js)
    assert too_big.status_code == 413 and "limit" in too_big.json()["message"]
    # ... also when streamed without Content-Length
    chunks = (b"0" * 65536 for _ in range(MAX_BODY // 65536 + 2))
    assert api.post("/v1/traces", content=chunks, headers=js).status_code == 413
    # ... and after decompression: a gzip bomb (64 MiB of zeros in ~64 KiB) is refused, not inflated
    bomb = gzip.compress(b"\0" * (64 << 20), compresslevel=9)
    assert len(bomb) < MAX_BODY
    refused = api.post("/v1/traces", content=bomb, headers={**pb, "Content-Encoding": "gzip"})
    assert refused.status_code == 413 and "decompressed" in _status(refused).message
    truncated = api.post("/v1/traces", content=gzip.compress(b"{}")[:-6], headers={**js, "Content-Encoding": "gzip"})
    assert truncated.status_code == 400
    not_gzip = api.post("/v1/traces", content=b"plain", headers={**js, "Content-Encoding": "gzip"})
    assert not_gzip.status_code == 400 and "gzip" in not_gzip.json()["message"]
    # deflate (zlib) is accepted like gzip
    deflated = api.post(
        "/v1/traces", content=zlib.compress(b'{"resourceSpans": []}'), headers={**js, "Content-Encoding": "deflate"}
    )
    assert deflated.status_code == 200 and deflated.json() == {}


def test_a_link_with_bad_ids_is_dropped_with_a_warning_and_its_span_kept(server: Server, api: httpx.Client) -> None:
    """Protobuf and JSON alike: the span is stored without that link; partial_success says so, rejecting nothing."""
    from runlake.otlp import PROTOBUF as PB
    from runlake.otlp import decode_request

    good_link = {"traceId": "0a" * 16, "spanId": "0b" * 8}
    span = {
        "traceId": "01" * 16,
        "spanId": "02" * 8,
        "name": "linked",
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
    }
    span["links"] = [good_link, {"traceId": "zz", "spanId": "0b" * 8}]
    body = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).encode()
    decoded = decode_request(body, "application/json")
    assert (len(decoded.spans), decoded.rejected, decoded.dropped_links) == (1, 0, 1)
    assert [f"{link.context.span_id:016x}" for link in decoded.spans[0].links] == ["0b" * 8]
    answer = api.post("/v1/traces", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    assert "dropped 1 link(s) with bad ids" in answer.json()["partialSuccess"]["errorMessage"]

    request = encode_spans(SpanFactory().run(unique("agent"), unique("s"), "u", NODES)[1])
    bad = request.resource_spans[0].scope_spans[0].spans[0].links.add()
    bad.trace_id, bad.span_id = b"\x01" * 16, b"\x02" * 3
    decoded = decode_request(request.SerializeToString(), PB)
    assert decoded.rejected == 0 and decoded.dropped_links == 1
    assert "link ids of 16 and 3 bytes" in decoded.error_message


def test_ingest_json_nested_too_deeply_or_with_huge_integers_is_400(server: Server, api: httpx.Client) -> None:
    js = {"Content-Type": "application/json"}
    span = {"traceId": "01" * 16, "spanId": "02" * 8, "name": "s", "startTimeUnixNano": "1", "endTimeUnixNano": "2"}
    huge = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}).replace('"1"', "9" * 5000)
    cases = {
        b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}": "nested too deeply",  # RecursionError in json.loads
        huge.encode(): "digits",  # ValueError: more than 4300 digits
        b'{"x": ' + b"9" * 5000 + b"}": "digits",
    }
    for body, words in cases.items():
        response = api.post("/v1/traces", content=body, headers=js)
        assert response.status_code == 400, (response.status_code, response.text[:200])
        assert words in response.json()["message"]


def test_gzip_members_are_capped_and_inflated_in_linear_time(server: Server, api: httpx.Client) -> None:
    from runlake.server.ingest import MAX_GZIP_MEMBERS, BodyError, decompress

    body = encode_spans(SpanFactory().run(unique("agent"), unique("s"), "u", NODES)[1]).SerializeToString()
    pieces = [body[:7], body[7:100], body[100:]]
    members = b"".join(gzip.compress(p) for p in pieces)
    assert decompress(members, "gzip", MAX_BODY) == body  # several members are still one body
    ok = api.post("/v1/traces", content=members, headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"})
    assert ok.status_code == 200, ok.text
    # ~50k empty members fit in the 1 MiB limit; each one used to copy the rest of the body (quadratic)
    many = gzip.compress(b"") * (MAX_BODY // len(gzip.compress(b"")))
    refused = api.post("/v1/traces", content=many, headers={"Content-Type": PROTOBUF, "Content-Encoding": "gzip"})
    assert refused.status_code == 400
    assert f"more than {MAX_GZIP_MEMBERS} members" in _status(refused).message
    assert decompress(gzip.compress(b"") * MAX_GZIP_MEMBERS, "gzip", MAX_BODY) == b""
    with pytest.raises(BodyError, match="data after gzip member 1"):
        decompress(gzip.compress(b"{}") + b"trailing junk", "gzip", MAX_BODY)


def test_many_resource_or_scope_entries_are_refused_and_empty_ones_cost_nothing(
    server: Server, api: httpx.Client
) -> None:
    from runlake.otlp import MAX_ENTRIES, decode_request

    pb, js = {"Content-Type": PROTOBUF}, {"Content-Type": "application/json"}
    # 2-byte empty ResourceSpans: ~8 KiB of gzip used to cost 14 s of CPU and 270 MB; now refused before parsing
    bomb = gzip.compress(b"\x0a\x00" * 400_000)
    refused = api.post("/v1/traces", content=bomb, headers={**pb, "Content-Encoding": "gzip"})
    assert refused.status_code == 400 and f"more than {MAX_ENTRIES}" in _status(refused).message
    scopes = b"\x12\x00" * (MAX_ENTRIES + 1)  # one ResourceSpans holding empty ScopeSpans
    one_resource = b"\x0a" + encode_varint(len(scopes)) + scopes
    assert api.post("/v1/traces", content=one_resource, headers=pb).status_code == 400
    as_json = json.dumps({"resourceSpans": [{"scopeSpans": [{}] * MAX_ENTRIES}]}).encode()
    assert api.post("/v1/traces", content=as_json, headers=js).status_code == 400

    # below the cap: empty entries are skipped, equal resources and scopes give one shared object each
    spans = SpanFactory().run(unique("agent"), unique("s"), "u", NODES)[1]
    request = encode_spans(spans)
    request.resource_spans.add()  # empty
    request.resource_spans.add().CopyFrom(request.resource_spans[0])
    request.resource_spans[-1].scope_spans.add()  # empty scope beside the full one
    decoded = decode_request(request.SerializeToString(), PROTOBUF)
    assert len(decoded.spans) == 2 * len(spans) and decoded.rejected == 0
    assert len({id(s.resource) for s in decoded.spans}) == 1
    assert len({id(s.instrumentation_scope) for s in decoded.spans}) == 1


def test_a_request_of_more_spans_than_the_cap_is_refused_before_parsing(server: Server, api: httpx.Client) -> None:
    from runlake.otlp import MAX_SPANS

    pb, js = {"Content-Type": PROTOBUF}, {"Content-Type": "application/json"}
    spans = b"\x12\x00" * (MAX_SPANS + 1)  # empty 2-byte spans in one ScopeSpans of one ResourceSpans
    scope = b"\x12" + encode_varint(len(spans)) + spans
    body = b"\x0a" + encode_varint(len(scope)) + scope
    started = time.perf_counter()
    refused = api.post("/v1/traces", content=gzip.compress(body), headers={**pb, "Content-Encoding": "gzip"})
    assert refused.status_code == 400 and f"more than {MAX_SPANS} spans" in _status(refused).message
    assert time.perf_counter() - started < 5  # a scan, not a parse of 100k span objects
    as_json = json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{}] * (MAX_SPANS + 1)}]}]}).encode()
    refused = api.post("/v1/traces", content=as_json, headers=js)
    assert refused.status_code == 400 and f"more than {MAX_SPANS} spans" in refused.json()["message"]


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_api_bad_input_is_json(server: Server, api: httpx.Client) -> None:
    cases = [
        ("/api/v1/agents/history", {"skip": -1}, 422),
        ("/api/v1/agents/history", {"limit": 1001}, 422),
        ("/api/v1/agents/history", {"limit": "ten"}, 422),
        ("/api/v1/agents/history", {"tenant_id": "t2"}, 422),
        ("/api/v1/agents/logs", {}, 422),
        ("/api/v1/agents/logs", {"run_id": "does-not-exist"}, 404),
        ("/api/v1/runs", {}, 422),
        ("/api/v1/runs", {"session_id": "s", "limit": -1}, 422),
        ("/api/v1/traces", {"limit": 5000}, 422),
        ("/api/v1/traces", {"user": "x"}, 422),
        ("/api/v1/agents/stats", {"days": 0}, 422),
        ("/api/v1/agents/stats", {"since": "x"}, 422),
        ("/api/v1/agents/bot/performance", {"days": -3}, 422),
        ("/api/v1/nothing-here", {}, 404),
    ]
    for path, params, expected in cases:
        response = api.get(path, params=params)
        assert response.status_code == expected, (path, params, response.text)
        assert response.headers["content-type"] == "application/json", path
        assert response.json()["detail"], path
    assert api.get("/api/v1/agents/logs", params={"run_id": "nope"}).json() == {"detail": "run 'nope' not found"}
    assert api.delete("/api/v1/agents/history").status_code == 405
    assert api.delete("/api/v1/agents/history").json()["detail"]


# ---- statistics ---------------------------------------------------------------------------------------------------
def test_stats_and_agent_performance(server: Server, api: httpx.Client) -> None:
    factory = SpanFactory()
    user, agent = unique("stats-user"), unique("stats-agent")
    spans = []
    durations = []
    for i in range(10):
        nodes = [
            {"id": "think", "type": "llm", "ms": 100 * (i + 1), "in_tokens": 10, "out_tokens": 5, "cost": 1.0},
            {"id": "act", "type": "tool", "ms": 10, "in_tokens": 0, "out_tokens": 0, "cost": 0.0, "fail": i < 2},
        ]
        _, run_spans = factory.run(agent, unique("s"), user, nodes, fail=i < 2)
        durations.append(100 * (i + 1) + 10 + 50)
        spans += run_spans
    assert send(server, api.headers["Authorization"].split()[1], spans) is SpanExportResult.SUCCESS

    stats = api.get("/api/v1/agents/stats", params={"user_id": user, "days": 7}).json()
    assert stats["user_id"] == user and stats["period_days"] == 7
    assert stats["total_executions"] == 10 and stats["completed_executions"] == 8 and stats["failed_executions"] == 2
    assert stats["running_executions"] == 0 and stats["success_rate"] == 0.8
    assert stats["tokens_used"] == 150 and stats["input_tokens"] == 100 and stats["output_tokens"] == 50
    assert stats["cost_cents"] == 10 and stats["total_nodes"] == 20 and stats["failed_nodes"] == 2
    ordered = sorted(durations)
    assert stats["p50_duration_ms"] == pytest.approx((ordered[4] + ordered[5]) / 2, abs=0.01)
    assert stats["p95_duration_ms"] == pytest.approx(ordered[8] + 0.55 * (ordered[9] - ordered[8]), abs=0.01)
    assert stats["max_duration_ms"] == pytest.approx(max(durations), abs=0.01)

    perf = api.get(f"/api/v1/agents/{agent}/performance", params={"days": 7}).json()
    assert perf["agent_id"] == agent and perf["total_executions"] == 10 and perf["success_rate"] == 0.8
    assert set(perf["node_types"]) == {"llm", "tool"}
    assert perf["node_types"]["llm"]["count"] == 10 and perf["node_types"]["llm"]["failed"] == 0
    assert perf["node_types"]["llm"]["p50_duration_ms"] == pytest.approx(550, abs=0.01)
    assert perf["node_types"]["tool"] == {
        "count": 10,
        "failed": 2,
        "success_rate": 0.8,
        "tokens_used": 0,
        "cost_cents": 0.0,
        "avg_duration_ms": 10.0,
        "p50_duration_ms": 10.0,
        "p95_duration_ms": 10.0,
    }
    empty = api.get("/api/v1/agents/no-such-agent/performance").json()
    assert empty["total_executions"] == 0 and empty["node_types"] == {} and empty["success_rate"] is None

    # an agent name with "/" (and "..") is sent as %2F, one with a line break as %0A: each still names the agent
    for odd in (f"team/{agent}/../x", f"two\nlines {agent}"):
        _, run_spans = factory.run(odd, unique("s"), user, nodes[:1])
        assert send(server, api.headers["Authorization"].split()[1], run_spans) is SpanExportResult.SUCCESS
        response = api.get(f"/api/v1/agents/{quote(odd, safe='')}/performance")
        assert response.status_code == 200, response.text
        assert response.json()["agent_id"] == odd and response.json()["total_executions"] == 1


def test_execution_history_service_in_process(tmp_path: Path) -> None:
    """The Python service the endpoints use: the seed's async methods, scoping, cleanup counts."""
    from runlake.service import ExecutionHistoryService

    lake = tmp_path / "lake"
    factory = SpanFactory()
    exporter = RunlakeSpanExporter(lake)
    old = int((time.time() - 40 * 86400) * 1e9)
    for user in ("u1", "u2"):
        exporter.export(factory.run("svc-agent", f"s-{user}", user, NODES)[1])
    exporter.export(factory.run("svc-agent", "s-old", "u1", NODES[:1], start_ns=old)[1])
    exporter.shutdown()

    async def scenario() -> None:
        service = ExecutionHistoryService(HistoryDB(lake))
        assert (await service.get_execution_statistics("u1"))["total_executions"] == 1
        assert (await service.get_execution_statistics("u1", days=60))["total_executions"] == 2
        assert (await service.get_execution_statistics(None))["total_executions"] == 2
        scoped = service.scoped("default", "u2")
        assert (await scoped.get_execution_statistics("u1"))["total_executions"] == 0
        assert (await scoped.get_agent_performance_metrics("svc-agent"))["total_executions"] == 1
        assert (await service.scoped("other-tenant").get_execution_statistics(None))["total_executions"] == 0
        with pytest.raises(ValueError):
            await service.get_execution_statistics("u1", days=0)
        per_user = await service.get_statistics_per_user(days=60)
        assert {u: f["total_executions"] for u, f in per_user.items()} == {"u1": 2, "u2": 1}
        assert per_user["u1"] == {
            k: v
            for k, v in (await service.get_execution_statistics("u1", days=60)).items()
            if k not in ("user_id", "period_days", "since", "until")
        }
        on_disk = ExecutionHistoryService(HistoryDB(lake, index_max_rows=0))  # the same figures from the files
        now = dt.datetime.now(dt.timezone.utc)
        for user in ("u1", "u2", None):
            assert await on_disk.get_execution_statistics(user, 60, now) == (
                await service.get_execution_statistics(user, 60, now)
            )
        assert await on_disk.get_agent_performance_metrics("svc-agent", now=now) == (
            await service.get_agent_performance_metrics("svc-agent", now=now)
        )
        assert await on_disk.get_statistics_per_user(days=60) == per_user
        assert await service.cleanup_expired_executions(days=30) == {"executions_deleted": 1, "nodes_deleted": 1}
        assert (await service.get_execution_statistics("u1", days=60))["total_executions"] == 1

    asyncio.run(scenario())


# ---- live events ----------------------------------------------------------------------------------------------------
async def _collect(ws: websockets.ClientConnection, until: set[str], timeout: float = 20.0) -> list[dict]:
    """Events until every run id in ``until`` has completed or failed."""
    seen: list[dict] = []
    done: set[str] = set()
    deadline = time.monotonic() + timeout
    while done != until:
        message = await asyncio.wait_for(ws.recv(), max(deadline - time.monotonic(), 0.01))
        event = json.loads(message)
        seen.append(event)
        if event["type"] in ("execution_completed", "execution_failed"):
            done.add(event["run_id"])
    return seen


def test_websocket_live_events(server: Server, keys: dict[str, str]) -> None:
    factory = SpanFactory()
    agent = unique("ws-agent")
    ok_run, ok_spans = factory.run(agent, unique("s"), "alice", NODES[:2])
    bad_run, bad_spans = factory.run(agent, unique("s"), "alice", NODES[2:], fail=True)
    _, other_agent_spans = factory.run(unique("other"), unique("s"), "alice", NODES[:1])

    async def scenario() -> list[dict]:
        url = f"{server.ws_base}/api/v1/agents/ws?agent_id={agent}"
        async with websockets.connect(url, additional_headers=auth(keys["alice"])) as ws:
            hello = json.loads(await ws.recv())
            assert hello["type"] == "subscribed" and hello["user_id"] == "alice" and hello["role"] == "user"
            result = await asyncio.to_thread(send, server, keys["alice"], other_agent_spans + ok_spans + bad_spans)
            assert result is SpanExportResult.SUCCESS
            return await _collect(ws, {ok_run, bad_run})

    events = asyncio.run(scenario())
    assert {e["agent_id"] for e in events} == {agent}  # the ?agent_id filter holds back the other agent
    ok_events = [e for e in events if e["run_id"] == ok_run]
    assert [e["type"] for e in ok_events] == [
        "execution_started",
        "node_executed",
        "node_executed",
        "execution_completed",
    ]
    assert [e["data"]["id"] for e in ok_events[1:3]] == ["planner", "search"]
    assert ok_events[1]["data"]["tokens_used"] == 120 and ok_events[1]["data"]["time"] == "0.8s"
    assert ok_events[-1]["data"]["status"] == "completed" and ok_events[-1]["data"]["duration"] == "1.1s"
    # the run's totals, as history and logs give them (its nodes' sums), in whole cents as CodexOS types them
    assert (ok_events[-1]["data"]["tokens_used"], ok_events[-1]["data"]["cost_cents"]) == (120, 2)
    assert [type(e["data"]["cost_cents"]) for e in ok_events[1:]] == [int, int, int]
    assert ok_events[-1]["user_id"] == "alice" and ok_events[-1]["tenant_id"] == "t1"
    bad_events = [e for e in events if e["run_id"] == bad_run]
    assert bad_events[0]["type"] == "execution_started" and bad_events[-1]["type"] == "execution_failed"
    assert bad_events[-1]["data"]["error_message"] == "run failed"


def test_websocket_slow_client_queue_is_bounded() -> None:
    """A subscriber that does not read keeps at most ``queue_size`` events: the oldest go and are counted."""
    from runlake.auth import Principal
    from runlake.events import EventHub, Subscriber

    async def scenario() -> None:
        hub = EventHub()
        sub = Subscriber(Principal("t", "u", "user", "k"), {}, maxlen=100)
        hub.subscribers.add(sub)
        events = [{"type": "node_executed", "tenant_id": "t", "user_id": "u", "n": i} for i in range(10_000)]
        hub.publish(events)
        hub.publish([{"type": "node_executed", "tenant_id": "t", "user_id": "other", "n": -1}])  # not visible
        assert len(sub.queue) == 100 and sub.dropped == 9_900 and hub.dropped == 9_900
        assert [e["n"] for e in sub.queue] == list(range(9_900, 10_000))  # the newest are kept
        hub.subscribers.discard(sub)  # the client goes: what it lost stays counted
        assert hub.dropped == 9_900 and hub.counters("t")["events_dropped"] == 9_900
        assert hub.counters(None)["events_dropped"] == 9_900 and hub.counters("other")["events_dropped"] == 0

    asyncio.run(scenario())


def test_event_counts_per_tenant_are_bounded() -> None:
    """Without keys (--no-auth) spans name any tenant they like: the per-tenant event counts stop growing at a cap,
    and the total still counts every event."""
    from runlake.events import EventHub

    hub = EventHub()
    extra = 500
    hub.publish([{"tenant_id": f"t{i}", "user_id": None} for i in range(EventHub.MAX_COUNTED_TENANTS + extra)])
    hub.publish([{"tenant_id": "t0", "user_id": None}])
    assert len(hub.published_by_tenant) == EventHub.MAX_COUNTED_TENANTS
    assert hub.counters(None)["events_published"] == EventHub.MAX_COUNTED_TENANTS + extra + 1
    assert hub.counters("t0")["events_published"] == 2


def test_websocket_requires_a_key(server: Server) -> None:
    """Refused with 401 (422 for a bad parameter), said once at INFO by runlake, not as an uvicorn ERROR."""

    async def scenario() -> None:
        for headers in ({}, auth("rk_wrong_key_0123456789")):
            with pytest.raises(websockets.InvalidStatus) as info:
                async with websockets.connect(f"{server.ws_base}/api/v1/agents/ws", additional_headers=headers):
                    pass
            assert info.value.response.status_code == 401
            assert json.loads(info.value.response.body)["detail"]
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(f"{server.ws_base}/api/v1/agents/ws?tenant_id=x", additional_headers={}):
                pass
        assert info.value.response.status_code == 401  # the key is checked first

    asyncio.run(scenario())
    log = server.log()
    assert "refused with 401" in log and "without completing handshake" not in log


def test_websocket_key_as_subprotocol(server: Server, keys: dict[str, str]) -> None:
    """Browsers cannot set headers on a WebSocket: the key may travel as a subprotocol."""

    async def scenario() -> None:
        protocols = ["runlake", f"runlake.bearer.{keys['alice']}"]
        async with websockets.connect(f"{server.ws_base}/api/v1/agents/ws", subprotocols=protocols) as ws:
            assert ws.subprotocol == "runlake"  # the key itself is never echoed back
            assert json.loads(await ws.recv())["user_id"] == "alice"

    asyncio.run(scenario())


# ---- storage failures, shutdown, TTL, start-up checks ----------------------------------------------------------
def _lake_refusing_tenant_t1(tmp_path: Path) -> tuple[str, Path, Path, Path]:
    """An admin key of tenant t1 and a lake where every write of t1 fails (a file stands where its folder goes)."""
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "t1", "role": "admin"}])
    lake = tmp_path / "lake"
    blocker = lake / "spans" / "tenant=t1"
    blocker.parent.mkdir(parents=True)
    blocker.write_text("a file where the tenant folder should be")
    return key, keys_file, lake, blocker


def test_storage_failure_answers_503_then_recovers(tmp_path: Path) -> None:
    key, keys_file, lake, blocker = _lake_refusing_tenant_t1(tmp_path)
    factory = SpanFactory()
    run_id, spans = factory.run(unique("agent"), unique("s"), "u", NODES)
    body = encode_spans(spans).SerializeToString()
    with Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--durability", "sync"]) as server:
        with httpx.Client(base_url=server.base, headers=auth(key)) as client:
            response = client.post("/v1/traces", content=body, headers={"Content-Type": PROTOBUF})
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"].isdigit()
            assert "cannot be written" in _status(response).message
            status = client.get("/api/v1/status").json()
            assert status["ingest"][0]["failed_writes"] >= 1

            blocker.unlink()  # the disk recovers; the client retries, as the collector does on 503
            response = client.post("/v1/traces", content=body, headers={"Content-Type": PROTOBUF})
            assert response.status_code == 200, response.text
            [item] = client.get("/api/v1/agents/history").json()
            assert item["run_id"] == run_id and item["node_count"] == 3
            logs = client.get("/api/v1/agents/logs", params={"run_id": run_id}).json()
            assert logs["summary"]["total_nodes"] == 3  # the retried spans are read once


def test_stalled_upload_gets_408_and_frees_its_ingest_slot(tmp_path: Path) -> None:
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "t1", "role": "admin"}])
    args = ["--keys-file", str(keys_file), "--no-ttl", "--durability", "sync", "--max-pending-ingest", "1"]
    spans = SpanFactory().run(unique("agent"), unique("s"), "u", NODES)[1]
    body = encode_spans(spans).SerializeToString()
    with Server(tmp_path / "lake", [*args, "--body-timeout-s", "0.5"]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=20) as stalled:
            head = (
                f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: {PROTOBUF}\r\nContent-Length: 1000\r\n\r\n"
            )
            stalled.sendall(head.encode() + b"\x0a")  # 1 of 1000 bytes, then nothing
            answer = b""
            while data := stalled.recv(65536):  # until the server closes (the socket timeout bounds the wait)
                answer += data
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert b"the body did not arrive within 0.5 s" in answer
        with httpx.Client(base_url=server.base, headers=auth(key)) as client:  # the one slot is free again
            response = client.post("/v1/traces", content=body, headers={"Content-Type": PROTOBUF})
            assert response.status_code == 200, response.text


def test_buffered_durability_flushes_on_shutdown(tmp_path: Path) -> None:
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "t1", "role": "admin"}])
    lake = tmp_path / "lake"
    server = Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--durability", "buffered"])
    server.args = [*server.args, "--flush-interval-s", "600"]
    factory = SpanFactory()
    run_id, spans = factory.run(unique("agent"), unique("s"), "u", NODES)
    with server:
        exporter = otlp_exporter(server, key, Compression.NoCompression)
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        exporter.shutdown()
        assert not list((lake / "spans").rglob("*.parquet"))  # buffered: not written yet
        assert server.stop() in (0, -15)  # uvicorn re-raises SIGTERM after its graceful shutdown
    assert "Application shutdown complete" in server.log() and "Traceback" not in server.log()
    [item] = HistoryDB(lake).get_history()
    assert item["run_id"] == run_id and item["node_count"] == 3


def test_ttl_task_deletes_expired_partitions(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    factory = SpanFactory()
    exporter = RunlakeSpanExporter(lake)
    exporter.export(factory.run("old", "s-old", "u", NODES, start_ns=int((time.time() - 90 * 86400) * 1e9))[1])
    exporter.export(factory.run("new", "s-new", "u", NODES)[1])
    exporter.shutdown()
    old_day = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=90)).date().isoformat()
    old_folder = lake / "runs" / "tenant=default" / "ttl=30" / f"day={old_day}"
    assert old_folder.is_dir()

    with Server(lake, ["--no-auth", "--no-ttl"]) as server:  # --no-ttl: nothing is deleted
        status = httpx.get(f"{server.base}/api/v1/status").json()
        assert status["ttl"] == {"interval_s": None, "runs": 0, "last": None}
    assert old_folder.is_dir()

    with Server(lake, ["--no-auth", "--ttl-interval-hours", "0.0002"]) as server:  # every 0.72 s
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.base}/api/v1/status").json()
            if status["ttl"]["runs"] >= 2:
                break
            time.sleep(0.1)
        assert status["ttl"]["runs"] >= 2 and status["ttl"]["last"]["ok"] is True
        assert not old_folder.exists()
        assert [h["run_id"] for h in httpx.get(f"{server.base}/api/v1/agents/history").json()]  # the new run stays
    assert len(HistoryDB(lake).get_history()) == 1


def test_startup_refuses_unsafe_or_broken_configuration(tmp_path: Path) -> None:
    lake = tmp_path / "lake"

    def refused(*args: str, env: dict[str, str] | None = None) -> str:
        import os
        import subprocess
        import sys

        full_env = {k: v for k, v in os.environ.items() if k != "RUNLAKE_API_KEYS"}
        full_env.update(env or {})
        done = subprocess.run(
            [sys.executable, "-m", "runlake.server", "--state-url", str(lake), "--port", "0", *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=full_env,
        )
        assert done.returncode == 2, done.stdout + done.stderr
        return done.stderr

    assert "loopback" in refused("--host", "0.0.0.0", "--no-auth")
    assert "no API keys" in refused()
    bad_keys = tmp_path / "keys.json"
    bad_keys.write_text(json.dumps({"keys": [{"key": "short", "tenant_id": "t"}]}))
    assert "at least 16" in refused("--keys-file", str(bad_keys))
    assert "RUNLAKE_API_KEYS" in refused(env={"RUNLAKE_API_KEYS": "just-one-field-here"})


# ---- the ingest log (default durability) -------------------------------------------------------------------------
def test_ingest_log_survives_a_hard_crash(tmp_path: Path) -> None:
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "t1", "role": "admin"}])
    lake = tmp_path / "lake"
    factory = SpanFactory()
    run_id, spans = factory.run(unique("agent"), unique("s"), "u", NODES)
    _, later_spans = factory.run(unique("agent"), unique("s"), "u", NODES[:1])
    crashed = Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--flush-interval-s", "600"])
    with crashed:
        assert send(crashed, key, spans) is SpanExportResult.SUCCESS  # acknowledged: in the log, not in Parquet
        assert not list(lake.rglob("*.parquet"))
        [segment] = (lake / ".ingest-log").glob("segment-*.log")
        with httpx.Client(base_url=crashed.base) as client:
            body = encode_spans(later_spans).SerializeToString()
            headers = {**auth(key), "Content-Type": PROTOBUF}
            assert client.post("/v1/traces", content=body, headers=headers).status_code == 200
        crashed.stop(signal.SIGKILL)  # no shutdown, no flush
    with open(segment, "ab") as f:
        f.write(b"RLI1\x00\x01")  # the crash tore a record that was never acknowledged

    with Server(lake, ["--keys-file", str(keys_file), "--no-ttl"]) as restarted:  # replays before it serves
        with httpx.Client(base_url=restarted.base, headers=auth(key)) as client:
            history = client.get("/api/v1/agents/history").json()
            assert run_id in {h["run_id"] for h in history} and len(history) == 2
            logs = client.get("/api/v1/agents/logs", params={"run_id": run_id}).json()
            assert logs["summary"]["total_nodes"] == 3
            assert client.get("/api/v1/status").json()["ingest_log"] is None  # server-wide: not for a tenant
        assert not segment.exists()  # written to part files, then dropped
    assert "replayed 2 request(s), 6 span(s) from 1 ingest log segment(s)" in restarted.log()
    assert "torn record at byte" in restarted.log()


def test_ingest_log_keeps_requests_whose_rows_were_dropped_during_an_outage(tmp_path: Path) -> None:
    """A lake outage fills the writer's buffer: past its cap the writer drops rows. Requests already answered 200
    keep their log segments, further requests get 503 until there is room, and once the lake takes writes again the
    kept segments are stored without a restart."""
    key, keys_file, lake, blocker = _lake_refusing_tenant_t1(tmp_path)
    cap = 300_000
    big = [{**n, "output": f"{n['id']}-" + "x" * (cap // 2)} for n in NODES]  # one request's rows pass the cap
    factory = SpanFactory()
    run_id, spans = factory.run(unique("agent"), unique("s"), "u", big)
    small = [{**n, "output": "y" * (cap // 10)} for n in NODES]
    small_run_id, small_spans = factory.run(unique("agent"), unique("s"), "u", small)
    more_run_id, more_spans = factory.run(unique("agent"), unique("s"), "u", big)
    pb = {"Content-Type": PROTOBUF}
    args = ["--keys-file", str(keys_file), "--no-ttl", "--flush-interval-s", "0.2"]
    with Server(lake, args, env={"RUNLAKE_MAX_BUFFER_BYTES": str(cap)}) as server:
        with httpx.Client(base_url=server.base, headers=auth(key), timeout=30) as client:
            first = client.post("/v1/traces", content=encode_spans(spans).SerializeToString(), headers=pb)
            assert first.status_code == 200, first.text  # in the log; its rows went past the cap and were dropped
            [tenant] = client.get("/api/v1/status").json()["ingest"]
            assert tenant["dropped_rows"] > 0 and tenant["failing"]
            kept = client.post("/v1/traces", content=encode_spans(small_spans).SerializeToString(), headers=pb)
            assert kept.status_code == 200, kept.text  # room in the buffer: taken, and kept there
            # backpressure: while the lake fails, a request that would pass the cap is refused before the log
            refused = client.post("/v1/traces", content=encode_spans(more_spans).SerializeToString(), headers=pb)
            assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
            assert "buffer is full" in _status(refused).message

            blocker.unlink()  # the lake is back: the client's retry is taken, checkpoints succeed again
            retried = client.post("/v1/traces", content=encode_spans(more_spans).SerializeToString(), headers=pb)
            assert retried.status_code == 200, retried.text
            # the kept segments are stored by a checkpoint once the lake takes writes, and deleted by the next one
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                [tenant] = client.get("/api/v1/status").json()["ingest"]  # a tenant key: no ingest log figures
                if "the lake takes writes again: stored" in server.log() and _run_nodes(client, run_id) == 3:
                    break
                time.sleep(0.1)  # polling interval of a bounded wait for the next checkpoint
            assert tenant["failing"] is None and tenant["files_written"]
            for run in (run_id, small_run_id, more_run_id):  # without a restart
                assert _run_nodes(client, run) == 3, run
    assert "ingest log segment(s) are kept" in server.log() and "Traceback" not in server.log()
    assert "the lake takes writes again: stored" in server.log()
    assert not list((lake / ".ingest-log").glob("segment-*.log"))  # deleted by the final checkpoint

    with Server(lake, ["--keys-file", str(keys_file), "--no-ttl"]) as restarted:  # and nothing is lost at restart
        with httpx.Client(base_url=restarted.base, headers=auth(key), timeout=30) as client:
            for run in (run_id, small_run_id, more_run_id):
                assert _run_nodes(client, run) == 3, run


def _run_nodes(client: httpx.Client, run_id: str) -> int | None:
    logs = client.get("/api/v1/agents/logs", params={"run_id": run_id})
    return logs.json()["summary"]["total_nodes"] if logs.status_code == 200 else None


def test_ingest_log_mode_is_readable_after_the_flush_interval(tmp_path: Path) -> None:
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "t1", "role": "admin"}])
    lake = tmp_path / "lake"
    factory = SpanFactory()
    run_id, spans = factory.run(unique("agent"), unique("s"), "u", NODES)
    with Server(lake, ["--keys-file", str(keys_file), "--no-ttl", "--flush-interval-s", "0.2"]) as server:
        assert send(server, key, spans) is SpanExportResult.SUCCESS
        deadline = time.monotonic() + 15
        with httpx.Client(base_url=server.base, headers=auth(key)) as client:
            while time.monotonic() < deadline:
                if client.get("/api/v1/agents/history").json():
                    break
                time.sleep(0.05)
            assert [h["run_id"] for h in client.get("/api/v1/agents/history").json()] == [run_id]
            while list((lake / ".ingest-log").glob("segment-*.log")) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not list((lake / ".ingest-log").glob("segment-*.log"))  # checkpointed and dropped
        # a second server cannot take the same ingest log
        second = Server(lake, ["--keys-file", str(keys_file), "--no-ttl"])
        with pytest.raises(AssertionError, match="in use by another runlake serve"):
            second.start()


def test_ingest_shares_small_sessions_and_background_compaction_merges_them(tmp_path: Path) -> None:
    from opentelemetry.exporter.runlake.layout import MIXED_FOLDER

    lake = tmp_path / "lake"
    factory = SpanFactory()
    spans, run_ids = [], {}
    for i in range(30):
        run_id, made = factory.run("agent", f"sess-{i}", "u", NODES)
        spans.extend(made)
        run_ids[f"sess-{i}"] = run_id
    args = [
        "--no-auth",
        "--no-ttl",
        "--durability",
        "sync",
        "--compact-interval-minutes",
        "0.01",
        "--compact-older-than",
        "0",
    ]
    with Server(lake, args) as server:
        assert send(server, None, spans) is SpanExportResult.SUCCESS
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # bounded poll of the server's own counters
            status = httpx.get(f"{server.base}/api/v1/status").json()
            if status["compaction"]["runs"] >= 2 and len(list(lake.rglob(f"{MIXED_FOLDER}/*.parquet"))) == 1:
                break
            time.sleep(0.1)
        assert status["compaction"]["last"]["ok"] is True
        assert len(list(lake.rglob(f"{MIXED_FOLDER}/*.parquet"))) == 1, "shared parts merged into one file"
        for session, run_id in run_ids.items():
            runs = httpx.get(f"{server.base}/api/v1/runs", params={"session_id": session}).json()
            assert [r["run_id"] for r in runs] == [run_id]
    assert {p.parent.name for p in (lake / "spans").rglob("*.parquet")} == {MIXED_FOLDER}, "small sessions stay shared"


def test_only_lone_surrogates_make_an_otlp_json_body_walked() -> None:
    """Escaped surrogate pairs (Python's json.dumps writes one for every emoji) need no repair; a lone escape, a low
    half alone or a surrogate encoded as UTF-8 does (the whole request is then walked once)."""
    from runlake.otlp import _may_hold_lone_surrogates

    assert not _may_hold_lone_surrogates(json.dumps({"text": "hi 😀 é"}).encode())
    assert not _may_hold_lone_surrogates(b'{"text": "\\uD83D\\uDE00 and \\u00e9"}')
    for body in (b'"cut \\ud83d"', b'"cut \\ud83d\\u0041"', b'"\\ude00 alone"', b'"x' + b"\xed\xa0\x80" + b'"'):
        assert _may_hold_lone_surrogates(body), body


def test_otlp_protobuf_strings_that_are_not_utf8_are_stored_with_replacement_characters(
    server: Server, api: httpx.Client
) -> None:
    """proto3 strings must be UTF-8, and the protobuf parser refused the whole request for one string cut inside a
    character (400: not retried, every span lost). Such strings are now stored with U+FFFD and every span of the
    request is stored; a body whose wire format is broken is still a 400."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    session, trace_id = unique("utf8-s"), bytes.fromhex(secrets.token_hex(16))
    now = time.time_ns()
    request = ExportTraceServiceRequest()
    spans = request.resource_spans.add().scope_spans.add()
    run_ids = [secrets.token_hex(8) for _ in range(3)]
    for i, run_id in enumerate(run_ids):
        span = spans.spans.add(trace_id=trace_id, span_id=bytes.fromhex(run_id), name=f"NAME-{i}")
        span.start_time_unix_nano, span.end_time_unix_nano = now - 2_000_000_000, now
        for key, value in (("runlake.span.type", "run"), ("session.id", session), ("output.value", f"TEXT-{i}")):
            span.attributes.add(key=key, value={"string_value": value})
    body = request.SerializeToString()
    body = body.replace(b"TEXT-1", b"TEX\xe2\x82\xac"[:5] + b"!").replace(b"NAME-2", b"NA\xff\xfe-2")  # same lengths
    response = api.post("/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"})
    assert response.status_code == 200, response.text
    runs = {run["run_id"]: run for run in api.get("/api/v1/runs", params={"session_id": session}).json()}
    assert [runs[r]["output_content"] for r in run_ids] == ["TEXT-0", "TEX\ufffd!", "TEXT-2"]
    broken = api.post("/v1/traces", content=body[:-3], headers={"Content-Type": "application/x-protobuf"})
    assert broken.status_code == 400
