"""The fast read paths of HistoryDB give the answers of the straightforward queries they replaced.

With the in-memory runs index (``runlake.run_index``) history pages, traces and runs are picked in memory and only
their days' files are read; without it (``index_max_rows=0``, or a lake past the cap) ``get_history`` /
``get_traces(limit=)`` walk ``runs/`` day folders newest first. ``get_traces`` reads the spans of all its sessions in
one query; ``sql()`` builds its views without checking every file first. Each is compared with the old whole-index
query on a lake spread over many days, with ties, runs in progress, runs written in two files, tenants, TTL and
rewritten files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import lake_files
from opentelemetry import trace
from opentelemetry.exporter.runlake.layout import RUNS, day_dirs, new_part_name, session_files, table_files

import runlake
from runlake import query as query_module
from runlake.history import HistoryDB
from runlake.instrument import shifted_clock
from runlake.query import LATEST_ROW

DAY = 86_400
AGENTS = ("alpha", "beta", "gamma")


def _build(lake: Path) -> dict[str, list[str]]:
    """Runs over 12 days: 3 agents, 3 users, 2 tenants, equal start times, in-progress runs, start and end rows
    of one run in different files."""
    ids: dict[str, list[str]] = {"runs": [], "open": []}
    runlake.configure(lake)
    try:
        for i in range(42):
            day_offset = -(i % 12) * DAY - 3600 * (i % 5)
            with shifted_clock(day_offset, frozen=True) as advance:  # frozen: runs of one offset start together
                with runlake.run(
                    AGENTS[i % 3],
                    f"session-{i % 7}",
                    user_id=f"user-{i % 3}",
                    tenant_id="other" if i % 10 == 0 else None,
                    input=f"question {i}",
                    ttl_days=3 if i % 11 == 0 else 30,
                ) as r:
                    if i % 4 == 0:
                        runlake.force_flush()  # the run's start row goes to a file of its own
                    with runlake.node("llm-call", type="llm", input="x") as n:
                        advance(1.5)
                        n.set_usage(10, i)
                    with runlake.node("tool-call", type="tool"):
                        advance(0.5)
                    r.set_output(f"answer {i}")
                    ids["runs"].append(r.run_id)
        tracer = trace.get_tracer("test")
        for i in range(3):  # never ended: only their start rows exist
            with shifted_clock(-i * DAY):
                span = tracer.start_span(
                    f"invoke_agent {AGENTS[i]}",
                    attributes={"runlake.span.type": "run", "gen_ai.agent.name": AGENTS[i], "session.id": "open"},
                )
                ids["open"].append(f"{span.get_span_context().span_id:016x}")
        runlake.force_flush()
    finally:
        runlake.shutdown()
    return ids


@pytest.fixture
def lake_ids(lake: Path) -> dict[str, list[str]]:
    return _build(lake)


def _index(db: HistoryDB, where: str, params: list, order_limit: str) -> list[dict]:
    """The old way: one query over every runs/ file."""
    sql = f"SELECT * FROM {{files}} WHERE true {where} {LATEST_ROW} {order_limit}"
    return db._reader.rows(sql, lambda: table_files(db.root, RUNS, db.tenant_id), params)


def _history_reference(db: HistoryDB, agent: str | None, skip: int, limit: int) -> list[dict]:
    params: list = []
    where = db._scope_sql(params)
    if agent is not None:
        where += " AND (agent_name = ? OR agent_id = ?)"
        params += [agent, agent]
    rows = _index(db, where, [*params, limit, skip], "ORDER BY start_time_unix_nano DESC, run_id LIMIT ? OFFSET ?")
    return [db._history_item(r) for r in rows]


def _traces_reference(db: HistoryDB, user_id: str | None, limit: int) -> list[dict]:
    params: list = []
    where = db._scope_sql(params)
    if user_id is not None:
        where += " AND user_id = ?"
        params.append(user_id)
    runs = _index(
        db, where + " AND parent_span_id IS NULL", [*params, limit], "ORDER BY start_time_unix_nano DESC LIMIT ?"
    )
    spans: dict[str, list[dict]] = {}
    by_session: dict[str, set[str]] = {}
    for run in runs:
        by_session.setdefault(run["session_id"] or "", set()).add(run["trace_id"])
    for session_id, trace_ids in by_session.items():  # the old way: one query per session
        sql = (
            f"SELECT * FROM {{files}} WHERE list_contains(?, trace_id) {LATEST_ROW} "
            "ORDER BY start_time_unix_nano, parent_span_id IS NOT NULL, span_id"
        )
        lister = lambda s=session_id: session_files(db.root, s, db.tenant_id)  # noqa: E731
        for row in db._reader.rows(sql, lister, [sorted(trace_ids)]):
            spans.setdefault(row["trace_id"], []).append(row)
    return [db._trace_dict(r, spans.get(r["trace_id"], [])) for r in runs]


def _key(trace: dict) -> tuple:
    return (trace["started_at"], trace["trace_id"])


@pytest.mark.parametrize("index_rows", [1000, 0], ids=["index-in-memory", "index-on-disk"])
def test_history_pages_equal_the_whole_index_query(lake: Path, lake_ids: dict, index_rows: int) -> None:
    days = {day for _, _, day, _ in day_dirs(lake, RUNS)}
    assert len(days) >= 12
    dbs = [HistoryDB(lake, index_max_rows=index_rows)]
    dbs += [dbs[0].scoped(tenant_id="other"), dbs[0].scoped(user_id="user-1")]
    for db in dbs:
        for agent in (None, "alpha", "gamma", "nobody"):
            for skip, limit in ((0, 1), (0, 5), (3, 4), (7, 20), (20, 20), (0, 100), (44, 3), (200, 5)):
                assert db.get_history(agent, skip=skip, limit=limit) == _history_reference(db, agent, skip, limit), (
                    db.tenant_id,
                    db.user_id,
                    agent,
                    skip,
                    limit,
                )
    everything = HistoryDB(lake).get_history(limit=1000)
    assert len(everything) == 45 and sum(1 for h in everything if h["status"] == "running") == 3
    for db in dbs:  # limit=None: all of them, as get_runs and get_traces take it
        for agent in (None, "alpha"):
            assert db.get_history(agent, skip=2, limit=None) == _history_reference(db, agent, 2, 1000)


@pytest.mark.parametrize("index_rows", [1000, 0], ids=["index-in-memory", "index-on-disk"])
def test_traces_with_limit_equal_the_old_queries(lake: Path, lake_ids: dict, index_rows: int) -> None:
    db = HistoryDB(lake, index_max_rows=index_rows)
    for user_id in (None, "user-0", "user-2"):
        for limit in (1, 3, 10, 100):
            fast = db.get_traces(user_id=user_id, limit=limit)
            reference = _traces_reference(db, user_id, limit)
            assert sorted(fast, key=_key) == sorted(reference, key=_key)
            assert [t["started_at"] for t in fast] == [t["started_at"] for t in reference]
            assert all(t["spans"] for t in fast)


def test_runs_and_user_traces_through_the_index_equal_the_files_in_every_scope(lake: Path, lake_ids: dict) -> None:
    """get_runs takes its rows from the in-memory index and reads only their text; get_traces(user) picks the
    user's runs by a per-user map: both give the answers of the on-disk path, in every scope, with limits."""
    in_memory, on_disk = HistoryDB(lake), HistoryDB(lake, index_max_rows=0)
    pairs = [(in_memory, on_disk)]
    for scope in ({"tenant_id": "other"}, {"user_id": "user-1"}, {"tenant_id": "other", "user_id": "user-0"}):
        pairs.append((in_memory.scoped(**scope), on_disk.scoped(**scope)))
    for fast, reference in pairs:
        for session in [f"session-{i}" for i in range(7)] + ["open", "nobody"]:
            for limit in (None, 1, 2):
                assert fast.get_runs(session, limit) == reference.get_runs(session, limit), (session, limit)
        for user in (None, "user-0", "user-1", "user-2", "nobody"):
            for limit in (1, 4, 100):
                got, want = fast.get_traces(user_id=user, limit=limit), reference.get_traces(user_id=user, limit=limit)
                assert sorted(got, key=_key) == sorted(want, key=_key), (fast.tenant_id, fast.user_id, user, limit)
    assert any(r["input_content"] and r["output_content"] for r in in_memory.get_runs("session-1"))


