"""Compaction: merge a quiet partition's part files into one, sorted by start time, in the current schema.

Safe while readers and writers go on:
- the merged file appears atomically (temp name, rename) before any old part is removed, and every runlake
  reader keeps one row per ``span_id``, so a reader that lists both old and new sees each row once;
- a reader whose listed file is removed meanwhile lists again (``runlake.query``);
- only the files listed when the partition was picked are merged and removed: parts written during compaction
  stay, so nothing a writer adds is lost.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from opentelemetry.exporter.runlake.layout import RUNS, SPANS, data_files, day_dirs, session_dirs
from opentelemetry.exporter.runlake.writer import SCHEMAS, write_part

_logger = logging.getLogger(__name__)


@dataclass
class CompactionSummary:
    partitions: int = 0
    files_before: int = 0
    files_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    rows: int = 0
    skipped_files: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Any older part's columns, in the current schema: missing columns as nulls, unknown ones dropped."""
    columns = []
    for field in schema:
        if field.name in table.column_names:
            columns.append(table.column(field.name).cast(field.type))
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _latest_rows(table: pa.Table) -> pa.Table:
    """One row per span id: the ``end`` row when present (drops superseded run ``start`` rows)."""
    if table.num_rows == 0:
        return table
    order = pc.sort_indices(
        pa.table({"span_id": table.column("span_id"), "is_end": pc.equal(table.column("record"), "end")}),
        sort_keys=[("span_id", "ascending"), ("is_end", "descending")],
    )
    ordered = table.take(order)
    ids = ordered.column("span_id")
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1)).fill_null(True)
    return ordered.filter(pa.concat_arrays([pa.array([True]), *first.chunks]) if first.num_chunks else pa.array([True]))


def compact_folder(table: str, folder: Path, summary: CompactionSummary) -> bool:
    """Merge the part files of one partition folder; True if it was rewritten."""
    files = data_files(folder)
    if len(files) < 2:
        return False
    pieces = []
    used = []
    for path in files:
        try:
            pieces.append(_conform(pq.read_table(path), SCHEMAS[table]))
            used.append(path)
        except FileNotFoundError:
            continue
        except Exception as error:  # noqa: BLE001 - a broken part is left where it is, and said
            summary.skipped_files += 1
            _logger.warning("compaction: leaving unreadable part file %s alone (%s)", path, error)
    if len(used) < 2:
        return False
    sizes = sum(p.stat().st_size for p in used)
    merged = _latest_rows(pa.concat_tables(pieces))
    new_file = write_part(table, folder, merged, row_group_size=1 << 20)
    for path in used:
        try:
            path.unlink()
        except FileNotFoundError:
            pass
    summary.partitions += 1
    summary.files_before += len(used)
    summary.files_after += 1
    summary.bytes_before += sizes
    summary.bytes_after += new_file.stat().st_size
    summary.rows += merged.num_rows
    return True


def _quiet(folder: Path, older_than_s: float, now: float) -> bool:
    try:
        newest = max((p.stat().st_mtime for p in data_files(folder)), default=0.0)
    except FileNotFoundError:
        return False
    return now - newest >= older_than_s


def plan(root: Path, older_than_minutes: float = 10, tenant: str | None = None) -> list[tuple[str, Path]]:
    """Partitions worth compacting: quiet ``spans`` session folders and closed, quiet ``runs`` days."""
    now = time.time()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    older_than_s = older_than_minutes * 60
    todo: list[tuple[str, Path]] = []
    for _, _, _, day_dir in day_dirs(root, SPANS, tenant):
        for session_dir in session_dirs(day_dir):
            if len(data_files(session_dir)) > 1 and _quiet(session_dir, older_than_s, now):
                todo.append((SPANS, session_dir))
    for _, _, day, day_dir in day_dirs(root, RUNS, tenant):
        if day < today and len(data_files(day_dir)) > 1 and _quiet(day_dir, older_than_s, now):
            todo.append((RUNS, day_dir))
    return todo


def compact(
    root: str | os.PathLike[str],
    older_than_minutes: float = 10,
    tenant: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionSummary:
    """Compact every quiet partition of the lake; ``progress(done, total)`` is called as it goes."""
    started = time.perf_counter()
    summary = CompactionSummary()
    todo = plan(Path(root), older_than_minutes, tenant)
    for done, (table, folder) in enumerate(todo, start=1):
        try:
            compact_folder(table, folder, summary)
        except OSError as error:
            _logger.error("compaction: cannot rewrite %s (%s); its parts are unchanged", folder, error)
        if progress is not None:
            progress(done, len(todo))
    summary.seconds = time.perf_counter() - started
    return summary
