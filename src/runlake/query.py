"""DuckDB over explicit lists of part files.

Readers never glob the lake: callers list the files they need (``opentelemetry.exporter.runlake.layout``)
and pass them here. A file that cannot be read (truncated, not Parquet) is set aside with a warning naming
it and the query is answered from the rest; a file removed meanwhile (TTL, compaction) triggers one fresh
listing.

Local files are read by DuckDB's own Parquet reader (``read_parquet([...], union_by_name=true)``). Files on an
object store (``layout.ObjectPath``) are read through ``pyarrow.fs``: they become a ``pyarrow.dataset`` in the
table's current schema (older files' missing columns read as nulls, as ``union_by_name`` does), registered on the
cursor, and DuckDB scans it with filter and projection pushdown; no DuckDB extension is needed.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    LakeRoot,
    ObjectPath,
    day_folder_of,
    is_compacted,
    is_missing,
    storable_text,
    table_files,
    table_of_file,
)
from opentelemetry.exporter.runlake.mapping import RUNS_SCHEMA, SPANS_SCHEMA

_logger = logging.getLogger(__name__)

Lister = Callable[[], Sequence[LakeRoot]]
_SCHEMAS = {SPANS: SPANS_SCHEMA, RUNS: RUNS_SCHEMA}
_SCAN = "_runlake_scan"  # the relation ``{files}`` names for object-store files


def object_dataset(files: Sequence[ObjectPath]) -> ds.Dataset:
    """The files as one ``pyarrow.dataset`` in their table's current schema (sizes from the listing: no HEADs)."""
    fmt = ds.ParquetFileFormat()
    fs = files[0].fs
    schema = _SCHEMAS.get(files[0].table or "")
    if schema is None:  # not a lake table: the first file's schema
        return ds.dataset([f.path for f in files], filesystem=fs, format=fmt)
    try:
        fragments = [fmt.make_fragment(f.path, fs, file_size=f.size) for f in files]
    except TypeError:  # pyarrow < 15 has no file_size: one HEAD per file instead
        fragments = [fmt.make_fragment(f.path, fs) for f in files]
    return ds.FileSystemDataset(fragments, schema, fmt, fs)


# One row per span: the "start" row of a run only while its "end" row has not arrived.
# What makes two rows the same span: its ids, start time and tenant (one tenant's rows never hide another's, even
# with the same span id). Every de-duplication keys on it; DuckDB also pushes a caller's filter on these columns below
# the window into the Parquet scan. Not the session: a run's session can be set after it started, so its start row
# may name none while its end row names one. Of a span's rows in several sessions (sent again under another session,
# or its session changed meanwhile) the first session's in order wins, nulls last: the same row whatever the files,
# so lake-wide readers agree with each other and with compaction (``runlake.compact``), which keeps that row alone.
# DuckDB's cache of file contents keeps an entry for every file it ever read, gone ones too (compaction and TTL
# replace files all day: a long-lived server grew ~1.3 KB a file); pyarrow's point reads and the OS cache do that job.
DUCKDB_CONFIG = {"threads": 2, "enable_external_file_cache": False}
SPAN_KEY = "span_id, trace_id, start_time_unix_nano, tenant_id"
_LATEST_ORDER = "record = 'end' DESC NULLS LAST, session_id ASC NULLS LAST"
LATEST_ROW = f"QUALIFY row_number() OVER (PARTITION BY {SPAN_KEY} ORDER BY {_LATEST_ORDER}) = 1"
# The runs/ index: a run exported again (a retry) after nodes that came late carries more nodes than its first row;
# the row with the most wins, so its totals never depend on which copy a scan meets first.
LATEST_RUN_ROW = (
    f"QUALIFY row_number() OVER (PARTITION BY {SPAN_KEY} ORDER BY {_LATEST_ORDER}, node_count DESC NULLS LAST) = 1"
)


def latest_row_of(files: Sequence[LakeRoot]) -> str:
    """``LATEST_RUN_ROW`` for files of the ``runs/`` index, else ``LATEST_ROW``."""
    if not files:
        return LATEST_ROW
    first = files[0]
    table = first.table if isinstance(first, ObjectPath) else table_of_file(str(first))
    return LATEST_RUN_ROW if table == RUNS else LATEST_ROW


