"""runlake core benchmarks: export throughput, bytes on disk, instrumentation cost, query latency.

    python benchmarks/bench_core.py [--spans N] [--lake-spans N] [--repeats R] [--quick] [--profile]

Every figure is a ratio against a baseline measured in the same process run. Repeats of the cases of a
section are interleaved (a, b, c, b, c, a, ...) and the median is reported, because the machine is noisy.
Peak memory is measured in a separate pass (one forked child per case; see ``common.peak_memory_in_child``),
so it does not distort the timings. Nothing here runs as a test.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import os
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    Approx,
    differing_fields,
    first_difference,
    fmt_bytes,
    fmt_time,
    interleaved,
    median,
    peak_memory_in_child,
    percentile,
    print_table,
)

BATCH = 512  # what a BatchSpanProcessor hands to an exporter
JSON_CASE = "otlp-json FileSpanExporter (baseline)"
BARE_CASE = "bare OTel start_as_current_span, drop processor (baseline)"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--spans", type=int, help="spans for the export benchmark (default 20000; --quick 6000)")
    p.add_argument("--lake-spans", type=int, help="spans in the query lake (default 100000; --quick 15000)")
    p.add_argument("--runs", type=int, help="runs for the instrumentation benchmark (default 2000; --quick 500)")
    p.add_argument("--repeats", type=int, help="timed repeats per case (default 5; --quick 3)")
    p.add_argument("--query-repeats", type=int, help="repeats per query (default 9; --quick 5)")
    p.add_argument("--concurrency", type=int, default=256, help="sessions in flight at once (default 256)")
    p.add_argument("--quick", action="store_true", help="small sizes, finishes in under a minute")
    p.add_argument("--sections", default="1,2,3,4", help="which sections to run (default 1,2,3,4)")
    p.add_argument(
        "--text",
        choices=("prose", "chat"),
        default="prose",
        help="text of the export/bytes spans: fresh prose everywhere (default), or llm inputs as the session's "
        "conversation re-sent as a JSON messages list, as chat-API instrumentations record it",
    )
    p.add_argument("--profile", action="store_true", help="also cProfile one runlake export pass")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory passes")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder (lake, JSON files)")
    p.add_argument("--dir", help="scratch folder (default: a new temp folder)")
    a = p.parse_args()
    q = a.quick
    a.spans = a.spans or (6_000 if q else 20_000)
    a.lake_spans = a.lake_spans or (15_000 if q else 100_000)
    a.runs = a.runs or (500 if q else 2_000)
    a.repeats = a.repeats or (3 if q else 5)
    a.query_repeats = a.query_repeats or (5 if q else 9)
    a.sections = {s.strip() for s in a.sections.split(",")}
    return a


def lake_files(root: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {"spans": [], "runs": []}
    for table in out:
        base = root / table
        if base.exists():
            out[table] = [p for p in base.rglob("*.parquet") if not p.name.startswith((".", "_"))]
    return out


def size_of(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def memory(args: argparse.Namespace, fn: Any, setup: Any = None) -> int | None:
    """Peak memory of ``fn`` (``fn(setup())`` when given; set-up is outside the measured region)."""
    if args.no_memory:
        return None
    return peak_memory_in_child(fn, setup)


# ==== 1 + 2: export throughput and bytes per span ===========================================================
def section_export(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter
    from opentelemetry.exporter.runlake import RunlakeSpanExporter

    t0 = time.perf_counter()
    spanset = common.build_spans(args.spans, days=1, concurrency=args.concurrency, seed=11, text_model=args.text)
    batches = spanset.batches(BATCH)
    n = len(spanset.spans)
    common.freeze_prebuilt()
    sessions_per_batch = median([len({s.attributes.get("session.id") for s in b}) for b in batches])
    print(
        f"\n[export] built {n:,} spans ({spanset.runs:,} runs, {spanset.sessions:,} sessions, {spanset.users} users; "
        f"text model: {args.text}) "
        f"with the real SDK in {time.perf_counter() - t0:.1f}s; {len(batches)} batches of {BATCH}, "
        f"median {sessions_per_batch:.0f} sessions per batch",
        flush=True,
    )
    facts_text = sum(
        len(s.attributes.get("input.value") or "") + len(s.attributes.get("output.value") or "") for s in spanset.spans
    )
    work = scratch / "export"
    work.mkdir(parents=True, exist_ok=True)
    facts: dict[str, Any] = {"raw_text_bytes": facts_text}
    counter = iter(range(10**9))

    def json_case(measure: bool = True) -> float:
        folder = work / f"json-{next(counter)}"
        folder.mkdir()
        path = folder / "spans.jsonl"
        sw = common.Stopwatch()
        exporter = FileSpanExporter(path)
        for batch in batches:
            exporter.export(batch)
        exporter.shutdown()
        elapsed = sw.stop()
        if measure:
            facts["json_bytes"] = path.stat().st_size
        shutil.rmtree(folder)
        return elapsed

    def runlake_case(measure: bool = True) -> float:
        root = work / f"lake-{next(counter)}"
        sw = common.Stopwatch()
        exporter = RunlakeSpanExporter(root)
        for batch in batches:
            exporter.export(batch)
        exporter.shutdown()
        elapsed = sw.stop()
        if measure:
            files = lake_files(root)
            facts["runlake_files"] = {t: len(v) for t, v in files.items()}
            facts["runlake_bytes"] = {t: size_of(v) for t, v in files.items()}
            facts["runlake_sample"] = root
            if "column_bytes" not in facts:
                facts["column_bytes"], facts["footer_bytes"] = column_bytes(files["spans"])
                facts["run_column_bytes"], _ = column_bytes(files["runs"])
            facts["stats"] = exporter.stats
        if not (measure and args.keep):
            shutil.rmtree(root, ignore_errors=True)
        return elapsed

    def map_only_case(measure: bool = True) -> float:
        root = work / f"map-{next(counter)}"
        exporter = RunlakeSpanExporter(root, background_flush=False)
        sw = common.Stopwatch()
        for batch in batches:
            exporter.map_spans(batch)
        return sw.stop()

    def buffer_only_case(measure: bool = True) -> float:
        root = work / f"buf-{next(counter)}"
        exporter = RunlakeSpanExporter(root, background_flush=False)
        sw = common.Stopwatch()
        for batch in batches:
            exporter.export(batch)
        elapsed = sw.stop()
        exporter._writer._buffers.clear()  # drop, do not write (measures map + buffer only)
        return elapsed

    def one_file_case(measure: bool = True) -> float:
        """The real exporter with min_session_rows (as `runlake serve` ingests): small sessions share a file."""
        root = work / f"onefile-{next(counter)}"
        exporter = RunlakeSpanExporter(root, background_flush=False, min_session_rows=1000)
        sw = common.Stopwatch()
        for batch in batches:
            exporter.export(batch)
        exporter.shutdown()
        elapsed = sw.stop()
        if measure:
            facts["onefile_bytes"] = size_of([*root.rglob("*.parquet")])
            if "onefile_columns" not in facts:
                facts["onefile_columns"] = column_bytes([*root.rglob("*.parquet")])[0]
        shutil.rmtree(root, ignore_errors=True)
        return elapsed

    cases = {
        JSON_CASE: json_case,
        "runlake RunlakeSpanExporter, export+shutdown": runlake_case,
        "  component: runlake map_spans only (no I/O)": map_only_case,
        "  component: runlake export, no flush (map+buffer)": buffer_only_case,
        "runlake, min_session_rows=1000 (serve ingest)": one_file_case,
    }
    mem = {}
    if not args.no_memory:
        print("[export] memory pass (one forked child per case)", flush=True)
        for name, fn in cases.items():
            mem[name] = memory(args, lambda fn=fn: fn(False))
    print(f"[export] timing: {args.repeats} interleaved repeats of {len(cases)} cases", flush=True)
    timed = interleaved(cases, args.repeats, "export")
    times = {name: [t[0] for t in ts] for name, ts in timed.items()}  # wall
    cpu = {name: [t[1] for t in ts] for name, ts in timed.items()}  # process CPU time
    rows = []
    for name, ts in times.items():
        med = median(ts)
        rows.append(
            [
                name,
                f"{n / med:,.0f}",
                f"{common.paired_ratio(times[JSON_CASE], ts):.2f}×",
                f"{common.paired_ratio(cpu[JSON_CASE], cpu[name]):.2f}×",
                fmt_bytes(mem.get(name)),
                f"{fmt_time(med)} (min {fmt_time(min(ts))}, max {fmt_time(max(ts))})",
            ]
        )
    files = facts["runlake_files"]
    per_file = (
        median(cpu["runlake RunlakeSpanExporter, export+shutdown"])
        - median(cpu["  component: runlake export, no flush (map+buffer)"])
    ) / max(1, sum(files.values()))
    print_table(
        f"1. Export throughput: {n:,} spans in batches of {BATCH}, ~{sessions_per_batch:.0f} sessions per batch "
        f"(median of {args.repeats})",
        ["case", "spans/s", "vs JSON", "vs JSON (CPU)", "peak mem", "wall time"],
        rows,
        [
            "runlake time includes writing every file (shutdown() inside the timed region); JSON includes close().",
            f"runlake wrote {files['spans']:,} span files + {files['runs']} run files "
            f"({n / max(1, files['spans']):.0f} spans per file); "
            f"≈ {per_file * 1e3:.2f} ms CPU per file written (full − map+buffer, ÷ files).",
            "peak mem = resident-memory high-water growth of one pass in a forked child (VmHWM after clear_refs).",
            "vs JSON = median over rounds of the per-round ratio of wall times (cases timed side by side);",
            "vs JSON (CPU) = the same on process CPU time, which a loaded machine disturbs less; spans/s = median.",
        ],
    )
    result = {
        "n": n,
        "times": {k: median(v) for k, v in times.items()},
        "facts": facts,
        "spanset": spanset,
        "batches": batches,
        "mem": mem,
    }
    return result


def column_bytes(files: list[Path]) -> tuple[Counter, int]:
    """Compressed bytes per column over the span files, and the total footer (metadata) bytes."""
    import pyarrow.parquet as pq

    totals: Counter = Counter()
    footer = 0
    for f in files:
        meta = pq.ParquetFile(f).metadata
        footer += meta.serialized_size
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                totals[col.path_in_schema] += col.total_compressed_size
    return totals, footer


def section_bytes(args: argparse.Namespace, export: dict[str, Any]) -> None:
    n = export["n"]
    f = export["facts"]
    json_b = f["json_bytes"]
    rl = f["runlake_bytes"]
    rl_total = rl["spans"] + rl["runs"]
    one = f.get("onefile_bytes")
    rows = [
        ["otlp-json FileSpanExporter (baseline)", f"{json_b / n:,.0f}", "1.00×", fmt_bytes(json_b)],
        [
            "runlake lake (spans/ + runs/ .parquet)",
            f"{rl_total / n:,.0f}",
            f"{json_b / rl_total:.2f}×",
            fmt_bytes(rl_total),
        ],
        ["  of which spans/", f"{rl['spans'] / n:,.0f}", f"{json_b / rl['spans']:.2f}×", fmt_bytes(rl["spans"])],
        ["  of which runs/ (index)", f"{rl['runs'] / n:,.0f}", "", fmt_bytes(rl["runs"])],
    ]
    if one:
        rows.append(
            ["runlake, min_session_rows=1000 (serve ingest)", f"{one / n:,.0f}", f"{json_b / one:.2f}×", fmt_bytes(one)]
        )
    colb: Counter = f["column_bytes"]
    data_total = sum(colb.values())
    footer = f["footer_bytes"]
    span_files = f["runlake_files"]["spans"]
    top = ", ".join(f"{c} {v / n:.0f}" for c, v in colb.most_common(6))
    runb: Counter = f["run_column_bytes"]
    raw_text = f["raw_text_bytes"]
    packed_text = colb["input"] + colb["output"] + runb["input"] + runb["output"]
    rest_json, rest_rl = json_b - raw_text, rl_total - packed_text
    one_file_note = []
    if one and f.get("onefile_columns"):
        one_text = f["onefile_columns"]["input"] + f["onefile_columns"]["output"]
        one_file_note.append(
            f"min_session_rows=1000: text {one_text / n:.0f} B/span ({raw_text / max(1, one_text):.1f}×), "
            "everything else "
            f"{(one - one_text) / n:.0f} B/span ({rest_json / max(1, one - one_text):.1f}×)."
        )
    print_table(
        f"2. Bytes per span on disk ({n:,} spans; higher ratio = fewer bytes than JSON)",
        ["case", "bytes/span", "× fewer", "total"],
        rows,
        [
            f"span files: column data {data_total / n:.0f} B/span + footers {footer / n:.0f} B/span "
            f"({footer / max(1, span_files) / 1024:.1f} KB per file × {span_files:,} files)"
            ", the rest is page/dictionary headers.",
            f"largest columns (B/span, compressed): {top}",
            f"input/output text: {raw_text / n:.0f} B/span raw in JSON → {packed_text / n:.0f} B/span in runlake "
            f"({raw_text / max(1, packed_text):.1f}×, incl. the run text copied into runs/); everything else: "
            f"{rest_json / n:.0f} → {rest_rl / n:.0f} B/span ({rest_json / max(1, rest_rl):.1f}×).",
        ]
        + one_file_note,
    )


# ==== 3: instrumentation cost ===============================================================================
def section_instrumentation(args: argparse.Namespace, scratch: Path) -> None:
    from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import runlake

    provider = common.provider()
    tracer = provider.get_tracer("bench-bare")
    rng = random.Random(5)
    texts = common.TextMaker(rng)
    pool = [texts.text(rng.randint(150, 500)) for _ in range(64)]
    sessions = [f"sess-i-{i:04d}" for i in range(256)]
    users = [f"user-{i:04d}" for i in range(300)]
    meta = {"channel": "web", "version": "1.4.2"}
    n_runs = args.runs

    def runlake_workload(runs: int) -> None:
        for i in range(runs):
            t = pool[i % 64]
            with runlake.run("agent-support", sessions[i % 256], user_id=users[i % 300], input=t, metadata=meta) as r:
                with runlake.turn(f"turn-{i}"):
                    with runlake.node("retrieve_docs", type="retrieval", input=pool[(i + 1) % 64]) as n:
                        n.set_output(pool[(i + 2) % 64])
                    for k in (0, 1):
                        with runlake.node("chat_completion", type="llm", input=pool[(i + 3 + k) % 64]) as n:
                            n.set_model("gpt-4o-mini", "openai")
                            n.set_usage(1200 + k, 300 + k)
                            n.set_cost(0.36)
                            n.set_output(pool[(i + 5 + k) % 64])
                        if k == 0:
                            with runlake.node("web_search", type="tool", input={"query": t[:60], "k": 5}) as n:
                                n.set_output(pool[(i + 7) % 64])
                r.set_output(pool[(i + 8) % 64])

    # the same spans, same names and final attribute dicts, made with the bare OTel API
    collector = InMemorySpanExporter()
    common.SWITCH.target = SimpleSpanProcessor(collector)
    runlake_workload(1)
    common.SWITCH.target = None
    captured = list(collector.get_finished_spans())
    spans_per_run = len(captured)
    by_name: dict[str, list[dict]] = {}
    for s in sorted(captured, key=lambda s: s.start_time):
        by_name.setdefault(s.name, []).append(dict(s.attributes))
    template = {name: attrs for name, attrs in by_name.items()}
    run_name = next(name for name in template if name.startswith("invoke_agent"))
    turn_name = next(name for name in template if name.startswith("turn"))

    # one prebuilt variant per session, so the real pipeline writes the same partitions for both workloads;
    # the run id is left out: RunStartProcessor sets it at start, as it does for any instrumentation
    def variant(attrs: dict, j: int) -> dict:
        out = {k: v for k, v in attrs.items() if k != "runlake.run.id"}
        for key in ("gen_ai.conversation.id", "session.id"):
            if key in out:
                out[key] = sessions[j]
        if "user.id" in out:
            out["user.id"] = users[j % 300]
        return out

    shapes = [
        (run_name, template[run_name][0]),
        (turn_name, template[turn_name][0]),
        ("retrieval retrieve_docs", template["retrieval retrieve_docs"][0]),
        ("chat chat_completion", template["chat chat_completion"][0]),
        ("execute_tool web_search", template["execute_tool web_search"][0]),
        ("chat chat_completion", template["chat chat_completion"][1]),
    ]
    variants = [[variant(attrs, j) for _, attrs in shapes] for j in range(len(sessions))]
    names = [name for name, _ in shapes]

    def bare_workload(runs: int) -> None:
        start_span = tracer.start_as_current_span
        run_n, turn_n, retr_n, llm_n, tool_n, _ = names
        for i in range(runs):
            run_a, turn_a, retr_a, llm0_a, tool_a, llm1_a = variants[i % len(variants)]
            with start_span(run_n, attributes=run_a):
                with start_span(turn_n, attributes=turn_a):
                    with start_span(retr_n, attributes=retr_a):
                        pass
                    with start_span(llm_n, attributes=llm0_a):
                        pass
                    with start_span(tool_n, attributes=tool_a):
                        pass
                    with start_span(llm_n, attributes=llm1_a):
                        pass

    counter = iter(range(10**9))

    def with_drop(workload: Any) -> Any:
        def case(runs: int = n_runs) -> float:
            common.SWITCH.target = common.DropProcessor()
            sw = common.Stopwatch()
            workload(runs)
            elapsed = sw.stop()
            common.SWITCH.target = None
            return elapsed

        return case

    def with_pipeline(workload: Any) -> Any:
        def case(runs: int = n_runs) -> float:
            root = scratch / f"instr-{next(counter)}"
            sw = common.Stopwatch()
            exporter = RunlakeSpanExporter(root)
            bsp = BatchSpanProcessor(exporter, max_queue_size=runs * spans_per_run + 1024, max_export_batch_size=BATCH)
            multi = common.MultiProcessor([RunStartProcessor(exporter), bsp])
            common.SWITCH.target = multi
            workload(runs)
            common.SWITCH.target = None
            multi.shutdown()  # BatchSpanProcessor: export what is queued, then exporter.shutdown() writes all
            elapsed = sw.stop()
            shutil.rmtree(root, ignore_errors=True)
            return elapsed

        return case

    cases = {
        BARE_CASE: with_drop(bare_workload),
        "runlake.run/turn/node, drop processor": with_drop(runlake_workload),
        "bare OTel, real pipeline (RunStart+Batch→runlake, incl. write)": with_pipeline(bare_workload),
        "runlake.run/turn/node, real pipeline (incl. write)": with_pipeline(runlake_workload),
    }
    for case in cases.values():  # warm up (imports, caches)
        case(20)
    mem = {}
    if not args.no_memory:
        print("[instrumentation] memory pass", flush=True)
        for name, fn in cases.items():
            mem[name] = memory(args, fn)
    print(f"[instrumentation] timing: {args.repeats} interleaved repeats", flush=True)
    timed = interleaved(cases, args.repeats, "instrumentation")
    times = {name: [t[0] for t in ts] for name, ts in timed.items()}
    cpu = {name: [t[1] for t in ts] for name, ts in timed.items()}
    n_spans = n_runs * spans_per_run
    rows = []
    for name, ts in times.items():
        per = median(ts) / n_spans
        rows.append(
            [
                name,
                f"{per * 1e6:.1f} µs",
                f"{common.paired_ratio(ts, times[BARE_CASE]):.2f}×",
                f"{common.paired_ratio(cpu[name], cpu[BARE_CASE]):.2f}×",
                fmt_bytes(mem.get(name)),
                f"{n_spans / median(ts):,.0f}",
            ]
        )
    print_table(
        f"3. Instrumentation cost per span: {n_runs:,} runs × {spans_per_run} spans (run, turn, 4 nodes), "
        f"same attributes (median of {args.repeats}; lower ratio = cheaper)",
        ["case", "per span", "vs bare", "vs bare (CPU)", "peak mem", "spans/s"],
        rows,
        [
            "bare OTel passes the final attribute dicts runlake's spans end up with (prebuilt, incl. output, usage);",
            "runlake builds them per call (set_output / set_usage / set_model / set_cost) and reads a shifted clock.",
            "real pipeline = RunStartProcessor + BatchSpanProcessor(RunlakeSpanExporter) as configure() sets up;",
            "its time includes the final export and writing every file (processor shutdown inside the timed region).",
            "vs bare = median of per-round ratios (wall; CPU = process CPU time); per span = median wall time.",
        ],
    )


# ==== 4: queries ============================================================================================
# ---- 4: the answers the query cases must give ------------------------------------------------------------------
US = 5e-7  # seconds: half a microsecond each side, so times agree to the µs


class Truth:
    """The answers, from the generated spans themselves (what was made, before any export): every timed call of
    section 4 is checked against them. Compact (long texts as digests), so the spans can be dropped."""

    def __init__(self, spans: list[Any]) -> None:
        from opentelemetry.trace import StatusCode

        text = common.comparable_text
        self.runs: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, list[tuple]] = {}  # run id -> (start, span id, node id, type, failed, in, out, tokens)
        self.spans_per_trace: Counter = Counter()
        self.node_ms: dict[str, list[float]] = {}  # node type -> durations
        for s in spans:
            a = s.attributes or {}
            trace_id = f"{s.context.trace_id:032x}"
            self.spans_per_trace[trace_id] += 1
            failed = s.status.status_code is StatusCode.ERROR
            kind = a.get("runlake.span.type")
            if kind == "run":
                self.runs[a["runlake.run.id"]] = {
                    "run_id": a["runlake.run.id"],
                    "session": a.get("session.id"),
                    "user": a.get("user.id"),
                    "agent": a.get("gen_ai.agent.name"),
                    "trace_id": trace_id,
                    "start": s.start_time,
                    "end": s.end_time,
                    "failed": failed,
                    "input": text(a.get("input.value")),
                    "output": text(a.get("output.value")),
                }
            elif kind == "node":
                tokens = (a.get("gen_ai.usage.input_tokens") or 0) + (a.get("gen_ai.usage.output_tokens") or 0)
                node = (
                    s.start_time,
                    f"{s.context.span_id:016x}",
                    a.get("runlake.node.id"),
                    a.get("runlake.node.type"),
                    failed,
                    text(a.get("input.value")),
                    text(a.get("output.value")),
                    tokens,
                )
                self.nodes.setdefault(a.get("runlake.run.id"), []).append(node)
                self.node_ms.setdefault(node[3], []).append((s.end_time - s.start_time) / 1e6)
        for nodes in self.nodes.values():
            nodes.sort()  # as get_logs orders them: start, then span id
        for durations in self.node_ms.values():
            durations.sort()

    def _run_facts(self, runs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "run_id": [r["run_id"] for r in runs],
            "failed": [r["failed"] for r in runs],
            "input": [r["input"] for r in runs],
            "output": [r["output"] for r in runs],
            "started_at": [Approx(r["start"] / 1e9, US) for r in runs],
            "ended_at": [Approx(r["end"] / 1e9, US) for r in runs],
        }

    def get_runs(self, session: str) -> dict[str, Any]:
        """The session's runs, newest first."""
        runs = sorted((r for r in self.runs.values() if r["session"] == session), key=lambda r: -r["start"])
        return self._run_facts(runs)

    def get_logs(self, run_id: str) -> dict[str, Any]:
        """The run's nodes, oldest first, and its totals."""
        nodes = self.nodes.get(run_id, [])
        return {
            "node_id": [n[2] for n in nodes],
            "type": [n[3] for n in nodes],
            "failed": [n[4] for n in nodes],
            "input": [n[5] for n in nodes],
            "output": [n[6] for n in nodes],
            "total_nodes": len(nodes),
            "failed_nodes": sum(n[4] for n in nodes),
            "tokens": sum(n[7] for n in nodes),
        }

    def get_traces(self, user: str, limit: int) -> dict[str, Any]:
        """The user's newest ``limit`` traces (one run each here), with their span counts."""
        runs = sorted((r for r in self.runs.values() if r["user"] == user), key=lambda r: -r["start"])[:limit]
        return {
            "trace_id": [r["trace_id"] for r in runs],
            "run_id": [r["run_id"] for r in runs],
            "failed": [r["failed"] for r in runs],
            "spans": [self.spans_per_trace[r["trace_id"]] for r in runs],
        }

    def get_history(self, agent: str, skip: int, limit: int) -> dict[str, Any]:
        """A page of the agent's runs, newest first (ties by run id), with node counts and tokens."""
        runs = sorted((r for r in self.runs.values() if r["agent"] == agent), key=lambda r: (-r["start"], r["run_id"]))
        page = runs[skip : skip + limit]
        nodes = [self.nodes.get(r["run_id"], []) for r in page]
        return {
            "run_id": [r["run_id"] for r in page],
            "failed": [r["failed"] for r in page],
            "input": [r["input"] for r in page],
            "output": [r["output"] for r in page],
            "node_count": [len(n) for n in nodes],
            "tokens": [sum(x[7] for x in n) for n in nodes],
        }

    def p95(self) -> dict[str, Any]:
        """p95 node duration (interpolated) and node count per node type."""
        return {
            "node_type": sorted(self.node_ms),
            "p95_ms": {t: Approx(percentile(v, 0.95), 1e-6) for t, v in sorted(self.node_ms.items())},
            "n": {t: len(v) for t, v in sorted(self.node_ms.items())},
        }


