"""Compaction: few files per day, each span once, in the current schema.

- **Closed day** (before today, UTC, with no part newer than ``older_than_minutes``): every span part of the
  tenant/ttl/day (each ``session=`` folder and the shared ``session=~mixed`` one) becomes **one** ``compact-…``
  file in ``session=~mixed``, sorted by (session, start) in small row groups, and the emptied session folders go.
  One file per day instead of one per session-day: lake-wide reads open a few dozen files instead of thousands,
  and a session read skips the other sessions' row groups by their ``session_id`` statistics. Memory is bounded
  whatever the day's size: the day is merged in steps of consecutive sessions holding at most ``max_step_bytes``
  of rows each, counted decoded (as read into memory, from the parts' footers: not their compressed bytes), appended
  to the one output file (``_merge_in_steps``).
- **Open day** (today, or a closed day still being written to): each quiet session folder with more than one part
  becomes one file sorted by start time, and the quiet parts of ``session=~mixed`` become one file sorted by
  session (in batches of at most ``max_step_bytes`` of parts, decoded).
- **runs/ index**: a closed, quiet day becomes one ``compact-…`` file (merged in steps too).

Compaction's output holds each span once (the ``end`` row when there is one) and is named ``compact-…``:
readers may skip de-duplication in a day whose only file is such a file. Elsewhere they keep one row per span. A span
is what readers de-duplicate by (``SPAN_KEY``: span and trace id, start, tenant), not the span id alone: two spans
that share an id in other traces (a buggy or hostile client) both stay, as readers show both. A span whose rows are
in several sessions keeps the row lake-wide readers show (``runlake.query.LATEST_ROW``; ``_SpanSessions``).

Safe while readers and writers go on:
- the merged file appears atomically (temp name, rename) before any old part is removed; a reader that lists
  both sees more than one file in the day, so de-duplicates, and sees each row once;
- a reader whose listed file is removed meanwhile lists again (``runlake.query``);
- a reader that lists a session folder after its parts were removed finds the merged file: readers list a day's
  ``session=~mixed`` folder only after its session folders (``layout._spans_day_files``);
- only the files listed when a day was picked are merged and removed: parts written during compaction stay, so
  nothing a writer adds is lost. An emptied session folder is removed with ``rmdir`` (which fails if a writer has
  put something in it; the writer makes a removed folder again); on an object store the emptied prefix is left.

One compactor per lake: locally ``compact`` takes a non-blocking lock on ``<root>/.compact.lock`` and returns at
once (``summary.busy``) if another holds it. On an object store (``s3://``) there is **no lock**: run one compactor
per lake (two at once never lose a row, but may write a day's rows twice until the next run merges them; readers
de-duplicate meanwhile). There the merged object is uploaded under a new unique key (it appears whole or not at
all), then the old objects are deleted, key by key; an emptied session prefix is never deleted as a whole (that
could take a part uploaded into it meanwhile along), so its ``folder/`` marker stays, which listings skip.
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from opentelemetry.exporter.runlake.layout import (
    MIXED_FOLDER,
    RUNS,
    SPANS,
    LakeRoot,
    ObjectPath,
    data_files,
    day_dirs,
    day_files,
    fs_and_path,
    is_compacted,
    is_missing,
    mixed_dir,
    remove_file,
    resolve_lake,
    size_and_mtime,
)
from opentelemetry.exporter.runlake.writer import SCHEMAS, PartStream, conform, write_part

from .query import DUCKDB_CONFIG

try:
    import fcntl
except ImportError:  # not POSIX: no lock (run one compactor per lake)
    fcntl = None  # type: ignore[assignment]

_logger = logging.getLogger(__name__)

# Rows per merge step, decoded (``_decoded_bytes``): a step's Arrow memory peaks at ~2.5x that (~160 MiB), the
# process at ~300-370 MB, whatever the day's size or how well its text compresses (docs/design.md, "Compaction").
DEFAULT_MAX_STEP_BYTES = 64 << 20
# Row groups of a day file (sorted by session): a session read decompresses only the groups whose session_id range
# covers it, input/output text included, so a group ends at a session boundary once it holds DAY_ROW_GROUP_BYTES
# of text, or at DAY_ROW_GROUP_ROWS rows. Measured on B30 (docs/design.md, "Compaction").
DAY_ROW_GROUP_ROWS = 1024
DAY_ROW_GROUP_BYTES = 512 << 10
RUNS_ROW_GROUP_BYTES = 128 << 10  # the runs/ index: a session's few runs, read by get_runs and history pages
COMPRESSION_LEVEL = 6  # zstd: compaction runs off the write path, so it can spend more time for fewer bytes
SESSION_ROW_GROUP_ROWS = 1 << 20  # a session folder's own file: its rows are all wanted together
LOCK_FILE = ".compact.lock"
BUSY_MESSAGE = "another compaction is running"
_BY_SESSION = ("session_id", "start_time_unix_nano")
_BY_START = ("start_time_unix_nano",)


@dataclass
class CompactionSummary:
    """What one ``compact`` call did; ``busy``: another compaction held the lake's lock, nothing was done."""

    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rows: int = 0
    skipped_files: int = 0
    days_merged: int = 0
    merge_steps: int = 0  # steps of the closed-day merges (spans and runs/)
    days_in_steps: int = 0  # closed days bigger than max_step_bytes: merged in more than one step
    days_not_quiet: int = 0  # day folders with parts to merge, left for now: a part newer than older_than
    seconds: float = 0.0
    busy: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# One span, as readers de-duplicate (``runlake.query``): rows that differ in any of these are different spans to
