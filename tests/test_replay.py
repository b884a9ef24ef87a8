"""Replay: stored spans go back out as OTLP with their original ids, times, attributes and events."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import read_table
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from test_forward import Collected, free_port
from test_history import workload

from runlake.replay import forward


def _sorted(table: pa.Table) -> list[dict]:
    rows = table.to_pylist()
    return sorted(rows, key=lambda r: r["span_id"])


def test_replay_into_another_lake_gives_identical_rows(lake: Path, tmp_path: Path) -> None:
    workload(lake)
    copy = tmp_path / "copy"
    target = RunlakeSpanExporter(copy)
    result = forward(lake, target)
    target.shutdown()
    original = _sorted(read_table(lake, "spans").filter(pa.compute.equal(read_table(lake, "spans")["record"], "end")))
    assert (result["sent"], result["failed"], result["in_progress"]) == (len(original), 0, 0)
    assert _sorted(read_table(copy, "spans")) == original


def test_replay_filters_by_session_and_days(lake: Path, tmp_path: Path) -> None:
    workload(lake)
    target = RunlakeSpanExporter(tmp_path / "copy")
    assert forward(lake, target, session_id="s2")["sent"] == 1
    today = dt.datetime.now(dt.timezone.utc).date()
    assert forward(lake, target, since=today + dt.timedelta(days=1))["sent"] == 0
    assert forward(lake, target, until=today - dt.timedelta(days=2))["sent"] == 0
    target.shutdown()


def test_replay_to_a_real_otlp_receiver(lake: Path) -> None:
    import logging

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from oteltest.sink import HttpSink

    workload(lake)
    collected = Collected()
    port = free_port()
    sink = HttpSink(collected, logging.getLogger("oteltest"), port=port)
    sink.start()
    try:
        import socket
        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                continue
        result = forward(lake, OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces"))
    finally:
        sink.stop()
    spans = read_table(lake, "spans")
    ended = [r for r in spans.to_pylist() if r["record"] == "end"]
    assert result["sent"] == len(ended) and result["failed"] == 0
    assert {s["span_id"] for s in collected.spans} == {r["span_id"] for r in ended}
    planner = next(s for s in collected.spans if s["name"] == "chat planner")
    assert planner["attributes"]["gen_ai.usage.input_tokens"] == 1000 and planner["attributes"]["session.id"] == "s1"


def test_round_trip_through_runlake_serve(lake: Path, tmp_path: Path) -> None:
    """lake -> OTLP/HTTP -> runlake serve (a real server subprocess) -> lake gives identical rows."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from server_fixtures import Server

    workload(lake)
    served = tmp_path / "served"
    with Server(served, ["--no-auth", "--no-ttl", "--durability", "sync"]) as server:
        result = forward(lake, OTLPSpanExporter(endpoint=f"{server.base}/v1/traces"))
    spans = read_table(lake, "spans")
    original = _sorted(spans.filter(pa.compute.equal(spans["record"], "end")))
    assert (result["sent"], result["failed"], result["in_progress"]) == (len(original), 0, 0)
    assert _sorted(read_table(served, "spans")) == original


def test_replay_leaves_out_cleared_state_and_counts_spans_in_progress(lake: Path, tmp_path: Path) -> None:
    """State cleared without purging is hidden from readers by a tombstone; a backend without runlake's tombstones
    would show it, so replay leaves it out. A run with no end yet cannot be sent: it is counted."""
    import runlake
    from runlake import SessionStore

    with SessionStore(lake) as store:
        assert store.set_runtime_state("s-state", "native", "turn-1", {"card": "secret plan"})
        assert store.set_runtime_state("s-state", "native", "turn-2", {"step": 2})
        assert store.clear_runtime_state("s-state", "native", purge=False)
        assert store.set_runtime_state("s-state", "native", "turn-3", {"after": "clear"})
        assert store.get_runtime_state("s-state", "native") == {"turn-3": {"after": "clear"}}
    runlake.configure(lake)
    try:
        open_run = runlake.run("slow-agent", "s-live")
        open_run.__enter__()  # started, never ended before the replay
        runlake.force_flush()
        copy = tmp_path / "copy"
        target = RunlakeSpanExporter(copy, keep_runtime_state=True)
        result = forward(lake, target)
        target.shutdown()
        open_run.__exit__(None, None, None)
    finally:
        runlake.shutdown()
    assert (result["in_progress"], result["cleared_states"], result["failed"]) == (1, 2, 0)
    one = RunlakeSpanExporter(tmp_path / "one", keep_runtime_state=True)
    assert forward(lake, one, session_id="s-state")["cleared_states"] == 2  # one session: its own tombstones
    one.shutdown()
    assert "secret plan" not in json.dumps(read_table(copy, "spans").to_pylist())
    with SessionStore(copy) as store:  # the copy reads as the lake does
        assert store.get_runtime_state("s-state", "native") == {"turn-3": {"after": "clear"}}