# what each case returned, as the same facts (runlake: the API's shapes; SQLite: raw rows)
def runlake_runs_facts(result: list[dict]) -> dict[str, Any]:
    return {
        "run_id": [r["run_id"] for r in result],
        "failed": [r["status"] == "error" for r in result],
        "input": [common.comparable_text(r["input_content"]) for r in result],
        "output": [common.comparable_text(r["output_content"]) for r in result],
        "started_at": [Approx(r["started_at"], US) for r in result],
        "ended_at": [Approx(r["ended_at"], US) for r in result],
    }


def sqlite_runs_facts(rows: list[dict]) -> dict[str, Any]:
    return {
        "run_id": [r["run_id"] for r in rows],
        "failed": [r["status_code"] == "ERROR" for r in rows],
        "input": [common.comparable_text(r["input"]) for r in rows],
        "output": [common.comparable_text(r["output"]) for r in rows],
        "started_at": [Approx(r["start_time_unix_nano"] / 1e9, US) for r in rows],
        "ended_at": [Approx(r["end_time_unix_nano"] / 1e9, US) for r in rows],
    }


def runlake_logs_facts(result: dict) -> dict[str, Any]:
    nodes, summary = result["nodes"], result["summary"]
    return {
        "node_id": [n["id"] for n in nodes],
        "type": [n["type"] for n in nodes],
        "failed": [n["status"] == "failed" for n in nodes],
        "input": [common.comparable_text(n["input"]) for n in nodes],
        "output": [common.comparable_text(n["output"]) for n in nodes],
        "total_nodes": summary["total_nodes"],
        "failed_nodes": summary["failed_nodes"],
        "tokens": summary["tokens_used"],
    }


