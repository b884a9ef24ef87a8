"""The exporter: layout, atomic files, buffering, failures that never raise, concurrency, entry point."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import HOSTILE_IDS, PYTHON, lake_files, python_env, read_table
from opentelemetry import trace
from opentelemetry.exporter import runlake as exporter_module
from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor
from opentelemetry.exporter.runlake.layout import encode_partition_value
from opentelemetry.exporter.runlake.mapping import SPAN_COLUMNS
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

import runlake
from runlake.compact import compact
from runlake.service import ExecutionHistoryService


def make_spans(n: int, sessions: int = 1, prefix: str = "s", run_nodes: int = 3) -> list[ReadableSpan]:
    """Real SDK spans: runs with nodes, spread over ``sessions`` sessions."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    made = 0
    i = 0
    while made < n:
        session = f"{prefix}{i % sessions}"
        with tracer.start_as_current_span(
            "invoke_agent a",
            attributes={"gen_ai.operation.name": "invoke_agent", "session.id": session, "gen_ai.agent.name": "a"},
        ):
            made += 1
            for j in range(run_nodes):
                if made >= n:
                    break
                with tracer.start_as_current_span(
                    f"chat {j}",
                    attributes={"gen_ai.operation.name": "chat", "session.id": session, "input.value": "x" * 50},
                ):
                    made += 1
        i += 1
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_writes_partitioned_parquet_with_every_column(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake)
    spans = make_spans(40, sessions=4)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.force_flush()
    files = lake_files(lake)
    assert all(f.suffix == ".parquet" and not f.name.startswith(".") for f in files), "no temp files left"
    span_files = lake_files(lake, "spans")
    assert len(span_files) == 4  # one part per session partition, not one per span or batch
    for f in span_files:
        rel = f.relative_to(lake / "spans").parts
        assert rel[0] == "tenant=default" and rel[1] == "ttl=30" and rel[2].startswith("day=")
        assert rel[3].startswith("session=s")
    table = read_table(lake, "spans")
    assert table.num_rows == 40 and tuple(table.schema.names) == SPAN_COLUMNS
    assert set(table.column("span_type").to_pylist()) == {"run", "node"}
    runs = read_table(lake, "runs")
    assert runs.num_rows == 10 and set(runs.column("node_count").to_pylist()) == {3}
    exporter.shutdown()


def test_buffers_across_batches_and_rolls_on_rows(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake, max_part_rows=25, background_flush=False)
    spans = make_spans(100, sessions=2)
    for start in range(0, 100, 10):  # ten small batches
        assert exporter.export(spans[start : start + 10]) is SpanExportResult.SUCCESS
    rolled = len(lake_files(lake, "spans"))
    assert 2 <= rolled <= 4, "full partitions roll on their own; the rest waits in the buffer"
    exporter.shutdown()
    files = lake_files(lake, "spans")
    assert sum(pq.read_metadata(f).num_rows for f in files) == 100
    assert all(pq.read_metadata(f).num_rows <= 25 + 10 for f in files)


def spans_files(lake: Path) -> dict[str, list[int]]:
    """Row counts of the spans part files on disk, per session folder name."""
    out: dict[str, list[int]] = {}
    for f in lake_files(lake, "spans"):
        out.setdefault(f.parent.name, []).append(pq.read_metadata(f).num_rows)
    return out


def test_a_partition_rolls_when_it_reaches_max_part_rows_exactly(lake: Path) -> None:
    """``max_part_rows`` is the most rows a buffered partition holds: the row that brings it to the limit rolls the
    part file at once (docs/design.md: "when it reaches max_part_rows"), not the one after it."""
    exporter = RunlakeSpanExporter(lake, max_part_rows=8, background_flush=False)
    spans = make_spans(8, run_nodes=3)  # session s0: 2 runs of 3 nodes, 8 span rows (and 2 rows of the runs index)
    assert exporter.export(spans[:7]) is SpanExportResult.SUCCESS
    assert spans_files(lake) == {}, "7 rows: still buffered"
    assert exporter.export(spans[7:]) is SpanExportResult.SUCCESS
    assert spans_files(lake) == {"session=s0": [8]}, "the 8th row rolled the part, before any flush"
    assert exporter.writer.buffered_rows == 2, "only the runs index (2 rows) is still buffered"
    exporter.shutdown()


def test_a_partition_rolls_on_max_part_bytes_alone(lake: Path) -> None:
    """``max_part_bytes`` rolls a part file by itself, far below ``max_part_rows``: a few huge spans must not sit in
    memory until the flush interval (docs/design.md: "max_part_rows (100k) or max_part_bytes (64 MiB)")."""
    spans = make_spans(40, run_nodes=3)
    roomy = RunlakeSpanExporter(lake / "roomy", max_part_bytes=10 << 20, background_flush=False)
    for span in spans:
        roomy.export([span])
    assert spans_files(lake / "roomy") == {}, "the same spans under a big byte limit: nothing written yet"
    roomy.shutdown()

    exporter = RunlakeSpanExporter(lake / "small", max_part_bytes=2_000, background_flush=False)
    assert exporter.writer.max_part_rows == 100_000
    for span in spans:
        assert exporter.export([span]) is SpanExportResult.SUCCESS
    rolled = spans_files(lake / "small")["session=s0"]
    assert len(rolled) >= 5 and all(rows < 40 for rows in rolled), "parts rolled by their bytes, before any flush"
    exporter.shutdown()
    assert read_table(lake / "small", "spans").num_rows == 40


