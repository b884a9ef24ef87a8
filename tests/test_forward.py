"""Forwarding to an OTLP receiver runlake did not write (oteltest's gRPC and HTTP sinks), and to one that is down.

The sinks come from the ``oteltest`` package; they bind all interfaces on the free port we give them, and
these tests only ever send to 127.0.0.1. They are stopped by the tests.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.exporter.runlake import mapping
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from oteltest.sink import GrpcSink, HttpSink
from oteltest.sink.handler import RequestHandler

import runlake


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _plain_value(value):
    """An OTLP AnyValue as Python (arrays as lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_plain_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


class Collected(RequestHandler):
    """Keeps every span the sink receives, with its attributes, events and status message, and the request
    headers."""

    def __init__(self) -> None:
        self.spans: list[dict] = []
        self.headers: list[dict] = []
        self.lock = threading.Lock()

    def handle_logs(self, request, headers) -> None:  # noqa: ARG002
        pass

    def handle_metrics(self, request, headers) -> None:  # noqa: ARG002
        pass

    def handle_trace(self, request: ExportTraceServiceRequest, headers) -> None:
        with self.lock:
            self.headers.append(
                dict(headers) if not hasattr(headers, "invocation_metadata") else dict(headers.invocation_metadata())
            )
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append(
                            {
                                "name": span.name,
                                "span_id": span.span_id.hex(),
                                "attributes": {kv.key: _plain_value(kv.value) for kv in span.attributes},
                                "events": [
                                    {
                                        "name": e.name,
                                        "attributes": {kv.key: _plain_value(kv.value) for kv in e.attributes},
                                    }
                                    for e in span.events
                                ],
                                "status_message": span.status.message or None,
                            }
                        )


@pytest.fixture(params=["grpc", "http/protobuf"])
def sink(request) -> Iterator[tuple[str, str, Collected]]:
    collected = Collected()
    port = free_port()
    logger = logging.getLogger("oteltest")
    if request.param == "grpc":
        server = GrpcSink(collected, logger, port=port)
    else:
        server = HttpSink(collected, logger, port=port)
    server.start()
    if request.param == "http/protobuf":  # the HTTP sink starts in a thread: wait until it accepts
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                continue
    try:
        yield request.param, f"http://127.0.0.1:{port}", collected
    finally:
        server.stop()


def agent_work(runs: int = 5) -> None:
    for i in range(runs):
        with runlake.run("fwd-agent", session_id=f"fwd-{i % 2}", user_id="u", input=f"task {i}") as r:
            with runlake.node("think", type="llm") as n:
                n.set_usage(input_tokens=3, output_tokens=2)
                n.set_model("m-1", provider="openai")
            with runlake.node("lookup", type="tool"):
                pass
            r.set_output("done")


def test_forwarded_spans_carry_genai_and_openinference_attributes(sink, lake: Path) -> None:
    protocol, endpoint, collected = sink
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol=protocol, otlp_headers={"x-team": "agents"})
    agent_work(5)
    runlake.shutdown()
    assert len(collected.spans) == 15, "every span arrives"
    by_name = {s["name"]: s["attributes"] for s in collected.spans}
    run = by_name["invoke_agent fwd-agent"]
    assert run["gen_ai.operation.name"] == "invoke_agent" and run["openinference.span.kind"] == "AGENT"
    assert run["gen_ai.agent.name"] == "fwd-agent" and run["session.id"] in ("fwd-0", "fwd-1")
    assert run["gen_ai.conversation.id"] == run["session.id"] and run["output.value"] == "done"
    llm = by_name["chat think"]
    assert llm["openinference.span.kind"] == "LLM" and llm["gen_ai.usage.input_tokens"] == 3
    assert llm["llm.token_count.completion"] == 2 and llm["gen_ai.request.model"] == "m-1"
    assert by_name["execute_tool lookup"]["gen_ai.tool.name"] == "lookup"
    assert any(h.get("x-team") == "agents" for h in collected.headers)
    # the local copy is complete too, with the same span ids
    local = runlake.HistoryDB(lake).sql("SELECT span_id FROM spans").fetchall()
    assert {r[0] for r in local} == {s["span_id"] for s in collected.spans}