# them (two spans that share an id in other traces, say), so compaction keeps both too.
SPAN_KEY = ("span_id", "trace_id", "start_time_unix_nano", "tenant_id")


def _latest_rows(table: pa.Table, sort_by: tuple[str, ...] | None = None) -> pa.Table:
    """One row per span (``SPAN_KEY``): the ``end`` row when present (drops superseded run ``start`` rows), of the
    first session in order (nulls last) where rows of several sessions are there, and in ``runs/`` the one with the
    most nodes, as ``runlake.query.LATEST_ROW`` / ``LATEST_RUN_ROW`` pick; in ``sort_by`` order if given (stable:
    ties stay in ``SPAN_KEY`` order).

    One ``take`` of the wide table (the text columns dominate), so a day costs one copy here, sorted or not.
    """
    if table.num_rows == 0:
        return table
    keys = {name: table.column(name) for name in SPAN_KEY}
    ties = {"is_end": pc.equal(table.column("record"), "end"), "session": table.column("session_id")}
    tie_order = [("is_end", "descending"), ("session", "ascending")]
    if "node_count" in table.column_names:  # runs/: the row with the most nodes, as LATEST_RUN_ROW
        ties["nodes"] = table.column("node_count")
        tie_order.append(("nodes", "descending"))
    order = pc.sort_indices(
        pa.table({**keys, **ties}), sort_keys=[*((name, "ascending") for name in SPAN_KEY), *tie_order]
    )
    first = None
    for column in keys.values():
        differs = _differs_from_previous(column.take(order))
        first = differs if first is None else pc.or_(first, differs)
    chosen = order.filter(first)
    if sort_by:  # sort the narrow keys, not the wide rows: the one take puts them in order
        chosen = chosen.take(
            pc.sort_indices(table.select(list(sort_by)).take(chosen), [(c, "ascending") for c in sort_by])
        )
    return table.take(chosen)


