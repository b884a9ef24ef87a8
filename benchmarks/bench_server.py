"""``runlake serve`` benchmarks: OTLP ingest throughput and read-endpoint latency, beside the in-process exporter.

    python benchmarks/bench_server.py [--spans N] [--clients C] [--batch B] [--requests R] [--quick]

Spans are made by ``common.build_spans`` (runlake's own instrumentation, sessions interleaved as an ingest
server receives them), then:

1. in-process: ``RunlakeSpanExporter.export`` on the same batches (age-based flush, and a ``force_flush`` per
   batch, the in-process equivalent of "durable before answering");
2. through the server (a real ``runlake serve`` subprocess on 127.0.0.1), for each durability mode:
   C concurrent real ``OTLPSpanExporter`` clients (protobuf + gzip, what an SDK or collector does), and C
   threads posting pre-encoded gzip bodies with httpx (the server's own capacity, client encoding excluded);
3. read latency (p50 / p95 over R requests) of the history, logs, runs, traces and stats endpoints on the
   lake the default (log) durability produced.

The server's peak RSS (VmHWM) is printed beside every server figure; part files written show the small-file
cost of each durability mode. Nothing here runs as a test.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import common  # noqa: E402
import httpx  # noqa: E402
from common import fmt_time, print_table  # noqa: E402
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.exporter.otlp.proto.http import Compression  # noqa: E402
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: E402
from opentelemetry.sdk.trace.export import SpanExportResult  # noqa: E402
from server_fixtures import Server, new_key  # noqa: E402

from runlake import RunlakeSpanExporter  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, help="spans to ingest (default 40000; --quick 8000)")
    p.add_argument("--clients", type=int, default=4, help="concurrent OTLP clients (default 4)")
    p.add_argument("--batch", type=int, default=512, help="spans per OTLP request (default 512)")
    p.add_argument("--requests", type=int, help="requests per read endpoint (default 200; --quick 50)")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = p.parse_args()
    args.spans = args.spans or (8000 if args.quick else 40000)
    args.requests = args.requests or (50 if args.quick else 200)
    return args


def parquet_files(lake: Path) -> int:
    return sum(1 for p in lake.rglob("*.parquet") if not p.name.startswith("."))


def peak_rss(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def mb(n: int | None) -> str:
    return "n/a" if n is None else f"{n / (1 << 20):.0f} MB"


# ---- in-process ----------------------------------------------------------------------------------------------
def bench_in_process(batches: list, lake: Path, flush_each: bool) -> tuple[float, int]:
    exporter = RunlakeSpanExporter(lake)
    started = time.perf_counter()
    for batch in batches:
        assert exporter.export(batch) is SpanExportResult.SUCCESS
        if flush_each:
            exporter.force_flush()
    exporter.force_flush()
    elapsed = time.perf_counter() - started
    exporter.shutdown()
    return elapsed, parquet_files(lake)


# ---- through the server ---------------------------------------------------------------------------------------
def start_server(lake: Path, key: str, durability: str) -> Server:
    keys = lake.parent / f"keys-{lake.name}.json"
    keys.write_text(json.dumps({"keys": [{"key": key, "tenant_id": "bench", "role": "admin"}]}))
    lake.parent.mkdir(parents=True, exist_ok=True)
    server = Server(lake, ["--keys-file", str(keys), "--no-ttl", "--durability", durability, "--log-level", "warning"])
    return server.start()


def ingest_with_exporters(server: Server, key: str, batches: list, clients: int) -> float:
    def client(share: list) -> None:
        exporter = OTLPSpanExporter(
            endpoint=f"{server.base}/v1/traces",
            headers={"Authorization": f"Bearer {key}"},
            compression=Compression.Gzip,
            timeout=120,
        )
        for batch in share:
            assert exporter.export(batch) is SpanExportResult.SUCCESS
        exporter.shutdown()

    shares = [batches[i::clients] for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return time.perf_counter() - started


def ingest_with_bodies(server: Server, key: str, bodies: list[bytes], clients: int) -> float:
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "gzip",
    }

    def client(share: list[bytes]) -> None:
        with httpx.Client(base_url=server.base, headers=headers, timeout=120) as http:
            for body in share:
                response = http.post("/v1/traces", content=body)
                assert response.status_code == 200, response.text

    shares = [bodies[i::clients] for i in range(clients)]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, shares))
    return time.perf_counter() - started


def wait_for_checkpoint(lake: Path, timeout_s: float = 60.0) -> None:
    """log mode: wait until the ingest log is empty, i.e. everything acknowledged is in part files."""
    deadline = time.monotonic() + timeout_s
    while list((lake / ".ingest-log").glob("segment-*.log")) and time.monotonic() < deadline:
        time.sleep(0.05)


def read_latencies(server: Server, key: str, requests: int, lake: Path) -> list[list[str]]:
    """p50 / p95 of each endpoint over HTTP, beside the same call on ``HistoryDB`` / the service in this process
    (the baseline: what the HTTP layer adds is the ratio)."""
    from runlake import ExecutionHistoryService, HistoryDB

    db = HistoryDB(lake)
    service = ExecutionHistoryService(db)
    direct = {
        "/api/v1/agents/history": lambda p: db.get_history(agent_id=p.get("agent_id"), limit=p["limit"]),
        "/api/v1/agents/logs": lambda p: db.get_logs(p["run_id"]),
        "/api/v1/runs": lambda p: db.get_runs(p["session_id"]),
        "/api/v1/traces": lambda p: db.get_traces(session_id=p["session_id"]),
        "/api/v1/agents/stats": lambda p: service.statistics(user_id=p["user_id"]),
    }
    rng = random.Random(3)
    rows = []
    with httpx.Client(base_url=server.base, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        history = http.get("/api/v1/agents/history", params={"limit": 1000}).json()
        run_ids = [h["run_id"] for h in history]
        traces = http.get("/api/v1/traces", params={"limit": 200}).json()
        sessions = sorted({t["session_id"] for t in traces})
        users = sorted({t["user_id"] for t in traces if t["user_id"]})
        cases = {
            "GET /api/v1/agents/history?limit=100": lambda: ("/api/v1/agents/history", {"limit": 100}),
            "GET /api/v1/agents/history?agent_id=..&limit=20": lambda: (
                "/api/v1/agents/history",
                {"agent_id": rng.choice(common.AGENTS), "limit": 20},
            ),
            "GET /api/v1/agents/logs?run_id=..": lambda: ("/api/v1/agents/logs", {"run_id": rng.choice(run_ids)}),
            "GET /api/v1/runs?session_id=..": lambda: ("/api/v1/runs", {"session_id": rng.choice(sessions)}),
            "GET /api/v1/traces?session_id=..": lambda: ("/api/v1/traces", {"session_id": rng.choice(sessions)}),
            "GET /api/v1/agents/stats?user_id=..": lambda: ("/api/v1/agents/stats", {"user_id": rng.choice(users)}),
        }
        for name, make in cases.items():
            times, local = [], []
            for _ in range(requests):
                path, params = make()
                started = time.perf_counter()
                response = http.get(path, params=params)
                times.append(time.perf_counter() - started)
                assert response.status_code == 200, (path, response.text)
                started = time.perf_counter()
                direct[path](params)
                local.append(time.perf_counter() - started)
            times.sort()
            p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
            p50, base = statistics.median(times), statistics.median(local)
            rows.append([name, fmt_time(p50), fmt_time(p95), fmt_time(base), f"{p50 / base:.2f}×"])
    return rows


def main() -> None:
    args = parse_args()
    print("machine:", ", ".join(f"{k}={v}" for k, v in common.machine().items()))
    print(f"making {args.spans} spans ...", file=sys.stderr, flush=True)
    spans = common.build_spans(args.spans)
    batches = spans.batches(args.batch)
    n = len(spans.spans)
    bodies = [gzip.compress(encode_spans(b).SerializeToString(), compresslevel=6) for b in batches]
    print(
        f"{n} spans, {spans.sessions} sessions, {spans.runs} runs, {len(batches)} requests of {args.batch} spans; "
        f"{sum(map(len, bodies)) / n:.0f} B/span on the wire (protobuf + gzip)"
    )
    work = Path(tempfile.mkdtemp(prefix="runlake-bench-server-"))
    key = new_key()
    rows = []
    latency_rows: list[list[str]] = []
    try:
        baseline = None  # spans/s of the in-process exporter: the ratio column's 1.00×
        for label, flush_each in (("in-process exporter (age flush)", False), ("in-process, force_flush/batch", True)):
            elapsed, files = bench_in_process(batches, work / f"inproc-{flush_each}", flush_each)
            baseline = baseline or n / elapsed
            rows.append([label, "1", f"{n / elapsed:,.0f}", f"{n / elapsed / baseline:.2f}×", fmt_time(elapsed)])
            rows[-1] += [str(files), "-"]
        for durability in ("log", "sync", "buffered"):
            for style in ("OTLPSpanExporter", "pre-encoded httpx"):
                lake = work / f"lake-{durability}-{style.split()[0]}"
                server = start_server(lake, key, durability)
                try:
                    if style == "OTLPSpanExporter":
                        elapsed = ingest_with_exporters(server, key, batches, args.clients)
                    else:
                        elapsed = ingest_with_bodies(server, key, bodies, args.clients)
                    if durability == "log" and style == "OTLPSpanExporter":
                        wait_for_checkpoint(lake)
                        print("measuring read latency ...", file=sys.stderr, flush=True)
                        latency_rows = read_latencies(server, key, args.requests, lake)
                    rss = peak_rss(server.proc.pid)
                finally:
                    server.stop()
                files = parquet_files(lake)
                rows.append(
                    [f"serve --durability {durability}, {style}", str(args.clients), f"{n / elapsed:,.0f}"]
                    + [f"{n / elapsed / baseline:.2f}×", fmt_time(elapsed), str(files), mb(rss)]
                )
        print_table(
            f"OTLP ingest throughput ({n} spans, {len(batches)} requests)",
            ["path", "clients", "spans/s", "vs in-process", "time", "part files", "server peak RSS"],
            rows,
            [
                "log (default): a 200 means the request is in the ingest log (replayed after a crash); part files",
                "  are written every --flush-interval-s (2 s). sync: a 200 means the spans are in part files",
                "  (group commit across concurrent requests). buffered: a 200 means buffered in memory only.",
                "OTLPSpanExporter rows include the clients' own protobuf encoding, in this same process.",
                "vs in-process = spans/s ÷ the in-process exporter's (age flush), measured in this run.",
            ],
        )
        print_table(
            f"read latency on the log-mode lake ({args.requests} requests each, sequential)",
            ["endpoint", "p50", "p95", "in-process p50", "HTTP ÷ in-process"],
            latency_rows,
            ["in-process = the same call on HistoryDB / ExecutionHistoryService in this process, same parameters."],
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.pop("RUNLAKE_API_KEYS", None)
    main()