def test_standard_environment_variables(sink, lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    protocol, endpoint, collected = sink
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    runlake.configure(lake)
    agent_work(2)
    runlake.shutdown()
    assert len(collected.spans) == 6


def _time_work(runs: int) -> float:
    started = time.perf_counter()
    agent_work(runs)
    return time.perf_counter() - started


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_collector_down_costs_the_lake_nothing_and_the_app_little(lake: Path, protocol: str, caplog) -> None:
    """Stated bound: with the collector down, the instrumented code is at most 3x slower per span than with
    forwarding off (measured as the best of three rounds), and shutdown returns within otlp_timeout_s + 2 s."""
    runlake.configure(lake / "baseline")
    baseline = min(_time_work(100) for _ in range(3))
    runlake.shutdown()
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    runlake.configure(lake, otlp_endpoint=dead, otlp_protocol=protocol, otlp_timeout_s=1, schedule_delay_millis=50)
    with caplog.at_level(logging.WARNING):
        down = min(_time_work(100) for _ in range(3))
        stats_before = runlake.forwarding_stats()
        started = time.perf_counter()
        runlake.shutdown()
        shutdown_s = time.perf_counter() - started
    assert down <= 3 * baseline + 0.05, f"{down:.3f}s vs {baseline:.3f}s without forwarding"
    assert shutdown_s <= 1 + 2, f"shutdown took {shutdown_s:.1f}s"
    assert stats_before["ended"] == 900
    db = runlake.HistoryDB(lake)
    assert db.sql("SELECT count(*) FROM spans").fetchall() == [(900,)], "the lake has every span"
    assert any("not forwarded" in r.getMessage() or "could not forward" in r.getMessage() for r in caplog.records)


def test_bad_forwarding_settings_are_clear_errors(lake: Path) -> None:
    with pytest.raises(ValueError, match="otlp_protocol"):
        runlake.configure(lake, otlp_endpoint="http://127.0.0.1:1", otlp_protocol="carrier-pigeon")
    with pytest.raises(ValueError, match="http"):
        runlake.configure(lake, otlp_endpoint="collector:4317")


def test_forwarded_spans_honour_mirroring_off_and_redaction(sink, lake: Path) -> None:
    protocol, endpoint, collected = sink
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol=protocol, redact=True)
    with runlake.run("a", session_id="guarded", input="my key is sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA") as r:
        with runlake.turn("t1") as t:
            assert t.set_state({"tool_calls": ["call-1"]}) is True  # mirroring is off: nothing is written
            t.span.set_attribute("runlake.runtime.state", '{"sneaked": "in by hand"}')
        r.set_output("mail me at jane.doe@example.com")
    runlake.shutdown()
    assert len(collected.spans) == 2
    assert all("runlake.runtime.state" not in s["attributes"] for s in collected.spans)
    run_attrs = next(s["attributes"] for s in collected.spans if s["name"].startswith("invoke_agent"))
    assert "sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA" not in run_attrs["input.value"]
    assert "jane.doe@example.com" not in run_attrs["output.value"] and "mail me at" in run_attrs["output.value"]
    on_disk = runlake.HistoryDB(lake).sql("SELECT count(*) FROM spans WHERE runtime_state IS NOT NULL").fetchall()
    assert on_disk == [(0,)]


def test_the_base_endpoint_variable_always_gets_the_signal_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """As the OTel spec says for OTEL_EXPORTER_OTLP_ENDPOINT over HTTP: a path prefix (a gateway's /otlp) is kept
    and /v1/traces appended; the traces-specific variable and an explicit endpoint with a path are used as given."""
    from runlake.forward import forwarding_settings

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "https://gateway.example/otlp/")
    assert forwarding_settings(None, "http/protobuf", None)[0] == "https://gateway.example/otlp/v1/traces"
    assert forwarding_settings(None, "grpc", None)[0] == "https://gateway.example/otlp/"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://gateway.example/custom")
    assert forwarding_settings(None, "http/protobuf", None)[0] == "https://gateway.example/custom"
    assert forwarding_settings("http://c:4318", "http/protobuf", {})[0] == "http://c:4318/v1/traces"
    assert forwarding_settings("http://c:4318/in", "http/protobuf", {})[0] == "http://c:4318/in"


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_force_flush_with_the_collector_down_returns_within_its_timeout(protocol: str) -> None:
    """The SDK's batch processor exports its whole queue on the caller's thread whatever the timeout; forwarding
    must not hold an application that flushes at the end of each request."""
    from opentelemetry.sdk.trace import TracerProvider

    from runlake.forward import ForwardingProcessor

    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    processor = ForwardingProcessor(dead, protocol, timeout_s=5, shutdown_timeout_s=1, schedule_delay_millis=60_000)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("app")
    for i in range(600):  # more than one batch of 512 queued
        with tracer.start_as_current_span(f"work {i}"):
            pass
    for _ in range(2):  # a second call while the first flush is still under way waits for that one, no longer
        started = time.monotonic()
        assert processor.force_flush(200) is False
        assert time.monotonic() - started < 1.5
    started = time.monotonic()
    provider.shutdown()
    assert time.monotonic() - started < 1 + 2
    assert processor.stats["sent"] == 0


# ---- redaction: the collector gets what the lake gets, no more -------------------------------------------------
SECRETS = (
    "hunter2hunter2",
    "sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA",
    "abcdefghijklmnop1234567890",
    "abc123def456ghi789",
    "jane.doe@example.com",
    "+1 415 555 0100",
    "4111 1111 1111 1111",
    "wJalrXUtnFEMI",
)