def _differs_from_previous(values: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Per row, whether it differs from the row before (the first row: True); two nulls are equal, as in SQL's
    ``PARTITION BY``."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    current, previous = values.slice(1), values.slice(0, len(values) - 1)
    both_null = pc.and_(pc.is_null(current), pc.is_null(previous))
    differs = pc.and_(pc.not_equal(current, previous).fill_null(True), pc.invert(both_null))
    return pa.concat_arrays([pa.array([True]), differs])


def _read_parts(table: str, files: list[LakeRoot], summary: CompactionSummary) -> tuple[pa.Table | None, list]:
    """The readable parts among ``files``, merged into one row per span (current schema), and those parts.

    A part removed meanwhile is passed over; an unreadable one is left where it is, with a warning.
    """
    pieces, used = [], []
    for path in files:
        try:
            filesystem, source = fs_and_path(path)
            pieces.append(conform(pq.read_table(source, filesystem=filesystem), SCHEMAS[table]))
            used.append(path)
        except Exception as error:  # noqa: BLE001 - a broken part is left where it is, and said
            if is_missing(error):  # compacted or expired meanwhile
                continue
            summary.skipped_files += 1
            _logger.warning("compaction: leaving unreadable part file %s alone (%s)", path, error)
    return (_latest_rows(pa.concat_tables(pieces)) if pieces else None), used


class _PartsGone(FileNotFoundError):
    """Parts a merge read were removed before it could replace them: TTL expired their day (or a purge)."""


def _replace(
    used: list[LakeRoot],
    new_file: LakeRoot,
    rows: int,
    summary: CompactionSummary,
    listed: Callable[[], list[LakeRoot]],
) -> None:
    """Remove the merged parts (their rows are already in ``new_file``) and count the change.

    First the parts must all still be there (``listed``: the files of their folder or day now). One that went
    meanwhile was expired by TTL (or purged) while the merge read it: the merged file would bring its rows back,
    so it is removed and the day left to TTL (``_PartsGone``). Locally the merged file cannot even be written into
    a day folder TTL removed (compaction never makes one again: ``make_folder=False``); on an object store there
    are no folders, so this check is what keeps expired rows from coming back."""
    present = {str(p) for p in listed()}
    gone = [p for p in used if str(p) not in present]
    if gone:
        try:
            remove_file(new_file)
        except OSError as error:
            if not is_missing(error):
                raise
        raise _PartsGone(f"{len(gone)} of the {len(used)} parts merged went meanwhile (TTL?), e.g. {gone[0]}")
    summary.bytes_before += sum(size_and_mtime(p)[0] for p in used)
    for path in used:
        remove_file(path)
    summary.partitions += 1
    summary.files_before += len(used)
    summary.files_after += 1
    summary.bytes_after += size_and_mtime(new_file)[0]
    summary.rows += rows


def _merge(
    table: str,
    files: list[LakeRoot],
    target: LakeRoot,
    summary: CompactionSummary,
    sort_by: tuple[str, ...],
    row_group_size: int,
) -> bool:
    """Rewrite ``files`` as one ``compact-…`` file in ``target``: the new file first, then the old ones go."""
    merged, used = _read_parts(table, files, summary)
    if merged is None or not used or (len(used) == 1 and is_compacted(used[0])):
        return False
    rows = merged.num_rows
    by_session = sort_by == _BY_SESSION
    new_file = write_part(
        table,
        target,
        merged,
        sort_by=sort_by,
        row_group_size=row_group_size,
        compacted=True,
        row_group_bytes=(DAY_ROW_GROUP_BYTES if table == SPANS else RUNS_ROW_GROUP_BYTES) if by_session else None,
        compression_level=COMPRESSION_LEVEL,
        make_folder=False,
    )
    del merged
    _replace(used, new_file, rows, summary, lambda: data_files(target))
    return True


def _batches(files: list[LakeRoot], sizes: dict[LakeRoot, int], max_bytes: int) -> Iterator[list[LakeRoot]]:
    """Consecutive groups of ``files`` of at most ``max_bytes`` read (``sizes``: decoded, a bigger file alone): one
    rewrite never reads more than that. Each rewrite leaves fewer files, so repeated runs settle."""
    batch: list[LakeRoot] = []
    total = 0
    for path in files:
        size = sizes.get(path, 0)
        if batch and total + size > max_bytes:
            yield batch
            batch, total = [], 0
        batch.append(path)
        total += size
    if batch:
        yield batch


def compact_folder(
    table: str,
    folder: LakeRoot,
    summary: CompactionSummary,
    files: list[LakeRoot] | None = None,
    max_bytes: int = DEFAULT_MAX_STEP_BYTES,
) -> bool:
    """Merge the parts of one partition folder into one ``compact-…`` file in place; True if anything was rewritten.

    The shared ``session=~mixed`` folder is sorted by session in small row groups, a session's own by start time.
    """
    files = data_files(folder) if files is None else files
    if len(files) < 2:
        return False
    shared = table == SPANS and folder.name == MIXED_FOLDER
    sort_by, row_group_size = (_BY_SESSION, DAY_ROW_GROUP_ROWS) if shared else (_BY_START, SESSION_ROW_GROUP_ROWS)
    sizes = _sizes(files)
    rewritten = False
    for batch in _batches(files, sizes, max_bytes):
        if len(batch) > 1:
            rewritten |= _merge(table, batch, folder, summary, sort_by, row_group_size)
    return rewritten


def _sizes(files: list[LakeRoot]) -> dict[LakeRoot, int]:
    """Each file's decoded bytes (``_decoded_bytes``, from its footer: what a merge holds, not the compressed bytes,
    which repetitive text shrinks ~100x); its size on disk if the footer cannot be read (the merge says why)."""
    sizes = {}
    for path in files:
        try:
            filesystem, source = fs_and_path(path)
            reader = pq.ParquetFile(source, filesystem=filesystem)
            sizes[path] = sum(
                _decoded_bytes(reader.metadata, reader.schema_arrow, g) for g in range(reader.num_row_groups)
            )
        except Exception as error:  # noqa: BLE001 - unreadable: _read_parts leaves it alone, with a warning
            if is_missing(error):
                continue
            try:
                sizes[path] = size_and_mtime(path)[0]
            except FileNotFoundError:
                continue
    return sizes


def _newest(files: list[LakeRoot]) -> float | None:
    """The newest modification time among ``files``; None if one is gone (the folder is changing)."""
    try:
        return max(size_and_mtime(p)[1] for p in files)
    except FileNotFoundError:
        return None


def _remove_empty_folders(folders: set[LakeRoot]) -> None:
    """Remove emptied session folders of a local lake; one a writer has just written into stays.

    Locally ``rmdir`` fails on a folder that is not empty (a writer's part, or its hidden temp file), so nothing new
    is ever removed; a writer whose folder went makes it again. On an object store nothing is removed: a folder is a
    prefix, and deleting it (``delete_dir``: list every key under it, then delete what that listing found) would also
    delete a part a writer uploaded into it after compaction found it empty. pyarrow cannot delete just the
    ``folder/`` marker it leaves when a prefix's last object goes, so the emptied prefix stays: listings skip it
    (``layout``: a day's session prefixes are listed with one recursive LIST, which finds no file there).
    """
    for folder in folders:
        if isinstance(folder, ObjectPath):
            continue
        try:
            os.rmdir(folder)
        except OSError:
            pass  # not empty, or gone already: left for the next run


@dataclass
class _Part:
    """A part the first pass could read, and each of its row groups' session range (what a step reads of it)."""

    path: LakeRoot
    metadata: pq.FileMetaData  # its footer, parsed once for every step that reads the part
    groups: list[tuple[Any, Any, bool]]  # (min, max, holds nulls) of session_id; (None, None, True): unknown


def _survey(
    table: str, files: list[LakeRoot], summary: CompactionSummary
) -> tuple[list[_Part], pa.Table, pa.Table, int]:
    """First pass, narrow columns only: the readable parts, the decoded bytes each session takes (to cut the day into
    steps; ``_part_weights``), the session each span stored under several keeps (``_SpanSessions``: usually none),
    and the row count. It keeps a row per session in Arrow; the spans' keys go to DuckDB, which spills them to the
    temp disk past ``_SURVEY_MEMORY``."""
    parts: list[_Part] = []
    weights: list[pa.Table] = []
    rows = 0
    wanted = pa.schema([f for f in SCHEMAS[table] if f.name in ("session_id", "record", *SPAN_KEY)])
    with _SpanSessions() as sessions:
        for path in files:
            try:
                filesystem, source = fs_and_path(path)
                reader = pq.ParquetFile(source, filesystem=filesystem)
                names = reader.schema_arrow.names
                _check_types(reader, SCHEMAS[table])
                narrow = conform(reader.read(columns=[n for n in wanted.names if n in names]), wanted)
            except Exception as error:  # noqa: BLE001 - a broken part is left where it is, and said
                if not is_missing(error):
                    summary.skipped_files += 1
                    _logger.warning("compaction: leaving unreadable part file %s alone (%s)", path, error)
                continue
            rows += narrow.num_rows
            weights.append(_part_weights(reader, narrow.column("session_id")))
            if len(weights) >= 64:
                weights = [_sum_weights(weights)]
            sessions.add(narrow)
            parts.append(_Part(path, reader.metadata, _session_ranges(reader.metadata, names)))
        kept = sessions.kept()
    return parts, _sum_weights(weights).sort_by([("session_id", "ascending")]), kept, rows


class _SpanSessions:
    """Which session keeps a span whose rows are stored under more than one (sent again under another session, or its
    session named or changed after its run's ``start`` row): the row readers pick (``runlake.query.LATEST_ROW``: the
    ``end`` row, of the first session in order, nulls last). Merge steps hold consecutive sessions, so two sessions of
    one span can fall in different steps: without this, both rows would stay, and lake-wide readers, which trust a
    compacted day to hold each span once, would show the span twice (or a superseded ``start`` row as a run running
    for ever).

    Finding such spans needs every span's key. DuckDB holds them (~60 bytes a span) within ``_SURVEY_MEMORY`` and
    spills the rest to a temp folder, so memory stays bounded whatever the day's size; the answer is usually empty.
    A DuckDB failure (the temp disk full, say) is an ``OSError``: the day is left as it was, and said.
    """

    def __init__(self) -> None:
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._spill: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> _SpanSessions:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pending.clear()
        if self._connection is not None:
            self._connection.close()
        if self._spill is not None:
            self._spill.cleanup()

    def add(self, narrow: pa.Table) -> None:
        if "record" not in narrow.column_names:
            return
        self._pending.append(narrow.select([*SPAN_KEY, "session_id", "record"]))
        self._pending_rows += narrow.num_rows
        if self._pending_rows >= _SURVEY_BATCH_ROWS:
            with _duckdb_errors():
                self._insert()

    def _insert(self) -> None:
        if not self._pending:
            return
        batch = pa.concat_tables(self._pending)  # noqa: F841 - read by the statement below (a DuckDB replacement scan)
        self._pending.clear()
        self._pending_rows = 0
        if self._connection is None:
            self._spill = tempfile.TemporaryDirectory(prefix="runlake-compact-")
            config = {**DUCKDB_CONFIG, "threads": 1, "memory_limit": _SURVEY_MEMORY, "temp_directory": self._spill.name}
            self._connection = duckdb.connect(config=config)
            self._connection.execute("CREATE TABLE span_rows AS SELECT * FROM batch")
        else:
            self._connection.execute("INSERT INTO span_rows SELECT * FROM batch")

    def kept(self) -> pa.Table:
        """``SPAN_KEY`` and the kept ``session_id`` (``_key_table``) of each span stored under several sessions."""
        with _duckdb_errors():
            return self._kept()

    def _kept(self) -> pa.Table:
        if self._connection is None:  # a day of fewer than _SURVEY_BATCH_ROWS rows: no table, no temp folder
            if not self._pending:
                empty = {n: pa.array([], SCHEMAS[SPANS].field(n).type) for n in (*SPAN_KEY, "session_id")}
                return _key_table(pa.table(empty), with_session=True)
            span_rows = pa.concat_tables(self._pending)  # noqa: F841 - read by the statement below
            self._pending.clear()
            with duckdb.connect(config={**DUCKDB_CONFIG, "threads": 1}) as connection:
                return _key_table(connection.sql(_SPLIT_SPANS).to_arrow_table(), with_session=True)
        self._insert()
        return _key_table(self._connection.sql(_SPLIT_SPANS).to_arrow_table(), with_session=True)


class _SurveyError(OSError):
    """The first pass's DuckDB work failed (its temp disk full, its spill folder removed): the day is left as it is."""


@contextmanager
def _duckdb_errors() -> Iterator[None]:
    try:
        yield
    except duckdb.Error as error:
        raise _SurveyError(f"cannot find the spans stored under several sessions: {error}") from error


_SURVEY_BATCH_ROWS = 1 << 16
_SURVEY_MEMORY = "256MB"
_KEY_COLUMNS = ", ".join(SPAN_KEY)
# The session of the row readers keep (``LATEST_ROW``): an ``end`` row's, else a ``start`` row's (any other record),
# else any row's (old parts without ``record``); of those the first in order, nulls last (``min`` passes over nulls,
# giving null only where every such row has none).
_SPLIT_SPANS = f"""
SELECT {_KEY_COLUMNS},
    CASE WHEN bool_or(record = 'end') THEN min(session_id) FILTER (WHERE record = 'end')
         WHEN bool_or(record IS NOT NULL) THEN min(session_id) FILTER (WHERE record IS NOT NULL)
         ELSE min(session_id) END AS session_id
FROM span_rows
GROUP BY {_KEY_COLUMNS}
HAVING count(DISTINCT session_id) + max(CASE WHEN session_id IS NULL THEN 1 ELSE 0 END) > 1
"""


def _decoded_bytes(metadata: pq.FileMetaData, schema: pa.Schema, group: int) -> int:
    """What a row group takes once read (Arrow), from its footer alone: each column's uncompressed (but encoded)
    bytes, plus per row what Arrow adds (an offset per string, a value per null number). Within a few % of the read
    size on runlake's parts; short of it for columns another writer dictionary-encoded (long repeated values)."""
    row_group = metadata.row_group(group)
    total = 0
    for i in range(row_group.num_columns):
        column = row_group.column(i)
        name = column.path_in_schema
        kind = schema.field(name).type if name in schema.names else pa.string()
        try:
            per_row = kind.bit_width / 8
        except ValueError:  # variable width: an offset per row
            per_row = 8 if pa.types.is_large_string(kind) or pa.types.is_large_binary(kind) else 4
        total += column.total_uncompressed_size + int(row_group.num_rows * per_row)
    return total


def _part_weights(reader: pq.ParquetFile, sessions: pa.ChunkedArray) -> pa.Table:
    """The decoded bytes each session takes in one part: its rows in each row group times that group's bytes per row."""
    counts = []
    offset = 0
    for group in range(reader.metadata.num_row_groups):
        n = reader.metadata.row_group(group).num_rows
        if n:
            per_row = _decoded_bytes(reader.metadata, reader.schema_arrow, group) / n
            values = pc.value_counts(sessions.slice(offset, n))
            bytes_ = pc.multiply(values.field("counts").cast(pa.float64()), per_row)
            counts.append(pa.table({"session_id": values.field("values"), "bytes": bytes_}))
        offset += n
    return pa.concat_tables(counts) if counts else _sum_weights([])


def _sum_weights(weights: list[pa.Table]) -> pa.Table:
    """One row per session (nulls: one row too), its bytes summed."""
    if not weights:
        return pa.table({"session_id": pa.array([], pa.string()), "bytes": pa.array([], pa.float64())})
    summed = pa.concat_tables(weights).group_by("session_id", use_threads=False).aggregate([("bytes", "sum")])
    return summed.rename_columns(["session_id", "bytes"]).select(["session_id", "bytes"])


def _key_table(rows: pa.Table, with_session: bool = False) -> pa.Table:
    """``SPAN_KEY`` (and ``session_id``) of ``rows`` as join keys that match as readers' ``PARTITION BY`` does, a
    null equal to a null (Arrow's joins never match nulls): nulls are filled in and flagged in ``nulls``, a bit each."""
    names = (*SPAN_KEY, "session_id") if with_session else SPAN_KEY
    columns: dict[str, Any] = {}
    flags = pa.nulls(rows.num_rows, pa.int8()).fill_null(0)
    for bit, name in enumerate(names):
        column = rows.column(name)
        flags = pc.add(flags, pc.if_else(pc.is_null(column), pa.scalar(1 << bit, pa.int8()), pa.scalar(0, pa.int8())))
        columns[name] = column.fill_null("" if pa.types.is_string(column.type) else 0)
    return pa.table({**columns, "nulls": flags})


def _check_types(reader: pq.ParquetFile, schema: pa.Schema) -> None:
    """Raise if a column the part stores in another type than the table's cannot be cast to it (tokens stored as
    ``'n/a'``, say). Only such columns are read, so a part in the current schema costs nothing here."""
    stored = reader.schema_arrow
    odd = [f for f in schema if f.name in stored.names and stored.field(f.name).type != f.type]
    if odd:
        conform(reader.read(columns=[f.name for f in odd]), pa.schema(odd))


def _session_ranges(metadata: pq.FileMetaData, names: list[str]) -> list[tuple[Any, Any, bool]]:
    if "session_id" not in names:
        return [(None, None, True)] * metadata.num_row_groups
    column = names.index("session_id")
    out = []
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            out.append((None, None, True))
        else:
            out.append((stats.min, stats.max, stats.null_count != 0))
    return out


def _steps(weight: pa.Table, max_bytes: int) -> list[tuple[str | None, str | None, bool]]:
    """Consecutive session ranges ``(first, last, nulls)`` in the file's order (sessions ascending, then rows without
    a session) of at most ``max_bytes`` each (a bigger session alone). ``weight``: ``session_id`` and ``bytes`` (one
    row per session, sorted; ``_survey``), read a batch at a time."""
    steps: list[tuple[str | None, str | None, bool]] = []
    first = previous = None
    total = 0.0
    nulls = False
    for batch in weight.to_batches(max_chunksize=4096):
        for key, size in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()):
            if key is None:
                nulls = True
                continue
            if first is not None and total + size > max_bytes:
                steps.append((first, previous, False))
                first, total = None, 0.0
            if first is None:
                first = key
            total += size
            previous = key
    if first is not None:
        steps.append((first, previous, False))
    if nulls:
        steps.append((None, None, True))
    return steps