def test_replay_stops_when_the_endpoint_is_down_and_says_where_to_resume(lake: Path) -> None:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from test_compact import history_lake

    history_lake(lake, days_ago=(4, 3, 2), sessions=2, rounds=1)
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{free_port()}/v1/traces", timeout=1)
    started = time.monotonic()
    result = forward(lake, exporter, batch_size=2)
    exporter.shutdown()
    first_day = (dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=4)).isoformat()
    assert result["stopped"] and result["stopped_at_day"] == first_day
    assert (result["sent"], result["failed"]) == (0, 6)  # three batches of two, then it gave up
    assert time.monotonic() - started < 60


def test_replay_resumes_from_the_first_day_not_sent(lake: Path) -> None:
    """A real OTLP/HTTP receiver that takes the first request and refuses the rest (HTTP 400, not retried): the day
    to resume from is where the refusals began, not the day it gave up on."""
    import http.server
    import threading

    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from test_compact import history_lake

    history_lake(lake, days_ago=(4, 3, 2, 1), sessions=1, rounds=1)
    answers: list[int] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers["Content-Length"]))
            answers.append(200 if not answers else 400)
            self.send_response(answers[-1])
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{server.server_address[1]}/v1/traces", timeout=5)
        result = forward(lake, exporter)
        exporter.shutdown()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    today = dt.datetime.now(dt.timezone.utc).date()
    assert answers == [200, 400, 400, 400]
    assert result["stopped"] and result["stopped_at_day"] == (today - dt.timedelta(days=3)).isoformat()


def _day_of_spans(root: Path, count: int, in_progress: int = 0, same_start: int = 0) -> list[str]:
    """One day (three days ago) of ``count`` finished spans, a ~1 KB prompt each, over a few sessions: every fifth
    a run whose start row was stored too (de-duplication has work); ``in_progress`` more runs never ended;
    ``same_start`` of them started in one nanosecond. Span ids in start-time order."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    day0 = (time.time_ns() // 86_400_000_000_000 - 3) * 86_400_000_000_000 + 3_600_000_000_000
    resource = Resource({"service.name": "svc"})
    exporter = RunlakeSpanExporter(root, background_flush=False)
    spans, ids = [], []
    for i in range(count + in_progress):
        run = i % 5 == 0 or i >= count
        attributes = {"session.id": f"s{i % 7}", "gen_ai.operation.name": "invoke_agent" if run else "chat"}
        if run:
            attributes["gen_ai.agent.name"] = "bot"
        else:
            attributes["gen_ai.prompt"] = f"p{i} " * 200
        start = day0 + (0 if i < same_start else i * 1000)
        parent = None if run else SpanContext(i // 5 + 1, (i // 5) * 5 + 1, False, TraceFlags(1))
        span = ReadableSpan(
            name=f"span {i}",
            context=SpanContext(i // 5 + 1, i + 1, False, TraceFlags(1)),
            parent=parent,
            resource=resource,
            attributes=attributes,
            start_time=start,
            end_time=start + 500,
        )
        if run:
            exporter.record_start(span)
        if i < count:
            spans.append(span)
            ids.append(f"{i + 1:016x}")
    exporter.export(spans)
    exporter.shutdown()
    return ids


class _Watching(SpanExporter):
    """Takes spans and keeps none: checks each batch's size and that start times never go back."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size, self.sent, self.last = batch_size, 0, -1

    def export(self, spans) -> SpanExportResult:  # noqa: ANN001 - the SDK's signature
        assert 0 < len(spans) <= self.batch_size
        assert all(s.start_time >= self.last for s in spans) and spans[0].start_time >= self.last
        self.last = spans[-1].start_time
        self.sent += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_replay_holds_a_batch_of_rows_at_a_time_not_the_day(tmp_path: Path) -> None:
    """A day four times larger costs replay no more Python memory: rows are fetched, turned into dicts and sent a
    batch at a time (measured with tracemalloc, which counts the dicts and strings DuckDB's results become)."""
    import tracemalloc

    small, large = tmp_path / "small", tmp_path / "large"
    _day_of_spans(small, 500)
    _day_of_spans(large, 2000)
    forward(small, _Watching(100), batch_size=100)  # imports and first-use caches out of the way
    peaks = {}
    for lake, count in ((small, 500), (large, 2000)):
        exporter = _Watching(100)
        tracemalloc.start()
        try:
            result = forward(lake, exporter, batch_size=100)
            peaks[count] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert result["sent"] == exporter.sent == count and result["failed"] == 0
    assert peaks[2000] < 1.5 * peaks[500], peaks  # all at once: over 3 times as much (~4 KB a row as dicts)