def test_traces_of_many_nested_runs_fill_the_limit_without_the_index(lake: Path) -> None:
    """Without the in-memory index get_traces(limit) reads only the newest runs; traces of 12 runs each need more
    than the first window (4 x limit + 50 runs) to find `limit` traces."""
    runlake.configure(lake)
    try:
        for t in range(15):
            with shifted_clock(-3600 * (15 - t), frozen=True) as advance:
                with runlake.run("planner", f"s-{t}", user_id="u") as root:
                    for k in range(11):
                        advance(1)
                        with runlake.run(f"worker-{k}", f"s-{t}", user_id="u"):
                            with runlake.node("step", type="tool"):
                                advance(0.1)
                    root.set_output(f"plan {t}")
    finally:
        runlake.shutdown()
    in_memory, on_disk = HistoryDB(lake), HistoryDB(lake, index_max_rows=0)
    for limit in (1, 10, 15, 20):
        got = on_disk.get_traces(user_id="u", limit=limit)
        assert len(got) == min(limit, 15), limit
        assert got == in_memory.get_traces(user_id="u", limit=limit)
        assert all(t["agent_name"] == "planner" and len(t["spans"]) == 23 for t in got)


def test_runs_that_start_in_the_same_nanosecond_read_alike_on_every_path(lake: Path) -> None:
    """Clocks of a millisecond (other SDKs, over OTLP) start a nested run with its parent and a session's runs
    together: the root still describes its trace, and every path lists equal starts in one order (by run id), so a
    limit cuts the same runs."""
    runlake.configure(lake)
    roots, nested, together = {}, {}, []
    try:
        with shifted_clock(-3600, frozen=True) as advance:
            for i in range(8):  # the nested run's span id sorts below its root's in about half of them
                with runlake.run("outer", f"pair-{i}", user_id="u") as outer:
                    with runlake.run("inner", f"pair-{i}", user_id="u") as inner:
                        pass
                roots[outer.span.get_span_context().trace_id], nested[i] = outer.run_id, inner.run_id
                advance(1)
            for _ in range(6):  # six runs of one session, one start
                with runlake.run("burst", "same-start", user_id="v") as r:
                    pass
                together.append(r.run_id)
    finally:
        runlake.shutdown()
    in_memory, on_disk = HistoryDB(lake), HistoryDB(lake, index_max_rows=0)
    for db in (in_memory, on_disk):
        described = [t["run_id"] for t in db.get_traces(user_id="u")]
        assert sorted(described) == sorted(roots.values())
        assert [t["run_id"] for t in db.get_traces(limit=20) if t["agent_name"] != "burst"] == described
        for i in range(8):
            assert [t["agent_name"] for t in db.get_traces(session_id=f"pair-{i}")] == ["outer"]
        assert [r["run_id"] for r in db.get_runs("same-start")] == sorted(together)
        assert [r["run_id"] for r in db.get_runs("same-start", limit=2)] == sorted(together)[:2]
        assert [h["run_id"] for h in db.get_history("burst", skip=1, limit=3)] == sorted(together)[1:4]
    assert in_memory.get_traces() == on_disk.get_traces()
    assert in_memory.get_runs("same-start") == on_disk.get_runs("same-start")