class _BadPart(Exception):
    """A part the first pass accepted but a step could not read (a damaged data page, say)."""

    def __init__(self, path: LakeRoot, error: Exception) -> None:
        super().__init__(f"{path}: {error}")
        self.path, self.error = path, error


def _step_rows(
    table: str, parts: list[_Part], step: tuple[str | None, str | None, bool], kept: pa.Table
) -> pa.Table | None:
    """The rows of one step's sessions from every part (only the row groups whose range can hold them), one per span
    (``SPAN_KEY``), sorted by (session, start)."""
    first, last, nulls = step
    pieces = []
    for part in parts:
        groups = [
            i
            for i, (lo, hi, has_nulls) in enumerate(part.groups)
            if (has_nulls if nulls else lo is None or (lo <= last and hi >= first))
        ]
        if not groups:
            continue
        try:
            filesystem, source = fs_and_path(part.path)
            reader = pq.ParquetFile(source, filesystem=filesystem, metadata=part.metadata)
            piece = conform(reader.read_row_groups(groups), SCHEMAS[table])
        except Exception as error:
            if is_missing(error):
                raise  # removed meanwhile (TTL, a purge): the day is left as it was
            raise _BadPart(part.path, error) from error
        session = piece.column("session_id")
        keep = pc.is_null(session) if nulls else pc.and_(pc.greater_equal(session, first), pc.less_equal(session, last))
        piece = piece.filter(keep.fill_null(False))
        if kept.num_rows:
            piece = piece.filter(pc.invert(_rows_of_other_sessions(piece, kept)))
        pieces.append(piece)
    if not pieces:
        return None
    rows = pa.concat_tables(pieces)
    del pieces
    return _latest_rows(rows, sort_by=_BY_SESSION)


