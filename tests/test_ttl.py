"""TTL (``runlake.ttl``): true counts from footers or DuckDB, days hidden at once and deleted after, errors named."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    counts_in_name,
    day_dirs,
    day_files,
    encode_partition_value,
    is_compacted,
    is_data_file,
    new_part_name,
)
from opentelemetry.exporter.runlake.writer import read_part_counts
from test_exporter import make_spans
from typer.testing import CliRunner

import runlake
from runlake import ttl
from runlake.cli import app
from runlake.compact import compact
from runlake.instrument import shifted_clock
from runlake.query import LakeReader

DAY = 86_400
NOW = dt.datetime.now(dt.timezone.utc)


def write_history(lake: Path, runs: list[tuple[int, int, str]], nodes: int = 2, split: bool = False) -> None:
    """One run per ``(age in days, ttl_days, tenant)`` with ``nodes`` nodes, through the real API.

    ``split``: flush while each run is open, so its start row and its end row land in different files.
    """
    runlake.configure(lake, flush_interval_s=3600)  # one flush at the end (and at each force_flush)
    try:
        for i, (age, ttl_days, tenant) in enumerate(runs):
            with shifted_clock(-age * DAY):
                with runlake.run("agent", f"s{i}-{age}-{ttl_days}", tenant_id=tenant, ttl_days=ttl_days):
                    if split:
                        runlake.force_flush()
                    for n in range(nodes):
                        with runlake.node(f"n{n}"):
                            pass
    finally:
        runlake.shutdown()


def expired_days(lake: Path, table: str, max_age_days: int | None = None) -> list[Path]:
    """The day folders the TTL rule picks (kept through day D+N), found independently of ``runlake.ttl``."""
    today = NOW.date()
    return [
        folder
        for _, ttl_days, day, folder in day_dirs(lake, table)
        if dt.date.fromisoformat(day) + dt.timedelta(days=min(ttl_days, max_age_days or ttl_days)) < today
    ]


def duckdb_counts(lake: Path, max_age_days: int | None = None) -> dict[str, int]:
    """What TTL must report: DuckDB over every file of the expired day folders (distinct runs, distinct finished
    nodes; a span is what readers keep one row of: span and trace id, start, tenant)."""
    key = "(span_id, trace_id, start_time_unix_nano, tenant_id)"

    def count(table: str, aggregate: str) -> int:
        files = [str(f) for d in expired_days(lake, table, max_age_days) for f in day_files(d, table)]
        if not files:
            return 0
        query = f"SELECT {aggregate} FROM read_parquet({files!r}, union_by_name=true)"
        return duckdb.connect().execute(query).fetchall()[0][0]  # own connection: the default one is shared

    return {
        "executions_deleted": count(RUNS, f"count(DISTINCT {key})"),
        "nodes_deleted": count(SPANS, f"count(DISTINCT {key}) FILTER (WHERE span_type = 'node' AND record = 'end')"),
    }


def tree(lake: Path) -> list[str]:
    """Every path under the lake, hidden ones included."""
    return sorted(str(p.relative_to(lake)) for p in lake.rglob("*"))


def hidden(lake: Path) -> list[Path]:
    return sorted(lake.rglob(f"{ttl.EXPIRED_PREFIX}*"))


def history_runs(lake: Path) -> int:
    return len(runlake.HistoryDB(lake).get_history(limit=10_000))


def expire(lake: Path, **options: object) -> dict[str, int]:
    return ttl.expire(lake, LakeReader(), now=NOW, **options)  # type: ignore[arg-type]


def strip_footer_counts(file: Path) -> None:
    """Rewrite a part file as an older writer did: the same rows, no counts in its name nor in its footer."""
    table = pq.read_table(file)
    old_name = file.with_name(re.sub(r"(-r\d+-s\d+(-n\d+)?)\.parquet$", ".parquet", file.name))
    pq.write_table(table.replace_schema_metadata(None), old_name)
    file.unlink()
    assert read_part_counts(old_name) is None


def spoil_data_pages(file: Path) -> None:
    """Zero every byte between the header and the footer: the footer stays readable, the rows do not."""
    data = bytearray(file.read_bytes())
    footer_start = len(data) - 8 - int.from_bytes(data[-8:-4], "little")
    data[4:footer_start] = bytes(footer_start - 4)
    file.write_bytes(bytes(data))


def one_file_per_day(lake: Path) -> None:
    """Every expired day folder of both tables is one file: the path that counts from stored counts alone."""
    for table in (RUNS, SPANS):
        days = expired_days(lake, table)
        assert days and all(len(day_files(d, table)) == 1 for d in days), f"one {table} file per day"


# ---- counts ---------------------------------------------------------------------------------------------------------
def test_footer_counts_are_exact_and_read_no_rows(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLAKE_MIN_SESSION_ROWS", "1000")  # a day's sessions share one spans file (session=~mixed)
    write_history(lake, [(40, 30, "a"), (40, 30, "a"), (35, 30, "b"), (31, 30, "a"), (3, 30, "a")], nodes=3)
    expected = duckdb_counts(lake)
    assert expected == {"executions_deleted": 4, "nodes_deleted": 12}
    one_file_per_day(lake)
    for table in (RUNS, SPANS):
        for day in expired_days(lake, table):
            for file in day_files(day, table):
                assert read_part_counts(file) is not None
                spoil_data_pages(file)  # a count that read rows would fail now

    assert expire(lake, dry_run=True) == expected
    assert expire(lake) == expected
    assert history_runs(lake) == 1 and not hidden(lake)


def test_counts_come_from_file_names_without_opening_a_file(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNLAKE_MIN_SESSION_ROWS", "1000")
    write_history(lake, [(40, 30, "a"), (40, 30, "a"), (35, 30, "b"), (31, 30, "a"), (3, 30, "a")], nodes=3)
    expected = duckdb_counts(lake)
    one_file_per_day(lake)
    for table in (RUNS, SPANS):
        for day in expired_days(lake, table):
            for file in day_files(day, table):
                named = counts_in_name(file)
                assert named is not None and named == read_part_counts(file)
                file.write_bytes(b"")  # neither footer nor rows readable now: only the name can say the counts

    assert expire(lake) == expected
    assert history_runs(lake) == 1 and not hidden(lake)


def test_part_names_round_trip_their_counts() -> None:
    spans = new_part_name(counts={"rows": 12, "spans": 7, "nodes": 5})
    runs = new_part_name(compacted=True, counts={"rows": 3, "spans": 2})
    assert counts_in_name(spans) == {"rows": 12, "spans": 7, "nodes": 5}
    assert counts_in_name(runs) == {"rows": 3, "spans": 2} and is_compacted(runs)
    assert counts_in_name(new_part_name()) is None
    assert all(is_data_file(n) for n in (spans, runs))


def test_fallback_counts_runs_split_across_files_and_old_files_exactly(lake: Path) -> None:
    write_history(lake, [(40, 30, "a"), (40, 30, "a"), (33, 30, "a"), (2, 30, "a")], split=True)
    split_days = [d for d in expired_days(lake, RUNS) if len(day_files(d, RUNS)) > 1]
    assert split_days, "start and end rows of a run in different files"
    for folder in split_days:  # each file counts the run once: the footers would add it up twice
        files = day_files(folder, RUNS)
        query = f"SELECT count(DISTINCT span_id) FROM read_parquet({[str(f) for f in files]!r})"
        assert sum(read_part_counts(f)["spans"] for f in files) > duckdb.connect().execute(query).fetchall()[0][0]
    old_day = expired_days(lake, SPANS)[0]
    for file in day_files(old_day, SPANS):  # one day written before footers had counts
        strip_footer_counts(file)
    expected = duckdb_counts(lake)
    assert expected == {"executions_deleted": 3, "nodes_deleted": 6}

    assert expire(lake, dry_run=True) == expected
    assert expire(lake) == expected
    assert history_runs(lake) == 1


def test_a_day_a_compaction_left_half_done_counts_each_node_once(lake: Path, monkeypatch) -> None:
    import runlake.compact as compaction

    write_history(lake, [(40, 30, "a"), (40, 30, "a"), (40, 30, "b"), (35, 30, "a"), (2, 30, "a")], nodes=5)
    compaction.compact(lake, tenant="b", older_than_minutes=0)  # tenant b's days: one compact- file each, names count

    def cannot_remove(path: Path) -> None:  # the compaction dies (or fails) once its merged file is in place
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(compaction, "remove_file", cannot_remove)
    compaction.compact(lake, tenant="a", older_than_minutes=0)
    halfway = [d for d in expired_days(lake, SPANS) if len(day_files(d, SPANS)) > 1]
    assert halfway and all(any(is_compacted(f) for f in day_files(d, SPANS)) for d in halfway), "merged and parts"
    files = [str(f) for d in expired_days(lake, SPANS) for f in day_files(d, SPANS)]
    query = "SELECT count({}) FILTER (WHERE span_type = 'node' AND record = 'end') FROM read_parquet({})"
    nodes, rows = (duckdb.connect().execute(query.format(c, files)).fetchall()[0][0] for c in ("DISTINCT span_id", "*"))
    assert nodes == 20 == duckdb_counts(lake)["nodes_deleted"] and rows == 35, "tenant a's 15 nodes in two files each"
    expected = {"executions_deleted": 4, "nodes_deleted": 20}
    [whole] = [d for d in expired_days(lake, SPANS) if "tenant=b" in str(d)]
    [day_file] = day_files(whole, SPANS)
    day_file.write_bytes(b"")  # a day without overlap is still counted from its file name alone

    assert expire(lake, dry_run=True) == expected
    assert expire(lake) == expected
    assert history_runs(lake) == 1


def test_a_span_stored_twice_is_counted_once(lake: Path) -> None:
    """A client retrying an export (or an ingest-log replay, an import run twice) stores the same spans again: in
    another part of the day, or in the same part when both copies reach one flush. Readers show each span once, so
    TTL counts each once, before compaction (several files: DuckDB) and after (one file: its name)."""
    made = make_spans(8, run_nodes=3)  # 2 runs of 3 nodes, in session s0
    old = -40 * DAY * 10**9
    for span in made:  # 40 days ago: expired under the default ttl of 30 days
        span._start_time += old
        span._end_time += old
    for tenant in ("a", "b"):  # the same spans in two tenants are two tenants' runs
        exporter = RunlakeSpanExporter(lake, tenant_id=tenant, background_flush=False)
        exporter.export(made)
        exporter.export(made)  # a retry within one flush: one part holds each span twice
        exporter.force_flush()
        exporter.export(made)  # a retry after a flush: another part
        exporter.force_flush()
        exporter.shutdown()
    expected = {"executions_deleted": 4, "nodes_deleted": 12}
    assert duckdb_counts(lake) == expected
    db = runlake.HistoryDB(lake, tenant_id="a")
    assert len(db.get_history(limit=100)) == 2, "readers show each run once"
    assert all(len(db.get_logs(r["run_id"])["nodes"]) == 3 for r in db.get_runs("s0")), "and each node once"
    for table in (RUNS, SPANS):
        for day in expired_days(lake, table):
            assert len(day_files(day, table)) == 2
            first, second = (counts_in_name(f) for f in day_files(day, table))
            assert first["spans"] < first["rows"] and second["spans"] == second["rows"], "twice in one, once in one"
    for day in expired_days(lake, SPANS):
        assert [counts_in_name(f)["nodes"] for f in day_files(day, SPANS)] == [6, 6], "distinct nodes in each name"

    assert expire(lake, dry_run=True) == expected
    compact(lake, older_than_minutes=0)
    one_file_per_day(lake)
    assert expire(lake, dry_run=True) == expected
    assert expire(lake) == expected
    assert not expired_days(lake, RUNS) and not expired_days(lake, SPANS)


def test_a_lake_without_footer_counts_is_counted_by_duckdb(lake: Path) -> None:
    write_history(lake, [(age, 30, "a") for age in range(31, 45)] + [(1, 30, "a")])
    for table in (RUNS, SPANS):
        for day in expired_days(lake, table):
            for file in day_files(day, table):
                strip_footer_counts(file)
    expected = duckdb_counts(lake)
    assert expected == {"executions_deleted": 14, "nodes_deleted": 28}
    assert expire(lake) == expected
    assert history_runs(lake) == 1


def test_per_run_ttl_and_max_age_stay_exact(lake: Path) -> None:
    write_history(lake, [(2, 1, "a"), (2, 3, "a"), (5, 3, "b"), (40, 30, "a"), (10, 30, "b"), (31, 30, "a")])
    assert duckdb_counts(lake) == {"executions_deleted": 4, "nodes_deleted": 8}
    assert expire(lake) == {"executions_deleted": 4, "nodes_deleted": 8}
    assert duckdb_counts(lake, max_age_days=5) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert expire(lake, max_age_days=5) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert history_runs(lake) == 1


# ---- removal --------------------------------------------------------------------------------------------------------
def test_expired_days_vanish_at_once_and_are_deleted_in_the_background(lake: Path) -> None:
    write_history(lake, [(40, 30, "a"), (41, 30, "a"), (39, 30, "b"), (1, 30, "a")])
    old = expired_days(lake, RUNS) + expired_days(lake, SPANS)
    assert len(old) == 6

    counts = expire(lake, inline_files=0)  # every deletion goes to the background thread
    assert counts == {"executions_deleted": 3, "nodes_deleted": 6}
    assert not any(folder.exists() for folder in old), "each day folder went in one rename"
    assert not expired_days(lake, RUNS) and not expired_days(lake, SPANS)
    assert history_runs(lake) == 1
    assert ttl.wait_for_deletes(timeout=60) is True
    assert ttl.pending_deletes() == 0 and not hidden(lake)
    assert {p.name for p in lake.rglob("day=*")} == {f"day={(NOW - dt.timedelta(days=1)).date()}"}


def test_small_expiries_are_deleted_before_the_call_returns(lake: Path) -> None:
    write_history(lake, [(40, 30, "a"), (1, 30, "a")])
    assert expire(lake) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert not hidden(lake) and ttl.pending_deletes() == 0


def test_leftovers_of_a_crash_are_swept_and_never_counted(lake: Path) -> None:
    write_history(lake, [(40, 30, "a"), (1, 30, "b")])
    tenant_a = lake / RUNS / f"tenant={encode_partition_value('a')}" / "ttl=30"
    leftover = tenant_a / f"{ttl.EXPIRED_PREFIX}day=2020-01-01-0badc0de"
    shutil.copytree(expired_days(lake, RUNS)[0], leftover)  # renamed, then the process died before deleting
    spans_leftover = lake / SPANS / f"tenant={encode_partition_value('b')}" / "ttl=30" / f"{ttl.EXPIRED_PREFIX}x"
    (spans_leftover / "session=s").mkdir(parents=True)
    (spans_leftover / "session=s" / "part-1.parquet").write_bytes(b"not even parquet")
    assert history_runs(lake) == 2, "readers never list hidden folders"

    assert expire(lake, dry_run=True) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert leftover.exists() and spans_leftover.exists(), "a dry run deletes nothing"
    assert ttl.expire(lake, LakeReader(), tenant="b", now=NOW) == {"executions_deleted": 0, "nodes_deleted": 0}
    assert ttl.wait_for_deletes(timeout=60)
    assert leftover.exists() and not spans_leftover.exists(), "a tenant's cleanup sweeps only that tenant"
    assert expire(lake) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert ttl.wait_for_deletes(timeout=60)
    assert not hidden(lake) and history_runs(lake) == 1


def test_dry_run_renames_and_deletes_nothing(lake: Path) -> None:
    write_history(lake, [(40, 30, "a"), (35, 7, "b"), (1, 30, "a")])
    (lake / RUNS / "tenant=a" / "ttl=30" / f"{ttl.EXPIRED_PREFIX}day=2020-01-01-1").mkdir()
    before = tree(lake)
    dry = expire(lake, dry_run=True)
    assert dry == {"executions_deleted": 2, "nodes_deleted": 4} and tree(lake) == before
    assert expire(lake) == dry
    assert ttl.wait_for_deletes(timeout=60) and not hidden(lake)


def test_gc_waits_for_the_background_deletes(lake: Path) -> None:
    write_history(lake, [(age, 30, "a") for age in range(31, 40)] + [(1, 30, "a")])  # 18 files: background
    result = CliRunner().invoke(app, ["gc", "--state-url", str(lake), "--json"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().startswith("{") and '"executions_deleted": 9' in result.stdout
    assert not hidden(lake) and ttl.pending_deletes() == 0, "nothing left for a process that exits now"


# ---- errors ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def tmpfs() -> Iterator[Callable[[Path], None]]:
    """Mount a real tmpfs on an empty folder, to make part of a lake read-only (needs root, as in test_exporter)."""
    mounted: list[Path] = []

    def mount(folder: Path) -> None:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
        mounted.append(folder)

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def make_read_only(folder: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def test_read_only_lake_is_a_clear_error_and_changes_nothing(tmpfs: Callable[[Path], None], tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    tmpfs(disk)
    lake = disk / "lake"
    write_history(lake, [(40, 30, "a"), (1, 30, "a")])
    make_read_only(disk)
    before = tree(lake)

    with pytest.raises(ttl.ExpireError) as raised:
        expire(lake)
    error = raised.value
    assert error.counts == {"executions_deleted": 0, "nodes_deleted": 0}
    assert "Read-only file system" in str(error) and "nothing was deleted" in str(error)
    assert str(expired_days(lake, RUNS)[0]) in str(error), "names the folder"
    assert {str(f) for f, _ in error.failed} == {str(f) for f in expired_days(lake, RUNS) + expired_days(lake, SPANS)}
    assert tree(lake) == before and history_runs(lake) == 2

    result = CliRunner().invoke(app, ["gc", "--state-url", str(lake)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "cannot remove expired folder" in result.stderr and "Read-only file system" in result.stderr
    assert str(expired_days(lake, RUNS)[0]) in result.stderr.replace("\n", "")


def test_a_folder_that_cannot_be_moved_is_not_counted(tmpfs: Callable[[Path], None], tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    write_history(lake, [(40, 30, "a"), (38, 30, "a"), (40, 30, "ro"), (1, 30, "a")])
    expected = duckdb_counts(lake)
    assert expected == {"executions_deleted": 3, "nodes_deleted": 6}
    # tenant "ro"'s runs index moves onto a file system that turns read-only; its spans stay writable
    frozen = lake / RUNS / "tenant=ro"
    shutil.move(frozen, tmp_path / "staging")
    frozen.mkdir()
    tmpfs(frozen)
    shutil.copytree(tmp_path / "staging", frozen, dirs_exist_ok=True)
    make_read_only(frozen)
    stuck = [d for d in expired_days(lake, RUNS) if "tenant=ro" in str(d)]
    assert len(stuck) == 1

    with pytest.raises(ttl.ExpireError) as raised:
        expire(lake)
    error = raised.value
    assert [str(f) for f, _ in error.failed] == [str(stuck[0])]
    assert error.counts == {"executions_deleted": 2, "nodes_deleted": 6}, "the stuck run is not reported as deleted"
    assert "more expired folders" not in str(error) and str(stuck[0]) in str(error)
    assert stuck[0].exists() and expired_days(lake, RUNS) == stuck
    assert not expired_days(lake, SPANS)


def test_spans_reusing_a_span_id_in_two_traces_are_counted_as_two_after_compaction(lake: Path) -> None:
    """A worker whose span-id counter restarted writes two runs (and two nodes) with the same span ids in two
    traces: readers show two of each, so TTL reports two of each, before compaction and after it (when the day is
    one file counted from its name)."""
    import itertools

    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator

    class Restarting(IdGenerator):
        def __init__(self) -> None:
            self.span_ids = itertools.count(1)

        def generate_span_id(self) -> int:
            return next(self.span_ids)

        def generate_trace_id(self) -> int:
            return RandomIdGenerator().generate_trace_id()

    start = dt.datetime.now(dt.timezone.utc).timestamp() * 1e9 - 3 * 86_400e9
    for k in range(2):
        provider = TracerProvider(id_generator=Restarting())
        provider.add_span_processor(SimpleSpanProcessor(RunlakeSpanExporter(lake, background_flush=False)))
        tracer = provider.get_tracer("worker")
        t0 = int(start) + k * 10**9
        attributes = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "bot", "session.id": f"s{k}"}
        run = tracer.start_span("invoke_agent bot", start_time=t0, attributes={**attributes, "runlake.ttl_days": 1})
        with trace.use_span(run, end_on_exit=False):
            node = tracer.start_span(
                "execute_tool t",
                start_time=t0 + 1,
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "t", "runlake.ttl_days": 1},
            )
            node.end(end_time=t0 + 2)
        run.end(end_time=t0 + 3)
        provider.shutdown()
    db = runlake.HistoryDB(lake)
    assert len(db.get_history()) == 2
    expected = {"executions_deleted": 2, "nodes_deleted": 2}
    assert db.cleanup_expired(dry_run=True) == expected
    compact(lake, older_than_minutes=0)
    assert all(len(list(day.glob("*/*.parquet"))) == 1 for day in (lake / "spans").glob("*/*/day=*"))
    assert runlake.HistoryDB(lake).cleanup_expired(dry_run=True) == expected


def test_now_is_a_utc_moment_whatever_the_process_time_zone(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A naive ``now`` (``datetime.utcnow()``) is UTC, not the process's local time; ``max_age_days`` and ``now``
    of the wrong kind are refused with a message, not half-applied (-1 removed today's folders)."""
    import time

    write_history(lake, [(3, 1, "a"), (1, 30, "a")])
    before = tree(lake)
    due = (NOW - dt.timedelta(days=3)).date() + dt.timedelta(days=2)  # the run of 3 days ago expires at 00:00 UTC
    just_after = dt.datetime.combine(due, dt.time(0, 30))  # naive: 00:30 UTC
    with monkeypatch.context() as m:
        for zone in ("Asia/Kolkata", "Pacific/Kiritimati"):  # 00:30 UTC is the day before there... if local time
            m.setenv("TZ", zone)
            time.tzset()
            assert runlake.HistoryDB(lake).cleanup_expired(now=just_after, dry_run=True)["executions_deleted"] == 1
    time.tzset()
    db = runlake.HistoryDB(lake)
    for bad in (-1, 0.5, True, "3"):
        with pytest.raises(ValueError, match="max_age_days"):
            db.cleanup_expired(max_age_days=bad)  # type: ignore[arg-type]
    for bad in (1.7e9, "2030-01-01", dt.date(2030, 1, 1)):
        with pytest.raises(TypeError, match="now must be a datetime"):
            db.cleanup_expired(now=bad)  # type: ignore[arg-type]
    assert tree(lake) == before


