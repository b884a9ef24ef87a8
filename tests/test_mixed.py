"""Writers that see many sessions at once (min_session_rows): small sessions share one file per day, answers are
the same as with one file per session, and compaction keeps them shared: one file per closed day, one per folder
today."""

from __future__ import annotations

import threading
from pathlib import Path

import pyarrow.parquet as pq
from conftest import HOSTILE_IDS, lake_files, read_table
from opentelemetry import trace
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import MIXED_FOLDER, is_compacted
from test_compact import noon
from test_exporter import make_spans

import runlake
from runlake.compact import compact
from runlake.replay import forward


def write(lake: Path, spans: list, **options) -> RunlakeSpanExporter:
    exporter = RunlakeSpanExporter(lake, background_flush=False, **options)
    for start in range(0, len(spans), 512):  # as a BatchSpanProcessor sends them
        exporter.export(spans[start : start + 512])
    exporter.shutdown()
    return exporter


def answers(lake: Path, sessions: list[str]) -> dict:
    db = runlake.HistoryDB(lake)
    out = {"history": db.get_history(limit=10_000)}
    for sid in sessions:
        runs = db.get_runs(sid)
        out[sid] = (runs, db.get_traces(session_id=sid), [db.get_logs(r["run_id"]) for r in runs])
    return out


def test_small_sessions_share_a_file_and_read_the_same(tmp_path: Path) -> None:
    spans = make_spans(3000, sessions=150)  # 20 spans per session, batches mixing ~25 sessions
    sessions = [f"s{i}" for i in range(150)]
    one_each, shared = tmp_path / "one-each", tmp_path / "shared"
    write(one_each, spans)
    exporter = write(shared, spans, min_session_rows=100)
    assert len(lake_files(one_each, "spans")) == 150
    shared_files = lake_files(shared, "spans")
    assert len(shared_files) == 1 and shared_files[0].parent.name == MIXED_FOLDER
    assert exporter.stats["files_written"] == 2  # one spans file, one runs file
    assert answers(shared, sessions) == answers(one_each, sessions)


def test_big_sessions_keep_their_own_partition(lake: Path) -> None:
    big = make_spans(400, sessions=1, prefix="big")
    small = make_spans(60, sessions=6, prefix="small")
    write(lake, big + small, min_session_rows=100)
    folders = sorted({f.parent.name for f in lake_files(lake, "spans")})
    assert folders == ["session=big0", MIXED_FOLDER]
    assert len(runlake.HistoryDB(lake).get_runs("big0")) == 100


def test_compaction_keeps_hostile_sessions_in_one_day_file(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    lake = tmp_path / "lake"
    ids = [sid for sid in HOSTILE_IDS if sid]
    provider = TracerProvider()
    exporter = RunlakeSpanExporter(lake, background_flush=False, min_session_rows=4)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for k, sid in enumerate(ids):
        for r in range(3):
            t = noon(2) + (k * 3 + r) * 10**9  # a closed day
            run = tracer.start_span(
                "invoke_agent a", start_time=t, attributes={"gen_ai.operation.name": "invoke_agent", "session.id": sid}
            )
            chat = tracer.start_span(
                "chat",
                context=trace.set_span_in_context(run),
                start_time=t + 1,
                attributes={"gen_ai.operation.name": "chat", "session.id": sid},
            )
            chat.end(end_time=t + 2)
            run.end(end_time=t + 3)
            exporter.force_flush()  # one shared part per run (2 rows < min_session_rows)
    provider.shutdown()
    before = answers(lake, ids)
    assert {f.parent.name for f in lake_files(lake, "spans")} == {MIXED_FOLDER}
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged == 1 and summary.rows == 6 * len(ids) + 3 * len(ids)  # spans rows + runs rows
    [merged] = lake_files(lake, "spans")
    assert merged.parent.name == MIXED_FOLDER and is_compacted(merged), "no session folder made for anyone"
    sessions = pq.read_table(merged, columns=["session_id"]).column("session_id").to_pylist()
    assert sessions == sorted(sessions) and set(sessions) == set(ids)
    assert answers(lake, ids) == before
    assert read_table(lake, "spans").num_rows == 6 * len(ids), "no row lost or doubled"


def test_readers_see_every_row_once_while_shared_parts_merge(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    spans = make_spans(2000, sessions=40)
    for start in range(0, 2000, 250):  # several shared parts (today: an open day)
        write(lake, spans[start : start + 250], min_session_rows=1000)
    assert len(lake_files(lake, "spans")) == 8
    expected = len(runlake.HistoryDB(lake).get_runs("s7"))
    seen: list[int] = []
    stop = threading.Event()

    def read_loop() -> None:
        reader = runlake.HistoryDB(lake)
        while not stop.is_set():
            seen.append(len(reader.get_runs("s7")))

    threads = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in threads:
        t.start()
    compact(lake, older_than_minutes=0)
    compact(lake, older_than_minutes=0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert seen and set(seen) == {expected}
    [merged] = lake_files(lake, "spans")
    assert merged.parent.name == MIXED_FOLDER and is_compacted(merged)


def test_ttl_and_replay_count_shared_rows_exactly(tmp_path: Path) -> None:
    import datetime as dt

    lake = tmp_path / "lake"
    spans = make_spans(300, sessions=10)
    write(lake, spans, min_session_rows=1000)
    copy = RunlakeSpanExporter(tmp_path / "copy")
    sent = forward(lake, copy, session_id="s3")["sent"]
    copy.shutdown()
    assert sent == sum(1 for s in spans if dict(s.attributes)["session.id"] == "s3")
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=60)
    runs = sum(1 for s in spans if s.parent is None)
    assert runlake.HistoryDB(lake).cleanup_expired(now=far) == {"executions_deleted": runs, "nodes_deleted": 300 - runs}
