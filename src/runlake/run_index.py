"""An in-memory copy of the ``runs/`` index's narrow columns, kept per part file.

Part files never change once written (compaction and TTL replace or remove whole files), so what was read from a
file stays true while the file is listed: a refresh lists the index (``layout.CachedListing``: a ``stat`` per
unchanged folder), reads only files not seen before and forgets files that went. Cross-session questions (which
days a session has, where a run is, a user's newest runs, a page of history, statistics) are then answered by
DuckDB over this Arrow table in memory, and only the few Parquet files that hold the wanted rows' text are opened.

Memory is capped: past ``max_rows`` runs the index turns itself off (said once in the log) and callers read the
files as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    CachedListing,
    LakeRoot,
    ObjectPath,
    fs_and_path,
    is_missing,
    storable_text,
)
from opentelemetry.exporter.runlake.mapping import RUNS_SCHEMA
from opentelemetry.exporter.runlake.writer import conform

from .query import DUCKDB_CONFIG, FIRST_RUN_OF_TRACE, LATEST_RUN_ROW, STARTED, attempts_after_waits, first_run_rank

_logger = logging.getLogger(__name__)

COLUMNS = (
    "record",
    "tenant_id",
    "session_id",
    "user_id",
    "run_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "start_time_unix_nano",
    "end_time_unix_nano",
    "status_code",
    "error_type",
    "agent_name",
    "agent_id",
    "node_count",
    "failed_nodes",
    "input_tokens",
    "output_tokens",
    "cost_cents",
    "ttl_days",
)
_SCHEMA = pa.schema([RUNS_SCHEMA.field(c) for c in COLUMNS])
NAME = "runlake_run_index"  # what ``{index}`` stands for in ``RunIndex.rows``
DEFAULT_MAX_ROWS = 2_000_000  # ~200 bytes a run in memory: ~400 MB at most


def _read_one(file: LakeRoot) -> pa.Table:
    filesystem, path = fs_and_path(file)
    present = set(pq.read_schema(path, filesystem=filesystem).names)
    return conform(pq.read_table(path, columns=[c for c in COLUMNS if c in present], filesystem=filesystem), _SCHEMA)


def _read_many(cursor: duckdb.DuckDBPyConnection, files: list[LakeRoot]) -> dict[str, pa.Table]:
    """The narrow columns of local files in one DuckDB scan, split per file."""
    listing = [str(f) for f in files]
    wanted = ", ".join(COLUMNS)
    table = cursor.sql(
        f"SELECT {wanted}, filename FROM read_parquet({listing!r}, union_by_name=true, filename=true, "
        "hive_partitioning=false) ORDER BY filename"
    ).to_arrow_table()
    names = table.column("filename").to_pylist()
    table = conform(table.drop_columns(["filename"]), _SCHEMA)
    out: dict[str, pa.Table] = {name: _SCHEMA.empty_table() for name in listing}
    start = 0
    for end in range(1, len(names) + 1):
        if end == len(names) or names[end] != names[start]:
            out[names[start]] = table.slice(start, end - start)
            start = end
    return out


class RunIndex:
    """One row per run (its ``end`` row once written), for every run in the lake's ``runs/`` index."""

    def __init__(self, root: LakeRoot, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.root = root
        self.max_rows = max_rows
        self.enabled = max_rows > 0
        self.listing = CachedListing()  # shared with the readers of the same HistoryDB
        self._parts: dict[str, pa.Table] = {}
        self._rows = 0
        self._table: pa.Table | None = None
        self._version = 0
        self._bad: set[str] = set()
        self._lock = threading.RLock()
        self._connection: duckdb.DuckDBPyConnection | None = None  # opened on first use
        self._local = threading.local()
        # (version, run id -> row, run id -> rows where it repeats, session id -> rows): a run id may be in several
        # tenants (one stream sent to two); a list per run for the rest would cost ~90 bytes a run
        self._lookups: tuple[int, dict[str, int], dict[str, list[int]], dict[str, list[int]]] | None = None
        self._first: tuple[pa.Table, pa.Array] | None = None  # (table, first run of its trace per row)
        self._several: tuple[pa.Table, frozenset[str]] | None = None  # (table, traces holding several runs)
        self._users: tuple[pa.Table, dict[str, list[int]]] | None = None  # (table, user id -> rows)

    def _db(self) -> duckdb.DuckDBPyConnection:
        with self._lock:
            if self._connection is None:
                self._connection = duckdb.connect(config=DUCKDB_CONFIG)
            return self._connection

    def refresh(self) -> bool:
        """Bring the copy up to date with the listing; False if the index is off (too many runs).

        A file listed but gone when it is read was replaced by compaction meanwhile (its rows are in a newer file,
        while the file it replaced is already dropped from the copy as gone): the lake is listed again, as readers
        do (``query.RETRY_WAITS_S``), or the copy would lack that day's runs until the next refresh."""
        for _ in attempts_after_waits():
            vanished = self._refresh_once()
            if vanished is None:
                return False
            if not vanished:
                return True
        return True  # the last listing's files were replaced again meanwhile: next time

    def _refresh_once(self) -> bool | None:
        """One listing applied: None if the index turned itself off, else whether a listed file vanished."""
        if not self.enabled:
            return None
        files = self.listing.table_files(self.root, RUNS)
        with self._lock:
            names = {str(f): f for f in files if str(f) not in self._bad}
            gone = [n for n in self._parts if n not in names]
            new = [f for n, f in names.items() if n not in self._parts]
            if not gone and not new and self._table is not None:
                return False
            for name in gone:
                self._rows -= self._parts.pop(name).num_rows
            read = self._read(new)
            vanished = any(str(f) not in read and str(f) not in self._bad for f in new)
            for name, part in read.items():
                self._parts[name] = part
                self._rows += part.num_rows
                if self._rows > self.max_rows:
                    _logger.warning(
                        "runlake: the runs index holds more than %d rows; queries read it from disk instead of "
                        "memory (raise max_rows to keep it in memory)",
                        self.max_rows,
                    )
                    self.enabled = False
                    self._parts.clear()
                    self._table = None
                    return None
            latest = self._latest(list(self._parts.values()))
            # NEWEST_RUN_FIRST (the order of history and traces), in one chunk: filters and takes stay cheap
            order = [("start_time_unix_nano", "descending"), ("run_id", "ascending")]
            self._table = latest.sort_by(order).combine_chunks()
            self._version += 1
            return vanished

    def _read(self, files: list[LakeRoot]) -> dict[str, pa.Table]:
        """New files' rows; one scan for local files, file by file on an object store or when one is broken."""
        if files and not isinstance(files[0], ObjectPath):
            cursor = self._db().cursor()
            try:
                return _read_many(cursor, files)
            except duckdb.Error:  # a broken file (a footer DuckDB cannot decode raises its plain Error) or a vanished
                pass  # one, or none with some column (older files): file by file below, each failure said once
            finally:
                cursor.close()
        out: dict[str, pa.Table] = {}
        for file in files:
            try:
                out[str(file)] = _read_one(file)
            except Exception as error:  # noqa: BLE001 - a broken file is left out, and said once
                if not is_missing(error):
                    self._bad.add(str(file))
                    _logger.warning("runlake: skipping unreadable part file %s (%s)", file, error)
        return out

    def _latest(self, parts: list[pa.Table]) -> pa.Table:
        if not parts:
            return _SCHEMA.empty_table()
        merged = pa.concat_tables(parts)
        cursor = self._db().cursor()
        try:
            cursor.register("_parts", merged)
            sql = f"SELECT * EXCLUDE (record) FROM _parts WHERE {STARTED} {LATEST_RUN_ROW}"
            return cursor.sql(sql).to_arrow_table()
        finally:
            cursor.close()

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run ``sql`` with ``{index}`` standing for the in-memory index (call ``refresh`` first)."""
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db().cursor()
        with self._lock:
            table = self._table
        if table is None:
            return []
        # registered for this query only: a thread's cursor that kept it would keep an old version alive (one copy
        # of the index per server thread that ever queried)
        cursor.register(NAME, table)
        try:
            result = cursor.execute(sql.replace("{index}", NAME), [storable_text(p) for p in params])  # as stored
            names = [d[0] for d in result.description]
            return [dict(zip(names, row)) for row in result.fetchall()]
        finally:
            cursor.unregister(NAME)

    def _lookup_tables(self) -> tuple[pa.Table | None, dict[str, int], dict[str, list[int]], dict[str, list[int]]]:
        """Run id -> row, run id -> every row for the few ids stored more than once (one tenant's and another's),
        and session id -> rows of the current table, built once per version (point lookups then cost no query)."""
        with self._lock:
            table, version, lookups = self._table, self._version, self._lookups
        if table is None:
            return None, {}, {}, {}
        if lookups is None or lookups[0] != version:
            by_run: dict[str, int] = {}
            repeated: dict[str, list[int]] = {}
            by_session: dict[str, list[int]] = {}
            for i, (run_id, session_id) in enumerate(
                zip(table.column("run_id").to_pylist(), table.column("session_id").to_pylist())
            ):
                if run_id is not None:
                    first = by_run.setdefault(run_id, i)
                    if first != i:
                        repeated.setdefault(run_id, [first]).append(i)
                by_session.setdefault(session_id or "", []).append(i)
            lookups = (version, by_run, repeated, by_session)
            with self._lock:
                if self._version == version:
                    self._lookups = lookups
        return table, lookups[1], lookups[2], lookups[3]

    def _rows_of_user(self, table: pa.Table, user_id: str) -> list[int]:
        """The rows (ascending: newest first) of one user's runs; the map is built once per version, on the first
        query by user (a mask over every run costs ~1 ms a query on 100k runs)."""
        with self._lock:
            cached = self._users[1] if self._users is not None and self._users[0] is table else None
        if cached is None:
            cached = {}
            for i, user in enumerate(table.column("user_id").to_pylist()):
                if user is not None:
                    cached.setdefault(user, []).append(i)
            with self._lock:
                self._users = (table, cached)
        return cached.get(user_id, [])

    def _first_of_trace(self, table: pa.Table) -> pa.Array:
        """Per row of ``table``: whether it is the first run of its trace (``FIRST_RUN_OF_TRACE``: its root, or where
        the root is not in the lake — a parent in another service — its earliest run). Computed once per version."""
        with self._lock:
            cached = self._first if self._first is not None and self._first[0] is table else None
        if cached is not None:
            return cached[1]
        positions = pa.table(
            {
                "tenant_id": table.column("tenant_id"),
                "trace_id": table.column("trace_id"),
                "parent_span_id": table.column("parent_span_id"),
                "start_time_unix_nano": table.column("start_time_unix_nano"),
                "span_id": table.column("span_id"),
                "pos": pa.array(range(table.num_rows), pa.int64()),
            }
        )
        cursor = self._db().cursor()
        try:
            cursor.register("_runs", positions)
            mask = (
                cursor.sql(
                    "SELECT row_number() OVER (PARTITION BY tenant_id, trace_id "
                    f"ORDER BY {FIRST_RUN_OF_TRACE}) = 1 AS first FROM _runs ORDER BY pos"
                )
                .to_arrow_table()
                .column("first")
                .combine_chunks()
            )
        finally:
            cursor.close()
        with self._lock:
            self._first = (table, mask)
        return mask

    def of_traces(self, trace_ids: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
        """``columns`` of every run of the traces that hold more than one run (a filter over the table, no query;
        none at all when no wanted trace has several runs, the common case)."""
        with self._lock:
            table = self._table
        if table is None or not trace_ids:
            return []
        several = self._traces_of_several_runs(table)
        trace_ids = [t for t in trace_ids if t in several]
        if not trace_ids:
            return []
        keep = pc.is_in(table.column("trace_id"), value_set=pa.array(list(trace_ids), pa.string()))
        return table.select(list(columns)).filter(keep).to_pylist()

    def _traces_of_several_runs(self, table: pa.Table) -> frozenset[str]:
        """Trace ids that hold more than one run (nested runs, two roots), computed once per version."""
        with self._lock:
            if self._several is not None and self._several[0] is table:
                return self._several[1]
        counts = pc.value_counts(table.column("trace_id").combine_chunks())
        several = frozenset(counts.field("values").filter(pc.greater(counts.field("counts"), 1)).to_pylist())
        with self._lock:
            self._several = (table, several)
        return several

    def runs_of_id(self, run_id: str) -> list[dict[str, Any]]:
        """The rows with this run id: one, or one per tenant (or user) that stored it; the caller keeps its scope's."""
        table, by_run, repeated, _ = self._lookup_tables()
        first = by_run.get(run_id)
        if table is None or first is None:
            return []
        return table.take(repeated.get(run_id, [first])).to_pylist()

    def session(self, session_id: str) -> list[dict[str, Any]]:
        """The rows of a session's runs ("" for runs without a session)."""
        table, _, _, by_session = self._lookup_tables()
        rows = by_session.get(storable_text(session_id or ""))
        return [] if table is None or not rows else table.take(rows).to_pylist()

    def newest(
        self,
        equal: dict[str, Any],
        skip: int = 0,
        limit: int | None = None,
        roots_only: bool = False,
        agent: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows newest first (start time, then run id) whose columns equal ``equal``, run by ``agent`` (name or
        id) if given, root runs only if asked; ``skip`` / ``limit`` as OFFSET / LIMIT. No query: the table is kept
        in this order, so this is a mask and a slice."""
        with self._lock:
            table = self._table
        if table is None or table.num_rows == 0:
            return []
        by_user = equal.get("user_id") is not None
        if by_user:  # the user's runs first (kept in order), then the other tests on them
            rows = self._rows_of_user(table, storable_text(equal["user_id"]))
            if not rows:
                return []
            table = table.take(pa.array(rows, pa.int64()))
            equal = {column: value for column, value in equal.items() if column != "user_id"}
        mask = None
        for column, value in equal.items():
            test = pc.equal(table.column(column), storable_text(value))
            mask = test if mask is None else pc.and_kleene(mask, test)
        if agent is not None:
            agent = storable_text(agent)
            test = pc.or_kleene(pc.equal(table.column("agent_name"), agent), pc.equal(table.column("agent_id"), agent))
            mask = test if mask is None else pc.and_kleene(mask, test)
        if roots_only and not by_user:  # its first run in its tenant (the same trace stored by two is each's own)
            test = self._first_of_trace(table)
            mask = test if mask is None else pc.and_kleene(mask, test)
        positions = pc.indices_nonzero(mask.fill_null(False)) if mask is not None else None
        if roots_only and by_user:
            # a user's traces: each described by the user's first run in it (the root may be no one's: an HTTP span)
            if positions is None:
                positions = pa.array(range(table.num_rows), pa.int64())
            first: dict[tuple[str | None, str], tuple[tuple[bool, int, str], int]] = {}
            picked = table.select(["tenant_id", "trace_id", "parent_span_id", "start_time_unix_nano", "span_id"])
            columns = [column.to_pylist() for column in picked.take(positions).columns]
            for i, (tenant, trace, parent, start, span) in enumerate(zip(*columns)):
                rank = first_run_rank(parent, start, span)  # a trace is its tenant's own
                known = first.get((tenant, trace))
                if known is None or rank < known[0]:
                    first[(tenant, trace)] = (rank, i)
            positions = positions.take(pa.array(sorted(i for _, i in first.values()), pa.int64()))
        total = table.num_rows if positions is None else len(positions)
        end = total if limit is None else min(total, skip + limit)
        if skip >= end:
            return []
        if positions is None:
            return table.slice(skip, end - skip).to_pylist()
        return table.take(positions.slice(skip, end - skip)).to_pylist()

    @property
    def size(self) -> int:
        """Runs held in memory."""
        table = self._table
        return 0 if table is None else table.num_rows