def sqlite_logs_facts(result: list) -> dict[str, Any]:
    runs, nodes = result
    run = runs[0] if runs else {}
    return {
        "node_id": [n["node_id"] for n in nodes],
        "type": [n["node_type"] for n in nodes],
        "failed": [n["status_code"] == "ERROR" for n in nodes],
        "input": [common.comparable_text(n["input"]) for n in nodes],
        "output": [common.comparable_text(n["output"]) for n in nodes],
        "total_nodes": run.get("node_count"),  # the runs table's totals
        "failed_nodes": run.get("failed_nodes"),
        "tokens": (run.get("input_tokens") or 0) + (run.get("output_tokens") or 0),
    }


def runlake_traces_facts(result: list[dict]) -> dict[str, Any]:
    return {
        "trace_id": [t["trace_id"] for t in result],
        "run_id": [t["run_id"] for t in result],
        "failed": [t["status"] == "error" for t in result],
        "spans": [len(t["spans"]) for t in result],
    }


def sqlite_traces_facts(result: list) -> dict[str, Any]:
    runs, spans = result
    per_trace = Counter(s["trace_id"] for s in spans)
    return {
        "trace_id": [r["trace_id"] for r in runs],
        "run_id": [r["run_id"] for r in runs],
        "failed": [r["status_code"] == "ERROR" for r in runs],
        "spans": [per_trace[r["trace_id"]] for r in runs],
    }


