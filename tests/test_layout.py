"""Partition-path encoding: safe for hostile ids, collision-free, and one function for all uses. Listings that
never miss a row while compaction merges the day they list."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from conftest import HOSTILE_IDS
from opentelemetry.exporter.runlake import RunlakeSpanExporter, layout
from opentelemetry.exporter.runlake.layout import (
    SPANS,
    CachedListing,
    day_dirs,
    day_files,
    decode_partition_value,
    encode_partition_value,
    partition_dir,
    resolve_state_url,
    sessions_files,
    table_files,
)
from test_exporter import make_spans

import runlake
from runlake.compact import compact


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_encoded_value_is_one_safe_folder_name(value: str) -> None:
    name = encode_partition_value(value)
    assert "/" not in name and "\\" not in name and "=" not in name and "\x00" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(f"session={name}".encode()) <= 255
    assert name.isascii() and name.isprintable()


@pytest.mark.parametrize("value", HOSTILE_IDS)
def test_encoding_round_trips_or_is_hashed(value: str) -> None:
    decoded = decode_partition_value(encode_partition_value(value))
    if len(value) > 100:
        assert decoded is None  # long values are hashed; rows keep the exact value
    else:
        assert decoded == value


def test_distinct_values_never_share_a_folder() -> None:
    values = HOSTILE_IDS + ["%25", "%2F", "a%2Fb", "~x", "x" * 301, "x" * 299 + "y", "A", "a", "-", "_", "."]
    names = [encode_partition_value(v) for v in values]
    assert len(set(names)) == len(set(values))


def test_partition_dir_stays_inside_the_lake(tmp_path: Path) -> None:
    for value in HOSTILE_IDS:
        folder = partition_dir(tmp_path, "spans", value, 30, "2026-01-02", value)
        assert folder.resolve().is_relative_to(tmp_path.resolve())
        assert len(folder.relative_to(tmp_path).parts) == 5


def test_state_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLAKE_STATE_URL", raising=False)
    monkeypatch.delenv("PRAISONAI_STATE_URL", raising=False)
    assert resolve_state_url(None) is None
    assert resolve_state_url(str(tmp_path)) == tmp_path
    assert resolve_state_url(f"file://{tmp_path}") == tmp_path
    monkeypatch.setenv("PRAISONAI_STATE_URL", str(tmp_path / "p"))
    assert resolve_state_url(None) == tmp_path / "p"
    monkeypatch.setenv("RUNLAKE_STATE_URL", str(tmp_path / "r"))
    assert resolve_state_url(None) == tmp_path / "r"
    with pytest.raises(ValueError, match="give a path or a file:// URL"):
        resolve_state_url("sqlite:///agent_state.db")


# ---- listing while compaction merges the day ------------------------------------------------------------------------
DAY_NS = 86_400 * 10**9


def closed_day_lake(lake: Path | str, sessions: int = 2) -> dict[str, set[str]]:
    """``sessions`` sessions of a closed day (two days ago), two parts each (so compaction merges the day), no
    ``session=~mixed`` yet; a local or ``s3://`` lake. Returns each session's span ids."""
    made = make_spans(8 * sessions, sessions=sessions)
    for span in made:
        span._start_time -= 2 * DAY_NS
        span._end_time -= 2 * DAY_NS
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    for half in (made[: len(made) // 2], made[len(made) // 2 :]):
        exporter.export(half)
        exporter.force_flush()
    exporter.shutdown()
    ids: dict[str, set[str]] = {}
    for span in made:
        ids.setdefault(span.attributes["session.id"], set()).add(f"{span.context.span_id:016x}")
    return ids


def answer_is_complete(files: list[Any], expected: set[str]) -> bool:
    """What a reader given ``files`` answers: if a listed file is gone it lists again (``runlake.query``); otherwise
    the listed files must hold every expected span."""
    if any(not f.exists() for f in files):
        return True
    found: set[str] = set()
    for f in files:
        filesystem, source = layout.fs_and_path(f)
        found.update(pq.read_table(source, filesystem=filesystem, columns=["span_id"]).column(0).to_pylist())
    return expected <= found


def listings(lake: Path) -> dict[str, Callable[[], list]]:
    cache = CachedListing()
    cache.table_files(lake, SPANS)  # warm: the cache's folders are then re-listed only if they changed
    wanted = {"absent": None, "s0": None, "s1": None}  # a session without folders first: its day's ~mixed next
    return {
        "table_files": lambda: table_files(lake, SPANS),
        "sessions_files": lambda: sessions_files(lake, wanted),
        "day_files": lambda: [f for _, _, _, day in day_dirs(lake, SPANS) for f in day_files(day, SPANS)],
        "CachedListing.table_files": lambda: cache.table_files(lake, SPANS),
        "CachedListing.sessions_files": lambda: cache.sessions_files(lake, wanted),
    }


def list_with_compaction_after(
    monkeypatch: pytest.MonkeyPatch, lake: Path, name: str, after: int | None
) -> tuple[list, int]:
    """``listings(lake)[name]()`` with the whole lake compacted right after its ``after``-th folder listing (every
    ``scandir`` of the layout, cached or not, counts); returns the listing and how many folder listings it made."""
    state = {"calls": 0, "busy": False}

    def listed() -> None:
        if state["busy"]:
            return  # compaction's own listings
        state["calls"] += 1
        if state["calls"] == after:
            state["busy"] = True
            assert compact(lake, older_than_minutes=0).days_merged == 1
            state["busy"] = False

    real_subdirs, real_data_files, real_entries = layout._subdirs, layout.data_files, CachedListing._entries

    def subdirs(path: Any, prefix: str) -> Any:
        found = list(real_subdirs(path, prefix))
        listed()
        return iter(found)

    def data_files(folder: Any) -> list:
        found = real_data_files(folder)
        listed()
        return found

    def entries(self: CachedListing, folder: str) -> Any:
        found = real_entries(self, folder)
        listed()
        return found

    chosen = listings(lake)[name]  # built (and the cache warmed) before the hooks count anything
    monkeypatch.setattr(layout, "_subdirs", subdirs)
    monkeypatch.setattr(layout, "data_files", data_files)
    monkeypatch.setattr(CachedListing, "_entries", entries)
    try:
        return chosen(), state["calls"]
    finally:
        monkeypatch.undo()


@pytest.mark.parametrize("name", list(listings(Path("/nonexistent"))))
def test_a_listing_never_misses_rows_that_compaction_moves_meanwhile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Compaction writes a closed day's merged file into ``session=~mixed``, then deletes the parts it merged and
    their emptied folders. A listing that runs meanwhile must give the reader every row or a file that vanished (it
    then lists again): it lists ``session=~mixed`` only after the session folders. Every interleaving is forced:
    the compaction runs after the listing's 1st, 2nd, ... folder listing."""
    probe = tmp_path / "probe"
    sessions = closed_day_lake(probe)
    expected = sessions["s0"] | sessions["s1"]
    files, calls = list_with_compaction_after(monkeypatch, probe, name, after=None)
    assert calls > 2 and answer_is_complete(files, expected)
    for after in range(1, calls + 1):
        lake = tmp_path / f"lake{after}"
        sessions = closed_day_lake(lake)
        expected = sessions["s0"] | sessions["s1"]
        files, _ = list_with_compaction_after(monkeypatch, lake, name, after)
        assert answer_is_complete(files, expected), f"rows missed when compaction ran after folder listing {after}"
        assert answer_is_complete(listings(lake)[name](), expected)


def test_a_reader_never_misses_rows_while_compaction_merges_the_day(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same through ``HistoryDB``: the reader has listed the day's session folders when compaction runs."""
    lake = tmp_path / "lake"
    closed_day_lake(lake)
    db = runlake.HistoryDB(lake)
    count = "SELECT count(*) FROM spans"
    assert db.sql_rows(count)[1] == [(16,)]
    real_subdirs = layout._subdirs
    merged: list[int] = []

    def subdirs(path: Any, prefix: str) -> Any:
        found = list(real_subdirs(path, prefix))
        if prefix == "session=" and not merged:
            merged.append(-1)  # compaction's own listings pass straight through
            merged[0] = compact(lake, older_than_minutes=0).days_merged
        return iter(found)

    monkeypatch.setattr(layout, "_subdirs", subdirs)
    assert db.sql_rows(count)[1] == [(16,)] and merged == [1]


@pytest.mark.parametrize("lister", ["data_files", "table_files", "cached"])
def test_a_folder_changed_while_it_is_read_is_read_again(tmp_path: Path, lister: str, monkeypatch) -> None:
    """``readdir`` returns each entry left alone while it reads a folder exactly once, but may miss one added or
    removed meanwhile: a listing that spans an in-place merge (the merged file renamed in, then the parts removed)
    can miss both (POSIX allows it), and a reader would answer without a whole day of runs. Forced here: the
    first reading of the day folder sees neither while the merge happens; the folder's mtime moved, so it is read
    again."""
    import os

    root = tmp_path / "lake"
    folder = layout.partition_dir(root, layout.RUNS, "default", 30, "2026-01-01")
    folder.mkdir(parents=True)
    parts = [folder / f"part-{i}.parquet" for i in range(3)]
    for part in parts:
        part.write_bytes(b"x")
    os.utime(folder, ns=(10**18, 10**18))  # an old mtime: the merge below moves it, whatever the clock's grain
    merged = folder / "compact-1.parquet"
    (tmp_path / "empty").mkdir()
    real = os.scandir
    readings: list[str] = []

    def scandir(path):  # noqa: ANN001, ANN202
        readings.append(str(path))
        if Path(path) == folder and readings.count(str(folder)) == 1:
            merged.write_bytes(b"x")  # the merge happens while this reading goes on ...
            for part in parts:
                part.unlink()
            return real(tmp_path / "empty")  # ... and it saw neither the new file nor the parts
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    if lister == "data_files":
        found = layout.data_files(folder)
    elif lister == "table_files":
        found = layout.table_files(root, layout.RUNS)
    else:
        found = layout.CachedListing().table_files(root, layout.RUNS)
    assert found == [merged] and readings.count(str(folder)) == 2


def test_entries_that_are_not_regular_files_are_not_listed(tmp_path: Path) -> None:
    """A dangling symlink (or a FIFO) named like a part file is no part: listed, it made every query of its table
    fail after all its retries (DuckDB finds no file), where it used to be passed over."""
    import os

    root = tmp_path / "lake"
    exporter = RunlakeSpanExporter(root, background_flush=False)
    exporter.export(make_spans(8))
    exporter.shutdown()
    folder = layout.table_files(root, layout.RUNS)[0].parent
    (folder / "part-zz-dangling.parquet").symlink_to(tmp_path / "nowhere.parquet")
    os.mkfifo(folder / "part-zz-fifo.parquet")
    for listing in (layout.data_files(folder), layout.CachedListing().table_files(root, layout.RUNS)):
        assert [p.name for p in listing if "zz" in p.name] == []
    assert runlake.HistoryDB(root).sql_rows("SELECT count(*) FROM runs")[1] == [(2,)]


def test_an_id_of_exactly_the_longest_plain_name_is_not_hashed(tmp_path: Path) -> None:
    """Ids are hashed only when their folder name would pass ``_MAX_NAME`` (150) characters: one of exactly that
    length keeps a readable, decodable folder (``session=<id>``, as Spark and Hive read partition values), one
    character more is hashed."""
    longest = "s" * layout._MAX_NAME
    assert encode_partition_value(longest) == longest
    assert decode_partition_value(encode_partition_value(longest)) == longest
    escaped = "é" * (layout._MAX_NAME // 6)  # each character is two escaped bytes: "%C3%A9", 6 characters
    assert len(encode_partition_value(escaped)) == layout._MAX_NAME
    assert decode_partition_value(encode_partition_value(escaped)) == escaped
    for too_long in (longest + "s", escaped + "e"):
        assert decode_partition_value(encode_partition_value(too_long)) is None, "one more character: hashed"

    exporter = RunlakeSpanExporter(tmp_path / "lake", background_flush=False)
    exporter.export(make_spans(4, prefix=longest[:-1]))  # session id: the prefix and "0"
    exporter.shutdown()
    [folder] = {f.parent for f in table_files(tmp_path / "lake", SPANS)}
    assert folder.name == f"session={longest[:-1]}0"
    assert decode_partition_value(folder.name.removeprefix("session=")) == longest[:-1] + "0"


def test_files_named_like_spark_metadata_are_not_data(tmp_path: Path) -> None:
    """Spark and Hadoop tools leave ``_``-prefixed files beside the data (``_metadata``, ``_common_metadata``,
    ``_SUCCESS``), some of them ending in ``.parquet``. They are never part files: listings leave them out and
    queries answer as without them, even when one is a readable Parquet file of span rows (other spans here, so
    de-duplication could not hide them)."""
    root, other = tmp_path / "lake", tmp_path / "other"
    for lake in (root, other):
        exporter = RunlakeSpanExporter(lake, background_flush=False)
        exporter.export(make_spans(8))  # session s0 in both, different span ids
        exporter.shutdown()
    db = runlake.HistoryDB(root)
    before = db.sql_rows("SELECT span_type, count(*) FROM spans GROUP BY 1 ORDER BY 1")
    assert before[1] == [("node", 6), ("run", 2)]
    [part] = layout.table_files(root, SPANS)
    [foreign] = layout.table_files(other, SPANS)
    for name in ("_metadata.parquet", "_common_metadata.parquet"):
        (part.parent / name).write_bytes(foreign.read_bytes())
    [runs_part] = layout.table_files(root, layout.RUNS)
    (runs_part.parent / "_metadata.parquet").write_bytes(layout.table_files(other, layout.RUNS)[0].read_bytes())
    db = runlake.HistoryDB(root)
    assert db.sql_rows("SELECT span_type, count(*) FROM spans GROUP BY 1 ORDER BY 1") == before
    assert len(db.get_history()) == 2 and len(db.get_runs("s0")) == 2
    assert layout.table_files(root, SPANS) == [part] and layout.data_files(part.parent) == [part]
    assert CachedListing().table_files(root, SPANS) == [part]
    assert not layout.is_data_file("_metadata.parquet") and layout.is_data_file(part.name)


def test_a_folder_listed_within_two_seconds_of_its_mtime_is_listed_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file system with a coarse clock (ext3, FAT, NFS: 1-2 s) can leave a folder's mtime unchanged when a part is
    added right after a listing. So the cache trusts a listing only if the folder's mtime was already 2 s old when
    it was listed; a folder listed sooner is listed again, and the new part is found."""
    import os
    import time

    root = tmp_path / "lake"
    exporter = RunlakeSpanExporter(root, background_flush=False)
    exporter.export(make_spans(4, prefix="first"))
    exporter.force_flush()
    [first] = layout.table_files(root, layout.RUNS)
    folder = first.parent
    seen = os.stat(folder)
    cache = CachedListing()
    with monkeypatch.context() as clock:  # listed 1 s after the folder's mtime, however slow this machine is
        clock.setattr(time, "time_ns", lambda: seen.st_mtime_ns + 1_000_000_000)
        assert cache.table_files(root, layout.RUNS) == [first]
    exporter.export(make_spans(4, prefix="second"))
    exporter.shutdown()
    os.utime(folder, ns=(seen.st_atime_ns, seen.st_mtime_ns))  # the coarse clock: the mtime did not move
    assert os.stat(folder).st_mtime_ns == seen.st_mtime_ns and len(layout.data_files(folder)) == 2
    assert cache.table_files(root, layout.RUNS) == layout.data_files(folder), "the second part is found"
