"""Load: several concurrent OTLP clients send a known set of spans; afterwards each is in the lake exactly once.

Bounded in count (4 clients x 4,000 spans) and time, on 127.0.0.1 only. Readers poll the history endpoint
while the writers run and must never fail. Run for both durability modes: ``sync`` is checked the moment
the last export returns (a 200 means in part files); ``log`` (the default) and ``buffered`` after a graceful
stop.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import httpx
import pytest
from opentelemetry.exporter.runlake.layout import table_files
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from server_fixtures import Server, auth, new_key, otlp_exporter, write_keys

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

CLIENTS = 4
RUNS_PER_CLIENT = 800
NODES_PER_RUN = 4
BATCH = 500  # spans per export request
SESSIONS = 40


def make_spans(client: int) -> list[ReadableSpan]:
    """RUNS_PER_CLIENT runs of 1 run span + NODES_PER_RUN nodes, ids unique across clients."""
    resource = Resource({"service.name": f"load-client-{client}"})
    now = time.time_ns() - 3_600_000_000_000
    spans: list[ReadableSpan] = []
    for run in range(RUNS_PER_CLIENT):
        trace_id = (client + 1) << 64 | (run + 1)
        run_span_id = (client + 1) << 48 | (run + 1) << 8
        run_id = f"{run_span_id:016x}"
        session = f"load-session-{(client * RUNS_PER_CLIENT + run) % SESSIONS}"
        start = now + run * 1_000_000
        common = {"session.id": session, "user.id": f"user-{client}", "runlake.run.id": run_id}
        root_ctx = SpanContext(trace_id, run_span_id, is_remote=False)
        for node in range(NODES_PER_RUN):
            spans.append(
                ReadableSpan(
                    name=f"chat node-{node}",
                    context=SpanContext(trace_id, run_span_id | (node + 1), is_remote=False),
                    parent=root_ctx,
                    resource=resource,
                    attributes={
                        **common,
                        "runlake.span.type": "node",
                        "runlake.node.id": f"node-{node}",
                        "runlake.node.type": "llm",
                        "gen_ai.usage.input_tokens": 10,
                        "gen_ai.usage.output_tokens": 5,
                        "input.value": "x" * 200,
                    },
                    kind=SpanKind.CLIENT,
                    status=Status(StatusCode.OK),
                    start_time=start + node * 1000,
                    end_time=start + node * 1000 + 500,
                )
            )
        spans.append(
            ReadableSpan(
                name="invoke_agent load",
                context=root_ctx,
                parent=None,
                resource=resource,
                attributes={**common, "runlake.span.type": "run", "gen_ai.agent.name": "load-agent"},
                status=Status(StatusCode.OK),
                start_time=start,
                end_time=start + 900_000,
            )
        )
    return spans


def send_all(server: Server, key: str, spans: list[ReadableSpan]) -> int:
    exporter = otlp_exporter(server, key)
    try:
        for i in range(0, len(spans), BATCH):
            assert exporter.export(spans[i : i + BATCH]) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    return len(spans)


def lake_counts(lake: Path) -> tuple[dict[str, int], dict[str, int]]:
    """span_id -> rows in spans/, run span_id -> rows in runs/ (raw rows, no de-duplication)."""
    con = duckdb.connect()
    out = []
    for table in ("spans", "runs"):
        files = [str(f) for f in table_files(lake, table)]
        rows = con.execute(
            "SELECT span_id, count(*) FROM read_parquet(?, union_by_name=true) GROUP BY span_id", [files]
        ).fetchall()
        out.append(dict(rows))
    return out[0], out[1]


@pytest.mark.parametrize("durability", ["log", "sync", "buffered"])
def test_concurrent_clients_every_span_exactly_once(tmp_path: Path, durability: str) -> None:
    key = new_key()
    keys_file = write_keys(tmp_path / "keys.json", [{"key": key, "tenant_id": "load", "role": "admin"}])
    lake = tmp_path / "lake"
    batches = [make_spans(c) for c in range(CLIENTS)]
    expected = {f"{s.context.span_id:016x}" for spans in batches for s in spans}
    expected_runs = {f"{s.context.span_id:016x}" for spans in batches for s in spans if s.parent is None}
    assert len(expected) == CLIENTS * RUNS_PER_CLIENT * (NODES_PER_RUN + 1)

    args = ["--keys-file", str(keys_file), "--no-ttl", "--durability", durability]
    server = Server(lake, args).start()
    read_errors: list[str] = []
    stop_reading = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=server.base, headers=auth(key), timeout=30) as client:
            while not stop_reading.is_set():
                response = client.get("/api/v1/agents/history", params={"limit": 50})
                if response.status_code != 200:
                    read_errors.append(response.text)

    try:
        reading = threading.Thread(target=reader)
        reading.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(CLIENTS) as pool:
            sent = sum(pool.map(lambda spans: send_all(server, key, spans), batches))
        elapsed = time.perf_counter() - started
        stop_reading.set()
        reading.join(30)
        print(f"\n{durability}: {sent} spans from {CLIENTS} clients in {elapsed:.2f}s = {sent / elapsed:,.0f} spans/s")
        if durability != "sync":
            server.stop()
        spans, runs = lake_counts(lake)  # sync: checked at once, while the server still runs
    finally:
        stop_reading.set()
        server.stop()
    assert not read_errors
    assert set(spans) == expected, f"missing {len(expected - set(spans))}, unexpected {len(set(spans) - expected)}"
    assert max(spans.values()) == 1, "a span was stored twice"
    assert set(runs) == expected_runs and max(runs.values()) == 1
    assert elapsed < 90
    assert "Traceback" not in server.log()