def runlake_history_facts(result: list[dict]) -> dict[str, Any]:
    return {
        "run_id": [h["run_id"] for h in result],
        "failed": [h["status"] == "failed" for h in result],
        "input": [common.comparable_text(h["input"]) for h in result],
        "output": [common.comparable_text(h["output"]) for h in result],
        "node_count": [h["node_count"] for h in result],
        "tokens": [h["tokens_used"] for h in result],
    }


def sqlite_history_facts(rows: list[dict]) -> dict[str, Any]:
    return {
        "run_id": [r["run_id"] for r in rows],
        "failed": [r["status_code"] == "ERROR" for r in rows],
        "input": [common.comparable_text(r["input"]) for r in rows],
        "output": [common.comparable_text(r["output"]) for r in rows],
        "node_count": [r["node_count"] for r in rows],
        "tokens": [(r["input_tokens"] or 0) + (r["output_tokens"] or 0) for r in rows],
    }


def p95_facts(rows: list) -> dict[str, Any]:
    """Rows ``(node_type, p95_ms, n)``, as tuples (DuckDB) or dicts (SQLite)."""
    rows = sorted((r["node_type"], r["p95_ms"], r["n"]) if isinstance(r, dict) else tuple(r) for r in rows)
    return {
        "node_type": [r[0] for r in rows],
        "p95_ms": {r[0]: Approx(r[1], 1e-6) for r in rows},
        "n": {r[0]: r[2] for r in rows},
    }


