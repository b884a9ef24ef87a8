"""Compaction: a closed day becomes one file sorted by session (a big one merged in steps), open days are compacted
per folder, the same answers before and after, one compactor at a time, safe beside readers and writers, old schemas
read."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import lake_files, read_table
from opentelemetry import trace
from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor
from opentelemetry.exporter.runlake.layout import (
    MIXED_FOLDER,
    RUNS,
    SPANS,
    data_files,
    day_dirs,
    is_compacted,
    partition_dir,
    session_dirs,
)
from opentelemetry.exporter.runlake.mapping import SPAN_COLUMNS
from opentelemetry.exporter.runlake.writer import SCHEMAS, conform, write_part
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_exporter import make_spans
from typer.testing import CliRunner

import runlake
from runlake.cli import app
from runlake.cli_ops import DEFAULT_MAX_STEP_MB
from runlake.compact import BUSY_MESSAGE, DAY_ROW_GROUP_ROWS, DEFAULT_MAX_STEP_BYTES, LOCK_FILE, compact

DAY_NS = 86_400 * 10**9


def small_parts_lake(lake: Path, spans: int = 400, sessions: int = 4, batches: int = 8) -> list:
    """Today's spans (an open day), one small part per session per batch: the worst case."""
    made = make_spans(spans, sessions=sessions)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    step = len(made) // batches
    for i in range(0, len(made), step):
        exporter.export(made[i : i + step])
        exporter.force_flush()
    exporter.shutdown()
    return made


def noon(days_ago: int) -> int:
    """Noon (UTC) of a day ``days_ago`` days before today, in nanoseconds: everything of a test run fits its day."""
    today = dt.datetime.now(dt.timezone.utc).date()
    day = dt.datetime.combine(today - dt.timedelta(days=days_ago), dt.time(12), dt.timezone.utc)
    return int(day.timestamp()) * 10**9


def history_lake(
    lake: Path, days_ago: tuple[int, ...] = (3, 2), sessions: int = 6, rounds: int = 3, prefix: str = "s"
) -> int:
    """Runs on past days through the real exporter with ``RunStartProcessor`` and ``min_session_rows``, so a day
    has session folders and ``session=~mixed`` parts, several parts per folder, start rows in other parts (and
    folders) than their end rows, and one run never ended. Returns the number of distinct span ids."""
    exporter = RunlakeSpanExporter(lake, background_flush=False, min_session_rows=8)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    spans = 0
    for ago in days_ago:
        for r in range(rounds):
            for s in range(sessions):
                session = f"{prefix}{s}"
                t = noon(ago) + (r * sessions + s) * 10**9
                attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": session, "gen_ai.agent.name": "a"}
                run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
                spans += 1
                if (r + s) % 2 == 0:
                    exporter.force_flush()  # the run's start row in a part (and ~mixed) of its own
                for j in range(1 + 3 * (s % 4)):  # sessions of 2 to 11 rows per flush: some share ~mixed
                    node = tracer.start_span(
                        f"chat {j}",
                        context=trace.set_span_in_context(run),
                        start_time=t + j + 1,
                        attributes={"gen_ai.operation.name": "chat", "session.id": session, "input.value": "x" * 50},
                    )
                    node.end(end_time=t + j + 2)
                    spans += 1
                if not (ago == days_ago[0] and r == 0 and s == 1):  # one run stays in progress: a start row only
                    run.end(end_time=t + 100)
            exporter.force_flush()
    provider.shutdown()
    return spans


def answers(lake: Path, sessions: list[str]) -> dict:
    db = runlake.HistoryDB(lake)
    out: dict = {"history": db.get_history(limit=10_000), "traces": db.get_traces(limit=10_000)}
    for sid in sessions:
        runs = db.get_runs(sid)
        out[sid] = (runs, db.get_traces(session_id=sid), [db.get_logs(r["run_id"]) for r in runs])
    return out


def span_days(lake: Path) -> list[Path]:
    return [folder for _, _, _, folder in day_dirs(lake, SPANS)]


def assert_one_row_per_span(path: Path) -> pa.Table:
    table = pq.read_table(path)
    assert pc.count_distinct(table.column("span_id")).as_py() == table.num_rows, path
    return table