# A span's elapsed nanoseconds, never negative (a clock stepped back between its start and end: 0, as history's
# durations show it); null while it runs. Every duration of the views and the statistics is this one.
ELAPSED_NS = (
    "CASE WHEN end_time_unix_nano < start_time_unix_nano THEN 0 ELSE end_time_unix_nano - start_time_unix_nano END"
)


# Runs newest first; runs that started in the same nanosecond (millisecond clocks, a frozen test clock) by run id, so
# that every path (the in-memory index, DuckDB over the files) lists them in one order and a limit cuts alike.
NEWEST_RUN_FIRST = "start_time_unix_nano DESC, run_id"
# The run that describes a trace: a root (no parent) first, then the earliest, then the lowest span id; a nested run
# that starts in the same nanosecond as its parent never does. ``first_run_rank`` is the same choice in Python.
FIRST_RUN_OF_TRACE = "parent_span_id IS NULL DESC, start_time_unix_nano, span_id"


def first_run_rank(parent_span_id: str | None, start_time_unix_nano: int, span_id: str) -> tuple[bool, int, str]:
    """The order of ``FIRST_RUN_OF_TRACE``: the smallest rank describes the trace."""
    return parent_span_id is not None, start_time_unix_nano, span_id


def _day_group(file: LakeRoot) -> str:
    """The day folder a part file belongs to: the scope within which one span's rows are found."""
    return str(day_folder_of(file))


def split_clean(files: Sequence[LakeRoot]) -> tuple[list[LakeRoot], list[LakeRoot]]:
    """``(clean, dirty)``: files alone in their day (as listed) and written by compaction hold each span once, so
    they need no de-duplication; every other file is read through the window that keeps one row per span."""
    groups: dict[str, list[LakeRoot]] = {}
    for file in files:
        groups.setdefault(_day_group(file), []).append(file)
    clean: list[LakeRoot] = []
    dirty: list[LakeRoot] = []
    for group in groups.values():
        if len(group) == 1 and is_compacted(group[0]):
            clean.append(group[0])
        else:
            dirty.extend(group)
    return clean, dirty


Absent = Callable[[Sequence[LakeRoot]], str]  # files -> ", NULL::TYPE AS col ..." for columns none of them has


def _no_absent(files: Sequence[LakeRoot]) -> str:
    return ""


def _scan(listing: str, absent: str) -> str:
    """``read_parquet`` of a listing (SQL text or ``?``), with the columns none of the files has added as nulls:
    ``union_by_name`` only unions the listed files, so a query naming such a column would not bind."""
    scan = f"read_parquet({listing}, union_by_name=true, hive_partitioning=false)"
    return f"(SELECT *{absent} FROM {scan})" if absent else scan


def _parquet_list(files: Sequence[LakeRoot], absent: Absent = _no_absent) -> str:
    listing = "[" + ", ".join("'" + str(f).replace("'", "''") + "'" for f in files) + "]"
    return _scan(listing, absent(files))


# A row with no start time is no span (no day, no order): an older writer stored one for a time past int64
# nanoseconds (the exporter now rejects those). Every read leaves such rows out, so none breaks an answer.
STARTED = "start_time_unix_nano IS NOT NULL"


def _started_and(where: str) -> str:
    """`` WHERE`` the row has a start time and ``where`` (when given) holds."""
    return f" WHERE {STARTED} AND ({where})" if where else f" WHERE {STARTED}"


def latest_source(
    files: Sequence[LakeRoot], where: str = "", params: Sequence[Any] = (), absent: Absent = _no_absent
) -> tuple[str, list[Any]]:
    """SQL (and its parameters) for one row per span over local part files: compacted days as they are, the rest
    de-duplicated. ``where`` filters rows before de-duplication, so it may only test what a span's start and end
    rows share (ids, session, tenant, user, span type, start time). ``absent``: see ``LakeReader._absent``."""
    clean, dirty = split_clean(files)
    condition = _started_and(where)
    parts, values = [], []
    if clean:
        parts.append(f"SELECT * FROM {_parquet_list(clean, absent)}{condition}")
        values += params
    if dirty:
        parts.append(f"SELECT * FROM {_parquet_list(dirty, absent)}{condition} {latest_row_of(dirty)}")
        values += params
    if len(parts) == 1:
        return f"({parts[0]})", values
    return f"({parts[0]} UNION ALL BY NAME {parts[1]})", values


