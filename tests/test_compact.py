"""Compaction: fewer files, same answers, safe beside readers and writers, old schemas still read."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import lake_files, read_table
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import data_files
from opentelemetry.exporter.runlake.mapping import SPAN_COLUMNS
from test_exporter import make_spans

import runlake
from runlake.compact import compact


def small_parts_lake(lake: Path, spans: int = 400, sessions: int = 4, batches: int = 8) -> list:
    made = make_spans(spans, sessions=sessions)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    step = len(made) // batches
    for i in range(0, len(made), step):
        exporter.export(made[i : i + step])
        exporter.force_flush()  # one small part per session per batch: the worst case
    exporter.shutdown()
    return made


def test_compaction_merges_parts_and_keeps_every_answer(lake: Path) -> None:
    small_parts_lake(lake)
    db = runlake.HistoryDB(lake)
    before = {s: db.get_runs(f"s{s}") for s in range(4)}
    history_before = db.get_history(limit=1000)
    files_before = len(lake_files(lake, "spans"))
    summary = compact(lake, older_than_minutes=0)
    assert summary.files_before == files_before and summary.files_after == 4
    assert summary.rows == 400 and summary.bytes_after < summary.bytes_before
    assert all(len(data_files(f.parent)) == 1 for f in lake_files(lake, "spans"))
    fresh = runlake.HistoryDB(lake)
    assert {s: fresh.get_runs(f"s{s}") for s in range(4)} == before
    assert fresh.get_history(limit=1000) == history_before
    assert read_table(lake, "spans").num_rows == 400


def test_quiet_rule_leaves_recent_partitions_alone(lake: Path) -> None:
    small_parts_lake(lake, spans=100, sessions=1, batches=4)
    summary = compact(lake, older_than_minutes=60)
    assert summary.partitions == 0 and summary.files_after == 0


def test_readers_and_writers_go_on_during_compaction(lake: Path) -> None:
    small_parts_lake(lake, spans=800, sessions=2, batches=16)
    db = runlake.HistoryDB(lake)
    expected = len(db.get_runs("s0"))
    seen: list[int] = []
    stop = threading.Event()

    def read_loop() -> None:
        reader = runlake.HistoryDB(lake)
        while not stop.is_set():
            seen.append(len(reader.get_runs("s0")))

    extra = make_spans(300, sessions=1, prefix="late")
    writer = RunlakeSpanExporter(lake, background_flush=False, max_part_rows=20)
    readers = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in readers:
        t.start()
    writing = threading.Thread(target=lambda: [writer.export(extra[i : i + 30]) for i in range(0, 300, 30)])
    writing.start()
    for _ in range(3):
        compact(lake, older_than_minutes=0)
    writing.join(timeout=60)
    writer.shutdown()
    compact(lake, older_than_minutes=0)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert seen and set(seen) == {expected}, "no reader ever saw a run twice or missed one"
    assert read_table(lake, "spans").num_rows == 800 + 300, "nothing written during compaction was lost"
    assert len(runlake.HistoryDB(lake).get_runs("late0")) == len([s for s in extra if s.parent is None])


def test_parts_of_an_older_schema_still_read_and_compact_to_the_current_one(lake: Path) -> None:
    small_parts_lake(lake, spans=40, sessions=1, batches=2)
    folder = data_files(next(p.parent for p in lake_files(lake, "spans")))[0].parent
    old = pa.table(
        {
            "record": ["end"],
            "span_type": ["run"],
            "session_id": ["s0"],
            "run_id": ["00000000000000aa"],
            "trace_id": ["0" * 31 + "1"],
            "span_id": ["00000000000000aa"],
            "name": ["invoke_agent legacy"],
            "start_time_unix_nano": [1],
            "end_time_unix_nano": [2],
            "status_code": ["OK"],
            "agent_name": ["legacy"],
            "legacy_column": ["dropped by compaction"],
        }
    )
    pq.write_table(old, folder / "part-0000000000000000-old.parquet")
    db = runlake.HistoryDB(lake)
    assert "legacy" in [r["metadata"]["agent_name"] for r in db.get_runs("s0")]
    compact(lake, older_than_minutes=0)
    [merged] = data_files(folder)
    assert tuple(pq.read_schema(merged).names) == SPAN_COLUMNS
    assert "legacy" in [r["metadata"]["agent_name"] for r in runlake.HistoryDB(lake).get_runs("s0")]
