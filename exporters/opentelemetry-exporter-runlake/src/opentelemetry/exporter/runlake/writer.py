"""Buffered, partitioned Parquet writer.

Rows are buffered per partition and a part file is rolled when a partition reaches ``max_part_rows`` or
``max_part_bytes``, when its oldest row is ``flush_interval_s`` old, or on ``flush()``. A busy process that
touches many sessions therefore writes a few large files instead of one tiny file per session per batch.
All buffers together are capped by ``max_buffer_bytes`` (the memory of the rows' strings, see ``_row_bytes``): past
it everything is flushed, and if the disk refuses, the oldest rows are dropped and counted rather than letting memory
grow.

Locally a part is written under a temporary name and renamed into place. On an object store (no atomic rename)
the finished Parquet bytes are uploaded straight to the part's unique final key: an S3 PUT, or a multipart upload
completed only once every part is in, makes the object appear whole or not at all.
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .layout import (
    RUNS,
    SPANS,
    LakeRoot,
    ObjectPath,
    counts_in_name,
    day_of,
    mixed_dir,
    new_part_name,
    partition_dir,
    storable_text,
    temp_name_for,
)
from .mapping import COL, RUNS_SCHEMA, SPANS_SCHEMA

_logger = logging.getLogger(__name__)

SCHEMAS = {SPANS: SPANS_SCHEMA, RUNS: RUNS_SCHEMA}
_STATS_COLUMNS = {
    SPANS: [
        "record",
        "span_type",
        "tenant_id",
        "session_id",
        "user_id",
        "run_id",
        "trace_id",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "status_code",
        "node_type",
        "agent_name",
    ],
    RUNS: [
        "record",
        "tenant_id",
        "session_id",
        "user_id",
        "run_id",
        "trace_id",
        "agent_name",
        "start_time_unix_nano",
        "end_time_unix_nano",
        "status_code",
    ],
}
# Dictionary encoding only where values repeat within a file (ids of a session, names, enums): for unique ids and
# free text a dictionary page is written and then abandoned, costing time and bytes. Parts under
# _DICTIONARY_MIN_ROWS rows get none: measured on B30-like spans, a 25-row part is then 8% smaller and writes 1/3
# faster, a 20k-row part 3% smaller and 10% faster than with a dictionary on every column.
_DICTIONARY_COLUMNS = {
    SPANS: [
        *("record", "span_type", "tenant_id", "session_id", "user_id", "run_id", "kind", "status_code", "error_type"),
        *("agent_name", "agent_id", "node_id", "node_type", "runtime_id", "operation", "model", "provider"),
        *("service_name", "resource", "ttl_days"),
    ],
    RUNS: [
        *("record", "tenant_id", "session_id", "user_id", "status_code", "error_type", "agent_name", "agent_id"),
        *("service_name", "ttl_days"),
    ],
}
_DICTIONARY_MIN_ROWS = 256
_RUN_POS = {name: i for i, name in enumerate(RUNS_SCHEMA.names)}
_TEXT_POSITIONS = {  # free text: what row groups are cut by
    SPANS: [COL[c] for c in ("input", "output", "attributes", "events", "runtime_state", "metadata")],
    RUNS: [_RUN_POS[c] for c in ("input", "output", "metadata")],
}
# What the buffer cap counts of a row: every string column whose size the caller decides (free text, names, status
# messages, ids taken from attributes), by its memory (str.__sizeof__: O(1), and 1, 2 or 4 bytes per character as
# the string holds them). Not counted: the fixed-size hex ids, the enums (shared constants) and the resource JSON
# (one string per resource, shared by every row of a process); _ROW_OVERHEAD stands for the rest.
_UNCOUNTED = {"record", "span_type", "kind", "status_code", "trace_id", "span_id", "parent_span_id", "resource"}
_SIZED_POSITIONS = {
    table: [i for i, f in enumerate(schema) if pa.types.is_string(f.type) and f.name not in _UNCOUNTED]
    for table, schema in ((SPANS, SPANS_SCHEMA), (RUNS, RUNS_SCHEMA))
}
_SIZED_VALUES = {table: operator.itemgetter(*positions) for table, positions in _SIZED_POSITIONS.items()}
_ROW_OVERHEAD = 160  # bytes of a row besides those strings, roughly (shared strings counted per row make up the rest)


_str_sizeof = str.__sizeof__


def _row_bytes(table: str, row: tuple) -> int:
    """Memory a row holds, roughly, for the buffer cap (a few hundred ns a row; ``add`` inlines it)."""
    try:
        return _ROW_OVERHEAD + sum(map(_str_sizeof, filter(None, _SIZED_VALUES[table](row))))
    except TypeError:  # a value that is not a string (a caller's own rows): sys.getsizeof takes anything
        return _ROW_OVERHEAD + sum(sys.getsizeof(row[i]) for i in _SIZED_POSITIONS[table] if row[i])


def to_arrow(table: str, rows: list[tuple]) -> pa.Table:
    """Row tuples (in the table's column order) as an Arrow table of the current schema."""
    schema = SCHEMAS[table]
    columns = list(zip(*rows))
    return pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(columns, schema)], schema=schema)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` in ``schema`` (usually ``SCHEMAS[...]``, or a projection of one): its columns in the schema's order
    and cast to its types, columns it lacks (an older part) as nulls, columns the schema does not name dropped.
    Raises (``pyarrow.ArrowInvalid`` and the like) when a column cannot be cast."""
    present = set(table.column_names)
    columns = [
        table.column(f.name).cast(f.type) if f.name in present else pa.nulls(table.num_rows, f.type) for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


_MADE_DIRS: set[str] = set()  # local folders known to exist: a part file then costs no mkdir
COUNTS_KEY = "runlake.counts"  # Parquet key-value metadata: what TTL reports deleting, without reading the rows


def part_counts(table: str, arrow: pa.Table) -> dict[str, int]:
    """``rows``, ``spans`` (distinct spans) and, for the spans table, ``nodes`` (distinct finished nodes: a node
    stored twice in one part, say a client's retry landing in the same flush, counts once). A span is its span and
    trace id, as readers tell spans apart (a file holds one tenant; the start time is the same for both rows of a
    span): two traces reusing a span id are two spans."""
    spans = pc.binary_join_element_wise(arrow.column("span_id"), arrow.column("trace_id"), "/")
    counts = {"rows": arrow.num_rows, "spans": pc.count_distinct(spans).as_py()}
    if table == SPANS:
        ended_nodes = pc.and_(pc.equal(arrow.column("span_type"), "node"), pc.equal(arrow.column("record"), "end"))
        counts["nodes"] = pc.count_distinct(spans.filter(ended_nodes.fill_null(False))).as_py()
    return counts


def read_part_counts(path: LakeRoot) -> dict[str, int] | None:
    """The counts ``write_part`` stored with a file: from its name, else its footer; None for files written
    without them."""
    named = counts_in_name(path)
    if named is not None:
        return named
    if isinstance(path, ObjectPath):
        metadata = pq.read_metadata(path.path, filesystem=path.fs).metadata
    else:
        metadata = pq.read_metadata(path).metadata
    raw = (metadata or {}).get(COUNTS_KEY.encode())
    return json.loads(raw) if raw else None


def _row_group_ends(table: str, arrow: pa.Table, max_rows: int, max_bytes: int) -> list[int]:
    """Where row groups end so that each holds at most ``max_bytes`` of free text (or ``max_rows`` rows), cut between
    sessions where it can: a read of one session then decompresses little besides that session's own rows."""
    sizes = [0] * arrow.num_rows
    for position in _TEXT_POSITIONS[table]:
        lengths = pc.binary_length(arrow.column(position)).fill_null(0).to_pylist()
        sizes = [a + b for a, b in zip(sizes, lengths)]
    sessions = arrow.column("session_id").to_pylist()
    ends: list[int] = []
    start = group_bytes = 0
    for i, size in enumerate(sizes):
        new_session = i > start and sessions[i] != sessions[i - 1]
        if i > start and (
            (new_session and group_bytes >= max_bytes) or group_bytes >= 4 * max_bytes or i - start >= max_rows
        ):
            ends.append(i)
            start, group_bytes = i, 0
        group_bytes += size
    ends.append(arrow.num_rows)
    return ends


def _writer_options(table: str, rows: int, compression_level: int | None) -> dict[str, Any]:
    """``ParquetWriter`` options of every part file: zstd, dictionaries where values repeat (none in small parts),
    statistics on the columns readers filter by, no Arrow schema blob."""
    return {
        "compression": "zstd",
        "compression_level": compression_level,
        "use_dictionary": _DICTIONARY_COLUMNS[table] if rows >= _DICTIONARY_MIN_ROWS else False,
        "write_statistics": _STATS_COLUMNS[table],
        "store_schema": False,  # the Parquet schema says it all; saves ~2 KB of footer per file
    }


def _write_groups(
    out: pq.ParquetWriter, table: str, arrow: pa.Table, row_group_size: int, row_group_bytes: int | None
) -> None:
    if row_group_bytes is None or arrow.num_rows == 0:
        out.write_table(arrow, row_group_size=row_group_size)
        return
    start = 0
    for end in _row_group_ends(table, arrow, row_group_size, row_group_bytes):
        out.write_table(arrow.slice(start, end - start), row_group_size=end - start)
        start = end


def write_part(
    table: str,
    folder: LakeRoot,
    rows: list[tuple] | pa.Table,
    row_group_size: int = 128 * 1024,
    sort_by: tuple[str, ...] = ("start_time_unix_nano",),
    compacted: bool = False,
    row_group_bytes: int | None = None,
    compression_level: int | None = None,
    make_folder: bool = True,
) -> LakeRoot:
    """Write rows as one new part file in ``folder``, atomically (temp name then rename; one upload on S3).

    ``compacted``: the rows hold each span id once (compaction's output), said by the file name.
    ``row_group_bytes``: also end a row group once it holds that much free text (between sessions if it can).
    ``make_folder``: make ``folder`` (and its parents) where it is missing, as writers of new rows do; compaction
    does not (``False``: ``FileNotFoundError``), since a folder gone meanwhile was expired by TTL or purged.
    """
    arrow = rows if isinstance(rows, pa.Table) else to_arrow(table, rows)
    arrow = arrow.sort_by([(c, "ascending") for c in sort_by])
    for attempt in range(2):
        part = PartStream(
            table,
            folder,
            rows_hint=arrow.num_rows,
            row_group_size=row_group_size,
            row_group_bytes=row_group_bytes,
            compression_level=compression_level,
            compacted=compacted,
            make_folder=make_folder,
        )
        try:
            part.write(arrow)
        except BaseException:
            part.abort()
            raise
        try:
            return part.close()
        except FileNotFoundError:  # the folder went between the temp file and its rename (TTL renamed the day away)
            if attempt or not make_folder or isinstance(folder, ObjectPath):
                raise
            _MADE_DIRS.discard(str(folder))  # made again, and the part written again, once
    raise AssertionError("unreachable")  # pragma: no cover


def _made_dir(folder: Path) -> None:
    """``mkdir -p`` once per folder and process: a part file in a known folder then costs no mkdir."""
    if str(folder) not in _MADE_DIRS:
        folder.mkdir(parents=True, exist_ok=True)
        if len(_MADE_DIRS) > 100_000:
            _MADE_DIRS.clear()
        _MADE_DIRS.add(str(folder))


def _put(target: ObjectPath, data: pa.Buffer) -> None:
    """One upload to the final key (no rename on S3): the object appears whole or not at all."""
    with target.fs.open_output_stream(target.path) as out:
        out.write(data)
    target.size, target.mtime = data.size, time.time()


class PartStream:
    """One part file, written in one piece (``write_part``) or several (compaction of a day bigger than memory).

    It appears whole at ``close()``: locally a hidden temp file renamed to its final name (which carries the counts,
    known only at the end); on an object store the file is encoded in memory, so an encoding error never reaches
    the store, and uploaded once. With several pieces, each holds rows of its own sessions, each span id once, in
    the file's sort order. ``rows_hint``: the expected row count (decides dictionary pages). ``make_folder``: as
    ``write_part``'s.
    """

    def __init__(
        self,
        table: str,
        folder: LakeRoot,
        *,
        rows_hint: int,
        row_group_size: int,
        row_group_bytes: int | None = None,
        compression_level: int | None = None,
        compacted: bool = True,
        make_folder: bool = True,
    ) -> None:
        self.table, self.folder, self.compacted = table, folder, compacted
        self.counts: dict[str, int] = {"rows": 0, "spans": 0, **({"nodes": 0} if table == SPANS else {})}
        self._grouping = (row_group_size, row_group_bytes)
        self._tmp: Path | None = None
        if isinstance(folder, ObjectPath):
            self._buffer: pa.BufferOutputStream | None = pa.BufferOutputStream()
            sink: Any = self._buffer
        else:
            self._buffer = None
            if make_folder:
                _made_dir(folder)
            self._tmp = folder / temp_name_for(new_part_name(compacted))
            sink = str(self._tmp)
        options = _writer_options(table, rows_hint, compression_level)
        try:
            try:
                self._out = pq.ParquetWriter(sink, SCHEMAS[table], **options)
            except FileNotFoundError:  # the folder went meanwhile (TTL, a purge): make it again, once
                if not make_folder:
                    raise
                folder.mkdir(parents=True, exist_ok=True)
                self._out = pq.ParquetWriter(sink, SCHEMAS[table], **options)
        except BaseException:  # a full disk fails after the temp file was created (writing the header): remove it
            self._remove_tmp()
            raise

    def write(self, arrow: pa.Table) -> None:
        for key, value in part_counts(self.table, arrow).items():
            self.counts[key] += value
        _write_groups(self._out, self.table, arrow, *self._grouping)

    def close(self) -> LakeRoot:
        """Finish the file and make it visible under its final name; returns it."""
        try:
            self._out.add_key_value_metadata({COUNTS_KEY: json.dumps(self.counts, separators=(",", ":"))})
            self._out.close()
            target = self.folder / new_part_name(self.compacted, self.counts)
            if self._buffer is not None:
                _put(target, self._buffer.getvalue())
            else:
                os.replace(self._tmp, target)
            return target
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Drop what was written; nothing becomes visible."""
        try:
            self._out.close()
        except Exception:  # noqa: BLE001 - already closed or broken: the temp file goes either way
            pass
        self._remove_tmp()

    def _remove_tmp(self) -> None:
        if self._tmp is not None:
            try:
                self._tmp.unlink()
            except OSError:  # never made, or gone already
                pass


def _storable_or_none(value: Any, kind: pa.DataType) -> Any:
    """Text with lone surrogates with them replaced (the folder was named from that text), else None."""
    text = storable_text(value)
    if text is not value:
        try:
            pa.array([text], type=kind)
            return text
        except (ValueError, TypeError, OverflowError):
            pass
    return None


_CHILD_RESETS: list[weakref.WeakMethod] = []  # of live objects only (dead ones are pruned as others are added)
_CHILD_RESETS_LOCK = threading.Lock()


def reset_in_forked_child(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in each child this process forks from now on, for as long as its object lives.

    A forked child (``multiprocessing``, a pre-fork server's workers) starts with a copy of the parent's memory: locks
    as they were (held, perhaps, by a thread the child does not have) and none of the parent's threads.
    """
    with _CHILD_RESETS_LOCK:
        _CHILD_RESETS[:] = [ref for ref in _CHILD_RESETS if ref() is not None]
        _CHILD_RESETS.append(weakref.WeakMethod(method))


def _reset_children() -> None:
    global _CHILD_RESETS_LOCK
    _CHILD_RESETS_LOCK = threading.Lock()
    for ref in list(_CHILD_RESETS):
        bound = ref()
        if bound is not None:
            bound()


if hasattr(os, "register_at_fork"):  # one hook for every object, not one per object (those would never go away)
    os.register_at_fork(after_in_child=_reset_children)


class ForkSafeLock:
    """A ``threading.Lock`` that a forked child gets anew: the parent's may be held, at the fork, by a thread the child
    does not have, and would never be released there."""

    __slots__ = ("_lock", "__weakref__")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        reset_in_forked_child(self._renew)

    def _renew(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> ForkSafeLock:
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


@dataclass
class _Buffer:
    rows: list[tuple] = field(default_factory=list)
    nbytes: int = 0
    since: float = 0.0


def _row_count(parts: list[tuple[tuple[str, LakeRoot], _Buffer]]) -> int:
    return sum(len(buf.rows) for _, buf in parts)


@dataclass
class WriterStats:
    rows_written: int = 0
    files_written: int = 0
    failed_writes: int = 0
    dropped_rows: int = 0
    repaired_values: int = 0  # values Arrow could not encode, stored as null (the rest of their rows kept)


_CLOSE_QUIET_WAIT_S = 5.0  # close() says that it is still writing after this long


class LakeWriter:
    """Thread-safe buffered writer for the ``spans/`` and ``runs/`` tables of one lake root."""

    # during an outage rows dropped past the buffer cap are logged at first, then summed up at most this often
    drop_log_interval_s = 60.0

    def __init__(
        self,
        root: LakeRoot,
        *,
        max_part_rows: int = 100_000,
        max_part_bytes: int = 64 << 20,
        max_buffer_bytes: int = 256 << 20,
        flush_interval_s: float = 5.0,
        background: bool = True,
        min_session_rows: int = 0,
    ) -> None:
        if max_part_rows < 1 or max_part_bytes < 1 or max_buffer_bytes < 1 or flush_interval_s <= 0:
            raise ValueError("writer limits must be positive")
        self.root: LakeRoot = root if isinstance(root, ObjectPath) else Path(root)
        self.max_part_rows = max_part_rows
        self.max_part_bytes = max_part_bytes
        self.max_buffer_bytes = max_buffer_bytes
        self.flush_interval_s = flush_interval_s
        self.min_session_rows = max(int(min_session_rows), 0)
        self.stats = WriterStats()
        self._buffers: dict[tuple[str, LakeRoot], _Buffer] = {}
        self._buffered_bytes = 0
        self._lock = threading.Lock()
        self._dirs: dict[tuple, LakeRoot] = {}
        self._failing: str | None = None
        self._closed = False
        self._background = background
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._drops_unsaid = 0  # dropped rows not logged yet (stats.dropped_rows has them all)
        self._drops_said_at: float | None = None  # when drops were last logged during this outage
        self._in_flight = 0  # rows taken out of the buffers by a write that is not over
        self._said_behind = False  # the first row dropped by add(write=False) was logged
        self._said_slow_flush = False  # _hint_if_behind said it
        reset_in_forked_child(self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        """The child's writer: a new lock, no rows (the parent writes the rows it buffered; a copy written here too
        would store them twice), and its own flush thread, started by its first row (the parent's is not here)."""
        self._lock = threading.Lock()
        self._buffers = {}
        self._buffered_bytes = 0
        self._thread = None
        self._stop = threading.Event()
        self.stats = WriterStats()
        self._drops_unsaid = 0
        self._in_flight = 0

    # ---- adding rows ---------------------------------------------------------------------------------
    def _folder(self, table: str, tenant: str, ttl: int, start_ns: int, session: str | None) -> LakeRoot:
        key = (table, tenant, ttl, start_ns // 86_400_000_000_000, session)
        folder = self._dirs.get(key)
        if folder is None:
            if len(self._dirs) > 50_000:
                self._dirs.clear()
            folder = partition_dir(self.root, table, tenant, ttl, day_of(start_ns), session)
            self._dirs[key] = folder
        return folder

    def add(self, spans: Iterable[tuple] = (), runs: Iterable[tuple] = (), *, write: bool = True) -> bool:
        """Buffer span rows and run-index rows; roll full partitions. False if a write failed.

        ``write=False`` (an application thread, e.g. a run's start row from ``on_start``): never write here; full
        partitions wait for the next flush, and rows that would pass ``max_buffer_bytes`` are dropped and counted
        rather than making the application wait for the lake."""
        if self._closed:
            return False
        if not write and self._buffered_bytes > self.max_buffer_bytes:
            with self._lock:
                dropped = sum(1 for _ in spans) + sum(1 for _ in runs)
                self.stats.dropped_rows += dropped
                first, self._said_behind = not self._said_behind, True
            if first:
                _logger.warning(
                    "runlake: the writer is behind (%d bytes buffered, cap %d): rows added from the application's "
                    "threads (runs' start rows) are dropped and counted in stats: dropped_rows, so the application "
                    "never waits for the lake; those runs show once they end",
                    self._buffered_bytes,
                    self.max_buffer_bytes,
                )
            return False
        full: list[tuple[str, LakeRoot]] = []
        now = time.monotonic()
        t, ttl_i, start_i, sess_i = COL["tenant_id"], COL["ttl_days"], COL["start_time_unix_nano"], COL["session_id"]
        r_t, r_ttl, r_start = _RUN_POS["tenant_id"], _RUN_POS["ttl_days"], _RUN_POS["start_time_unix_nano"]
        with self._lock:
            for table, rows in ((SPANS, spans), (RUNS, runs)):
                sized = _SIZED_VALUES[table]
                for row in rows:
                    if table == SPANS:
                        folder = self._folder(SPANS, row[t], row[ttl_i], row[start_i], row[sess_i])
                    else:
                        folder = self._folder(RUNS, row[r_t], row[r_ttl], row[r_start], None)
                    try:  # _row_bytes, inlined: this loop is the export hot path
                        size = _ROW_OVERHEAD + sum(map(_str_sizeof, filter(None, sized(row))))
                    except TypeError:
                        size = _row_bytes(table, row)
                    key = (table, folder)
                    buf = self._buffers.get(key)
                    if buf is None:
                        buf = self._buffers[key] = _Buffer(since=now)
                    buf.rows.append(row)
                    buf.nbytes += size
                    self._buffered_bytes += size
                    if len(buf.rows) >= self.max_part_rows or buf.nbytes >= self.max_part_bytes:
                        full.append(key)
            over_cap = self._buffered_bytes > self.max_buffer_bytes
        if self._background and self._thread is None:
            self._start_thread()
        if not write:
            return self._failing is None
        ok = True
        if full:
            ok = self._write_keys(list(dict.fromkeys(full)))
        if over_cap:
            ok = self.flush() and ok
        return ok and self._failing is None

    # ---- flushing -------------------------------------------------------------------------------------
    def _take(self, keys: Iterable[tuple[str, LakeRoot]]) -> list[tuple[tuple[str, LakeRoot], _Buffer]]:
        taken = []
        with self._lock:
            for key in keys:
                buf = self._buffers.pop(key, None)
                if buf is not None and buf.rows:
                    self._buffered_bytes -= buf.nbytes
                    self._in_flight += len(buf.rows)
                    taken.append((key, buf))
        return taken

    def _landed(self, rows: int) -> None:
        """``rows`` taken for a write that is over (written, or put back in their buffers)."""
        with self._lock:
            self._in_flight -= rows

    def _plan(self, taken: list[tuple[tuple[str, LakeRoot], _Buffer]]) -> list[tuple[str, LakeRoot, list]]:
        """(table, folder, [(key, buffer), ...]) per file to write: with ``min_session_rows``, the span buffers of
        sessions smaller than that share one file per day (``session=~mixed``, sorted by session)."""
        writes: list[tuple[str, LakeRoot, list]] = []
        mixed: dict[str, tuple[LakeRoot, list]] = {}
        for key, buf in taken:
            table, folder = key
            if table == SPANS and len(buf.rows) < self.min_session_rows:
                shared = mixed_dir(folder.parent)
                mixed.setdefault(str(shared), (shared, []))[1].append((key, buf))
            else:
                writes.append((table, folder, [(key, buf)]))
        writes.extend((SPANS, folder, parts) for folder, parts in mixed.values())
        return writes

    def _write_keys(self, keys: Iterable[tuple[str, LakeRoot]]) -> bool:
        remote = isinstance(self.root, ObjectPath)
        began = time.monotonic()
        writes = self._plan(self._take(keys))
        try:
            return self._write_planned(writes, remote)
        finally:
            self._hint_if_behind(len(writes), time.monotonic() - began)

    def _hint_if_behind(self, files: int, seconds: float) -> None:
        """Say once when a flush of one small file per session took longer than the flush interval: the writer
        cannot keep up with that many sessions at once, which ``min_session_rows`` is for."""
        if self.min_session_rows or self._said_slow_flush or files < 256 or seconds <= self.flush_interval_s:
            return
        self._said_slow_flush = True
        _logger.warning(
            "runlake: a flush wrote %d part files (one per session and day) in %.1f s, longer than the flush interval "
            "(%.1f s): with this many sessions at once, set min_session_rows (RUNLAKE_MIN_SESSION_ROWS, e.g. 256) so "
            "small sessions share a file, and run `runlake compact` regularly",
            files,
            seconds,
            self.flush_interval_s,
        )

    def _write_planned(self, writes: list[tuple[str, LakeRoot, list]], remote: bool) -> bool:
        ok = True
        for i, (table, folder, parts) in enumerate(writes):
            order = ("start_time_unix_nano",) if len(parts) == 1 else ("session_id", "start_time_unix_nano")
            size = 128 * 1024 if len(parts) == 1 else 8192
            rows = parts[0][1].rows if len(parts) == 1 else [r for _, buf in parts for r in buf.rows]
            try:
                try:
                    write_part(table, folder, rows, row_group_size=size, sort_by=order)
                except (ValueError, TypeError, OverflowError) as error:  # a value no retry can store, not the disk
                    rows = self._repair_unencodable(table, parts, error)
                    if rows:
                        write_part(table, folder, rows, row_group_size=size, sort_by=order)
            except Exception as error:  # noqa: BLE001 - disk full, read-only, bad value: never raise
                ok = False
                taken = _row_count(parts)  # before the put-back adds what came meanwhile to the same buffers
                for key, buf in parts:
                    self._on_failure(key, buf, error)
                self._landed(taken)  # after they are back in their buffers: never counted in neither
                if remote and isinstance(error, OSError):
                    # the store is unreachable or refusing: keep the other partitions for the next flush rather
                    # than paying the client's retries once per partition
                    for _, _, later in writes[i + 1 :]:
                        taken = _row_count(later)
                        for later_key, later_buf in later:
                            self._put_back(later_key, later_buf)
                        self._landed(taken)
                    break
            else:
                self._landed(_row_count(parts))
                self.stats.rows_written += len(rows)
                self.stats.files_written += 1
        if ok and writes and self._failing is not None:  # only a flush with no failure clears the state
            self._say_unsaid_drops()
            _logger.warning("runlake: writing to %s works again", self.root)
            self._failing = None
        return ok

    def _repair_unencodable(
        self, table: str, parts: list[tuple[tuple[str, LakeRoot], _Buffer]], error: Exception
    ) -> list[tuple]:
        """Rows with a value Arrow refuses (a number past int64, say) keep their other values: the bad ones become
        null (text with lone surrogates keeps its other characters, as ``storable_text`` does), counted and said, so
        that one value does not hold its partition back on every retry. Returns the rows to write now; re-raises
        ``error`` if no row is at fault (then the usual failure path keeps them)."""
        schema = SCHEMAS[table]
        repaired: list[str] = []
        for _, buf in parts:
            for i, row in enumerate(buf.rows):
                try:
                    to_arrow(table, [row])
                except (ValueError, TypeError, OverflowError):
                    fixed = list(row)
                    for j, field in enumerate(schema):
                        try:
                            pa.array([fixed[j]], type=field.type)
                        except (ValueError, TypeError, OverflowError):
                            fixed[j] = _storable_or_none(fixed[j], field.type)
                            repaired.append(field.name)
                    buf.rows[i] = tuple(fixed)
        if not repaired:
            raise error
        self.stats.repaired_values += len(repaired)
        _logger.error(
            "runlake: stored %d values of %s rows as null (text: with U+FFFD for lone surrogates): they cannot be "
            "stored as they are (%s: %s; columns %s)",
            len(repaired),
            table,
            type(error).__name__,
            error,
            ", ".join(sorted(set(repaired))),
        )
        return [r for _, buf in parts for r in buf.rows]

    def _on_failure(self, key: tuple[str, LakeRoot], buf: _Buffer, error: Exception) -> None:
        self.stats.failed_writes += 1
        cause = f"{type(error).__name__}: {error}"
        if self._closed:  # a write that outlived ``stop()``: nothing will retry it (``stop``'s caller said the loss)
            _logger.debug("runlake: a write that outlived shutdown failed (%s)", cause)
            return
        if self._failing is None:
            _logger.error(
                "runlake: cannot write a part file under %s (%s); rows are kept in memory and retried "
                "(at most %d bytes buffered, then the oldest are dropped and counted)",
                self.root,
                cause,
                self.max_buffer_bytes,
            )
        self._failing = cause
        # measured again: the attempt encoded the rows, and Arrow leaves a UTF-8 copy in every non-ASCII string (up to
        # twice its size); off the hot path, and cheap beside the encoding that just failed
        buf.nbytes = sum(_row_bytes(key[0], row) for row in buf.rows)
        self._put_back(key, buf)
        with self._lock:
            dropped = 0
            while self._buffered_bytes > self.max_buffer_bytes and self._buffers:
                oldest = min(self._buffers, key=lambda k: self._buffers[k].since)
                gone = self._buffers.pop(oldest)
                self._buffered_bytes -= gone.nbytes
                dropped += len(gone.rows)
            self.stats.dropped_rows += dropped
            self._drops_unsaid += dropped
            now = time.monotonic()
            last = self._drops_said_at
            say = bool(dropped) and (last is None or now - last >= self.drop_log_interval_s)
            count = self._drops_unsaid
            if say:
                self._drops_unsaid, self._drops_said_at = 0, now
        if say and last is None:
            _logger.error(
                "runlake: dropped %d rows: buffer cap of %d bytes reached while %s; further drops are summed up at "
                "most every %.0f s (all of them are counted in stats: dropped_rows)",
                count,
                self.max_buffer_bytes,
                cause,
                self.drop_log_interval_s,
            )
        elif say:
            self._say_drops(count, now - last, cause)

    def _say_drops(self, count: int, seconds: float, cause: str | None) -> None:
        _logger.error(
            "runlake: dropped %d more rows in the last %.0f s (buffer cap of %d bytes; %d dropped in all)%s",
            count,
            seconds,
            self.max_buffer_bytes,
            self.stats.dropped_rows,
            f" while {cause}" if cause else "",
        )

    def _say_unsaid_drops(self) -> None:
        """The drops not logged yet, at the end of an outage or at close; the next outage logs its first drop again."""
        with self._lock:
            count, since, self._drops_unsaid, self._drops_said_at = self._drops_unsaid, self._drops_said_at, 0, None
        if count:
            self._say_drops(count, time.monotonic() - (since or time.monotonic()), self._failing)

    def _put_back(self, key: tuple[str, LakeRoot], buf: _Buffer) -> None:
        """Return rows taken for writing to their buffer, before anything added meanwhile."""
        with self._lock:
            current = self._buffers.get(key)
            if current is not None:
                buf.rows.extend(current.rows)
                buf.nbytes += current.nbytes
                self._buffered_bytes -= current.nbytes
            self._buffers[key] = buf
            self._buffered_bytes += buf.nbytes

    def flush(self, older_than_s: float | None = None) -> bool:
        """Write buffered partitions (only those older than ``older_than_s`` if given). True if all written."""
        with self._lock:
            if older_than_s is None:
                keys = list(self._buffers)
            else:
                limit = time.monotonic() - older_than_s
                keys = [k for k, b in self._buffers.items() if b.since <= limit]
        return self._write_keys(keys) if keys else self._failing is None

    @property
    def buffered_rows(self) -> int:
        with self._lock:
            return sum(len(b.rows) for b in self._buffers.values())

    @property
    def unwritten_rows(self) -> int:
        """Rows not on disk: buffered, or taken by a write that is not over (a store that does not answer)."""
        with self._lock:
            return sum(len(b.rows) for b in self._buffers.values()) + self._in_flight

    @property
    def buffered_bytes(self) -> int:
        """Estimated bytes buffered, the measure ``max_buffer_bytes`` caps (callers use it for backpressure)."""
        return self._buffered_bytes

    @property
    def failing(self) -> str | None:
        """The cause of the last failed write, until a flush writes everything it took without a failure."""
        return self._failing

    # ---- background flushing --------------------------------------------------------------------------
    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="runlake-flush", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        interval = self.flush_interval_s
        while not self._stop.wait(max(interval / 2, 0.05)):
            try:
                self.flush(older_than_s=interval)
            except Exception:  # noqa: BLE001 - the flusher must outlive any one bad write
                _logger.exception("runlake: background flush failed")

    def close(self) -> bool:
        """Flush everything and stop the background thread.

        Waits for a flush the background thread has begun: its rows are out of the buffers, and the thread (a daemon)
        would die with the process and take them along. A flush that takes long (thousands of small session files)
        is said once, with what is left to write; a store that never answers is bounded by its own timeouts (and,
        at exit, by the exporter's exit hook)."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_CLOSE_QUIET_WAIT_S)
            if thread.is_alive():
                _logger.warning(
                    "runlake: writing %d rows to %s before closing (a flush in progress)",
                    self.unwritten_rows,
                    self.root,
                )
                thread.join()
        ok = self.flush()
        self._closed = True
        self._say_unsaid_drops()
        return ok

    def stop(self) -> None:
        """Stop without writing what is buffered (the store did not answer a flush in time; the caller says what is
        lost)."""
        self._stop.set()
        self._closed = True
        self._say_unsaid_drops()
