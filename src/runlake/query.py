"""DuckDB over explicit lists of part files.

Readers never glob the lake: callers list the files they need (``opentelemetry.exporter.runlake.layout``)
and pass them here. A file that cannot be read (truncated, not Parquet) is set aside with a warning naming
it and the query is answered from the rest; a file removed meanwhile (TTL, compaction) triggers one fresh
listing.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
from opentelemetry.exporter.runlake.layout import RUNS, SPANS, table_files
from opentelemetry.exporter.runlake.mapping import RUNS_SCHEMA, SPANS_SCHEMA

_logger = logging.getLogger(__name__)

Lister = Callable[[], Sequence[Path]]

# One row per span: the "start" row of a run only while its "end" row has not arrived.
LATEST_ROW = "QUALIFY row_number() OVER (PARTITION BY span_id ORDER BY record = 'end' DESC) = 1"


class LakeReader:
    """Runs SQL over part files with ``{files}`` standing for ``read_parquet(<list>, union_by_name=true)``."""

    def __init__(self) -> None:
        self._db = duckdb.connect(config={"threads": 2})
        self._local = threading.local()
        self._bad: set[str] = set()
        self._lock = threading.Lock()

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        cursor = getattr(self._local, "cursor", None)
        if cursor is None:
            cursor = self._local.cursor = self._db.cursor()
        return cursor

    def _usable(self, files: Sequence[Path]) -> list[str]:
        return [s for s in map(str, files) if s not in self._bad]

    def _set_aside(self, files: Sequence[str]) -> bool:
        """Find unreadable files among ``files`` and remember them; True if any was found."""
        found = False
        for name in files:
            try:
                pq.read_metadata(name)
            except FileNotFoundError:
                continue
            except Exception as error:  # noqa: BLE001 - anything pyarrow cannot open is unusable
                with self._lock:
                    self._bad.add(name)
                _logger.warning("runlake: skipping unreadable part file %s (%s)", name, error)
                found = True
        return found

    @property
    def bad_files(self) -> set[str]:
        return set(self._bad)

    def rows(self, sql: str, lister: Lister, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run ``sql`` (with ``{files}``) over the listed files; rows as dicts. No files: no rows."""
        result = self._execute(sql, lister, params)
        if result is None:
            return []
        names = [d[0] for d in result.description]
        return [dict(zip(names, row)) for row in result.fetchall()]

    def _execute(self, sql: str, lister: Lister, params: Sequence[Any]) -> duckdb.DuckDBPyConnection | None:
        files = self._usable(lister())
        for attempt in range(4):
            if not files:
                return None
            query = sql.replace("{files}", "read_parquet(?, union_by_name=true)")
            try:
                return self._cursor().execute(query, [files, *params])
            except (duckdb.IOException, duckdb.InvalidInputException) as error:
                if self._set_aside(files):
                    files = self._usable(files)
                elif attempt < 3 and (
                    "No files found" in str(error) or "No such file" in str(error) or "not exist" in str(error)
                ):
                    files = self._usable(lister())  # removed meanwhile: list again
                else:
                    raise
        return None

    def views(self, root: Path | None, tenant: str | None = None) -> duckdb.DuckDBPyConnection:
        """A connection with views ``spans`` and ``runs`` (one row per span / run) over the whole lake."""
        con = self._db.cursor()
        for table, schema in ((SPANS, SPANS_SCHEMA), (RUNS, RUNS_SCHEMA)):
            files = self._usable(table_files(root, table, tenant)) if root is not None else []
            if files and self._set_aside_if_broken(con, files):
                files = self._usable(files)
            if files:
                listing = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"
                source = f"read_parquet({listing}, union_by_name=true)"
            else:
                con.register(f"_empty_{table}", pa.Table.from_pylist([], schema=schema))
                source = f"_empty_{table}"
            key = "span_id"
            con.execute(
                f"""CREATE OR REPLACE TEMP VIEW {table} AS
                SELECT * EXCLUDE (record),
                       make_timestamp(start_time_unix_nano // 1000) AS start_time,
                       make_timestamp(end_time_unix_nano // 1000) AS end_time,
                       (end_time_unix_nano - start_time_unix_nano) / 1e6 AS duration_ms
                FROM {source}
                QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY record = 'end' DESC) = 1"""
            )
        return con

    def _set_aside_if_broken(self, con: duckdb.DuckDBPyConnection, files: list[str]) -> bool:
        try:
            con.execute("SELECT count(*) FROM read_parquet(?, union_by_name=true)", [files]).fetchall()
            return False
        except (duckdb.IOException, duckdb.InvalidInputException):
            return self._set_aside(files)