def wrong(expected: dict[str, Any], got: dict[str, Any]) -> str | None:
    """None when ``got`` gives the expected answer in every field; else where it first differs."""
    if expected.keys() != got.keys():
        return f"fields {sorted(got)} instead of {sorted(expected)}"
    for name in differing_fields(expected, got):
        return name + first_difference(expected[name], got[name], reference="expected")
    return None


def lake_counts(files: dict[str, list[Path]]) -> dict[str, int]:
    """Rows and distinct ids in the lake's files, by a plain DuckDB scan (no runlake code)."""
    import duckdb

    con = duckdb.connect(config={"threads": 2})
    spans = [str(p) for p in files["spans"]]
    runs = [str(p) for p in files["runs"]]
    s = con.execute(
        "SELECT count(*), count(DISTINCT span_id), count(DISTINCT session_id) FROM read_parquet(?, union_by_name=true)",
        [spans],
    ).fetchone()
    r = con.execute(
        "SELECT count(*), count(DISTINCT run_id) FROM read_parquet(?, union_by_name=true)", [runs]
    ).fetchone()
    con.close()
    return {"span rows": s[0], "span ids": s[1], "sessions": s[2], "run rows": r[0], "run ids": r[1]}


def section_queries(args: argparse.Namespace, scratch: Path) -> int:
    """Times the query cases; returns how many answers (timed calls and lake counts) were wrong."""
    from opentelemetry.exporter.runlake import RunlakeSpanExporter

    t0 = time.perf_counter()
    spanset = common.build_spans(args.lake_spans, days=30, concurrency=args.concurrency, seed=23)
    built = time.perf_counter() - t0
    truth = Truth(spanset.spans)  # the answers, from the spans as made
    common.freeze_prebuilt()
    root = scratch / "lake"
    t0 = time.perf_counter()
    exporter = RunlakeSpanExporter(root)
    for batch in spanset.batches(BATCH):
        exporter.export(batch)
    exporter.shutdown()
    exported = time.perf_counter() - t0
    files = lake_files(root)
    n = len(spanset.spans)
    days = len({p.parent.parent.name for p in files["spans"]})
    generated = {
        "span rows": n,
        "span ids": n,
        "sessions": spanset.sessions,
        "run rows": spanset.runs,
        "run ids": spanset.runs,
    }
    found = lake_counts(files)
    count_errors = [f"{k} {found[k]:,} (generated {v:,})" for k, v in generated.items() if found[k] != v]
    print(
        f"\n[queries] lake: {n:,} spans, {spanset.runs:,} runs, {spanset.sessions:,} sessions, {spanset.users} users, "
        f"{days} days; built in {built:.1f}s, exported through RunlakeSpanExporter in {exported:.1f}s "
        f"({n / exported:,.0f} spans/s); files: {len(files['spans']):,} spans + {len(files['runs'])} runs; "
        f"{fmt_bytes(size_of(files['spans']) + size_of(files['runs']))}",
        flush=True,
    )
    print(
        "[queries] lake counts (plain DuckDB scan) against the generated spans: "
        + ("WRONG: " + "; ".join(count_errors) if count_errors else ", ".join(f"{k} {v:,}" for k, v in found.items()))
        + (" as generated" if not count_errors else ""),
        flush=True,
    )
    del spanset
    gc.collect()

    t0 = time.perf_counter()
    sqlite_path = scratch / "baseline.sqlite"
    build_sqlite(files, sqlite_path)
    print(
        f"[queries] baseline: the same rows in SQLite with indexes (CodexOS-style), "
        f"{fmt_bytes(sqlite_path.stat().st_size)}, built in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    keys = pick_keys(sqlite_path)
    q = queries(root, sqlite_path, keys, truth)

    mem: dict[str, int | None] = {}
    if not args.no_memory:
        print("[queries] memory pass (one forked child per case)", flush=True)
        for name, (_, setup, fn, _) in q.items():
            mem[name] = memory(args, lambda h, fn=fn: fn(h, 0), lambda setup=setup: _ready(setup()))

    # timing: one shared HistoryDB and one SQLite connection, like a server; keys rotate over the repeats
    handles: dict[Any, Any] = {}
    state = {"round": 0}
    verdicts: dict[str, list[str | None]] = {name: [] for name in q}  # per timed call: None = the right answer

    def make_case(name: str, setup: Any, fn: Any, check: Any) -> Any:
        def case() -> float:
            h = handles.get(setup)
            if h is None:
                h = handles[setup] = setup()
                fn(h, 0)  # warm-up: first connection use, extension/metadata loading
            start = time.perf_counter()
            result = fn(h, state["round"])
            elapsed = time.perf_counter() - start
            verdicts[name].append(check(result, state["round"]))  # untimed
            return elapsed

        return case

    cases = {name: make_case(name, setup, fn, check) for name, (_, setup, fn, check) in q.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    print(f"[queries] timing: {args.query_repeats} interleaved repeats of {len(cases)} cases", flush=True)
    for r in range(args.query_repeats):
        state["round"] = r
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(cases[name]())
    rows = []
    for name in names:
        med = median(times[name])
        base_key = q[name][0]
        ratio = "1.00× (baseline)" if base_key is None else f"{common.paired_ratio(times[name], times[base_key]):.1f}×"
        sorted_t = sorted(times[name])
        right = sum(v is None for v in verdicts[name])
        answers = f"{right}/{len(verdicts[name])}" + ("" if right == len(verdicts[name]) else " WRONG")
        rows.append(
            [
                name,
                fmt_time(med),
                ratio,
                fmt_bytes(mem.get(name)),
                f"{fmt_time(sorted_t[0])}–{fmt_time(sorted_t[-1])}",
                answers,
            ]
        )
    problems = [f"lake: {e}" for e in count_errors]
    for name in names:
        first = next((v for v in verdicts[name] if v is not None), None)
        if first is not None:
            problems.append(f"{name.strip()}, call {verdicts[name].index(first)}: {first}")
    print_table(
        f"4. Query latency, p50 of {args.query_repeats} (keys rotate per repeat): lake of {n:,} spans in "
        f"{len(files['spans']):,} span files + {len(files['runs'])} run files over {days} days "
        "(lower ratio = faster; ratio vs the same question in SQLite)",
        ["case", "p50", "vs SQLite", "peak mem", "min–max", "right answers"],
        rows,
        [
            "runlake = HistoryDB over the lake (DuckDB, 2 threads, explicit file lists), returning the API's shapes.",
            "sqlite = the same rows in one SQLite file, indexes on session/run/trace/user/agent; raw rows as dicts.",
            "p95 runlake = HistoryDB.sql() (lists the lake, builds both views, then the query);",
            "p95 raw duckdb = the same aggregate on read_parquet(<all span files>) with no views.",
            "vs SQLite = median over rounds of the per-round ratio (same key in the same round).",
            "right answers = timed calls whose answer equals the one computed from the generated spans (before "
            "export): get_runs: run ids newest first, failed, input, output, start/end to the µs; get_logs: node ids, "
            "types, failed, input, output in order, node/failed/token totals; get_traces: trace and run ids in "
            "order, failed, "
            "spans per trace; get_history: the page's run ids, failed, input, output, node count, tokens; p95: node "
            "types, p95 (interpolated, as quantile_cont) and node count per type. SQLite and raw DuckDB rows are "
            "checked on the same facts.",
            *(f"WRONG {p}" for p in problems),
        ],
    )
    total = sum(len(v) for v in verdicts.values())
    if problems:
        print(
            f"\n[queries] answers: {len(problems)} case(s) WRONG (first wrong call of each above); "
            f"{total} calls checked"
        )
    else:
        print(f"\n[queries] answers: all {total} timed calls right; lake counts as generated")
    return sum(v is not None for vs in verdicts.values() for v in vs) + len(count_errors)


def _ready(handle: Any) -> Any:
    """Open the connection behind a query handle (so first-use set-up is not counted as query memory)."""
    reader = getattr(handle, "_reader", None)
    if reader is not None:
        reader._cursor().execute("SELECT 1").fetchall()
    elif hasattr(handle, "execute"):
        handle.execute("SELECT 1").fetchall()
    return handle


def build_sqlite(files: dict[str, list[Path]], path: Path) -> None:
    import pyarrow.dataset as ds

    con = sqlite3.connect(path)
    for table, fl in files.items():
        data = ds.dataset([str(f) for f in fl], format="parquet").to_table()
        cols = data.column_names
        con.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
        columns = [data.column(c).to_pylist() for c in cols]
        con.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(cols))})", zip(*columns))
    con.executescript(
        """
        CREATE INDEX spans_session ON spans(session_id, span_type, start_time_unix_nano);
        CREATE INDEX spans_run ON spans(run_id, span_type, start_time_unix_nano);
        CREATE INDEX spans_trace ON spans(trace_id);
        CREATE INDEX runs_run ON runs(run_id);
        CREATE INDEX runs_user ON runs(user_id, start_time_unix_nano);
        CREATE INDEX runs_agent ON runs(agent_name, start_time_unix_nano);
        CREATE INDEX runs_start ON runs(start_time_unix_nano);
        """
    )
    con.commit()
    con.close()