def test_closed_day_becomes_one_sorted_file_with_the_same_answers(lake: Path) -> None:
    distinct = history_lake(lake)
    sessions = [f"s{i}" for i in range(6)]
    days = span_days(lake)
    assert len(days) == 2 and all(len(session_dirs(d)) > 1 and data_files(d / MIXED_FOLDER) for d in days)
    before = answers(lake, sessions)
    files_before = len(lake_files(lake, SPANS)) + len(lake_files(lake, RUNS))
    runs = pc.count_distinct(read_table(lake, RUNS).column("span_id")).as_py()
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged == 2 and summary.days_in_steps == 0 and not summary.busy
    assert summary.files_before == files_before and summary.files_after == 4  # a spans and a runs file per day
    assert summary.rows == distinct + runs and summary.bytes_after < summary.bytes_before
    for day in days:
        assert not session_dirs(day), "the emptied session folders are gone"
        [merged] = data_files(day / MIXED_FOLDER)
        assert is_compacted(merged) and [p.name for p in day.rglob("*") if p.is_file()] == [merged.name]
        table = assert_one_row_per_span(merged)
        keys = list(zip(table.column("session_id").to_pylist(), table.column("start_time_unix_nano").to_pylist()))
        assert keys == sorted(keys), "sorted by session, then start"
    for _, _, _, folder in day_dirs(lake, RUNS):
        [runs_file] = data_files(folder)
        assert is_compacted(runs_file)
        assert_one_row_per_span(runs_file)
    spans = read_table(lake, SPANS)
    assert spans.num_rows == distinct and pc.count_distinct(spans.column("span_id")).as_py() == distinct
    in_progress = [r for r in answers(lake, ["s1"])["s1"][0] if r["status"] == "running"]
    assert len(in_progress) == 1, "the run never ended kept its start row"
    assert answers(lake, sessions) == before
    again = compact(lake, older_than_minutes=0)
    assert again.partitions == 0 and again.files_before == 0, "a day already one compact file is left alone"