def _rows_of_other_sessions(piece: pa.Table, kept: pa.Table) -> pa.Array:
    """Per row, whether its span is one of ``kept`` (spans stored under several sessions: ``_SpanSessions``) and the
    row is not of the session that keeps it."""
    keys = _key_table(piece.select([*SPAN_KEY, "session_id"]), with_session=True)
    every_row = pc.indices_nonzero(pa.nulls(piece.num_rows, pa.bool_()).fill_null(True))
    keys = keys.append_column("row", every_row)
    span_bits = pa.scalar((1 << len(SPAN_KEY)) - 1, pa.int8())
    by_span = keys.select(list(SPAN_KEY)).append_column("nulls", pc.bit_wise_and(keys.column("nulls"), span_bits))
    kept_spans = kept.select(list(SPAN_KEY)).append_column("nulls", pc.bit_wise_and(kept.column("nulls"), span_bits))
    of_kept = by_span.append_column("row", every_row).join(
        kept_spans, keys=[*SPAN_KEY, "nulls"], join_type="left semi", use_threads=False
    )
    if not of_kept.num_rows:
        return pa.nulls(piece.num_rows, pa.bool_()).fill_null(False)
    keeping = keys.take(of_kept.column("row")).join(
        kept, keys=[*SPAN_KEY, "session_id", "nulls"], join_type="left semi", use_threads=False
    )
    other = pc.invert(pc.is_in(of_kept.column("row"), keeping.column("row")))
    return pc.is_in(every_row, of_kept.column("row").filter(other))