def pick_keys(sqlite_path: Path) -> dict[str, list[str]]:
    con = sqlite3.connect(sqlite_path)
    rng = random.Random(3)
    sessions = [
        r[0]
        for r in con.execute(
            "SELECT session_id FROM runs GROUP BY session_id HAVING count(*) >= 3 ORDER BY session_id"
        ).fetchall()
    ]
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs WHERE node_count > 0 ORDER BY run_id").fetchall()]
    users = [r[0] for r in con.execute("SELECT user_id FROM runs GROUP BY user_id ORDER BY count(*) DESC LIMIT 10")]
    agents = [r[0] for r in con.execute("SELECT DISTINCT agent_name FROM runs ORDER BY 1")]
    con.close()
    return {
        "session": rng.sample(sessions, 10),
        "run": rng.sample(runs, 10),
        "user": users,
        "agent": agents,
    }


P95_DUCKDB = (
    "SELECT node_type, quantile_cont(duration_ms, 0.95) AS p95_ms, count(*) AS n FROM spans "
    "WHERE span_type = 'node' GROUP BY node_type ORDER BY node_type"
)
P95_RAW = (
    "SELECT node_type, quantile_cont((end_time_unix_nano - start_time_unix_nano) / 1e6, 0.95) AS p95_ms, "
    "count(*) AS n FROM read_parquet(?, union_by_name=true) WHERE span_type = 'node' AND record = 'end' "
    "GROUP BY node_type ORDER BY node_type"
)
# quantile_cont in SQLite: the two rows around position 0.95 × (n − 1), interpolated (it used to take the lower
# row only, which is not the p95 the DuckDB cases compute: the answer checks showed it)
P95_SQLITE = """
WITH d AS (
  SELECT node_type, (end_time_unix_nano - start_time_unix_nano) / 1e6 AS ms,
         row_number() OVER (PARTITION BY node_type ORDER BY end_time_unix_nano - start_time_unix_nano) AS rn,
         count(*) OVER (PARTITION BY node_type) AS n
  FROM spans WHERE span_type = 'node' AND record = 'end'),
p AS (SELECT node_type, ms, n, 0.95 * (n - 1) AS pos FROM d
      WHERE rn - 1 BETWEEN CAST(0.95 * (n - 1) AS INTEGER) AND CAST(0.95 * (n - 1) AS INTEGER) + 1)
SELECT node_type, min(ms) + (max(ms) - min(ms)) * (pos - CAST(pos AS INTEGER)) AS p95_ms, n
FROM p GROUP BY node_type, n, pos ORDER BY node_type
"""


