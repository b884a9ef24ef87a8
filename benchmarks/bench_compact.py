"""Compaction memory and time by merge step size: a closed day merged in one step against several smaller ones.

    python benchmarks/bench_compact.py [--lake PATH] [--steps-mb 4,16] [--repeats 3] [--spans N]

``runlake.compact`` merges a closed day into one file in steps of consecutive sessions holding at most
``max_step_bytes`` of rows each (counted decoded, from the parts' footers). The baseline is a step larger than any
day (the whole day read at once, as compaction worked before steps). Each case compacts its own hard-linked copy
of the same uncompacted lake: time in-process (cases interleaved, median), peak memory in a forked child
(``common.peak_memory_in_child``).
Without ``--lake`` a lake is generated through the real exporter (chat-history text, 2 days, ``min_session_rows``
as ``runlake serve`` ingests). A kept B30 lake works too: ``--lake <workdir>/runlake-b30-*/lake-before-compaction``.
Nothing here is a test.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import fmt_bytes, fmt_time, median, peak_memory_in_child, print_table  # noqa: E402

WHOLE_DAY = 1 << 40  # a step no day reaches: the baseline


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lake", type=Path, help="an uncompacted lake to copy (default: generate one)")
    p.add_argument("--spans", type=int, default=300_000, help="spans of the generated lake (default 300,000)")
    p.add_argument("--days", type=int, default=2, help="days the generated sessions start over (default 2)")
    p.add_argument("--steps-mb", default="16,4,1", help="step sizes to compare, MiB of rows decoded (default 16,4,1)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per case (default 3)")
    p.add_argument("--dir", type=Path, help="scratch folder (default: a new temp folder)")
    return p.parse_args()


def generate(root: Path, spans: int, days: int) -> None:
    from opentelemetry.exporter.runlake import RunlakeSpanExporter

    spanset = common.build_spans(spans, days=days, concurrency=256, seed=41, text_model="chat")
    exporter = RunlakeSpanExporter(root, background_flush=False, min_session_rows=256)
    for i, batch in enumerate(spanset.batches(512)):
        exporter.export(batch)
        if i % 20 == 19:  # a flush every ~10k spans, as a busy ingest server's 5 s flushes
            exporter.force_flush()
    exporter.shutdown()
    print(
        f"[compact] generated {len(spanset.spans):,} spans in {spanset.sessions:,} sessions over {days} days",
        flush=True,
    )


def lake_stats(root: Path) -> tuple[int, int]:
    files = [p for p in root.rglob("*.parquet") if not p.name.startswith(".")]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    args = parse_args()
    from runlake.compact import compact

    print("machine: " + ", ".join(f"{k} {v}" for k, v in common.machine().items()))
    scratch = args.dir or Path(tempfile.mkdtemp(prefix="runlake-bench-compact-"))
    scratch.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        source = args.lake
        if source is None:
            source = scratch / "source"
            generate(source, args.spans, args.days)
        files, size = lake_stats(source)
        print(f"[compact] source lake {source}: {files:,} part files, {fmt_bytes(size)}", flush=True)
        steps = {"whole day in one step (baseline)": WHOLE_DAY}
        for mb in (float(s) for s in args.steps_mb.split(",") if s.strip()):
            steps[f"steps of ≤ {mb:g} MiB of rows (decoded)"] = int(mb * (1 << 20))

        def copy() -> Path:
            target = Path(tempfile.mkdtemp(prefix="copy-", dir=scratch)) / "lake"  # unique in forked children too
            common.hardlink_copy(source, target)
            return target

        results: dict[str, dict[str, Any]] = {name: {"times": []} for name in steps}
        print(f"[compact] memory pass: one forked child per case ({len(steps)} cases)", flush=True)
        for name, step in steps.items():
            results[name]["peak"] = peak_memory_in_child(
                lambda lake, step=step: compact(lake, older_than_minutes=0, max_step_bytes=step), copy
            )
        print(f"[compact] timing: {args.repeats} interleaved repeats", flush=True)
        names = list(steps)
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                lake = copy()
                t0 = time.perf_counter()
                summary = compact(lake, older_than_minutes=0, max_step_bytes=steps[name])
                results[name]["times"].append(time.perf_counter() - t0)
                results[name]["summary"] = summary
                results[name]["after"] = lake_stats(lake)
                shutil.rmtree(lake.parent, ignore_errors=True)
        base = results[names[0]]
        rows = []
        for name in names:
            res = results[name]
            s = res["summary"]
            t = median(res["times"])
            peak = res["peak"]
            rows.append(
                [
                    name,
                    fmt_time(t),
                    f"{t / median(base['times']):.2f}×",
                    fmt_bytes(peak),
                    f"{peak / base['peak']:.2f}×" if peak and base["peak"] else "n/a",
                    f"{s.merge_steps:,}",
                    f"{s.days_merged}",
                    f"{res['after'][0]:,}",
                    fmt_bytes(res["after"][1]),
                    f"{s.rows:,}",
                ]
            )
        print_table(
            f"Compaction of {files:,} part files ({fmt_bytes(size)}) by merge step size (median of {args.repeats})",
            [
                "case",
                "time",
                "vs baseline",
                "peak mem",
                "vs baseline",
                "steps",
                "days",
                "files after",
                "bytes after",
                "rows",
            ],
            rows,
            [
                "steps = merge steps of closed days (spans and runs/); each closed day still becomes one file.",
                "peak mem = resident-memory high-water growth of one compaction in a forked child (VmHWM).",
                "today's partitions (an open day) are compacted per folder in every case alike.",
            ],
        )
    finally:
        if args.dir is None:
            shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntotal wall time {time.perf_counter() - started:.0f}s")


if __name__ == "__main__":
    main()