def test_a_day_read_in_start_time_ranges_is_the_whole_day_once_and_in_order(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``SLICE_ROWS`` a day is sorted one start-time range at a time: every span still comes once (its start row
    and end row fall in one range), in start-time order, spans in progress counted, and rows that share one
    nanosecond beyond a range's size stay together."""
    from opentelemetry.exporter.runlake.layout import day_dirs, day_files

    from runlake import replay
    from runlake.query import LakeReader

    ids = _day_of_spans(lake, 600, in_progress=7, same_start=80)
    monkeypatch.setattr(replay, "SLICE_ROWS", 50)
    folder = next(iter(day_dirs(lake, "spans")))[3]
    cuts = replay._cuts(LakeReader(), lambda: day_files(folder, "spans"), "", [], 50)
    assert len(cuts) >= 600 // 50 - 1 and cuts == sorted(set(cuts))  # read in many ranges
    queries = []
    batches_of = LakeReader.batches
    monkeypatch.setattr(LakeReader, "batches", lambda self, *a, **k: queries.append(a[0]) or batches_of(self, *a, **k))
    batches = list(replay.stored_spans(lake, batch_size=64))
    assert len(queries) == len(cuts) + 1  # one query a range
    rows = [r for b in batches for r in b]
    assert all(len(b) <= 64 for b in batches)
    assert sorted(r["span_id"] for r in rows) == sorted(ids) and len(rows) == len(ids)
    assert [r["start_time_unix_nano"] for r in rows] == sorted(r["start_time_unix_nano"] for r in rows)
    exporter = _Watching(64)
    result = forward(lake, exporter, batch_size=64)
    assert (result["sent"], result["in_progress"], exporter.sent) == (600, 7, 600)
    one = forward(lake, _Watching(64), session_id="s3", batch_size=64)
    assert one["sent"] == sum(1 for i in range(600) if i % 7 == 3)


def test_a_day_in_ranges_reads_each_part_file_once_not_once_a_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each session's part file spans the whole day, so every range could hold rows of every file: the files are
    read in one pass (to a spill per range), not once a range (5-11x slower with 2,000 files). A file written
    meanwhile is still read, its later spans in start-time order."""
    from opentelemetry.exporter.runlake.layout import day_dirs

    from runlake import replay
    from runlake.query import LakeReader

    lake = tmp_path / "lake"
    ids = _day_of_spans(lake, 600, in_progress=7)
    parts = {str(f) for f in lake.rglob("*.parquet")}
    assert len(parts) >= 7  # a file a session (and its start rows), each over the whole day
    monkeypatch.setattr(replay, "SLICE_ROWS", 50)
    handed: list[int] = []  # part files of the lake each range query was handed
    batches_of = LakeReader.batches

    def counting(self: LakeReader, sql: str, lister, *args, **kwargs):  # noqa: ANN001, ANN202
        def listing():  # noqa: ANN202
            listed = lister()
            handed.append(sum(str(f) in parts for f in listed))
            return listed

        return batches_of(self, sql, listing, *args, **kwargs)

    monkeypatch.setattr(LakeReader, "batches", counting)
    later = iter(replay.stored_spans(lake, batch_size=64))
    rows = list(next(later))
    day0 = min(r["start_time_unix_nano"] for r in rows)
    _write_late_span(lake, day0 + 3_600_000_000_000, next(iter(day_dirs(lake, "spans")))[2])
    rows += [r for b in later for r in b]
    assert len(handed) >= 600 // 50 and sum(handed) == 0, handed  # each range: its own rows, no part file
    assert sorted(r["span_id"] for r in rows) == sorted([*ids, "00000000000f4240"])
    assert [r["start_time_unix_nano"] for r in rows] == sorted(r["start_time_unix_nano"] for r in rows)


def _write_late_span(root: Path, start: int, day: str) -> None:
    """A span an hour after the day's others, in a session of its own (a new part file)."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, TraceFlags

    exporter = RunlakeSpanExporter(root, background_flush=False)
    context = SpanContext(999, 1_000_000, False, TraceFlags(1))
    span = ReadableSpan(
        name="late",
        context=context,
        resource=Resource({"service.name": "svc"}),
        attributes={"session.id": "late", "gen_ai.operation.name": "chat"},
        start_time=start,
        end_time=start + 500,
    )
    exporter.export([span])
    exporter.shutdown()
    assert any(day in str(f) for f in (root / "spans").rglob("session=late/*.parquet"))


def test_a_day_that_cannot_be_copied_to_the_temp_folder_is_still_sent_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The ranges' copy needs a temp disk with room for a day; where there is none (full, read-only, or — here — a
    TMPDIR that is not a folder) every range is read from the lake instead: slower, every span still sent once."""
    import logging
    import tempfile

    from runlake import replay

    lake = tmp_path / "lake"
    ids = _day_of_spans(lake, 300, in_progress=3)
    monkeypatch.setattr(replay, "SLICE_ROWS", 40)
    not_a_folder = tmp_path / "tmpdir-is-a-file"
    not_a_folder.write_text("")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    exporter = _Watching(32)
    with caplog.at_level(logging.WARNING, logger="runlake.replay"):
        result = forward(lake, exporter, batch_size=32)
    assert (result["sent"], result["in_progress"], exporter.sent) == (300, 3, 300) and len(ids) == 300
    assert "reading each of its" in caplog.text and "TMPDIR" in caplog.text