@pytest.mark.parametrize("index_rows", [1000, 0], ids=["index-in-memory", "index-on-disk"])
def test_find_run_and_logs_through_the_index(lake: Path, lake_ids: dict, index_rows: int) -> None:
    db = HistoryDB(lake, index_max_rows=index_rows)
    for run_id in lake_ids["runs"] + lake_ids["open"] + ["0000000000000000"]:
        reference = _index(db, " AND run_id = ?", [run_id], "LIMIT 1")
        assert db.find_run(run_id) == (reference[0] if reference else None)
    assert (db.run_index() is not None) == bool(index_rows)
    if index_rows:
        assert db.run_index().size == 45
    for i, run_id in enumerate(lake_ids["runs"]):
        logs = db.get_logs(run_id)
        assert logs["summary"]["total_nodes"] == 2 and logs["final_output"] == f"answer {i}"
    for run_id in lake_ids["open"]:
        logs = db.get_logs(run_id)
        assert logs["nodes"] == [] and logs["summary"]["total_duration"] is None
    with pytest.raises(LookupError):
        db.get_logs("0000000000000000")
    # tenants: the index is shared, the scope still applies
    other = db.scoped(tenant_id="other")
    assert other.find_run(lake_ids["runs"][0])["tenant_id"] == "other"
    assert other.find_run(lake_ids["runs"][1]) is None
    assert HistoryDB(lake, tenant_id="other").find_run(lake_ids["runs"][1]) is None


def test_find_run_sees_new_runs_rewritten_files_and_ttl(lake: Path, lake_ids: dict) -> None:
    db = HistoryDB(lake)
    assert db.find_run(lake_ids["runs"][2]) is not None  # the map is built
    runlake.configure(lake)
    try:
        with runlake.run("late", "session-late") as r:
            late = r.run_id
    finally:
        runlake.shutdown()
    assert db.find_run(late)["agent_name"] == "late", "files written after the map was built are read"
    # a day folder rewritten into one new file (as compaction does): the run is still found there
    victim_day = next(folder for _, _, day, folder in day_dirs(lake, RUNS) if len(list(folder.glob("*.parquet"))) > 1)
    parts = sorted(victim_day.glob("*.parquet"))
    merged = pa.concat_tables([pq.read_table(p) for p in parts], promote_options="default")
    pq.write_table(merged, victim_day / new_part_name())
    for p in parts:
        p.unlink()
    run_ids = set(merged.column("run_id").to_pylist())
    for run_id in run_ids:
        assert db.find_run(run_id) == _index(db, " AND run_id = ?", [run_id], "LIMIT 1")[0]
    # TTL: runs of expired days are gone, even though the map still names their day
    db.cleanup_expired(max_age_days=0)
    for run_id in lake_ids["runs"]:
        assert db.find_run(run_id) == (lambda rows: rows[0] if rows else None)(
            _index(db, " AND run_id = ?", [run_id], "LIMIT 1")
        )