def queries(
    root: Path, sqlite_path: Path, keys: dict[str, list[str]], truth: Truth
) -> dict[str, tuple[str | None, Any, Any, Any]]:
    """name -> (baseline case name or None, set-up returning a handle, fn(handle, round), check(result, round)
    returning None for the right answer, else where it differs from ``truth``)."""
    from opentelemetry.exporter.runlake.layout import SPANS, table_files

    import runlake

    def hdb() -> Any:
        return runlake.HistoryDB(root)

    def sq() -> sqlite3.Connection:
        con = sqlite3.connect(sqlite_path, check_same_thread=False)
        con.row_factory = sqlite3.Row
        return con

    def raw() -> Any:
        import duckdb

        return duckdb.connect(config={"threads": 2})

    def k(name: str, i: int) -> str:
        values = keys[name]
        return values[i % len(values)]

    def sql_rows(con: sqlite3.Connection, sql: str, params: tuple = ()) -> list[dict]:
        return [dict(r) for r in con.execute(sql, params)]

    def sqlite_traces(con: sqlite3.Connection, user: str) -> list[dict]:
        runs = sql_rows(
            con,
            "SELECT * FROM runs WHERE user_id = ? AND parent_span_id IS NULL "
            "ORDER BY start_time_unix_nano DESC LIMIT 10",
            (user,),
        )
        ids = [r["trace_id"] for r in runs]
        spans = sql_rows(
            con,
            f"SELECT * FROM spans WHERE trace_id IN ({','.join('?' * len(ids))}) ORDER BY start_time_unix_nano",
            tuple(ids),
        )
        return [runs, spans]

    def sqlite_logs(con: sqlite3.Connection, run_id: str) -> list[dict]:
        run = sql_rows(con, "SELECT * FROM runs WHERE run_id = ?", (run_id,))
        nodes = sql_rows(
            con,
            "SELECT * FROM spans WHERE run_id = ? AND span_type = 'node' ORDER BY start_time_unix_nano, span_id",
            (run_id,),
        )
        return [run, nodes]

    def raw_p95(con: Any, _: int) -> list:
        files = [str(p) for p in table_files(root, SPANS)]
        return con.execute(P95_RAW, [files]).fetchall()

    def get_runs_sql(c: sqlite3.Connection, i: int) -> list[dict]:
        sql = "SELECT * FROM spans WHERE session_id = ? AND span_type = 'run' ORDER BY start_time_unix_nano DESC"
        return sql_rows(c, sql, (k("session", i),))

    def get_history_sql(c: sqlite3.Connection, i: int) -> list[dict]:
        sql = "SELECT * FROM runs WHERE agent_name = ? ORDER BY start_time_unix_nano DESC, run_id LIMIT 20 OFFSET 20"
        return sql_rows(c, sql, (k("agent", i),))

    s_runs, s_logs, s_traces = (
        "sqlite get_runs(session)",
        "sqlite get_logs(run)",
        "sqlite get_traces(user_id, limit=10)",
    )

    def check(expected: Any, facts: Any) -> Any:
        """check(result, round): the case's answer (as ``facts``) against ``expected(round)`` from the spans."""
        return lambda result, i: wrong(expected(i), facts(result))

    runs_ok = check(lambda i: truth.get_runs(k("session", i)), runlake_runs_facts)
    sqlite_runs_ok = check(lambda i: truth.get_runs(k("session", i)), sqlite_runs_facts)
    logs_ok = check(lambda i: truth.get_logs(k("run", i)), runlake_logs_facts)
    sqlite_logs_ok = check(lambda i: truth.get_logs(k("run", i)), sqlite_logs_facts)
    traces_ok = check(lambda i: truth.get_traces(k("user", i), 10), runlake_traces_facts)
    sqlite_traces_ok = check(lambda i: truth.get_traces(k("user", i), 10), sqlite_traces_facts)
    history_ok = check(lambda i: truth.get_history(k("agent", i), 20, 20), runlake_history_facts)
    sqlite_history_ok = check(lambda i: truth.get_history(k("agent", i), 20, 20), sqlite_history_facts)
    p95_ok = check(lambda i: truth.p95(), p95_facts)
    s_hist, s_p95 = "sqlite get_history(agent, skip=20, limit=20)", "sqlite p95 node duration by node_type"
    return {
        s_runs: (None, sq, get_runs_sql, sqlite_runs_ok),
        "runlake get_runs(session)": (s_runs, hdb, lambda h, i: h.get_runs(k("session", i)), runs_ok),
        s_logs: (None, sq, lambda c, i: sqlite_logs(c, k("run", i)), sqlite_logs_ok),
        "runlake get_logs(run)": (s_logs, hdb, lambda h, i: h.get_logs(k("run", i)), logs_ok),
        s_traces: (None, sq, lambda c, i: sqlite_traces(c, k("user", i)), sqlite_traces_ok),
        "runlake get_traces(user_id, limit=10)": (
            s_traces,
            hdb,
            lambda h, i: h.get_traces(user_id=k("user", i), limit=10),
            traces_ok,
        ),
        s_hist: (None, sq, get_history_sql, sqlite_history_ok),
        "runlake get_history(agent, skip=20, limit=20)": (
            s_hist,
            hdb,
            lambda h, i: h.get_history(k("agent", i), skip=20, limit=20),
            history_ok,
        ),
        s_p95: (None, sq, lambda c, i: sql_rows(c, P95_SQLITE), p95_ok),
        "runlake p95 node duration by node_type": (s_p95, hdb, lambda h, i: h.sql(P95_DUCKDB).fetchall(), p95_ok),
        "  raw duckdb p95 node duration by node_type": (s_p95, raw, raw_p95, p95_ok),
    }