def _merge_in_steps(
    table: str, files: list[LakeRoot], target: LakeRoot, summary: CompactionSummary, max_step_bytes: int
) -> bool:
    """Rewrite ``files`` (a closed day) as one ``compact-…`` file in ``target``, sorted by (session, start), reading
    ~``max_step_bytes`` of rows (decoded) at a time: the day is cut into consecutive session ranges, each read from
    the row groups that can hold it, de-duplicated and appended to the one output file. A span with rows in more
    than one session keeps only those of the session the first pass chose (``_SpanSessions``), and a step keeps one
    row per span (the ``end`` row: a run's ``start`` row goes), so each span is there once.

    A part that cannot be read or converted to the table's schema is left where it is, with a warning naming it,
    and the rest is merged: the first pass finds most such parts; one that fails only in a step (a damaged data
    page) makes the merge start again without it."""
    while True:
        parts, weight, kept, rows_hint = _survey(table, files, summary)
        try:
            return _write_steps(table, parts, weight, kept, rows_hint, target, summary, max_step_bytes)
        except _BadPart as bad:  # start again without it: the first pass must not count its rows (its end rows)
            left = [p.path for p in parts if p.path != bad.path]
            if len(left) == len(parts):
                raise
            summary.skipped_files += 1
            _logger.warning("compaction: leaving unreadable part file %s alone (%s)", bad.path, bad.error)
            files = left