def test_a_lake_past_the_index_cap_is_read_from_disk(lake: Path, lake_ids: dict, caplog) -> None:
    db = HistoryDB(lake, index_max_rows=10)
    with caplog.at_level(logging.WARNING):
        assert db.run_index() is None
    assert "more than 10 rows" in caplog.text
    for run_id in lake_ids["runs"][:6] + ["ffffffffffffffff"]:
        reference = _index(db, " AND run_id = ?", [run_id], "LIMIT 1")
        assert db.find_run(run_id) == (reference[0] if reference else None)
    assert len(db.get_history(limit=1000)) == 45


def test_sql_views_skip_a_broken_file_found_by_the_query_itself(lake: Path, lake_ids: dict, caplog) -> None:
    before = HistoryDB(lake).sql("SELECT count(*) FROM spans").fetchall()[0][0]
    victim = next(p for p in lake_files(lake, "spans") if p.suffix == ".parquet")
    lost = pq.read_metadata(victim).num_rows
    victim.write_bytes(victim.read_bytes()[:100])
    junk = next(p for p in lake_files(lake, "runs") if p.suffix == ".parquet").parent / "part-zzz-junk.parquet"
    junk.write_bytes(b"PAR1 not really")
    db = HistoryDB(lake)  # a fresh reader: nothing set aside yet
    with caplog.at_level(logging.WARNING):
        after = db.sql("SELECT count(*) FROM spans").fetchall()[0][0]
        runs = db.sql("SELECT count(*) FROM runs").fetchall()[0][0]
    warnings = " ".join(r.getMessage() for r in caplog.records)
    assert str(victim) in warnings and str(junk) in warnings
    assert 0 < before - after <= lost and runs == 45
    assert db.sql("SELECT count(*) FROM spans").fetchall()[0][0] == after


def test_sql_views_list_again_when_a_file_vanished(lake: Path, lake_ids: dict, monkeypatch) -> None:
    real = query_module.table_files
    calls = {"n": 0}

    def listing_with_a_ghost(root, table, tenant=None, *args):  # noqa: ANN001, ANN202
        files = real(root, table, tenant, *args)
        calls["n"] += 1
        return files + [files[0].parent / "part-0-gone.parquet"] if calls["n"] <= 2 and files else files

    monkeypatch.setattr(query_module, "table_files", listing_with_a_ghost)
    db = HistoryDB(lake)
    assert db.sql("SELECT count(*) FROM runs").fetchall()[0][0] == 45
    assert calls["n"] >= 3


def test_reads_outlast_compaction_that_keeps_replacing_the_files_they_list(
    lake: Path, lake_ids: dict, monkeypatch
) -> None:
    """Compaction looping beside a busy writer can replace the files a query listed several times in a row: each
    listing then names a file gone by the time DuckDB opens it. Reads list again, waiting a little longer each
    time, and answer (here the first six listings are stale; three or four quick attempts all failed)."""
    from runlake.query import LakeReader

    real = query_module.table_files
    calls = {"n": 0}

    def stale_listing(root, table, tenant=None, *args):  # noqa: ANN001, ANN202
        files = real(root, table, tenant, *args)
        calls["n"] += 1
        return files + [files[0].parent / f"part-{calls['n']}-gone.parquet"] if calls["n"] <= 6 and files else files

    monkeypatch.setattr(query_module, "table_files", stale_listing)
    db = HistoryDB(lake)
    assert db.sql_rows("SELECT count(*) FROM runs")[1] == [(45,)]
    assert calls["n"] == 7
    calls["n"] = 0
    expected = LakeReader().rows("SELECT count(*) AS n FROM {files}", lambda: real(lake, "runs"))
    rows = LakeReader().rows("SELECT count(*) AS n FROM {files}", lambda: stale_listing(lake, "runs"))
    assert rows == expected and calls["n"] == 7