# ==== profile ===============================================================================================
def profile_export(export: dict[str, Any], scratch: Path) -> None:
    """cProfile one runlake export pass, then time write_part's stages without the profiler."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.exporter.runlake.layout import new_part_name, temp_name_for
    from opentelemetry.exporter.runlake.writer import _STATS_COLUMNS, SCHEMAS

    batches = export["batches"]
    n = export["n"]
    root = scratch / "profile-lake"
    prof = cProfile.Profile()
    exporter = RunlakeSpanExporter(root, background_flush=False)
    prof.enable()
    for batch in batches:
        exporter.export(batch)
    exporter.shutdown()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    print("\n== profile: one runlake export pass (cProfile, sorted by own time)")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])
    shutil.rmtree(root, ignore_errors=True)

    # stage timing, no profiler: the same steps as writer.write_part, per partition buffer
    exporter = RunlakeSpanExporter(root, background_flush=False)
    t0 = time.process_time()
    mapped = [exporter.map_spans(b) for b in batches]
    t_map = time.process_time() - t0
    t0 = time.process_time()
    for s, r in mapped:
        exporter._writer.add(s, r)
    t_add = time.process_time() - t0
    buffers = list(exporter._writer._buffers.items())
    exporter._writer._buffers.clear()
    stage = Counter()
    what_if = Counter()
    text_columns = {"input", "output", "attributes", "events", "metadata", "runtime_state", "resource"}
    for (table, folder), buf in buffers:
        schema = SCHEMAS[table]
        a = time.process_time()
        columns = list(zip(*buf.rows))
        arrow = pa.Table.from_arrays([pa.array(c, type=f.type) for c, f in zip(columns, schema)], schema=schema)
        b = time.process_time()
        arrow = arrow.sort_by("start_time_unix_nano")
        c = time.process_time()
        folder.mkdir(parents=True, exist_ok=True)
        d = time.process_time()
        name = new_part_name()
        tmp = folder / temp_name_for(name)
        pq.write_table(
            arrow,
            tmp,
            compression="zstd",
            use_dictionary=True,
            write_statistics=_STATS_COLUMNS[table],
            row_group_size=128 * 1024,
        )
        e = time.process_time()
        os.replace(tmp, folder / name)
        f = time.process_time()
        compression = {c: ("zstd" if c in text_columns else "none") for c in schema.names}
        pq.write_table(
            arrow,
            tmp,
            compression=compression,
            use_dictionary=True,
            write_statistics=_STATS_COLUMNS[table],
            row_group_size=128 * 1024,
        )
        what_if["pq.write_table, zstd on text columns only"] += time.process_time() - f
        what_if["bytes as is"] += (folder / name).stat().st_size
        what_if["bytes zstd on text columns only"] += tmp.stat().st_size
        tmp.unlink()
        stage["rows → Arrow (zip + pa.array ×37)"] += b - a
        stage["Table.sort_by(start_time)"] += c - b
        stage["mkdir(parents=True)"] += d - c
        stage["pq.write_table (zstd, dict, stats)"] += e - d
        stage["os.replace"] += f - e
    total = t_map + t_add + sum(stage.values())
    rows = [
        [
            "map_spans (SpanMapper.map_span + _account)",
            f"{t_map:.3f}",
            f"{t_map / n * 1e6:.1f}",
            f"{t_map / total:.0%}",
        ],
        [
            "LakeWriter.add (partition lookup, buffering)",
            f"{t_add:.3f}",
            f"{t_add / n * 1e6:.1f}",
            f"{t_add / total:.0%}",
        ],
    ]
    for name, v in stage.items():
        rows.append([f"write_part: {name}", f"{v:.3f}", f"{v / n * 1e6:.1f}", f"{v / total:.0%}"])
    wi = what_if["pq.write_table, zstd on text columns only"]
    rows.append(
        [
            "  what-if: pq.write_table, zstd only on text columns",
            f"{wi:.3f}",
            f"{wi / n * 1e6:.1f}",
            f"bytes {what_if['bytes zstd on text columns only'] / max(1, what_if['bytes as is']):.2f}× of as-is",
        ]
    )
    both = fast_mapping_times(batches, scratch)
    if both is not None:
        t_orig, t_fast = both
        rows.append(
            [
                "  map_spans as is (7 passes interleaved with the next row)",
                f"{t_orig:.3f}",
                f"{t_orig / n * 1e6:.1f}",
                "",
            ]
        )
        rows.append(
            ["  what-if: map_spans reading span._attributes._dict", f"{t_fast:.3f}", f"{t_fast / n * 1e6:.1f}", ""]
        )
    print_table(
        f"profile: where runlake's export time goes ({n:,} spans, {len(buffers):,} part files; no profiler)",
        ["stage", "CPU s", "µs/span", "share"],
        rows,
        [
            f"per part file: {sum(stage.values()) / max(1, len(buffers)) * 1e3:.2f} ms; "
            f"{n / max(1, len(buffers)):.0f} spans per file"
        ],
    )
    shutil.rmtree(root, ignore_errors=True)


def fast_mapping_times(batches: list, scratch: Path) -> tuple[float, float] | None:
    """What-if: SpanMapper.map_span iterating the SDK's plain attribute dict instead of the read-only
    mapping proxy over ``BoundedAttributes`` (whose ``items()`` goes through the ``Mapping`` ABC in Python).

    The exporter's own source is compiled with that one line changed. Returns the medians (as is, what-if)
    of 5 interleaved passes over all batches; None if the line is not found or the rows differ.
    """
    import inspect
    import textwrap

    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.exporter.runlake import mapping as mapping_module

    source = textwrap.dedent(inspect.getsource(mapping_module.SpanMapper.map_span))
    line = "attributes = span.attributes or {}"
    if line not in source or "span._attributes" in source:  # map_span already reads the SDK's plain dict
        return None
    patched = source.replace(
        line, "attributes = getattr(getattr(span, '_attributes', None), '_dict', None) or span.attributes or {}"
    )
    namespace = dict(vars(mapping_module))
    exec(compile(patched, "<what-if map_span>", "exec"), namespace)  # noqa: S102 - benchmark what-if only
    original = RunlakeSpanExporter(scratch / "whatif-a", background_flush=False)
    fast = RunlakeSpanExporter(scratch / "whatif-b", background_flush=False)
    fast._mapper.map_span = namespace["map_span"].__get__(fast._mapper)
    if fast.map_spans(batches[0])[0] != original.map_spans(batches[0])[0]:
        print("  !! what-if mapping differs from the original; not reported", file=sys.stderr)
        return None

    def timed(exporter: Any) -> Any:
        def case() -> float:
            sw = common.Stopwatch()
            for batch in batches:
                exporter.map_spans(batch)
            return sw.stop()

        return case

    times = interleaved({"as is": timed(original), "what-if": timed(fast)}, 7)
    return median([t[1] for t in times["as is"]]), median([t[1] for t in times["what-if"]])  # CPU time


def profile_instrumentation() -> None:
    """cProfile runlake.run/turn/node with a dropping processor; time trace.get_tracer() alone."""
    from opentelemetry import trace

    import runlake

    text = "x" * 300
    common.SWITCH.target = common.DropProcessor()

    def workload(runs: int) -> None:
        for i in range(runs):
            with runlake.run("agent-support", f"s{i % 256}", user_id="u", input=text, metadata={"a": 1}) as r:
                with runlake.turn(f"turn-{i}"):
                    for node_type in ("retrieval", "llm", "tool", "llm"):
                        with runlake.node("n", type=node_type, input=text) as n:
                            if node_type == "llm":
                                n.set_model("gpt-4o-mini", "openai")
                                n.set_usage(1200, 300)
                                n.set_cost(0.36)
                            n.set_output(text)
                r.set_output(text)

    workload(50)
    prof = cProfile.Profile()
    prof.enable()
    workload(1500)
    prof.disable()
    common.SWITCH.target = None
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(12)
    print("\n== profile: runlake.run/turn/node with a dropping processor (cProfile, own time)")
    print("\n".join(line for line in out.getvalue().splitlines() if line.strip()))
    calls = 20_000
    start = time.perf_counter()
    for _ in range(calls):
        trace.get_tracer("runlake")
    per = (time.perf_counter() - start) / calls
    print(f"   trace.get_tracer('runlake') alone: {per * 1e6:.1f} µs per call (runlake calls it once per span)")


def profile_queries(root: Path) -> None:
    """Where HistoryDB's time goes for two of the queries (no profiler: plain stopwatches)."""
    from opentelemetry.exporter.runlake.layout import RUNS, SPANS, table_files

    import runlake

    db = runlake.HistoryDB(root)
    db.get_history(limit=1)
    run_id = db.get_history(limit=1)[0]["run_id"]
    parts: dict[str, list[float]] = {}

    def clock(name: str, fn: Any) -> Any:
        start = time.perf_counter()
        out = fn()
        parts.setdefault(name, []).append(time.perf_counter() - start)
        return out

    for _ in range(5):
        clock("get_logs total", lambda: db.get_logs(run_id))
        clock("  find_run (the run's runs/ day folder)", lambda: db.find_run(run_id))
        clock("  list runs/ files", lambda: table_files(root, RUNS))
        clock("p95 via HistoryDB.sql total", lambda: db.sql(P95_DUCKDB).fetchall())
        clock("  list spans/ files", lambda: table_files(root, SPANS))
        clock("  views() (listing + building both views)", lambda: db._reader.views(root))
    rows = [[name, fmt_time(median(ts))] for name, ts in parts.items()]
    print_table("profile: anatomy of two HistoryDB queries (median of 5)", ["step", "time"], rows)


# ==== main ==================================================================================================
def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="runlake-bench-", dir=args.dir))
    m = common.machine()
    print("runlake core benchmarks" + (" (--quick)" if args.quick else ""))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in m.items()))
    print("load average at the start: " + " / ".join(f"{x:.1f}" for x in os.getloadavg()) + " (1/5/15 min)")
    mkdir_ms, create_ms = common.fs_probe(scratch)
    print(
        f"scratch: {scratch} (page-cached writes, no fsync, same file system for every case); "
        f"file system here: mkdir {mkdir_ms:.2f} ms, create+write+rename of a 16 KB file {create_ms:.2f} ms"
    )
    common.provider()
    wrong_answers = 0
    try:
        export = None
        if {"1", "2"} & args.sections:
            export = section_export(args, scratch)
            if "2" in args.sections:
                section_bytes(args, export)
            if args.profile:
                profile_export(export, scratch)
            export.pop("spanset", None)
            export.pop("batches", None)
            gc.collect()
        if "3" in args.sections:
            section_instrumentation(args, scratch)
        if "3" in args.sections and args.profile:
            profile_instrumentation()
        if "4" in args.sections:
            wrong_answers = section_queries(args, scratch)
            if args.profile:
                profile_queries(scratch / "lake")
    finally:
        gc.unfreeze()
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s; load average at the end {load} (1/5/15 min)")
    if wrong_answers:
        print(f"exit 1: {wrong_answers} wrong answer(s) in section 4", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