def _write_steps(
    table: str,
    parts: list[_Part],
    weight: pa.Table,
    kept: pa.Table,
    rows_hint: int,
    target: LakeRoot,
    summary: CompactionSummary,
    max_step_bytes: int,
) -> bool:
    used = [p.path for p in parts]
    if not used or (len(used) == 1 and is_compacted(used[0])):
        return False
    day = target.parent if table == SPANS else target  # spans go to the day's session=~mixed folder
    if table == SPANS and not isinstance(target, ObjectPath):
        target.mkdir(exist_ok=True)  # not its parent: a day folder TTL removed meanwhile is not made again
    stream = PartStream(
        table,
        target,
        rows_hint=rows_hint,
        row_group_size=DAY_ROW_GROUP_ROWS,
        row_group_bytes=DAY_ROW_GROUP_BYTES if table == SPANS else RUNS_ROW_GROUP_BYTES,
        compression_level=COMPRESSION_LEVEL,
        make_folder=False,
    )
    try:
        steps = _steps(weight, max_step_bytes)
        for step in steps:
            rows = _step_rows(table, parts, step, kept)
            if rows is not None and rows.num_rows:
                stream.write(rows)
            del rows
            pa.default_memory_pool().release_unused()  # hand the step's buffers back, or RSS keeps the largest
    except (OSError, _BadPart):
        stream.abort()  # nothing is replaced; a part that vanished (OSError) is said by the caller
        raise
    except Exception as error:  # noqa: BLE001 - not a part's fault (none could be named): the day stays as it was
        stream.abort()
        _logger.warning("compaction: cannot merge the parts of %s (%s); left as they were", target, error)
        return False
    except BaseException:
        stream.abort()
        raise
    new_file = stream.close()
    summary.merge_steps += len(steps)
    summary.days_in_steps += len(steps) > 1
    _replace(used, new_file, stream.counts["rows"], summary, lambda: day_files(day, table))
    return True


def merge_day(
    day_dir: LakeRoot, files: list[LakeRoot], summary: CompactionSummary, max_step_bytes: int = DEFAULT_MAX_STEP_BYTES
) -> bool:
    """Every span part of one closed day as one ``compact-…`` file in its ``session=~mixed`` folder."""
    if not _merge_in_steps(SPANS, files, mixed_dir(day_dir), summary, max_step_bytes):
        return False
    summary.days_merged += 1
    _remove_empty_folders({p.parent for p in files if p.parent.name != MIXED_FOLDER})
    return True


@dataclass
class _Day:
    """One day folder to look at, and what decides its fate."""

    table: str
    day: str
    folder: LakeRoot
    closed: bool
    now: float
    older_than_s: float
    max_step_bytes: int

    def quiet(self, files: list[LakeRoot]) -> bool:
        newest = _newest(files)
        return newest is not None and self.now - newest >= self.older_than_s


def _compact_spans_day(day: _Day, summary: CompactionSummary) -> None:
    """A closed, quiet day: one file, merged in steps; otherwise each quiet folder on its own."""
    files = day_files(day.folder, SPANS)
    if not files or (len(files) == 1 and is_compacted(files[0])):
        return  # nothing there, or done
    if day.closed and day.quiet(files):
        merge_day(day.folder, files, summary, day.max_step_bytes)
        return
    by_folder: dict[LakeRoot, list[LakeRoot]] = {}
    for path in files:
        by_folder.setdefault(path.parent, []).append(path)
    waiting = day.closed  # a closed day that is not quiet yet becomes one file later
    for folder, parts in by_folder.items():
        if len(parts) > 1 and day.quiet(parts):
            compact_folder(SPANS, folder, summary, parts, day.max_step_bytes)
        elif len(parts) > 1:
            waiting = True
    summary.days_not_quiet += waiting