# A query whose listed file was removed meanwhile (TTL, compaction) runs again on a fresh listing. Compaction that
# keeps replacing the files a query lists (a loop with ``older_than`` 0 beside a busy writer) can win a few quick
# races in a row, so each attempt waits a little longer first: 9 attempts within ~1.3 s, then the error.
RETRY_WAITS_S = (0.0, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64)
_ATTEMPTS = len(RETRY_WAITS_S) + 8  # and one more for each round of broken files set aside
LAST_ATTEMPT = len(RETRY_WAITS_S) - 1


def attempts_after_waits() -> Iterator[int]:
    """Attempt numbers (0 to ``LAST_ATTEMPT``) of work that may lose a race with compaction or TTL, each but the
    first after its wait in ``RETRY_WAITS_S``: the caller breaks out once an attempt did not lose."""
    for attempt, wait in enumerate(RETRY_WAITS_S):
        if wait:
            time.sleep(wait)
        yield attempt


def _file_error(error: duckdb.Error) -> bool:
    """Whether a DuckDB error can come from a file rather than the statement: an I/O or input error, or DuckDB's
    plain ``Error`` (a Parquet footer it cannot decode: "don't know what type"). Not parser, binder or catalog
    errors: those are the statement's own, and no file is read again (or set aside) for them."""
    return isinstance(error, (duckdb.IOException, duckdb.InvalidInputException)) or type(error) is duckdb.Error


