"""Writers that see many sessions at once (min_session_rows): small sessions share one file per day, answers are
the same as with one file per session, and compaction moves them into their own partitions."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import HOSTILE_IDS, lake_files, read_table
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import MIXED_FOLDER
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


def test_compaction_moves_shared_rows_into_session_partitions(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    ids = [sid for sid in HOSTILE_IDS if sid]
    exporter = RunlakeSpanExporter(lake, background_flush=False, min_session_rows=1000)
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for sid in ids:
        for _ in range(3):
            with tracer.start_as_current_span(
                "invoke_agent a", attributes={"gen_ai.operation.name": "invoke_agent", "session.id": sid}
            ):
                with tracer.start_as_current_span(
                    "chat", attributes={"gen_ai.operation.name": "chat", "session.id": sid}
                ):
                    pass
    provider.shutdown()
    before = answers(lake, ids)
    assert {f.parent.name for f in lake_files(lake, "spans")} == {MIXED_FOLDER}
    summary = compact(lake, older_than_minutes=0)
    assert summary.rows == 6 * len(ids)
    names = {f.parent.name for f in lake_files(lake, "spans")}
    assert MIXED_FOLDER not in names and len(names) == len(ids), "each session in its own partition now"
    assert answers(lake, ids) == before
    assert read_table(lake, "spans").num_rows == 6 * len(ids), "no row lost or doubled"


def test_readers_see_every_row_once_while_shared_parts_drain(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    spans = make_spans(2000, sessions=40)
    for start in range(0, 2000, 250):  # several shared parts
        write(lake, spans[start : start + 250], min_session_rows=1000)
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