def _compact_runs_day(day: _Day, summary: CompactionSummary) -> None:
    """A closed, quiet ``runs/`` day becomes one ``compact-…`` file, sorted by session like the spans' day files (a
    session's runs are then read from a row group or two)."""
    if not day.closed:
        return
    files = data_files(day.folder)
    if not files or (len(files) == 1 and is_compacted(files[0])):
        return
    if not day.quiet(files):
        summary.days_not_quiet += 1
        return
    _merge_in_steps(RUNS, files, day.folder, summary, day.max_step_bytes)  # one part alone: marks the day compacted


class CompactError(OSError):
    """The lake cannot be compacted at all (read-only, no permission to take its lock); nothing was changed.

    ``str()`` is the whole message (naming the lake); ``errno`` and ``strerror`` are the cause's."""

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(message)
        self.message = message
        self.errno, self.strerror = cause.errno, cause.strerror

    def __str__(self) -> str:
        return self.message


@contextmanager
def _lake_lock(root: LakeRoot) -> Iterator[bool]:
    """Hold ``<root>/.compact.lock`` (``flock``, non-blocking) while compacting a local lake; False if another
    process (or another ``compact`` call) holds it. No lock on an object store, or where ``flock`` is missing.

    Raises :class:`CompactError` if the lock file can be neither made nor opened (a read-only lake, say)."""
    if isinstance(root, ObjectPath) or fcntl is None or not Path(root).is_dir():
        yield True
        return
    lock = Path(root) / LOCK_FILE
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        fd = _open_existing(lock, error)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # releases the lock


def _open_existing(lock: Path, error: OSError) -> int:
    """The lock file opened for reading (``flock`` needs no more) when it cannot be opened for writing, unless the
    lake is read-only: then nothing could be compacted anyway."""
    if error.errno != errno.EROFS:
        try:
            return os.open(lock, os.O_RDONLY)
        except OSError:
            pass
        message = f"cannot compact the lake at {lock.parent}: cannot open its lock file {lock} ({error.strerror})"
        raise CompactError(message, error) from error
    raise CompactError(f"cannot compact the lake at {lock.parent}: it is on a read-only file system", error) from error


def compact(
    root: str | os.PathLike[str] | LakeRoot,
    older_than_minutes: float = 10,
    tenant: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    max_step_bytes: int = DEFAULT_MAX_STEP_BYTES,
) -> CompactionSummary:
    """Compact every quiet day of the lake (a folder, or an ``s3://`` URL / ``ObjectPath``); see the module doc.

    ``progress(done, total)`` is called after each day folder. A local lake is locked for the duration: if another
    compaction holds the lock this returns at once with ``busy`` set. On S3 nothing is locked: run one compactor.
    Raises :class:`CompactError` (an ``OSError`` saying why, nothing changed) if the lake cannot be compacted at all:
    read-only, or its lock file cannot be made or opened. A day that cannot be rewritten is logged and left as it is.
    """
    started = time.perf_counter()
    summary = CompactionSummary()
    if not isinstance(root, (Path, ObjectPath)):
        root = resolve_lake(root) or Path(root)
    with _lake_lock(root) as locked:
        if not locked:
            summary.busy = True
            _logger.warning("compaction of %s: %s; nothing done", root, BUSY_MESSAGE)
        else:
            _compact_days(root, older_than_minutes * 60, tenant, progress, max_step_bytes, summary)
    summary.seconds = time.perf_counter() - started
    return summary


def _compact_days(
    root: LakeRoot,
    older_than_s: float,
    tenant: str | None,
    progress: Callable[[int, int], None] | None,
    max_step_bytes: int,
    summary: CompactionSummary,
) -> None:
    now = time.time()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    days = [
        _Day(table, day, folder, day < today, now, older_than_s, max_step_bytes)
        for table in (SPANS, RUNS)
        for _, _, day, folder in day_dirs(root, table, tenant)
    ]
    for done, day in enumerate(days, start=1):
        try:
            (_compact_spans_day if day.table == SPANS else _compact_runs_day)(day, summary)
        except OSError as error:
            if is_missing(error) and not isinstance(error, _SurveyError):  # expired (TTL) or purged meanwhile
                _logger.info("compaction: %s went meanwhile (TTL?); left to it (%s)", day.folder, error)
            else:
                _logger.error(
                    "compaction: cannot rewrite %s (%s); the parts not yet removed are unchanged", day.folder, error
                )
        if progress is not None:
            progress(done, len(days))