def test_flush_older_than_writes_only_the_partitions_that_old(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``flush(older_than_s)`` (what the background thread calls every half interval) writes the partitions whose
    oldest row is at least that old and leaves younger ones buffered, so a busy session keeps filling one file
    instead of being cut into one tiny file per tick."""
    clock = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    assert exporter.export(make_spans(8, prefix="old")) is SpanExportResult.SUCCESS
    clock[0] += 3
    assert exporter.export(make_spans(8, prefix="young")) is SpanExportResult.SUCCESS
    clock[0] += 2  # "old" rows are 5 s old, "young" ones 2 s
    assert exporter.writer.flush(older_than_s=4) is True
    assert spans_files(lake) == {"session=old0": [8]}
    # the young session's 8 spans wait (the day's runs index partition, begun by "old", was old enough to go)
    assert exporter.writer.buffered_rows == 8
    assert exporter.writer.flush(older_than_s=4) is True and exporter.writer.buffered_rows == 8, "still too young"
    clock[0] += 2
    assert exporter.writer.flush(older_than_s=4) is True and exporter.writer.buffered_rows == 0
    assert spans_files(lake) == {"session=old0": [8], "session=young0": [8]}
    exporter.shutdown()


def test_a_session_of_exactly_min_session_rows_keeps_its_own_folder(lake: Path) -> None:
    """With ``min_session_rows=N`` only sessions with fewer than N rows in a flush share ``session=~mixed``
    (docs/design.md); a session with N rows is big enough for a file of its own, which a read of that session
    then finds without filtering a shared file."""
    exporter = RunlakeSpanExporter(lake, min_session_rows=4, background_flush=False)
    exactly = make_spans(4, prefix="exact", run_nodes=3)  # 1 run + 3 nodes
    fewer = make_spans(3, prefix="few", run_nodes=3)  # 1 run + 2 nodes
    assert exporter.export(exactly + fewer) is SpanExportResult.SUCCESS
    assert exporter.force_flush()
    exporter.shutdown()
    assert spans_files(lake) == {"session=exact0": [4], "session=~mixed": [3]}
    [mixed] = [f for f in lake_files(lake, "spans") if f.parent.name == "session=~mixed"]
    assert set(pq.read_table(mixed, columns=["session_id"]).column(0).to_pylist()) == {"few0"}
    db = runlake.HistoryDB(lake)
    assert [len(db.get_logs(r["run_id"])["nodes"]) for s in ("exact0", "few0") for r in db.get_runs(s)] == [3, 2]


def _dictionary_columns(file: Path) -> set[str]:
    metadata = pq.read_metadata(file)
    names = metadata.schema.to_arrow_schema().names
    group = metadata.row_group(0)
    return {names[i] for i in range(group.num_columns) if group.column(i).dictionary_page_offset is not None}


def test_dictionary_pages_only_where_values_repeat(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    assert exporter.export(make_spans(40, sessions=1, prefix="small")) is SpanExportResult.SUCCESS
    assert exporter.export(make_spans(600, sessions=1, prefix="big")) is SpanExportResult.SUCCESS
    exporter.shutdown()
    by_session = {f.parent.name: f for f in lake_files(lake, "spans")}
    assert _dictionary_columns(by_session["session=small0"]) == set(), "a small part: no dictionary pages at all"
    big = _dictionary_columns(by_session["session=big0"])
    assert {"session_id", "span_type", "node_type", "agent_name"} <= big, "repeating values: dictionary"
    assert not big & {"span_id", "trace_id", "input", "output", "start_time_unix_nano"}, "unique values: none"
    assert read_table(lake, "spans").num_rows == 640


def test_a_partition_folder_removed_meanwhile_is_made_again(lake: Path) -> None:
    import shutil

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    assert exporter.export(make_spans(8, prefix="gone")) is SpanExportResult.SUCCESS
    assert exporter.force_flush()
    [first] = lake_files(lake, "spans")
    shutil.rmtree(first.parent)  # as a purge or TTL would, while the writer still knows the folder
    assert exporter.export(make_spans(8, prefix="gone")) is SpanExportResult.SUCCESS
    assert exporter.force_flush() and exporter.stats["failed_writes"] == 0
    [second] = lake_files(lake, "spans")
    assert second.parent == first.parent and pq.read_metadata(second).num_rows == 8
    exporter.shutdown()


def test_hostile_ids_land_in_their_own_folders_and_read_back(lake: Path) -> None:
    runlake.configure(lake)
    try:
        for sid in HOSTILE_IDS:
            if sid:
                with runlake.run("agent", session_id=sid, user_id=sid, input=sid):
                    pass
    finally:
        runlake.shutdown()
    db = runlake.HistoryDB(lake)
    for sid in HOSTILE_IDS:
        if sid:
            runs = db.get_runs(sid)
            assert [r["session_id"] for r in runs] == [sid]
            assert runs[0]["input_content"] == sid
    for folder in (lake / "spans").rglob("session=*"):
        assert folder.resolve().is_relative_to(lake.resolve())
    assert (lake / "spans").rglob(f"session={encode_partition_value('../x')}")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real, tiny file system we can fill or make read-only (needs root to mount)."""
    mount = tmp_path / "fs"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def test_read_only_disk_fails_softly_and_loses_nothing(tmpfs: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake = tmpfs / "lake"
    lake.mkdir()
    _remount(tmpfs, "ro")
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    spans = make_spans(30, sessions=3)
    with caplog.at_level(logging.ERROR):
        assert exporter.export(spans[:10]) is SpanExportResult.SUCCESS  # buffered, nothing written yet
        assert exporter.force_flush() is False
        assert exporter.export(spans[10:]) is SpanExportResult.FAILURE  # the lake is known to be failing
        assert exporter.force_flush() is False
    errors = [r for r in caplog.records if "cannot write a part file" in r.getMessage()]
    assert len(errors) == 1, "logged once, with the cause"
    assert "Read-only file system" in errors[0].getMessage()
    stats = exporter.stats
    assert stats["failed_writes"] >= 1 and stats["dropped_rows"] == 0 and stats["buffered_rows"] >= 30
    assert exporter.writer.unwritten_rows == exporter.writer.buffered_rows, "no write in flight is still counted"
    _remount(tmpfs, "rw")
    assert exporter.force_flush() is True
    exporter.shutdown()
    assert read_table(lake, "spans").num_rows == 30


def test_full_disk_drops_oldest_beyond_the_cap_and_counts(tmpfs: Path) -> None:
    lake = tmpfs / "lake"
    (tmpfs / "filler").write_bytes(b"\0" * (2 * 1024 * 1024 - 4096))  # leave almost nothing
    exporter = RunlakeSpanExporter(lake, background_flush=False, max_buffer_bytes=64 * 1024)
    spans = make_spans(600, sessions=6)
    results = [exporter.export(spans[i : i + 100]) for i in range(0, 600, 100)]
    assert SpanExportResult.FAILURE in results
    stats = exporter.stats
    assert stats["dropped_rows"] > 0 and stats["failing"] and "No space left" in stats["failing"]
    assert stats["buffered_rows"] * 160 <= 64 * 1024 + 160 * 100, "memory stays bounded"
    assert exporter.writer.unwritten_rows == exporter.writer.buffered_rows, "no write in flight is still counted"
    assert not list(lake.rglob("*.tmp")), "no temp file of a failed write is left"
    (tmpfs / "filler").unlink()
    assert exporter.force_flush() is True
    exporter.shutdown()
    written = read_table(lake, "spans").num_rows + read_table(lake, "runs").num_rows
    runs = sum(1 for s in spans if s.parent is None)  # each also has a row in the runs/ index
    assert written + stats["dropped_rows"] == 600 + runs, "every row is either on disk or counted as dropped"


def test_a_long_outage_logs_drops_once_then_sums_them_up(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "a-file").write_text("x")
    exporter = RunlakeSpanExporter(tmp_path / "a-file" / "lake", background_flush=False, max_buffer_bytes=8 * 1024)
    spans = make_spans(600, sessions=6)
    with caplog.at_level(logging.ERROR):
        for i in range(0, 600, 20):
            exporter.export(spans[i : i + 20])
        said = [r.getMessage() for r in caplog.records if "runlake: dropped " in r.getMessage()]
        assert len(said) == 1, f"one line for the first drop, not one per drop: {said[:3]}"
        exporter.writer.drop_log_interval_s = 0.0  # a minute later: the drops since are summed up
        exporter.export(spans[:20])
        exporter.writer.drop_log_interval_s = 3600.0
        exporter.export(spans[20:40])  # within the minute: not said now, but at shutdown
        exporter.shutdown()
    said = [r.getMessage() for r in caplog.records if "runlake: dropped " in r.getMessage()]
    assert len(said) >= 3 and all("more rows" in line for line in said[1:])
    stats = exporter.stats
    assert sum(int(line.split("dropped ")[1].split()[0]) for line in said) == stats["dropped_rows"], "sums are exact"
    runs = sum(1 for s in spans if s.parent is None) + sum(1 for s in spans[:40] if s.parent is None)
    assert stats["dropped_rows"] + stats["buffered_rows"] == 640 + runs, "every row is counted"


def test_past_the_cap_during_an_outage_the_oldest_partitions_are_dropped(
    lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the disk refuses every write and the buffers pass ``max_buffer_bytes``, the OLDEST partitions are
    dropped (docs/design.md): after recovery the newest session's rows are in the lake and the older ones are
    counted as dropped. Dropping the newest would lose what is most likely still wanted and keep stale rows."""
    from opentelemetry.exporter.runlake import writer as writer_module

    def no_space(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    clock = [1_000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    real_write_part = writer_module.write_part
    monkeypatch.setattr(writer_module, "write_part", no_space)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    made = {prefix: make_spans(8, prefix=prefix) for prefix in ("old", "mid", "new")}  # 8 spans, 2 runs each
    exporter.export(made["old"])
    one_session = exporter.writer.buffered_bytes
    exporter.writer.max_buffer_bytes = one_session * 3 // 2  # room for one session's buffers, not for two
    for prefix in ("mid", "new"):
        clock[0] += 10
        exporter.export(made[prefix])  # over the cap: a flush, which fails, then the oldest go
    stats = exporter.stats
    assert stats["failing"] and "No space left" in stats["failing"] and stats["dropped_rows"] >= 16
    assert exporter.writer.buffered_bytes <= exporter.writer.max_buffer_bytes

    monkeypatch.setattr(writer_module, "write_part", real_write_part)  # the disk has room again
    assert exporter.force_flush() is True
    exporter.shutdown()
    stored = read_table(lake, "spans")
    assert set(stored.column("session_id").to_pylist()) == {"new0"}, "the newest session is the one kept"
    assert sorted(stored.column("span_id").to_pylist()) == sorted(f"{s.context.span_id:016x}" for s in made["new"])
    written = stored.num_rows + read_table(lake, "runs").num_rows
    assert written + exporter.stats["dropped_rows"] == 3 * (8 + 2), "every row is either on disk or counted"


CHILD_WITHOUT_SPACE = textwrap.dedent(
    """
    import json, logging, resource, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from test_compact import history_lake
    from test_exporter import make_spans
    from runlake.compact import compact

    lake = Path(sys.argv[1])
    history_lake(lake, days_ago=(2,))  # a closed day for compaction to merge
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    exporter.export(make_spans(30, sessions=3))
    logging.disable(logging.CRITICAL)
    # the disk refuses every byte from now on: a real write error from the kernel (EFBIG), no root needed
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
    flushed = exporter.force_flush()
    summary = compact(lake, older_than_minutes=0)
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    left = sorted(p.name for p in lake.rglob("*.tmp"))
    again = exporter.force_flush()
    print(json.dumps({"flushed": flushed, "merged": summary.days_merged, "left": left, "again": again}))
    exporter.shutdown()
    """
)


def test_a_part_whose_folder_goes_before_its_rename_is_written_again(lake: Path, monkeypatch) -> None:
    """TTL renames an expired day folder away whole: a part being written into it then finds no folder to be renamed
    in. The spans were acknowledged (``export`` returned SUCCESS), so the part is written again, into the folder
    made again, rather than kept failing until a shutdown that has one flush left."""
    import os
    import shutil

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    real = os.replace
    taken: list[str] = []

    def replace(source, target):  # noqa: ANN001, ANN202
        if not taken and str(source).endswith(".tmp"):
            taken.append(str(source))
            shutil.rmtree(Path(source).parent)  # the folder goes with the temp file in it
        return real(source, target)

    monkeypatch.setattr(os, "replace", replace)
    assert exporter.export(make_spans(8)) == SpanExportResult.SUCCESS
    assert exporter.force_flush()
    exporter.shutdown()
    assert taken and read_table(lake, "spans").num_rows == 8
    assert exporter.stats["failed_writes"] == 0


def test_a_write_the_disk_refuses_leaves_no_temp_file(lake: Path) -> None:
    done = subprocess.run(
        [PYTHON, "-c", CHILD_WITHOUT_SPACE, str(lake), str(Path(__file__).parent)],
        env=python_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["flushed"] is False and result["merged"] == 0, "the writes did fail"
    assert result["left"] == [], "a failed part file or merge leaves no hidden temp file behind"
    assert result["again"] is True and read_table(lake, "spans").num_rows >= 30


def big_spans(case: str, n: int, chars: int) -> list[ReadableSpan]:
    """``n`` spans each holding ``chars`` characters of its own (a distinct string) in one place."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    for i in range(n):
        text = f"{i}:" + ("🙂" if case == "emoji input" else "x") * chars  # 4 bytes a character in memory, or 1
        attributes = {"gen_ai.operation.name": "chat", "session.id": f"s{i % 3}"}
        if case == "emoji input":
            attributes["input.value"] = text
        with tracer.start_as_current_span(text if case == "span name" else "chat", attributes=attributes) as span:
            if case == "status message":  # an exception's description, say
                span.set_status(Status(StatusCode.ERROR, text))
    provider.shutdown()
    return list(memory.get_finished_spans())


@pytest.mark.parametrize("case", ["emoji input", "status message", "span name"])
def test_buffer_cap_bounds_the_memory_rows_hold(tmp_path: Path, case: str) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # every write fails: rows pile up in memory until the cap drops the oldest
    cap = 4 << 20
    exporter = RunlakeSpanExporter(blocked / "lake", background_flush=False, max_buffer_bytes=cap)
    spans = big_spans(case, 12, chars=(256 << 10) if case == "emoji input" else (1 << 20))
    for span in spans:
        exporter.export([span])
    held = {id(v): sys.getsizeof(v) for buf in exporter._writer._buffers.values() for r in buf.rows for v in r if v}
    assert exporter.stats["failing"] and exporter.stats["dropped_rows"] > 0, "the cap was reached and said"
    assert sum(held.values()) <= cap, f"{sum(held.values()) >> 20} MiB held by buffered rows over a 4 MiB cap"
    exporter.shutdown()


def test_export_never_raises_on_unstorable_spans(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake)
    good = make_spans(3)
    broken = ReadableSpan(name="no-start", context=good[0].context, start_time=None)
    assert exporter.export([broken, *good]) is SpanExportResult.FAILURE
    assert exporter.stats["rejected_spans"] == 1
    exporter.shutdown()
    assert read_table(lake, "spans").num_rows == 3
    assert exporter.export(good) is SpanExportResult.FAILURE  # after shutdown, as the SDK contract says


def test_threads_writing_one_session_and_day(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake, max_part_rows=50)
    batches = [make_spans(200, sessions=1, prefix="same") for _ in range(6)]
    threads = [threading.Thread(target=exporter.export, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    exporter.shutdown()
    table = read_table(lake, "spans")
    ids = table.column("span_id").to_pylist()
    assert len(ids) == 1200 and len(set(ids)) == 1200


CHILD_WRITER = textwrap.dedent(
    """
    import sys
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(RunlakeSpanExporter(sys.argv[1], max_part_rows=40)))
    tracer = provider.get_tracer("child")
    for i in range(300):
        with tracer.start_as_current_span("invoke_agent a", attributes={"session.id": "shared",
                                          "gen_ai.operation.name": "invoke_agent"}):
            pass
    provider.shutdown()
    """
)


def test_two_processes_writing_one_session_and_day(lake: Path) -> None:
    children = [subprocess.Popen([PYTHON, "-c", CHILD_WRITER, str(lake)], env=python_env()) for _ in range(2)]
    assert all(c.wait(timeout=120) == 0 for c in children)
    table = read_table(lake, "spans")
    assert table.num_rows == 600 and len(set(table.column("span_id").to_pylist())) == 600
    assert len(list((lake / "spans").rglob("session=shared"))) == 1
    assert runlake.HistoryDB(lake).get_runs("shared", limit=None).__len__() == 600


def run_instrumented(app: Path, lake: Path, **env: str) -> str:
    """Run ``app`` with no code change: ``opentelemetry-instrument`` and ``OTEL_TRACES_EXPORTER=runlake``; its
    stderr."""
    done = subprocess.run(
        [str(Path(PYTHON).parent / "opentelemetry-instrument"), PYTHON, str(app)],
        env=python_env(
            OTEL_TRACES_EXPORTER="runlake",
            OTEL_METRICS_EXPORTER="none",
            OTEL_LOGS_EXPORTER="none",
            RUNLAKE_STATE_URL=str(lake),
            **env,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_entry_point_with_opentelemetry_instrument(lake: Path, tmp_path: Path) -> None:
    """No code change: runs, their nodes, a nested run that names no session or user (it gets its parent's, as with
    ``configure``), and a run that never ended (visible as running: the entry point records run starts too)."""
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            """
            from opentelemetry import trace
            tracer = trace.get_tracer("app")
            with tracer.start_as_current_span("invoke_agent helper", attributes={
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "helper",
                    "gen_ai.conversation.id": "ep-session", "user.id": "ep-user", "input.value": "hi"}):
                with tracer.start_as_current_span("chat gpt", attributes={"gen_ai.operation.name": "chat",
                        "gen_ai.conversation.id": "ep-session", "gen_ai.usage.input_tokens": 7}):
                    pass
                with tracer.start_as_current_span("invoke_agent critic", attributes={
                        "gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "critic"}):
                    with tracer.start_as_current_span("chat critique", attributes={
                            "gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 5}):
                        pass
            tracer.start_span("invoke_agent sleeper", attributes={"gen_ai.operation.name": "invoke_agent",
                    "gen_ai.agent.name": "sleeper", "gen_ai.conversation.id": "ep-live"})  # never ends
            """
        )
    )
    run_instrumented(app, lake, OTEL_SERVICE_NAME="ep-app")
    db = runlake.HistoryDB(lake)
    runs = db.get_runs("ep-session")
    assert [r["metadata"]["agent_name"] for r in runs] == ["critic", "helper"]
    assert all(r["status"] == "completed" for r in runs)
    for run, tokens in zip(runs, (5, 7)):
        logs = db.get_logs(run["run_id"])
        assert logs["summary"]["total_nodes"] == 1 and logs["summary"]["tokens_used"] == tokens
    assert ExecutionHistoryService(lake).statistics(user_id="ep-user")["total_executions"] == 2
    [live] = db.get_runs("ep-live")
    assert live["status"] == "running"
    assert set(read_table(lake, "spans").column("service_name").to_pylist()) == {"ep-app"}


def test_configure_under_the_entry_point_says_rows_are_stored_twice(lake: Path, tmp_path: Path) -> None:
    """An application run with `OTEL_TRACES_EXPORTER=runlake` that also calls `runlake.configure()` has two
    pipelines into the lake: configure says so (each row is stored twice; readers count each once), and the
    entry point's keeps storing after `runlake.shutdown()`."""
    app = tmp_path / "app.py"
    app.write_text(
        textwrap.dedent(
            f"""
            import logging, runlake
            from opentelemetry import trace
            logging.basicConfig(level=logging.WARNING)
            tracer = trace.get_tracer("app")
            with tracer.start_as_current_span("invoke_agent early", attributes={{
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "both"}}):
                pass
            runlake.configure({str(lake)!r})
            with runlake.run("late", "both"):
                with runlake.node("plan"):
                    pass
            runlake.shutdown()
            with tracer.start_as_current_span("invoke_agent after", attributes={{
                    "gen_ai.operation.name": "invoke_agent", "gen_ai.conversation.id": "both"}}):
                pass
            """
        )
    )
    stderr = run_instrumented(app, lake)
    assert "OTEL_TRACES_EXPORTER=runlake" in stderr and "twice" in stderr
    db = runlake.HistoryDB(lake)
    assert len(db.get_runs("both")) == 3 and len(db.get_history()) == 3


def test_run_in_progress_is_visible_as_running(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    tracer = provider.get_tracer("t")
    span = tracer.start_span(
        "invoke_agent slow", attributes={"gen_ai.operation.name": "invoke_agent", "session.id": "live"}
    )
    assert exporter.force_flush()
    db = runlake.HistoryDB(lake)
    [running] = db.get_runs("live")
    assert running["status"] == "running" and running["ended_at"] is None
    assert db.get_history()[0]["status"] == "running"
    span.end()
    exporter.export([span])
    exporter.shutdown()
    [done] = db.get_runs("live")
    assert done["status"] == "completed" and done["ended_at"] is not None
    assert len(db.get_history()) == 1, "the start row is superseded, never counted twice"


@pytest.mark.parametrize("remembered", [None, 4])
def test_spans_exported_again_count_once_in_their_runs_totals(lake: Path, remembered: int | None, monkeypatch) -> None:
    """A client retries an export after a timeout or a 503 (the OTLP exporters do; `runlake serve` stores what
    comes): readers keep one row per span, so history and statistics must not count the copies in a run's totals
    either, and a run's span sent again must not get a second index row with other totals (readers would show
    either). Two nodes resent before their run ends, the run resent after it ended, a late node after that; read
    with and without the runs index, and after compaction (a closed day). ``remembered``: so few nodes are
    remembered that the first ones are in the older of the two generations when they come again."""
    if remembered:
        monkeypatch.setattr(exporter_module, "_MAX_REMEMBERED_SPANS", remembered)
    t = (int(time.time()) // 86_400 - 2) * 86_400 * 10**9  # midnight two days ago
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    finished = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    provider.add_span_processor(SimpleSpanProcessor(finished))
    tracer = provider.get_tracer("t")
    attributes = {"gen_ai.operation.name": "invoke_agent", "session.id": "s"}
    run = tracer.start_span("invoke_agent a", start_time=t, attributes=attributes)
    context = trace.set_span_in_context(run)
    usage = {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 100, "runlake.cost.cents": 2.0}
    for i, name in enumerate(("one", "two")):
        tracer.start_span(name, context=context, start_time=t + i, attributes=usage).end(end_time=t + 10)
    nodes = list(finished.get_finished_spans())
    assert exporter.export(nodes) == exporter.export(nodes) == exporter.export(nodes[1:]) == SpanExportResult.SUCCESS
    run.end(end_time=t + 20)
    [run_span] = finished.get_finished_spans()[2:]
    exporter.export([run_span])
    exporter.export([*nodes, run_span])  # all of it again, after the run's row was written
    tracer.start_span("late", context=context, start_time=t + 3, attributes=usage).end(end_time=t + 30)
    exporter.export([finished.get_finished_spans()[3], run_span])  # a node that came late, with the run again
    exporter.shutdown()
    runs = read_table(lake, "runs").to_pylist()
    ends = sorted((r["node_count"], r["input_tokens"]) for r in runs if r["record"] == "end")
    assert ends == [(2, 200), (2, 200), (3, 300)], "each row of the run carries what its first row did, or more"
    for compacted in (False, True):
        if compacted:
            compact(lake, older_than_minutes=0)
            assert [r["node_count"] for r in read_table(lake, "runs").to_pylist()] == [3]
        for index_rows in (1000, 0):  # with the runs index, and reading the runs/ files
            db = runlake.HistoryDB(lake, index_max_rows=index_rows)
            [item] = db.get_history()
            assert (item["node_count"], item["tokens_used"], item["cost_cents"]) == (3, 300, 6), (compacted, index_rows)
            summary = db.get_logs(item["run_id"])["summary"]
            assert (summary["total_nodes"], summary["tokens_used"], summary["cost_cents"]) == (3, 300, 6)
            stats = ExecutionHistoryService(db).statistics(None, None, 30)
            assert (stats["total_nodes"], stats["tokens_used"], stats["cost_cents"]) == (3, 300, 6)


def test_run_whose_process_dies_stays_visible_as_running(lake: Path) -> None:
    script = textwrap.dedent(
        """
        import os, sys, runlake
        runlake.configure(sys.argv[1])
        with runlake.run("doomed", session_id="crash", input="work"):
            with runlake.node("step-1", type="tool"):
                pass
            runlake.force_flush()
            print("flushed", flush=True)
            os._exit(9)  # the process dies before the run ends
        """
    )
    done = subprocess.run(
        [PYTHON, "-c", script, str(lake)], env=python_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 9 and "flushed" in done.stdout
    db = runlake.HistoryDB(lake)
    [run] = db.get_runs("crash")
    assert run["status"] == "running" and run["input_content"] == "work"
    logs = db.get_logs(run["run_id"])
    assert [n["id"] for n in logs["nodes"]] == ["step-1"]
    assert json.loads(json.dumps(db.get_traces(session_id="crash")))[0]["status"] == "running"


def test_exporter_configures_itself_from_the_environment(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLAKE_STATE_URL", f"file://{lake}")
    monkeypatch.setenv("RUNLAKE_TENANT_ID", "acme")
    exporter = RunlakeSpanExporter()
    exporter.export(make_spans(2))
    exporter.shutdown()
    assert (lake / "spans" / "tenant=acme").is_dir()
    assert trace.get_tracer_provider() is not None


def test_runtime_state_is_opt_in_for_exporters_from_the_environment(lake: Path, monkeypatch) -> None:
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("t").start_as_current_span(
        "turn t1", attributes={"runlake.span.type": "turn", "session.id": "st", "runlake.runtime.state": '{"a": 1}'}
    ):
        pass
    spans = memory.get_finished_spans()
    monkeypatch.delenv("RUNLAKE_MIRROR_RUNTIME_STATE", raising=False)
    off = RunlakeSpanExporter(lake / "off")
    off.export(spans)
    off.shutdown()
    monkeypatch.setenv("RUNLAKE_MIRROR_RUNTIME_STATE", "true")
    on = RunlakeSpanExporter(lake / "on")
    on.export(spans)
    on.shutdown()
    assert read_table(lake / "off", "spans").column("runtime_state").to_pylist() == [None]
    assert read_table(lake / "on", "spans").column("runtime_state").to_pylist() == ['{"a": 1}']


def test_redaction_covers_metadata_and_exception_events(lake: Path) -> None:
    from runlake.redact import Redactor

    runlake.configure(lake, redact=True)
    try:
        with pytest.raises(RuntimeError):
            with runlake.run("a", "red", metadata={"note": "token sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA"}):
                raise RuntimeError("auth failed for password=hunter2hunter2")
    finally:
        runlake.shutdown()
    table = read_table(lake, "spans").to_pylist()
    text = json.dumps(table)
    assert "sk-proj-4f9XkQ2mL8vN3bT7wZ1cR6yH0jD5sA" not in text and "hunter2hunter2" not in text
    end = next(r for r in table if r["record"] == "end")
    assert json.loads(end["events"])[0]["name"] == "exception" and json.loads(end["metadata"])["note"]
    assert isinstance(Redactor(), Redactor)


def test_conform_fits_any_part_to_the_current_schema() -> None:
    """``writer.conform`` (compaction, the run index and state purges read older parts through it): the schema's
    columns in its order and types, missing ones as nulls, unknown ones dropped; a column that cannot be cast
    raises."""
    import pyarrow as pa
    from opentelemetry.exporter.runlake.mapping import RUNS_SCHEMA, SPANS_SCHEMA
    from opentelemetry.exporter.runlake.writer import conform

    old = pa.table(
        {
            "gone_column": ["x", "y"],
            "span_id": ["b", "a"],
            "input_tokens": pa.array([3, None], pa.int32()),  # stored narrower than today's column
            "run_id": ["r1", "r2"],
        }
    )
    projection = pa.schema([RUNS_SCHEMA.field("run_id"), RUNS_SCHEMA.field("cost_cents")])  # the run index's kind
    for schema in (SPANS_SCHEMA, RUNS_SCHEMA, projection):
        fitted = conform(old, schema)
        assert fitted.schema == schema
        assert fitted.column("run_id").to_pylist() == ["r1", "r2"]
        if "input_tokens" in schema.names:
            assert fitted.column("input_tokens").to_pylist() == [3, None]
        missing = [f.name for f in schema if f.name not in old.column_names]
        assert missing and all(fitted.column(name).null_count == 2 for name in missing)
    with pytest.raises(pa.ArrowInvalid):
        conform(pa.table({"input_tokens": ["n/a"]}), SPANS_SCHEMA)


def test_node_totals_waiting_for_a_parent_are_forgotten_once_it_comes(lake: Path) -> None:
    """Children end before their parents, so a node's figures wait under its parent's span id until the parent
    arrives. In one long trace with no root run (another instrumentation's spans), what waited must not stay
    listed once the parent came: the bookkeeping stays the same size however long the trace runs."""
    from opentelemetry.trace import SpanContext, TraceFlags

    exporter = RunlakeSpanExporter(lake, background_flush=False)
    trace_id = 0xABC
    lost_parent = SpanContext(trace_id, 0xFFFFFFFF, is_remote=False)

    def span(span_id: int, parent: SpanContext, attributes: dict) -> ReadableSpan:
        context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(1))
        return ReadableSpan("s", context=context, parent=parent, attributes=attributes, start_time=1, end_time=2)

    span_id = 1
    for _ in range(10):
        batch = []
        for _ in range(250):  # a node, then its plain parent, whose own parent never arrives
            parent = SpanContext(trace_id, span_id + 1, is_remote=False)
            batch.append(span(span_id, parent, {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": 3}))
            batch.append(span(span_id + 1, lost_parent, {}))
            span_id += 2
        assert exporter.export(batch).name == "SUCCESS"
    waiting = exporter._pending_by_trace[f"{trace_id:032x}"]
    assert waiting == {f"parent:{0xFFFFFFFF:016x}"}  # only what still waits (it was 2,501 keys)
    assert exporter._run_totals[f"parent:{0xFFFFFFFF:016x}"][:3] == [2500, 0, 7500]  # nodes, failed, tokens
    exporter.shutdown()


def test_the_mappers_caches_are_bounded_in_size_not_only_in_entries() -> None:
    """The per-key-set plans and the per-resource cache serve spans that repeat them; spans with many keys or a
    server decoding a new big resource per request must not fill memory with them (each still maps exactly)."""
    from opentelemetry.exporter.runlake import mapping
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.trace import SpanContext, TraceFlags

    mapper = mapping.SpanMapper()

    def span(i: int, attributes: dict, resource: Resource | None = None) -> ReadableSpan:
        context = SpanContext(1, i + 1, is_remote=False, trace_flags=TraceFlags(1))
        return ReadableSpan("s", context=context, attributes=attributes, resource=resource, start_time=1, end_time=2)

    for i in range(2_500):  # 2,500 key sets of 100 keys: past the key budget of the plans
        row = mapper.map_span(span(i, {f"k{i}_{j}": j for j in range(100)}))
        assert json.loads(row[SPAN_COLUMNS.index("attributes")])[f"k{i}_99"] == 99
        assert mapper._planned_keys == sum(len(keys) for keys in mapper._plans) <= mapping._MAX_PLANNED_KEYS
    many = {f"many{j}": j for j in range(mapping._MAX_KEYS_OF_A_CACHED_PLAN + 1)}
    mapper.map_span(span(0, many))
    assert tuple(many) not in mapper._plans
    for i in range(50):  # a new big resource each time, as a server decodes one per request
        big = Resource({"service.name": "svc", "blob": "r" * 100_000, "n": i})
        row = mapper.map_span(span(i, {}, big))
        assert json.loads(row[SPAN_COLUMNS.index("resource")])["n"] == i
    assert not any("blob" in (cached[2] or "") for cached in mapper._resource_cache.values())


def test_shutdown_waits_for_the_flush_the_background_thread_began(lake: Path, monkeypatch) -> None:
    """The flush thread's rows are out of the buffers while it writes them: closing must wait for it (it waited 5 s,
    then said those rows were lost to a failed flush, and the daemon thread died with the process)."""
    import logging

    from opentelemetry.exporter.runlake import writer as writer_module

    real_write_part = writer_module.write_part
    began, release = threading.Event(), threading.Event()

    def slow_first_write(*args, **kwargs):
        if threading.current_thread().name == "runlake-flush" and not began.is_set():
            began.set()
            assert release.wait(30), "released when close() says it waits"
        return real_write_part(*args, **kwargs)

    class ReleaseWhenWaiting(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "before closing" in record.getMessage():
                release.set()

    handler = ReleaseWhenWaiting()
    logging.getLogger("opentelemetry.exporter.runlake").addHandler(handler)
    monkeypatch.setattr(writer_module, "write_part", slow_first_write)
    monkeypatch.setattr(writer_module, "_CLOSE_QUIET_WAIT_S", 0.01, raising=False)
    try:
        spans = make_spans(40, sessions=4)
        exporter = RunlakeSpanExporter(lake, flush_interval_s=0.05)
        assert exporter.export(spans).name == "SUCCESS"
        assert began.wait(30), "the background thread began a flush"
        exporter.shutdown()
    finally:
        release.set()
        logging.getLogger("opentelemetry.exporter.runlake").removeHandler(handler)
    assert exporter._writer.unwritten_rows == 0
    stored = read_table(lake, "spans")
    assert {r["span_id"] for r in stored.to_pylist()} == {f"{s.context.span_id:016x}" for s in spans}


def test_a_run_start_on_the_applications_thread_never_writes(lake: Path, monkeypatch) -> None:
    """``on_start`` runs on the application's thread: a run's start row is buffered, never written there, even when
    its partition is full or the buffer is over its cap (then it is dropped and counted: the application waited
    minutes while thousands of session files were written in its ``runlake.run()``)."""
    from opentelemetry.exporter.runlake import writer as writer_module

    real_write_part = writer_module.write_part
    writers: list[str] = []

    def spy(*args, **kwargs):
        writers.append(threading.current_thread().name)
        return real_write_part(*args, **kwargs)

    monkeypatch.setattr(writer_module, "write_part", spy)
    exporter = RunlakeSpanExporter(lake, max_part_rows=2, max_buffer_bytes=4000, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    tracer = provider.get_tracer("app")
    attrs = {"runlake.span.type": "run", "session.id": "s", "gen_ai.agent.name": "a", "input.value": "x" * 500}
    started = [tracer.start_span("run", attributes=attrs) for _ in range(20)]
    assert writers == [] and exporter.stats["files_written"] == 0
    assert 0 < exporter.stats["dropped_rows"] < 40 and exporter._writer.buffered_rows > 0
    for span in started:
        span.end()
    exporter.export([s for s in started])  # the export path writes (the SDK's worker thread, here this one)
    exporter.shutdown()
    assert writers and exporter._writer.unwritten_rows == 0
    assert len(runlake.HistoryDB(lake).get_runs("s")) == 20