def test_a_run_is_kept_through_its_last_day_and_goes_the_day_after(lake: Path) -> None:
    """docs/design.md (TTL): ``day=D`` under ``ttl=N`` goes when ``D + N < today``, so a run is kept through day D+N
    and gone from D+N+1; ``max_age_days`` is the same bound. Deleting on day D+N itself takes a day of data its owner
    was promised. Today is taken from the days the runs landed in, so a test run across midnight UTC still holds."""
    write_history(lake, [(10, 10, "a"), (11, 10, "a"), (5, 30, "b"), (6, 30, "b")])
    days = {
        (tenant, ttl_days): sorted(day for t, n, day, _ in day_dirs(lake, RUNS) if (t, n) == (tenant, ttl_days))
        for tenant, ttl_days in (("a", 10), ("b", 30))
    }
    oldest, last_day = (dt.date.fromisoformat(d) for d in days["a", 10])
    assert last_day - oldest == dt.timedelta(days=1), "the two ttl=10 runs are on consecutive days"
    today = last_day + dt.timedelta(days=10)  # the newer ttl=10 run's last day: D + N == today
    now = dt.datetime.combine(today, dt.time(12), dt.timezone.utc)
    assert [dt.date.fromisoformat(d) for d in days["b", 30]] == [today - dt.timedelta(days=n) for n in (6, 5)]

    def sessions() -> list[str]:
        return [s for (s,) in runlake.HistoryDB(lake).sql("SELECT session_id FROM runs ORDER BY 1").fetchall()]

    assert sessions() == ["s0-10-10", "s1-11-10", "s2-5-30", "s3-6-30"]
    assert ttl.expire(lake, LakeReader(), now=now) == {"executions_deleted": 1, "nodes_deleted": 2}
    assert sessions() == ["s0-10-10", "s2-5-30", "s3-6-30"], "only the run a day past its ttl went"
    assert ttl.expire(lake, LakeReader(), now=now, max_age_days=5) == {"executions_deleted": 2, "nodes_deleted": 4}
    assert sessions() == ["s2-5-30"], "max_age_days=5 keeps a 5-day-old run, removes the 6- and 10-day-old ones"