def test_day_file_has_small_row_groups_a_session_read_can_skip(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    spans = make_spans(3 * DAY_ROW_GROUP_ROWS, sessions=40)
    exporter.export(spans)
    exporter.shutdown()
    today_dir = span_days(lake)[0]
    closed_dir = today_dir.parent / f"day={(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))}"
    for folder in session_dirs(today_dir):  # the same rows on a closed day (files moved as a writer made them)
        (closed_dir / folder.name).mkdir(parents=True)
        for part in data_files(folder):
            part.rename(closed_dir / folder.name / part.name)
    compact(lake, older_than_minutes=0)
    [merged] = data_files(closed_dir / MIXED_FOLDER)
    meta = pq.ParquetFile(merged).metadata
    assert meta.num_rows == len(spans) and meta.num_row_groups == -(-len(spans) // DAY_ROW_GROUP_ROWS)
    column = meta.schema.names.index("session_id")
    ranges = [(g.column(column).statistics.min, g.column(column).statistics.max) for g in map(meta.row_group, range(3))]
    assert all(a[1] <= b[0] for a, b in zip(ranges, ranges[1:])), "session ranges of row groups do not overlap"


def test_day_bigger_than_a_step_is_still_one_file_merged_in_steps(lake: Path) -> None:
    distinct = history_lake(lake)
    sessions = [f"s{i}" for i in range(6)]
    before = answers(lake, sessions)
    days = span_days(lake)
    day_bytes = [sum(p.stat().st_size for p in lake_files(d)) for d in days]
    step = min(day_bytes) // 4  # room for a session or two at a time, not for a day
    summary = compact(lake, older_than_minutes=0, max_step_bytes=step)
    assert summary.days_merged == 2 and summary.days_in_steps >= 2 and summary.merge_steps >= 2 * 4
    for day in days:
        [merged] = lake_files(day)
        assert merged.parent.name == MIXED_FOLDER and is_compacted(merged)
        table = assert_one_row_per_span(merged)  # run start rows superseded in other steps' parts are gone too
        order = list(zip(table.column("session_id").to_pylist(), table.column("start_time_unix_nano").to_pylist()))
        assert order == sorted(order, key=lambda k: (k[0] is None, k[0] or "", k[1])), "one (session, start) order"
    assert pc.count_distinct(read_table(lake, SPANS).column("span_id")).as_py() == distinct
    assert answers(lake, sessions) == before
    one_step = lake.parent / "one-step"
    history_lake(one_step)
    compact(one_step, older_than_minutes=0)  # the default step holds a whole test day
    for day, other in zip(days, span_days(one_step)):
        steps, whole = pq.read_table(lake_files(day)[0]), pq.read_table(lake_files(other)[0])
        ids = ("span_id", "trace_id", "parent_span_id", "run_id")  # ids differ from run to run
        assert steps.drop_columns(list(ids)).equals(whole.drop_columns(list(ids))), "the same rows in the same order"


def test_steps_are_cut_by_decoded_bytes_not_bytes_on_disk(lake: Path, monkeypatch) -> None:
    """Chat text repeats (a system prompt in every call): zstd shrinks it ~100x on disk, but a step holds it decoded.
    A day far smaller on disk than ``max_step_bytes`` but bigger decoded is merged in steps, each holding at most
    about ``max_step_bytes`` of rows: the limit bounds memory, whatever the compression ratio."""
    import runlake.compact as compaction

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    prompt = "You are a helpful assistant. Answer briefly and cite your sources. " * 500  # 34 KB
    for s in range(8):
        for r in range(4):
            t = noon(2) + (s * 4 + r) * 10**9
            attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": f"s{s}", "input.value": prompt}
            run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
            context = trace.set_span_in_context(run)
            for j in range(2):
                attributes = {"gen_ai.operation.name": "chat", "session.id": f"s{s}", "input.value": prompt + str(j)}
                tracer.start_span("chat", context=context, start_time=t + j + 1, attributes=attributes).end(t + j + 2)
            run.end(end_time=t + 10)
        exporter.force_flush()
    provider.shutdown()
    [day] = span_days(lake)
    sessions = [f"s{s}" for s in range(8)]
    before = answers(lake, sessions)
    step = 512 << 10
    on_disk = sum(p.stat().st_size for p in lake_files(day))
    decoded = sum(pq.read_table(p).nbytes for p in lake_files(day))
    assert on_disk < step / 4 and decoded > 4 * step, (on_disk, decoded)  # one step by bytes on disk; 5+ decoded
    held: list[tuple[int, int]] = []
    real = compaction._step_rows

    def measure(table, parts, step_range, superseded):
        rows = real(table, parts, step_range, superseded)
        if table == SPANS and rows is not None:
            held.append((rows.nbytes, pc.count_distinct(rows.column("session_id")).as_py()))
        return rows

    monkeypatch.setattr(compaction, "_step_rows", measure)
    summary = compact(lake, older_than_minutes=0, max_step_bytes=step)
    assert summary.days_merged == 1 and len(held) >= 5, held
    assert all(size <= step * 1.1 or sessions == 1 for size, sessions in held), held
    [merged] = lake_files(day)
    assert assert_one_row_per_span(merged).num_rows == 8 * 4 * 3, "each span once: run start rows gone"
    assert answers(lake, sessions) == before


def test_a_start_row_without_a_session_goes_when_its_end_row_has_one(lake: Path) -> None:
    """A run's start row is recorded when the span starts; an instrumentation may name the session only later. The
    step with the end row and the step with the start row differ: the first pass must still drop the start row."""
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    run = provider.get_tracer("t").start_span(
        "invoke_agent a", start_time=noon(2), attributes={"gen_ai.operation.name": "invoke_agent"}
    )
    run.set_attribute("session.id", "late")
    run.end(end_time=noon(2) + 10)
    provider.shutdown()
    spans = read_table(lake, SPANS)
    assert spans.num_rows == 2 and set(spans.column("session_id").to_pylist()) == {None, "late"}
    summary = compact(lake, older_than_minutes=0, max_step_bytes=1)  # every session a step of its own
    assert summary.days_in_steps == 2, "the spans day and the runs/ day, each in two steps"
    for table in (SPANS, RUNS):
        merged = read_table(lake, table)
        assert merged.num_rows == 1 and merged.column("record").to_pylist() == ["end"], table
    assert runlake.HistoryDB(lake).get_runs("late")[0]["status"] == "completed"


def resent(span: ReadableSpan, **attributes: str) -> ReadableSpan:
    """``span`` as a client sends it again, with some attributes changed."""
    return ReadableSpan(
        name=span.name,
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes={**span.attributes, **attributes},
        kind=span.kind,
        status=span.status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


@pytest.mark.parametrize(("max_step_bytes", "survey_rows"), [(DEFAULT_MAX_STEP_BYTES, None), (1, None), (1, 2)])
def test_a_span_stored_under_two_sessions_is_one_row_after_compaction_as_before(
    lake: Path, max_step_bytes: int, survey_rows: int | None, monkeypatch
) -> None:
    """A client that sends a span again under another session (or whose run's session changed between its start and
    its end, the end typed as a node) leaves the span's rows in two session folders. Lake-wide readers show it
    once, the row their rule picks (the ``end`` row, of the first session in order); compaction must keep that row
    alone, whether the sessions fall in one merge step or in two, and drop the other sessions' rows (a stale
    ``start`` row would show the run as running for ever). ``survey_rows``: the keys go to a DuckDB table (as a day
    of many spans does) a few rows at a time."""
    if survey_rows:
        monkeypatch.setattr(runlake.compact, "_SURVEY_BATCH_ROWS", survey_rows)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("t")
    t = noon(2)
    attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": "m", "gen_ai.agent.name": "a"}
    run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
    node = tracer.start_span("chat", context=trace.set_span_in_context(run), start_time=t + 1)
    node.set_attributes({"gen_ai.operation.name": "chat", "session.id": "m"})
    node.end(end_time=t + 2)
    run.end(end_time=t + 3)
    attributes = {**attributes, "session.id": "z"}
    changed = tracer.start_span("invoke_agent a", start_time=t + 10, attributes=attributes)  # a start row in z
    changed.set_attributes({"session.id": "y", "gen_ai.operation.name": "chat"})  # ends as a node of session y
    changed.end(end_time=t + 11)
    [node_span, run_span, _] = finished.get_finished_spans()
    exporter.export([resent(run_span, **{"session.id": other}) for other in ("a", "zz")])  # "a": first in order
    exporter.export([resent(node_span, **{"session.id": "a"})])
    provider.shutdown()
    query = "SELECT span_id, session_id, end_time_unix_nano IS NULL AS running{} FROM {} ORDER BY ALL"
    queries = {SPANS: query.format(", span_type", SPANS), RUNS: query.format("", RUNS)}
    before = {table: runlake.HistoryDB(lake).sql_rows(sql)[1] for table, sql in queries.items()}
    assert sorted(row[1:] for row in before[SPANS]) == [("a", False, "node"), ("a", False, "run"), ("y", False, "node")]
    assert sorted(row[1:] for row in before[RUNS]) == [("a", False), ("z", True)]
    traces = runlake.HistoryDB(lake).get_traces(session_id="a")
    assert [len(t["spans"]) for t in traces] == [2]

    compact(lake, older_than_minutes=0, max_step_bytes=max_step_bytes)
    for table in (SPANS, RUNS):
        [merged] = lake_files(lake, table)
        assert is_compacted(merged)
        assert_one_row_per_span(merged)
    db = runlake.HistoryDB(lake)
    assert {table: db.sql_rows(sql)[1] for table, sql in queries.items()} == before
    assert db.get_traces(session_id="a") == traces


def expiring_lake(lake: Path | str, late_part: bool, days_ago: int = 2) -> None:
    """Two quiet parts of session A on a day ``days_ago`` that TTL expires (``ttl_days`` 1); with ``late_part``, a
    part of session B too recent for the day to be quiet, so compaction merges A's folder on its own (a local lake:
    the parts' times are set back)."""
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for i, session in enumerate(["A", "A", "B"]):
        if session == "B":
            old = time.time() - 3600
            for path in Path(lake).rglob("*.parquet") if isinstance(lake, Path) else ():
                os.utime(path, (old, old))
            if not late_part:
                break
        attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": session, "runlake.ttl_days": 1}
        t = noon(days_ago) + i
        run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
        node = tracer.start_span("chat", context=trace.set_span_in_context(run), start_time=t + 1)
        node.set_attributes({"gen_ai.operation.name": "chat", "session.id": session, "runlake.ttl_days": 1})
        node.end(end_time=t + 2)
        run.end(end_time=t + 3)
        exporter.force_flush()
    exporter.shutdown()


@pytest.mark.parametrize(
    "path", ["folder merge", "day merge: first step", "day merge: written", "runs/ day merge: before writing"]
)
def test_a_day_ttl_expires_while_compaction_merges_it_does_not_come_back(lake: Path, path: str, monkeypatch) -> None:
    """`runlake serve` runs TTL and compaction side by side: TTL can expire a day between compaction's reading of
    its parts and its writing the merged file. Compaction must not make the day folder again with the merged
    rows: they would be visible again, and the next TTL would count them a second time. Forced at each point where
    compaction holds rows it read: the merge of one session folder (the day not quiet), a closed day's first merge
    step, its merged file written but the parts not yet removed, and a ``runs/`` day's merge (into its own folder)
    before it writes."""
    expiring_lake(lake, late_part=path == "folder merge")
    db = runlake.HistoryDB(lake)
    assert db.sql_rows("SELECT count(*) FROM spans")[1] == [(6 if path == "folder merge" else 4,)]
    expired: list[dict] = []

    def ttl_first(real):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not expired and (path != "runs/ day merge: before writing" or args[0] == RUNS):
                expired.append(runlake.HistoryDB(lake).cleanup_expired())
            return real(*args, **kwargs)

        return wrapper

    hook = {
        "folder merge": "write_part",
        "day merge: first step": "_step_rows",
        "day merge: written": "_replace",
        "runs/ day merge: before writing": "_write_steps",
    }
    with monkeypatch.context() as hooked:
        hooked.setattr(runlake.compact, hook[path], ttl_first(getattr(runlake.compact, hook[path])))
        compact(lake, older_than_minutes=10)
    assert expired and expired[0]["executions_deleted"] == (3 if path == "folder merge" else 2)
    days = [p for p in lake.rglob("day=*") if ".expired-" not in str(p)]
    assert not days, "no day folder made again (runs/ days are merged in place)"
    assert runlake.HistoryDB(lake).sql_rows("SELECT count(*) FROM spans")[1] == [(0,)]
    assert runlake.HistoryDB(lake).cleanup_expired() == {"executions_deleted": 0, "nodes_deleted": 0}
    assert not [p for p in lake.rglob("*.parquet") if ".expired-" not in str(p)], "nothing of the day came back"


@pytest.mark.parametrize("survey_rows", [None, 2])
def test_a_failing_survey_leaves_the_day_as_it_was_and_says_so(
    lake: Path, survey_rows: int | None, monkeypatch, caplog
) -> None:
    """The first pass's DuckDB work can fail (its temp disk full, say): the day stays as it was, an error names it,
    and compaction goes on to the other days rather than raising."""
    history_lake(lake, days_ago=(3,))
    files = lake_files(lake, SPANS) + lake_files(lake, RUNS)
    before = answers(lake, [f"s{i}" for i in range(6)])
    monkeypatch.setattr(runlake.compact, "_SPLIT_SPANS", "SELECT no_such_column FROM span_rows")
    if survey_rows:
        monkeypatch.setattr(runlake.compact, "_SURVEY_BATCH_ROWS", survey_rows)
        monkeypatch.setattr(runlake.compact, "_SURVEY_MEMORY", "no such size")
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged == 0 and lake_files(lake, SPANS) + lake_files(lake, RUNS) == files
    assert "cannot find the spans stored under several sessions" in caplog.text
    assert answers(lake, [f"s{i}" for i in range(6)]) == before


@pytest.mark.parametrize(
    ("days_ago", "max_step_bytes"), [(2, DEFAULT_MAX_STEP_BYTES), (2, 1), (0, DEFAULT_MAX_STEP_BYTES)]
)
def test_spans_that_share_an_id_in_another_trace_all_stay(lake: Path, days_ago: int, max_step_bytes: int) -> None:
    """Readers keep one row per span, a span being its span and trace id, start time and tenant (``runlake.query``).
    A client of the tenant (buggy, or another user) that sends spans with the span ids of someone's spans, in
    another trace, must not make compaction drop that someone's rows: a finished run, its node, and a run still in
    progress (a start row only, which an end row of the same span id elsewhere in the day must not supersede).
    Closed day (merged in one step, and one session per step) and open day (its folders merged in place)."""
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    t = noon(days_ago)
    attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": "victim", "gen_ai.agent.name": "a"}
    tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)  # never ends: in progress
    run = tracer.start_span("invoke_agent a", start_time=t + 10, attributes=attributes)
    context = trace.set_span_in_context(run)
    tracer.start_span("chat", context=context, start_time=t + 11, attributes={"session.id": "victim"}).end(t + 12)
    run.end(end_time=t + 13)
    provider.shutdown()
    day = dt.datetime.fromtimestamp(t / 1e9, dt.timezone.utc).date().isoformat()
    session = "victim" if days_ago == 0 else "other"  # an open day merges a folder in place: forge into that one
    for table, folder in ((SPANS, partition_dir(lake, SPANS, "default", 30, day, session)), (RUNS, None)):
        rows = conform(read_table(lake, table), SCHEMAS[table])
        forged = rows.set_column(rows.schema.get_field_index("trace_id"), "trace_id", pa.array(["f" * 32] * len(rows)))
        forged = forged.set_column(forged.schema.get_field_index("record"), "record", pa.array(["end"] * len(rows)))
        write_part(table, folder or partition_dir(lake, RUNS, "default", 30, day), forged)
    query = "SELECT trace_id, span_id, end_time_unix_nano IS NULL AS running FROM {} ORDER BY ALL"
    before = {table: runlake.HistoryDB(lake).sql_rows(query.format(table))[1] for table in (SPANS, RUNS)}
    for table, spans in ((SPANS, 3), (RUNS, 2)):  # two runs (one in progress) and a node, in each trace
        traces = [row[0] for row in before[table]]
        assert len(traces) == 2 * spans and traces.count("f" * 32) == spans, "readers show the spans of both traces"
    assert sorted(row[2] for row in before[RUNS] if row[0] != "f" * 32) == [False, True], "one run in progress"

    summary = compact(lake, older_than_minutes=0, max_step_bytes=max_step_bytes)
    assert summary.partitions and all(is_compacted(f) for f in lake_files(lake, SPANS))
    assert {table: runlake.HistoryDB(lake).sql_rows(query.format(table))[1] for table in (SPANS, RUNS)} == before


def test_open_day_compacts_each_folder_in_place(lake: Path) -> None:
    distinct = history_lake(lake, days_ago=(0,))
    [day] = span_days(lake)
    folders_before = {f.name: len(data_files(f)) for f in session_dirs(day, include_mixed=True)}
    assert folders_before[MIXED_FOLDER] > 1 and len(folders_before) > 2
    sessions = [f"s{i}" for i in range(6)]
    before = answers(lake, sessions)
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged == 0 and summary.days_in_steps == 0
    assert {f.name: len(data_files(f)) for f in session_dirs(day, include_mixed=True)} == dict.fromkeys(
        folders_before, 1
    ), "every folder stays, as one file"
    [shared] = data_files(day / MIXED_FOLDER)
    table = assert_one_row_per_span(shared)
    assert is_compacted(shared) and table.column("session_id").to_pylist() == sorted(
        table.column("session_id").to_pylist()
    )
    assert pc.count_distinct(read_table(lake, SPANS).column("span_id")).as_py() == distinct
    assert answers(lake, sessions) == before
    assert [f for _, _, _, f in day_dirs(lake, RUNS) if len(data_files(f)) > 1], "today's runs index waits"


def test_compaction_merges_parts_and_keeps_every_answer(lake: Path) -> None:
    small_parts_lake(lake)
    db = runlake.HistoryDB(lake)
    before = {s: db.get_runs(f"s{s}") for s in range(4)}
    history_before = db.get_history(limit=1000)
    files_before = len(lake_files(lake, "spans"))
    summary = compact(lake, older_than_minutes=0)
    assert summary.files_before == files_before and summary.files_after == 4
    assert summary.rows == 400 and summary.bytes_after < summary.bytes_before
    assert all(len(data_files(f.parent)) == 1 and is_compacted(f) for f in lake_files(lake, "spans"))
    fresh = runlake.HistoryDB(lake)
    assert {s: fresh.get_runs(f"s{s}") for s in range(4)} == before
    assert fresh.get_history(limit=1000) == history_before
    assert read_table(lake, "spans").num_rows == 400


def test_quiet_rule_leaves_recent_partitions_alone(lake: Path) -> None:
    small_parts_lake(lake, spans=100, sessions=1, batches=4)
    history_lake(lake, days_ago=(2,))  # a closed day, but its parts were just written
    files = lake_files(lake)
    summary = compact(lake, older_than_minutes=60)
    assert summary.partitions == 0 and summary.files_after == 0
    assert [f for f in lake_files(lake) if f.name != LOCK_FILE] == files


def test_a_second_compaction_returns_at_once_while_one_runs(lake: Path) -> None:
    history_lake(lake)
    inside, release = threading.Event(), threading.Event()
    results = []

    def first_progress(done: int, total: int) -> None:
        if done == 1:
            inside.set()
            assert release.wait(timeout=60)

    first = threading.Thread(
        target=lambda: results.append(compact(lake, older_than_minutes=0, progress=first_progress))
    )
    first.start()
    try:
        assert inside.wait(timeout=60)
        files = lake_files(lake)
        second = compact(lake, older_than_minutes=0)
        assert second.busy and second.partitions == 0 and lake_files(lake) == files
        code = CliRunner().invoke(app, ["compact", "--older-than", "0", "--state-url", str(lake)])
        assert code.exit_code == 0 and BUSY_MESSAGE in code.stdout
    finally:
        release.set()
        first.join(timeout=60)
    [done] = results
    assert not done.busy and done.days_merged == 2
    assert not compact(lake, older_than_minutes=0).busy, "the lock goes with the compaction"


def test_compact_command_says_when_the_lock_is_held(lake: Path) -> None:
    history_lake(lake, days_ago=(2,))
    fd = os.open(lake / LOCK_FILE, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as another process's `runlake compact` holds it
        result = CliRunner().invoke(app, ["compact", "--older-than", "0", "--state-url", str(lake), "--json"])
        assert result.exit_code == 0 and json.loads(result.stdout)["busy"] is True
        assert DEFAULT_MAX_STEP_MB << 20 == DEFAULT_MAX_STEP_BYTES, "the command's default is compact()'s"
    finally:
        os.close(fd)
    assert compact(lake, older_than_minutes=0).days_merged == 1


def test_a_read_only_lake_is_a_clear_error_and_changes_nothing(lake: Path, monkeypatch) -> None:
    import errno

    import runlake.compact as compaction

    history_lake(lake, days_ago=(2,))
    before = sorted(str(p) for p in lake.rglob("*"))
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):  # what the kernel says on a read-only mount (needs no root)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(compaction.os, "open", read_only_open)
    with pytest.raises(compaction.CompactError) as raised:
        compact(lake, older_than_minutes=0)
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.EROFS
    assert str(raised.value) == f"cannot compact the lake at {lake}: it is on a read-only file system"
    result = CliRunner().invoke(app, ["compact", "--older-than", "0", "--state-url", str(lake)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output and "read-only file system" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert sorted(str(p) for p in lake.rglob("*")) == before, "nothing changed"


def test_readers_and_writers_go_on_during_compaction(lake: Path) -> None:
    distinct = history_lake(lake, sessions=4, rounds=6)
    sessions = ["s0", "s3"]
    expected = {sid: len(runlake.HistoryDB(lake).get_runs(sid)) for sid in sessions}
    seen: list[dict[str, int]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        reader = runlake.HistoryDB(lake)
        while not stop.is_set():
            try:
                seen.append({sid: len(reader.get_runs(sid)) for sid in sessions})
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)
                return

    today = make_spans(300, sessions=1, prefix="today")
    written: list[int] = []

    def write_loop() -> None:  # today's spans, and late spans (new sessions) into the closed days being merged
        writer = RunlakeSpanExporter(lake, background_flush=False, max_part_rows=20)
        for k in range(10):
            writer.export(today[k * 30 : k * 30 + 30])
            written.append(history_lake(lake, sessions=3, rounds=1, prefix=f"late{k}-"))
        writer.shutdown()
        written.append(len(today))

    threads = [threading.Thread(target=read_loop) for _ in range(2)]
    writing = threading.Thread(target=write_loop)
    for t in [*threads, writing]:
        t.start()
    compactions = 0
    deadline = time.monotonic() + 60
    while (writing.is_alive() or compactions < 5) and time.monotonic() < deadline:
        compact(lake, older_than_minutes=0)
        compactions += 1
    writing.join(timeout=60)
    compact(lake, older_than_minutes=0)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not failures, failures
    assert len(seen) > 5 and all(s == expected for s in seen), "no reader ever saw a run twice or missed one"
    spans = read_table(lake, SPANS)
    total = distinct + sum(written)
    assert pc.count_distinct(spans.column("span_id")).as_py() == total, "nothing written during compaction was lost"
    today_dir = f"day={dt.datetime.now(dt.timezone.utc).date()}"
    closed = [d for d in span_days(lake) if d.name < today_dir]
    assert len(closed) == 2 and all(
        [f.name for f in lake_files(d)] == [data_files(d / MIXED_FOLDER)[0].name] for d in closed
    )
    assert spans.num_rows == total, "closed days one file each, today one file per session: each span once"
    assert len(runlake.HistoryDB(lake).get_runs("today0")) == len([s for s in today if s.parent is None])
    assert len(runlake.HistoryDB(lake).get_runs("late9-2")) == 2


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
    db = runlake.HistoryDB(lake)  # the legacy run is only in spans/ (no runs/ row): read through the session's spans
    assert "legacy" in [t["agent_name"] for t in db.get_traces(session_id="s0")]
    compact(lake, older_than_minutes=0)
    [merged] = data_files(folder)
    assert tuple(pq.read_schema(merged).names) == SPAN_COLUMNS
    assert "legacy" in [t["agent_name"] for t in runlake.HistoryDB(lake).get_traces(session_id="s0")]


def test_steps_cut_the_day_between_sessions_within_the_budget() -> None:
    from runlake.compact import _steps

    weights = {"a": 40.0, "b": 40.0, "c": 30.0, "d": 200.0, "e": 10.0, None: 5.0}
    weight = pa.table({"session_id": list(weights), "bytes": list(weights.values())})  # as _survey: sorted, nulls last
    assert _steps(weight, 100) == [
        ("a", "b", False),
        ("c", "c", False),
        ("d", "d", False),
        ("e", "e", False),
        (None, None, True),
    ]
    assert _steps(weight, 10_000) == [("a", "e", False), (None, None, True)], "a day that fits: one step (and nulls)"
    assert _steps(pa.table({"session_id": ["x"], "bytes": [1.0]}), 1) == [("x", "x", False)]
    for budget in (
        1,
        50,
        80,
        100,
        1000,
    ):  # every session in exactly one step, in order; a step over budget is one session
        steps = _steps(weight, budget)
        named = [s for s in steps if not s[2]]
        covered = [
            k for first, last, _ in named for k in sorted(k for k in weights if k is not None) if first <= k <= last
        ]
        assert covered == sorted(k for k in weights if k is not None)
        for first, last, _ in named:
            inside = [w for k, w in weights.items() if k is not None and first <= k <= last]
            assert sum(inside) <= budget or len(inside) == 1


def test_a_part_that_goes_during_a_merge_leaves_the_day_as_it_was(lake: Path, monkeypatch) -> None:
    import runlake.compact as compaction

    history_lake(lake, days_ago=(2,))
    [day] = span_days(lake)
    before = sorted(p.name for p in lake_files(day))
    removed: list[Path] = []
    real = compaction._step_rows

    def remove_a_part_first(table, parts, step, stale):  # as TTL or a purge would, between the two passes
        if table == SPANS and not removed:
            removed.append(parts[0].path)
            parts[0].path.rename(lake / "elsewhere.parquet")
        return real(table, parts, step, stale)

    monkeypatch.setattr(compaction, "_step_rows", remove_a_part_first)
    summary = compact(lake, older_than_minutes=0)
    assert removed and summary.days_merged == 0
    left = sorted(p.name for p in lake_files(day))
    assert left == sorted(n for n in before if n != removed[0].name), "every other part stays; no merged file"
    assert not [p for p in day.rglob("*") if p.name.startswith(".")], "no temp file left behind"


def test_a_part_written_as_compaction_removes_its_emptied_folder_stays(lake: Path, monkeypatch) -> None:
    """A late span of a closed day lands in its session folder just as compaction removes that folder, emptied by
    the merge: ``rmdir`` fails on a folder that is no longer empty, so the part stays (on S3: test_s3.py)."""
    made = make_spans(16, sessions=1)
    late, made = made[12:], made[:12]
    for span in [*made, *late]:
        span._start_time -= 2 * DAY_NS
        span._end_time -= 2 * DAY_NS
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    for half in (made[:6], made[6:]):
        exporter.export(half)
        exporter.force_flush()
    real_rmdir = os.rmdir
    written: list[str] = []

    def rmdir(path: str | os.PathLike[str]) -> None:
        if not written and Path(path).name == "session=s0":
            exporter.export(late)
            assert exporter.force_flush()
            written.append(str(path))
        real_rmdir(path)

    monkeypatch.setattr(os, "rmdir", rmdir)
    assert compact(lake, older_than_minutes=0).days_merged == 1
    monkeypatch.setattr(os, "rmdir", real_rmdir)
    exporter.shutdown()
    assert written and data_files(Path(written[0])), "the late part is still in its folder"
    ids = set(read_table(lake, SPANS).column("span_id").to_pylist())
    assert ids == {f"{span.context.span_id:016x}" for span in [*made, *late]}


def plant_part(folder: Path, source: Path, name: str, change: dict[str, pa.Array] | None = None) -> Path:
    """A copy of ``source``'s rows as new spans (fresh span ids) in ``folder``, with ``change``'s columns replaced."""
    table = pq.read_table(source)
    ids = ["f" * 8 + s[8:] for s in table.column("span_id").to_pylist()]
    table = table.set_column(table.schema.get_field_index("span_id"), "span_id", pa.array(ids))
    for column, values in (change or {}).items():
        table = table.set_column(table.schema.get_field_index(column), column, values)
    path = folder / name
    pq.write_table(table, path, compression="none", use_dictionary=False)
    return path


def damage_column(path: Path, column: str) -> None:
    """Zero the data pages of one column: the footer and the other columns stay readable."""
    metadata = pq.read_metadata(path)
    index = metadata.schema.names.index(column)
    data = bytearray(path.read_bytes())
    for group in range(metadata.num_row_groups):
        chunk = metadata.row_group(group).column(index)
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    path.write_bytes(bytes(data))


def test_a_part_compaction_cannot_convert_is_left_alone_and_the_rest_of_the_day_merged(lake: Path, caplog) -> None:
    history_lake(lake, days_ago=(2,))
    [day] = span_days(lake)
    good = sorted(p for p in lake_files(day) if p.suffix == ".parquet")
    expected = read_table(lake, "spans")
    ids = set(expected.column("span_id").to_pylist())
    folder = good[0].parent
    rows = pq.read_metadata(good[0]).num_rows
    # tokens stored as text that is no number (another engine wrote it): only the full read of a step fails on it
    odd = plant_part(folder, good[0], "part-0000000000000005-odd.parquet", {"input_tokens": pa.array(["n/a"] * rows)})
    # a damaged data page in a wide column: the first pass (narrow columns) reads it, a step cannot
    broken = plant_part(folder, good[0], "part-0000000000000006-broken.parquet")
    damage_column(broken, "input")

    with caplog.at_level("WARNING", logger="runlake.compact"):
        summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged == 1 and summary.skipped_files == 2, summary
    warnings = [r.getMessage() for r in caplog.records]
    assert any(str(odd) in w and "n/a" in w for w in warnings), warnings
    assert any(str(broken) in w for w in warnings), warnings
    assert not any("changed" in w for w in warnings), "nothing changed: the warning names the part at fault"
    left = sorted(p.name for p in lake_files(day))
    merged = [n for n in left if is_compacted(n)]
    assert len(merged) == 1 and sorted(set(left) - set(merged)) == sorted([odd.name, broken.name]), left
    day_file = assert_one_row_per_span(day / MIXED_FOLDER / merged[0])
    assert set(day_file.column("span_id").to_pylist()) == ids, "every span of the readable parts, once"
    assert not [p for p in day.rglob("*") if p.name.startswith(".")], "no temp file left behind"
    assert compact(lake, older_than_minutes=0).days_merged == 0, "the next run finds the day done but for those two"


def test_of_a_spans_rows_readers_and_compaction_pick_a_session_over_none_and_the_most_nodes(lake: Path) -> None:
    """The same run's end row stored without a session and under one (an instrumentation that named the session on a
    later attempt), and under that session with 2 nodes and with 5 (sent again by a process that saw more of them):
    every reader shows the session and 5 nodes, in memory or not, and compaction keeps exactly that row."""
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("t")
    t = noon(2)
    attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "a"}
    run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
    for i in range(5):
        node = tracer.start_span(f"chat {i}", context=trace.set_span_in_context(run), start_time=t + 1 + i)
        node.set_attributes({"gen_ai.operation.name": "chat", "session.id": "s1"})
        node.end(end_time=t + 2 + i)
    run.end(end_time=t + 100)
    *nodes, run_span = finished.get_finished_spans()
    for seen in (
        [run_span],
        [*nodes[:2], resent(run_span, **{"session.id": "s1"})],
        [*nodes, resent(run_span, **{"session.id": "s1"})],
    ):
        exporter = RunlakeSpanExporter(lake, background_flush=False)  # a process that saw these
        exporter.export(seen)
        exporter.shutdown()
    run_id = f"{run_span.context.span_id:016x}"
    stored = read_table(lake, RUNS).select(["session_id", "node_count"]).to_pylist()
    assert sorted((r["session_id"] or "", r["node_count"]) for r in stored) == [("", 0), ("s1", 2), ("s1", 5)]

    def answers() -> list:
        out = []
        for db in (runlake.HistoryDB(lake), runlake.HistoryDB(lake, index_max_rows=0)):
            [item] = db.get_history()
            out.append((item["run_id"], item["node_count"]))
            out.append(db.sql_rows("SELECT session_id, node_count FROM runs")[1])
            out.append(db.sql_rows("SELECT session_id FROM spans WHERE span_type = 'run'")[1])
        return out

    before = answers()
    assert before[0] == (run_id, 5) and before[1] == [("s1", 5)] and before[2] == [("s1",)]
    assert before[3:] == before[:3]
    compact(lake, older_than_minutes=0)
    assert all(is_compacted(f) for f in lake_files(lake, RUNS) + lake_files(lake, SPANS))
    assert answers() == before