def test_sql_rows_runs_again_when_compaction_removes_a_file_after_the_views_were_made(
    lake: Path, lake_ids: dict, monkeypatch
) -> None:
    """A relation from ``sql()`` reads its files when it runs; ``sql_rows`` runs at once and makes the views again
    when a file went in between. The race is placed deterministically: compaction runs right after the first views
    are built."""
    from runlake.compact import compact

    db = HistoryDB(lake)
    expected = db.sql_rows("SELECT count(*) AS n FROM spans")
    assert expected is not None and expected[0] == ["n"] and expected[1][0][0] > 0
    lazy = db.sql("SELECT count(*) FROM spans")
    compact(lake, older_than_minutes=0)
    with pytest.raises(duckdb.IOException):
        lazy.fetchall()  # the documented behaviour of a lazy relation

    runlake.configure(lake)  # new parts for the next compaction to remove
    try:
        for _ in range(3):  # three parts in one session folder
            with runlake.run("late", "session-late"):
                pass
            runlake.force_flush()
    finally:
        runlake.shutdown()
    parts = [p for p in lake_files(lake, "spans") if p.name.startswith("part-") and "session-late" in str(p)]
    assert len(parts) >= 3
    query = "SELECT count(*) AS n, count(DISTINCT span_id) AS spans, max(length(name)) AS name FROM spans"
    expected = HistoryDB(lake).sql_rows(query)
    real_views = db._reader.views
    calls = {"n": 0}

    def views_then_compaction(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        con = real_views(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 1:
            compact(lake, older_than_minutes=0)  # the parts the views name are gone before the query runs
        return con

    monkeypatch.setattr(db._reader, "views", views_then_compaction)
    assert db.sql_rows(query) == expected
    assert calls["n"] == 2 and not any(p.exists() for p in parts)


@pytest.mark.parametrize(
    ("column", "values"),
    [("start_time_unix_nano", "timestamp"), ("input_tokens", "text"), ("node_type", "numbers")],
)
def test_a_part_file_with_foreign_column_types_is_set_aside_by_name(
    lake: Path, lake_ids: dict, column: str, values: str, caplog
) -> None:
    """One part whose column types the table cannot hold (another writer's) would fail every query, or turn a column
    into text lake-wide; it is skipped with a warning naming it, and every shape answers from the rest."""
    db = HistoryDB(lake)
    session = "session-1"
    runs_before = db.get_runs(session)
    total = db.sql_rows("SELECT count(*), sum(input_tokens) FROM spans")
    good = next(p for p in lake_files(lake, "spans") if f"session={session}" in str(p))
    table = pq.read_table(good)
    position = table.schema.get_field_index(column)
    if values == "timestamp":
        foreign = table.column(column).cast(pa.timestamp("ns"))
    elif values == "text":
        foreign = pa.array(["n/a"] * table.num_rows)
    else:
        foreign = pa.array(range(table.num_rows), pa.int64())
    planted = good.parent / new_part_name()
    pq.write_table(table.set_column(position, column, foreign).slice(0, 1), planted)

    fresh = HistoryDB(lake)
    with caplog.at_level(logging.WARNING):
        assert fresh.get_runs(session) == runs_before
        assert fresh.sql_rows("SELECT count(*), sum(input_tokens) FROM spans") == total
        assert fresh.get_logs(runs_before[0]["run_id"])["run_id"] == runs_before[0]["run_id"]
        assert len(fresh.get_traces(session_id=session)) == len(runs_before)
    assert f"skipping part file {planted}: {column} is" in caplog.text


def test_string_view_columns_are_read_not_set_aside(lake: Path, lake_ids: dict, caplog) -> None:
    """Arrow's string_view (other writers, e.g. Polars) reads as text: the type check must not set it aside."""
    db = HistoryDB(lake)
    expected = db.sql_rows("SELECT count(*), count(DISTINCT session_id) FROM spans")
    good = next(p for p in lake_files(lake, "spans") if p.suffix == ".parquet")
    table = pq.read_table(good)
    columns = {
        f.name: table[f.name].cast(pa.string_view()) if pa.types.is_string(f.type) else table[f.name]
        for f in table.schema
    }
    pq.write_table(pa.table(columns), good)
    with caplog.at_level(logging.WARNING):
        assert HistoryDB(lake).sql_rows("SELECT count(*), count(DISTINCT session_id) FROM spans") == expected
    assert "skipping part file" not in caplog.text


def test_the_index_forgets_removed_files_and_reads_new_ones(lake: Path, lake_ids: dict) -> None:
    db = HistoryDB(lake)
    assert db.run_index().size == 45
    victim_day = next(folder for _, _, day, folder in day_dirs(lake, RUNS) if len(list(folder.glob("*.parquet"))) > 1)
    gone = {r for p in victim_day.glob("*.parquet") for r in pq.read_table(p).column("run_id").to_pylist()}
    for p in victim_day.glob("*.parquet"):
        p.unlink()
    assert db.run_index().size == 45 - len(gone)
    assert all(db.find_run(run_id) is None for run_id in gone)
    runlake.configure(lake)
    try:
        with runlake.run("late", "session-late") as r:
            late = r.run_id
    finally:
        runlake.shutdown()
    assert db.run_index().size == 46 - len(gone)
    assert db.get_history(limit=1)[0]["run_id"] == late


def test_threads_that_queried_the_index_do_not_keep_old_versions_alive(lake: Path, lake_ids: dict) -> None:
    """A server answers from a pool of threads; each has its own DuckDB cursor. A cursor that kept the index table
    it last queried registered would keep that version alive after a refresh: one copy per thread."""
    import gc
    import threading
    import weakref

    db = HistoryDB(lake)
    index = db.run_index()
    old = weakref.ref(index._table)
    answered = threading.Semaphore(0)
    release = threading.Event()

    def pool_thread() -> None:  # queries once, then stays alive (idle), as a server's worker thread does
        assert index.rows("SELECT count(*) AS n FROM {index}") == [{"n": 45}]
        answered.release()
        release.wait(30)

    threads = [threading.Thread(target=pool_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in threads:
            assert answered.acquire(timeout=30)
        runlake.configure(lake)
        try:
            with runlake.run("late", "session-late"):
                pass
        finally:
            runlake.shutdown()
        assert db.run_index().rows("SELECT count(*) AS n FROM {index}") == [{"n": 46}]
        gc.collect()
        assert old() is None, "an idle thread's cursor still holds the index as it was before the refresh"
    finally:
        release.set()
        for thread in threads:
            thread.join(30)


def test_duckdb_does_not_cache_the_contents_of_every_file_it_read(lake: Path, lake_ids: dict) -> None:
    """Compaction and TTL replace files all day; DuckDB's external file cache kept an entry for each one ever read
    (a long-lived server grew with them). Both connections run without it."""
    db = HistoryDB(lake)
    db.get_history(limit=5)
    for connection in (db._reader._db(), db.run_index()._db()):
        [(enabled,)] = connection.sql("SELECT current_setting('enable_external_file_cache')").fetchall()
        assert enabled is False


def test_compacted_days_skip_deduplication_and_late_parts_rejoin_it(lake: Path) -> None:
    """A day whose only file is a compact- file is read as is; a late part in that day (the end row of a run whose
    start row was compacted) puts the whole day back through the de-duplication: still one row per span."""
    from opentelemetry.exporter.runlake.layout import SPANS, is_compacted
    from opentelemetry.exporter.runlake.writer import write_part

    from runlake.query import split_clean

    runlake.configure(lake)
    try:
        tracer = trace.get_tracer("test")
        span = tracer.start_span(
            "invoke_agent late", attributes={"runlake.span.type": "run", "session.id": "s-late", "user.id": "u"}
        )
        runlake.force_flush()  # the start rows are written; the run goes on
        run_id = f"{span.get_span_context().span_id:016x}"
        db = HistoryDB(lake)
        assert db.get_runs("s-late")[0]["status"] == "running"
        # compaction's output: each day's rows in one compact- file, each span once
        for table in (SPANS, RUNS):
            for part in [p for p in lake_files(lake, table) if p.suffix == ".parquet"]:
                write_part(table, part.parent, pq.read_table(part), compacted=True)
                part.unlink()
        files = session_files(lake, "s-late")
        assert len(files) == 1 and is_compacted(files[0]) and split_clean(files) == (files, [])
        assert [r["status"] for r in db.get_runs("s-late")] == ["running"]
        span.end()  # the end row arrives in a new part of the same day
        runlake.force_flush()
        files = session_files(lake, "s-late")
        assert len(files) == 2 and split_clean(files) == ([], files)
        runs = db.get_runs("s-late")
        assert [(r["run_id"], r["status"]) for r in runs] == [(run_id, "completed")]
        assert [h["status"] for h in db.get_history() if h["run_id"] == run_id] == ["completed"]
        assert db.sql("SELECT count(*) FROM runs").fetchall()[0][0] == 1
    finally:
        runlake.shutdown()


def test_compacted_lake_point_reads_equal_the_answers_before(lake: Path, lake_ids: dict) -> None:
    """After compaction closed days are one sorted file each, read through pyarrow by session row groups (several
    sessions at once for traces); every answer equals the one the uncompacted lake gave."""
    from runlake.compact import compact

    def answers(db: HistoryDB) -> dict:
        sessions = [f"session-{i}" for i in range(7)] + ["open"]
        return {
            "runs": {s: db.get_runs(s) for s in sessions},
            "session traces": {s: db.get_traces(session_id=s) for s in sessions},
            "logs": {r: db.get_logs(r) for r in lake_ids["runs"] + lake_ids["open"]},
            "traces": {
                (u, n): sorted(db.get_traces(user_id=u, limit=n), key=_key)
                for u in (None, "user-0", "user-1", "user-2")
                for n in (1, 3, 10, 100)
            },
            "history": {(a, k): db.get_history(a, skip=k, limit=7) for a in (None, "alpha", "beta") for k in (0, 5)},
        }

    before = answers(HistoryDB(lake, index_max_rows=0))
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged >= 10
    db = HistoryDB(lake)
    assert db.warm() > 0
    served = []
    real = db._reader.session_rows

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        found = real(*args, **kwargs)
        served.append(found is not None)
        return found

    db._reader.session_rows = counted
    after = answers(db)
    for key in before:
        assert after[key] == before[key], key
    assert sum(served) > 20, "the compacted days were read through the pyarrow point reads"


@pytest.mark.parametrize("compacted", [False, True], ids=["parts", "compacted-day"])
def test_part_files_without_a_current_column_read_it_as_null(lake: Path, compacted: bool) -> None:
    """Files written before a column existed (here every file lacks ``error_type`` and ``node_type``): every query
    and view reads those columns as null instead of failing to bind (union_by_name only unions the listed files),
    and the pyarrow point reads of compacted days leave such files to DuckDB."""
    from runlake.compact import compact

    runlake.configure(lake)
    try:
        with shifted_clock(-2 * DAY if compacted else 0), runlake.run("bot", "old-1", user_id="u") as r:
            with runlake.node("a", type="tool"):
                pass
            with pytest.raises(RuntimeError), runlake.node("b", type="llm"):
                raise RuntimeError("boom")
            r.set_output("done")
    finally:
        runlake.shutdown()
    if compacted:
        assert compact(lake, older_than_minutes=0).days_merged >= 1
    for part in (*lake_files(lake, "spans"), *lake_files(lake, "runs")):
        table = pq.read_table(part)
        pq.write_table(table.drop_columns([c for c in ("error_type", "node_type") if c in table.column_names]), part)
    for index_rows in (0, 1000):
        db = HistoryDB(lake, index_max_rows=index_rows)
        assert [x["run_id"] for x in db.get_runs("old-1")] == [r.run_id]
        logs = db.get_logs(r.run_id)
        assert [(n["id"], n["type"]) for n in logs["nodes"]] == [("a", None), ("b", None)]
        assert logs["errors"][0]["error_type"] is None and logs["summary"]["failed_nodes"] == 1
        assert len(db.get_traces(session_id="old-1")[0]["spans"]) == 3 and len(db.get_traces()) == 1
        assert [h["run_id"] for h in db.get_history()] == [r.run_id]
        assert db.sql("SELECT count(*), count(error_type) FROM spans").fetchall() == [(3, 0)]
        assert db.sql("SELECT count(node_type) FROM spans").fetchall() == [(0,)]


def lake_with_a_damaged_footer(root: Path | str, write: bool = True) -> str:
    """Two runs of session ``s`` 40 days ago (``ttl_days`` 30: expired), each in its own ``runs/`` part; the first
    part's Parquet footer overwritten with garbage (magic bytes and footer length intact: bit rot, a partial
    overwrite). Returns the damaged file's name as readers print it."""
    import struct

    import pyarrow.fs as pafs
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.exporter.runlake.layout import resolve_lake
    from opentelemetry.sdk.trace import TracerProvider

    exporter = RunlakeSpanExporter(root, background_flush=False)
    tracer = TracerProvider().get_tracer("t")
    start = (int(__import__("time").time()) // 86_400 - 40) * 86_400 * 10**9
    for i in range(2):
        attributes = {"runlake.span.type": "run", "session.id": "s", "gen_ai.agent.name": "a", "runlake.ttl_days": 30}
        span = tracer.start_span(f"run {i}", start_time=start + i, attributes=attributes)
        span.end(end_time=start + i + 10)
        exporter.export([span])
        exporter.force_flush()
    exporter.shutdown()
    first = table_files(resolve_lake(root), RUNS)[0]
    filesystem, path = (first.fs, first.path) if not isinstance(first, Path) else (pafs.LocalFileSystem(), str(first))
    with filesystem.open_input_file(path) as source:
        data = source.read()
    length = struct.unpack("<I", data[-8:-4])[0]
    with filesystem.open_output_stream(path) as out:
        out.write(data[: len(data) - 8 - length] + b"\xff" * length + data[-8:])
    return str(first)


def test_a_part_with_a_damaged_footer_is_set_aside_by_every_read_and_by_ttl(tmp_path: Path, caplog) -> None:
    """A footer DuckDB cannot decode raises its plain ``Error`` ("don't know what type"), which reads did not take
    for a file's fault: history failed, the runs index turned itself off, and TTL could never expire the day."""
    damaged = lake_with_a_damaged_footer(tmp_path / "lake")
    db = HistoryDB(tmp_path / "lake")
    with caplog.at_level(logging.WARNING):
        assert len(db.get_history()) == 1
        assert len(db.get_runs("s")) == 1
        assert db.sql_rows("SELECT count(*) FROM runs")[1] == [(1,)]
        assert len(HistoryDB(tmp_path / "lake", index_max_rows=0).get_history()) == 1
    assert damaged in caplog.text
    counted = HistoryDB(tmp_path / "lake").cleanup_expired()  # the damaged part's run cannot be counted, but goes
    assert counted == {"executions_deleted": 1, "nodes_deleted": 0} and not lake_files(tmp_path / "lake", RUNS)


def test_the_runs_index_lists_again_when_compaction_replaces_a_file_it_is_about_to_read(
    lake: Path, lake_ids: dict, monkeypatch
) -> None:
    """Compaction that keeps merging a day (late parts keep coming) replaces its merged file again and again: a
    refresh of the runs index that listed one merged file found it gone when it read it, had already dropped the
    file it replaced, and answered without that day's runs (a stress test's `get_history` lost 932 of 3,778 runs
    so). Forced: every file is renamed (as a newer merge would replace it) between the listing and the read."""
    from runlake.run_index import RunIndex

    expected = len(HistoryDB(lake, index_max_rows=0).get_history(limit=None))
    real = RunIndex._read
    replaced: list[str] = []

    def read_after_a_merge(self, files):  # noqa: ANN001, ANN202
        if files and not replaced:
            for file in files:
                newer = file.parent / new_part_name(compacted=True)
                file.rename(newer)
                replaced.append(str(newer))
        return real(self, files)

    monkeypatch.setattr(RunIndex, "_read", read_after_a_merge)
    db = HistoryDB(lake)
    assert len(db.get_history(limit=None)) == expected > 0 and replaced


def test_a_trace_of_many_nested_runs_is_described_by_its_root_without_the_index(configured: Path) -> None:
    """Without the in-memory index, ``get_traces(limit=1)`` reads the newest runs in a growing window; a trace whose
    60 nested runs fill the first window must still be described by its root run (the window grows until it holds
    more traces than the limit), not by its earliest nested run in the window."""
    with runlake.run("root", session_id="deep") as root:
        for i in range(60):
            with runlake.run(f"nested-{i}", session_id="deep"):
                pass
    runlake.force_flush()
    [described] = runlake.HistoryDB(configured, index_max_rows=0).get_traces(limit=1)
    assert described["run_id"] == root.run_id
    [same] = runlake.HistoryDB(configured).get_traces(limit=1)
    assert same["run_id"] == root.run_id


def test_rows_without_a_start_time_from_an_older_writer_are_left_out_of_every_answer(configured: Path) -> None:
    """An older runlake stored a span whose start was past int64 nanoseconds with a null start (the exporter now
    rejects it): such rows have no day and no order, and broke history and traces for every user. Every read
    leaves them out: with the index in memory or not, point reads, lake-wide reads and the sql views."""
    from opentelemetry.exporter.runlake.layout import SPANS, partition_dir
    from opentelemetry.exporter.runlake.mapping import COL, SpanMapper, run_row
    from opentelemetry.exporter.runlake.writer import write_part
    from opentelemetry.sdk.trace import ReadableSpan

    with runlake.run("good", session_id="mixed-bag") as good:
        with runlake.node("step"):
            pass
    runlake.force_flush()
    attributes = {"runlake.span.type": "run", "session.id": "mixed-bag", "gen_ai.agent.name": "legacy"}
    context = trace.SpanContext(7, 9, False)
    span = ReadableSpan("legacy", context=context, attributes=attributes, start_time=1, end_time=2)
    legacy = tuple(None if i == COL["start_time_unix_nano"] else v for i, v in enumerate(SpanMapper().map_span(span)))
    [day] = {p.name[len("day=") :] for p in configured.rglob("day=*")}
    write_part(SPANS, partition_dir(configured, SPANS, "default", 30, day, "mixed-bag"), [legacy])
    write_part(RUNS, partition_dir(configured, RUNS, "default", 30, day), [run_row(legacy, None)])
    for db in (runlake.HistoryDB(configured), runlake.HistoryDB(configured, index_max_rows=0)):
        assert [h["run_id"] for h in db.get_history()] == [good.run_id]
        assert [t["run_id"] for t in db.get_traces()] == [good.run_id]
        assert [r["run_id"] for r in db.get_runs("mixed-bag")] == [good.run_id]
        assert len(db.get_logs(good.run_id)["nodes"]) == 1
        assert db.sql_rows("SELECT count(*) FROM spans WHERE start_time_unix_nano IS NULL")[1] == [(0,)]