def _secret_work() -> None:
    """Secrets in every place a span has: ids, input, output, metadata, attributes, arrays, events, status, state."""
    from opentelemetry import trace

    with runlake.run(
        "agent",
        session_id="bob@example.com",
        user_id="alice@example.com",
        input="my key is sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA, call +1 415 555 0100",
        metadata={"password": "hunter2hunter2", "api_key": "abc123def456ghi789", "note": "jane.doe@example.com"},
    ) as r:
        with runlake.turn("t1") as t:
            assert t.set_state({"accessToken": "abc123def456ghi789", "mail": "jane.doe@example.com"})
        with runlake.node("search", type="tool", input={"password": "hunter2hunter2", "card": "4111 1111 1111 1111"}):
            span = trace.get_current_span()
            span.set_attribute("password", "hunter2hunter2")
            span.set_attribute("api_key", "abc123def456ghi789")
            span.set_attribute("db.password", 42424242)
            span.set_attribute("http.request.header.authorization", ["Bearer abcdefghijklmnop1234567890"])
            span.set_attribute("contacts", ["jane.doe@example.com", "no secret here"])
            span.set_attribute("aws.config", "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
            span.add_event("login jane.doe@example.com", {"password": "hunter2hunter2", "to": ["jane.doe@example.com"]})
        try:
            with runlake.node("llm", type="llm") as n:
                n.set_model("gpt-4o-mini", provider="openai")
                n.set_usage(input_tokens=3, output_tokens=2)
                raise RuntimeError("auth failed for password=hunter2hunter2")
        except RuntimeError:
            pass
        r.set_output('{"client_secret": "abc123def456ghi789", "reply": "mail jane.doe@example.com"}')


def _stored_once(forwarded: dict, local: dict) -> dict:
    """``forwarded`` without the aliases the lake keeps once: a key read by a column (``gen_ai.tool.name`` for
    ``node_id``) whose value equals what the lake gives back under the column's own key."""
    out = {}
    for key, value in forwarded.items():
        column = next((c for c, (reads, _) in mapping.COLUMN_KEYS.items() if key in reads), None)
        writes = mapping.COLUMN_KEYS[column][1] if column else ()
        if key not in local and any(local.get(w) == value for w in writes):
            continue
        out[key] = value
    return out


@pytest.mark.parametrize("sink", ["http/protobuf"], indirect=True)
def test_forwarded_copy_equals_the_lake_with_redaction(sink, lake: Path) -> None:
    """With redact=True, every attribute, event and status message a real OTLP/HTTP receiver gets equals what the
    lake returns for the span (HistoryDB.get_traces), ids stay as they are, and no secret reaches either."""
    protocol, endpoint, collected = sink
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol=protocol, redact=True, mirror_runtime_state=True)
    _secret_work()
    runlake.shutdown()
    db = runlake.HistoryDB(lake)
    [trace_] = db.get_traces("bob@example.com")
    local = {s["span_id"]: s for s in trace_["spans"]}
    statuses = dict(db.sql("SELECT span_id, status_message FROM spans").fetchall())
    assert len(collected.spans) == len(local) == 4
    for span in collected.spans:
        mine = local[span["span_id"]]
        assert _stored_once(span["attributes"], mine["attributes"]) == mine["attributes"], span["name"]
        assert span["events"] == [{"name": e["name"], "attributes": e["attributes"]} for e in mine["events"]]
        assert span["status_message"] == statuses[span["span_id"]], span["name"]
    forwarded = json.dumps(collected.spans)
    for secret in SECRETS:
        assert secret not in forwarded, secret
    # ids are join keys: kept, so the collector's sessions are the lake's
    run = next(s["attributes"] for s in collected.spans if s["name"].startswith("invoke_agent"))
    assert run["session.id"] == run["gen_ai.conversation.id"] == "bob@example.com"
    assert run["user.id"] == "alice@example.com"
    node = next(s["attributes"] for s in collected.spans if s["name"] == "execute_tool search")
    assert node["password"] == node["api_key"] == node["db.password"] == "[REDACTED:secret]"
    assert node["http.request.header.authorization"] == "[REDACTED:secret]"
    assert node["contacts"] == ["[REDACTED:email]", "no secret here"]
    assert json.loads(run["runlake.metadata"])["password"] == "[REDACTED:secret]"


def test_an_app_that_exports_otlp_itself_gets_no_second_copy(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The application's provider already has the stock OTLP exporter, configured by the standard variables: runlake
    adds the lake but does not forward the same spans again from those variables (an explicit endpoint still does)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from runlake.forward import exports_otlp

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
    app_provider = TracerProvider()
    assert not exports_otlp(app_provider)
    app_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(timeout=1)))
    assert exports_otlp(app_provider)
    from opentelemetry import trace

    monkeypatch.setattr(trace, "get_tracer_provider", lambda: app_provider)  # the app's global provider
    runlake.configure(lake)
    try:
        assert runlake.forwarding_stats() is None, "no second copy from the environment"
        runlake.configure(lake, otlp_endpoint=f"http://127.0.0.1:{free_port()}", otlp_protocol="http/protobuf")
        assert runlake.forwarding_stats() is not None, "an explicit endpoint is still honoured"
    finally:
        runlake.shutdown()
        app_provider.shutdown()