def _vanished(message: str) -> bool:
    """A query failed because a listed file was removed meanwhile (TTL, compaction): list again."""
    return any(
        m in message for m in ("No files found", "No such file", "not exist", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND")
    )


class LakeReader:
    """Runs SQL over part files: ``{files}`` stands for every row of them (``read_parquet(<list>, union_by_name)``),
    ``{latest}`` for one row per span (the ``end`` row once it exists), with no window over compacted days."""

    def __init__(self) -> None:
        self._connection: duckdb.DuckDBPyConnection | None = None  # opened on first use (~20-40 ms)
        self._local = threading.local()
        self._bad: set[str] = set()
        self._verified: set[tuple[str, int | None, float | None]] = set()
        self._typed: set[str] = set()  # local files whose column types were checked
        self._lacking: dict[str, frozenset[str]] = {}  # of those, the ones without some of the table's columns
        self._footers: dict[str, tuple[pq.FileMetaData, list[tuple[Any, Any]]]] = {}
        self._lock = threading.Lock()

    def _db(self) -> duckdb.DuckDBPyConnection:
        connection = self._connection
        if connection is None:
            with self._lock:
                if self._connection is None:
                    connection = duckdb.connect(config=DUCKDB_CONFIG)
                    # part files are never rewritten in place (new files get new names): cached footers stay true
                    connection.execute("SET parquet_metadata_cache = true")
                    self._connection = connection
                connection = self._connection
        return connection

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db().cursor()
        return cursor

    def _usable(self, files: Sequence[LakeRoot]) -> list[LakeRoot]:
        """The files not set aside; local files seen for the first time have their column types checked."""
        fresh = [f for f in files if not isinstance(f, ObjectPath) and str(f) not in self._typed]
        if fresh:
            self._check_types(fresh)
        bad = self._bad
        return [f for f in files if str(f) not in bad] if bad else list(files)

    def _check_types(self, files: Sequence[LakeRoot]) -> None:
        """Set aside, with a warning naming it, a part file whose columns hold types the table cannot (another
        writer's, or a damaged one): read with the others, one such file would fail every query or turn a column
        into text lake-wide. Part files never change, so each is checked once (its footer's schema)."""
        for file in files:
            name = str(file)
            schema = _table_schema_of(name)
            if schema is None:
                continue
            try:  # a compacted file's footer is kept for point reads anyway; a part's schema is read once
                found = self._footer(name)[0].schema.to_arrow_schema() if is_compacted(name) else pq.read_schema(name)
            except Exception:  # noqa: BLE001 - unreadable or gone: the query's own error handling finds it
                continue
            wrong = [
                f"{field.name} is {field.type}, not {schema.field(field.name).type}"
                for field in found
                if field.name in schema.names and not _compatible(field.type, schema.field(field.name).type)
            ]
            lacking = frozenset(schema.names) - set(found.names)
            with self._lock:
                if len(self._typed) >= _MAX_VERIFIED:
                    self._typed.clear()
                    self._lacking.clear()
                self._typed.add(name)
                if lacking:  # written before a column existed: read with that column null
                    self._lacking[name] = lacking
                if wrong:
                    self._bad.add(name)
            if wrong:
                _logger.warning("runlake: skipping part file %s: %s", name, "; ".join(wrong))

    def _absent(self, files: Sequence[LakeRoot]) -> str:
        """``, NULL::TYPE AS col`` for each column of the table that none of the (local, type-checked) files has: a
        lake of files from before a column existed reads it as null, as ``union_by_name`` does where one file has it.
        """
        lacking = self._lacking
        if not lacking or not files:
            return ""
        common: frozenset[str] | None = None
        for file in files:
            missing = lacking.get(str(file))
            if not missing:
                return ""
            common = missing if common is None else common & missing
            if not common:
                return ""
        schema = _table_schema_of(str(files[0]))
        if schema is None or not common:
            return ""
        return "".join(f", NULL::{_DUCKDB_TYPES[schema.field(c).type]} AS {c}" for c in schema.names if c in common)

    def _set_aside(self, files: Sequence[LakeRoot]) -> bool:
        """Find unreadable files among ``files`` and remember them; True if any was found.

        On an object store only a file that is there but is not readable Parquet is set aside: a network or
        permission error is raised instead, so an outage never marks good files as bad. pyarrow reports a footer it
        cannot decode ("Couldn't deserialize thrift") as an ``OSError`` too: that one is the file's.
        """
        found = False
        for file in files:
            name = str(file)
            try:
                if isinstance(file, ObjectPath):
                    pq.read_metadata(file.path, filesystem=file.fs)
                else:
                    pq.read_metadata(name)
            except FileNotFoundError:
                continue
            except Exception as error:  # noqa: BLE001 - anything pyarrow cannot open is unusable
                if isinstance(file, ObjectPath) and isinstance(error, OSError) and "thrift" not in str(error).lower():
                    if is_missing(error):
                        continue
                    raise
                with self._lock:
                    self._bad.add(name)
                _logger.warning("runlake: skipping unreadable part file %s (%s)", name, error)
                found = True
        return found

    @property
    def bad_files(self) -> set[str]:
        return set(self._bad)

    def rows(
        self,
        sql: str,
        lister: Lister,
        params: Sequence[Any] = (),
        where: str = "",
        where_params: Sequence[Any] = (),
    ) -> list[dict[str, Any]]:
        """Run ``sql`` over the listed files; rows as dicts. No files: no rows.

        ``where`` / ``where_params``: a filter applied inside ``{latest}`` before de-duplication (see
        ``latest_source``); ``{latest}`` must then come before any other ``?`` of ``sql``.
        """
        result = self._execute(sql, lister, params, where, where_params)
        if result is None:
            return []
        names, rows = result
        return [dict(zip(names, row)) for row in rows]

    def batches(self, sql: str, lister: Lister, params: Sequence[Any] = (), size: int = 512) -> Iterator[list[dict]]:
        """``rows``, at most ``size`` at a time: DuckDB's result becomes Python dicts one batch at a time, so a large
        answer is never held as dicts (~4 KB a span) all at once. Files set aside or gone are handled as ``rows``
        does, until the first batch; DuckDB still holds what the query needs (a sort holds all it sorts)."""
        cursor = self._db().cursor()  # its own: a query run meanwhile on this thread's cursor would end the stream
        try:
            result = self._execute(sql, lister, params, cursor=cursor, first=size)
            if result is None:
                return
            names, batch = result
            while batch:
                yield [dict(zip(names, row)) for row in batch]
                batch = cursor.fetchmany(size)
        finally:
            cursor.close()

    def write(
        self, sql: str, lister: Lister, params: Sequence[Any] = (), settings: dict[str, int] | None = None
    ) -> bool:
        """Run ``sql`` (a ``COPY ... TO``) over the listed files, on a cursor of its own: ``settings`` (session
        settings, e.g. ``partitioned_write_flush_threshold``) hold for it alone. Files set aside or gone as ``rows``;
        False if it did not run (no readable file left)."""
        cursor = self._db().cursor()
        try:
            for name, value in (settings or {}).items():
                cursor.execute(f"SET {name} = {int(value)}")
            return self._execute(sql, lister, params, cursor=cursor, first=1) is not None
        finally:
            cursor.close()

    def _execute(
        self,
        sql: str,
        lister: Lister,
        params: Sequence[Any],
        where: str = "",
        where_params: Sequence[Any] = (),
        cursor: duckdb.DuckDBPyConnection | None = None,
        first: int | None = None,
    ) -> tuple[list[str], list[tuple]] | None:
        """``(column names, rows)``; with ``first``, only that many rows and ``cursor`` left open on the rest."""
        shared = cursor is None
        files = self._usable(lister())
        # ids with lone surrogates are stored (and their folders named) with U+FFFD; DuckDB refuses them as they are
        params, where_params = [storable_text(p) for p in params], [storable_text(p) for p in where_params]
        vanished = 0  # attempts that lost a race with compaction or TTL (``_next_attempt``)
        for _ in range(_ATTEMPTS):
            if not files:
                return None
            cursor = self._cursor() if shared else cursor
            remote = isinstance(files[0], ObjectPath)
            try:
                if remote:
                    cursor.register(_SCAN, object_dataset(files))
                    latest = f"(SELECT * FROM {_SCAN}{_started_and(where)} {latest_row_of(files)})"
                    query = sql.replace("{files}", _SCAN).replace("{latest}", latest)
                    values = [*where_params, *params] if "{latest}" in sql else list(params)
                    result = cursor.execute(query, values)
                elif "{latest}" in sql:
                    source, values = latest_source(files, where, where_params, self._absent)
                    result = cursor.execute(sql.replace("{latest}", source), [*values, *params])
                else:
                    query = sql.replace("{files}", _scan("?", self._absent(files)))
                    result = cursor.execute(query, [[str(f) for f in files], *params])
                names = [d[0] for d in result.description]
                return names, result.fetchall() if first is None else result.fetchmany(first)
            except duckdb.Error as error:
                if not _file_error(error):
                    raise
                files, vanished = self._next_attempt(error, files, lister, vanished)
            finally:
                if remote and shared:  # a stream's own cursor keeps its scan until the stream closes it
                    cursor.unregister(_SCAN)
        return None

    def session_rows(
        self,
        lister: Lister,
        sessions: Sequence[str],
        columns: Sequence[str],
        also: tuple[str, Sequence[Any]] | None = None,
    ) -> list[dict[str, Any]] | None:
        """The rows of ``sessions`` in the listed files, read with pyarrow: only the row groups whose ``session_id``
        statistics can hold them, only ``columns``. For point reads this is about half DuckDB's time (no planning).

        Only where no de-duplication is needed (every file a compacted day's only file) and every file is local
        and readable in the current schema; otherwise None, and the caller asks DuckDB (which also sets broken
        files aside with a warning). ``also``: ``(column, values)``, a second filter applied before rows become
        Python dicts. A session ``""`` stands for spans without one (null or empty ``session_id``).
        """
        files = self._usable(lister())
        if not files or isinstance(files[0], ObjectPath) or split_clean(files)[1]:
            return None if files else []
        if self._lacking and any(self._lacking.get(str(f), frozenset()).intersection(columns) for f in files):
            return None  # a file from before a wanted column existed: DuckDB's path reads it as null
        wanted = sorted(set(sessions))
        session_set = pa.array(wanted, pa.string())
        also_set = None if also is None else pa.array(list(also[1]), pa.string())
        in_sessions = set(wanted)
        out: list[dict[str, Any]] = []
        try:
            for file in files:
                metadata, bounds = self._footer(str(file))
                # groups whose [min, max] holds one of the sessions (not merely lies between the first and last)
                groups = [
                    i
                    for i, (lo, hi) in enumerate(bounds)
                    if lo is None or bisect.bisect_left(wanted, lo) < bisect.bisect_right(wanted, hi)
                ]
                if not groups:
                    continue
                # pre_buffer off: a few row groups of a local file read straight, not coalesced (~10% faster here);
                # no threads: handing ~30 small column chunks to a pool costs more than decoding them (B30 probes,
                # alternating: get_traces 6.1-6.8 ms against 5.9-9.4 with threads while another process ran)
                reader = pq.ParquetFile(str(file), metadata=metadata, pre_buffer=False)
                table = reader.read_row_groups(groups, columns=list(columns), use_threads=False)
                if also is not None:  # the narrower test first (a few traces), then the sessions on what is left
                    rows = table.filter(pc.is_in(table.column(also[0]), value_set=also_set)).to_pylist()
                    out.extend(
                        r
                        for r in rows
                        if (r["session_id"] or "") in in_sessions and r.get("start_time_unix_nano", 0) is not None
                    )
                    continue
                keep = pc.is_in(table.column("session_id"), value_set=session_set)
                if wanted[0] == "" and table.column("session_id").null_count:  # sorted: "" comes first
                    keep = pc.or_kleene(keep, pc.is_null(table.column("session_id")))
                if "start_time_unix_nano" in table.column_names and table.column("start_time_unix_nano").null_count:
                    keep = pc.and_kleene(keep, pc.is_valid(table.column("start_time_unix_nano")))  # see STARTED
                out.extend(table.filter(keep).to_pylist())
        except (OSError, KeyError, ValueError, pa.ArrowException):
            return None  # vanished, broken or of another schema: DuckDB's path handles each of those
        return out

    def warm(self, files: Sequence[LakeRoot]) -> int:
        """Read and keep the footers of compacted local files (as many as the cache holds), so the first point read
        of each does not parse one; the number kept."""
        kept = 0
        for file in files:
            if kept >= _MAX_FOOTERS or isinstance(file, ObjectPath) or not is_compacted(file):
                continue
            try:
                self._footer(str(file))
                self._check_types([file])  # from the footer just kept: the first query pays nothing for it
                kept += 1
            except (OSError, ValueError, pa.ArrowException):
                continue  # a broken file is found and said by the query that reads it
        return kept

    def _footer(self, path: str) -> tuple[pq.FileMetaData, list[tuple[Any, Any]]]:
        """A file's footer and each row group's session_id (min, max), kept for the file's life (never rewritten)."""
        hit = self._footers.get(path)
        if hit is None:
            metadata = pq.read_metadata(path)
            column = metadata.schema.to_arrow_schema().get_field_index("session_id")
            bounds = []
            for i in range(metadata.num_row_groups):
                stats = metadata.row_group(i).column(column).statistics
                known = stats is not None and stats.has_min_max and stats.null_count == 0
                bounds.append((stats.min, stats.max) if known else (None, None))
            if len(self._footers) >= _MAX_FOOTERS:
                self._footers.clear()
            hit = self._footers[path] = (metadata, bounds)
        return hit

    def views(
        self, root: LakeRoot | None, tenant: str | None = None, tables: Sequence[str] = (SPANS, RUNS)
    ) -> duckdb.DuckDBPyConnection:
        """A connection with views ``spans`` and ``runs`` (one row per span / run; only those in ``tables``) over the
        whole lake. Compacted days are read as they are, the rest through the de-duplication (``latest_source``).

        Local files are not checked beforehand: creating a view reads every listed file's footer (the view is bound
        with ``union_by_name``), so an unreadable file fails it and is then found and set aside, as in ``rows``.
        Object-store files are scanned lazily through a dataset, so files not seen before (path, size, mtime) are
        checked once with ``count(*)``.
        """
        con = self._db().cursor()
        for table, schema in ((SPANS, SPANS_SCHEMA), (RUNS, RUNS_SCHEMA)):
            if table not in tables:
                continue
            lister: Lister = (lambda table=table: table_files(root, table, tenant)) if root is not None else list
            files = self._usable(lister())
            vanished = 0
            for _ in range(_ATTEMPTS):
                try:
                    if files and isinstance(files[0], ObjectPath):
                        new = [f for f in files if _identity(f) not in self._verified]
                        if new and self._set_aside_if_broken(con, new):
                            files = self._usable(files)
                            continue
                        self._remember_verified(new)
                    self._create_view(con, table, schema, files)
                    break
                except duckdb.Error as error:
                    if not _file_error(error):
                        raise
                    files, vanished = self._next_attempt(error, files, lister, vanished)
            else:
                raise RuntimeError(f"runlake: could not build the {table} view")  # pragma: no cover
        return con

    def _next_attempt(
        self, error: Exception, files: Sequence[LakeRoot], lister: Lister, vanished: int
    ) -> tuple[list[LakeRoot], int]:
        """What the next attempt of a failed read reads, and how many lost a race so far: ``files`` without the
        broken ones, set aside with a warning (at once); else, for a file removed meanwhile, a new listing after
        ``RETRY_WAITS_S[vanished + 1]``; else (or when those waits are used up) ``error`` is raised."""
        if self._set_aside(files):
            return self._usable(files), vanished
        if vanished < LAST_ATTEMPT and _vanished(str(error)):
            time.sleep(RETRY_WAITS_S[vanished + 1])
            return self._usable(lister()), vanished + 1
        raise error

    def _remember_verified(self, files: Sequence[LakeRoot]) -> None:
        if not files:
            return
        with self._lock:
            if len(self._verified) + len(files) > _MAX_VERIFIED:
                self._verified.clear()
            self._verified.update(_identity(f) for f in files)

    def _create_view(
        self, con: duckdb.DuckDBPyConnection, table: str, schema: pa.Schema, files: list[LakeRoot]
    ) -> None:
        if files and isinstance(files[0], ObjectPath):
            con.register(f"_lake_{table}", object_dataset(files))
            source = f"(SELECT * FROM _lake_{table}{_started_and('')} {latest_row_of(files)})"
        elif files:
            source, _ = latest_source(files, absent=self._absent)
        else:
            con.register(f"_empty_{table}", pa.Table.from_pylist([], schema=schema))
            source = f"_empty_{table}"
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW {table} AS
            SELECT * EXCLUDE (record),
                   make_timestamp(start_time_unix_nano // 1000) AS start_time,
                   make_timestamp(end_time_unix_nano // 1000) AS end_time,
                   ({ELAPSED_NS}) / 1e6 AS duration_ms,
                   CAST(make_timestamp(start_time_unix_nano // 1000) AS DATE) AS day
            FROM {source}"""
        )

    def _set_aside_if_broken(self, con: duckdb.DuckDBPyConnection, files: list[LakeRoot]) -> bool:
        try:
            if isinstance(files[0], ObjectPath):
                con.register("_runlake_check", object_dataset(files))
                try:
                    con.execute("SELECT count(*) FROM _runlake_check").fetchall()
                finally:
                    con.unregister("_runlake_check")
            else:
                sql = "SELECT count(*) FROM read_parquet(?, union_by_name=true, hive_partitioning=false)"
                con.execute(sql, [[str(f) for f in files]]).fetchall()
            return False
        except duckdb.Error as error:
            if not _file_error(error):
                raise
            return self._set_aside(files)


_DUCKDB_TYPES = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float64(): "DOUBLE"}
_MAX_FOOTERS = 256  # footers kept for pyarrow point reads (a day file's: ~0.2-0.5 MB in memory); forgotten all at once
_MAX_VERIFIED = 500_000  # object-store files known readable (path, size, mtime); forgotten all at once past this


def _table_schema_of(path: str) -> pa.Schema | None:
    """The schema of the table a part file belongs to, from its path (``<root>/spans/tenant=…/…``)."""
    table = table_of_file(path)
    return _SCHEMAS.get(table) if table is not None else None


def _compatible(found: pa.DataType, wanted: pa.DataType) -> bool:
    """Whether a column of type ``found`` reads as ``wanted`` (what ``union_by_name`` widens without harm)."""
    if found == wanted or pa.types.is_null(found):
        return True
    if pa.types.is_dictionary(found):
        found = found.value_type
    if pa.types.is_integer(wanted):
        return pa.types.is_integer(found)
    if pa.types.is_floating(wanted):
        return pa.types.is_integer(found) or pa.types.is_floating(found)
    if pa.types.is_string(wanted) or pa.types.is_large_string(wanted):
        return pa.types.is_string(found) or pa.types.is_large_string(found) or pa.types.is_string_view(found)
    return found == wanted


def _identity(file: LakeRoot) -> tuple[str, int | None, float | None]:
    """What names one version of a file: object-store listings carry size and mtime (part names are unique anyway)."""
    if isinstance(file, ObjectPath):
        return file.path, file.size, file.mtime
    return str(file), None, None
