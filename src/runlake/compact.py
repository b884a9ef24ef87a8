"""Compaction: merge a quiet partition's part files into one, sorted by start time, in the current schema.

It also drains each day's shared ``session=~mixed`` parts (written by writers with ``min_session_rows``) into the
sessions' own partitions, so the lake ends up partitioned by session and day.

Safe while readers and writers go on:
- the merged file appears atomically (temp name, rename) before any old part is removed, and every runlake
  reader keeps one row per ``span_id``, so a reader that lists both old and new sees each row once;
- a reader whose listed file is removed meanwhile lists again (``runlake.query``);
- only the files listed when the partition was picked are merged and removed: parts written during compaction
  stay, so nothing a writer adds is lost.

On an object store (``s3://``) the same order holds without a rename: the merged object is uploaded under a new
unique key (it appears whole or not at all), then the old objects are deleted.
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
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    LakeRoot,
    ObjectPath,
    data_files,
    day_dirs,
    encode_partition_value,
    fs_and_path,
    is_missing,
    mixed_dir,
    remove_file,
    resolve_lake,
    session_dirs,
    size_and_mtime,
)
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


def _read_parts(table: str, files: list[LakeRoot], summary: CompactionSummary) -> tuple[pa.Table | None, list]:
    """The readable parts among ``files``, merged into one row per span id (current schema), and those parts.

    A part removed meanwhile is passed over; an unreadable one is left where it is, with a warning.
    """
    pieces, used = [], []
    for path in files:
        try:
            filesystem, source = fs_and_path(path)
            pieces.append(_conform(pq.read_table(source, filesystem=filesystem), SCHEMAS[table]))
            used.append(path)
        except Exception as error:  # noqa: BLE001 - a broken part is left where it is, and said
            if is_missing(error):  # compacted or expired meanwhile
                continue
            summary.skipped_files += 1
            _logger.warning("compaction: leaving unreadable part file %s alone (%s)", path, error)
    return (_latest_rows(pa.concat_tables(pieces)) if pieces else None), used


def _replace(used: list[LakeRoot], new_files: list[LakeRoot], rows: int, summary: CompactionSummary) -> None:
    """Remove the merged parts (their rows are already in ``new_files``) and count the change."""
    summary.bytes_before += sum(size_and_mtime(p)[0] for p in used)
    for path in used:
        remove_file(path)
    summary.partitions += 1
    summary.files_before += len(used)
    summary.files_after += len(new_files)
    summary.bytes_after += sum(size_and_mtime(p)[0] for p in new_files)
    summary.rows += rows


def compact_folder(table: str, folder: LakeRoot, summary: CompactionSummary) -> bool:
    """Merge the part files of one partition folder; True if it was rewritten."""
    files = data_files(folder)
    if len(files) < 2:
        return False
    merged, used = _read_parts(table, files, summary)
    if merged is None or len(used) < 2:
        return False
    new_file = write_part(table, folder, merged, row_group_size=1 << 20)  # the new file first, then the old go
    _replace(used, [new_file], merged.num_rows, summary)
    return True


def drain_mixed(folder: LakeRoot, summary: CompactionSummary) -> bool:
    """Move the rows of a day's shared ``session=~mixed`` parts into their sessions' own partitions.

    Each session's rows become a new part in its folder first; only then do the shared parts go, so a reader
    sees every row at all times (readers keep one row per span id while both exist).
    """
    rows, used = _read_parts(SPANS, data_files(folder), summary)
    if rows is None:
        return False
    rows = rows.sort_by([("session_id", "ascending"), ("start_time_unix_nano", "ascending")])
    sessions = rows.column("session_id").to_pylist()
    new_files = []
    start = 0
    for end in range(1, len(sessions) + 1):
        if end == len(sessions) or sessions[end] != sessions[start]:
            target = folder.parent / f"session={encode_partition_value(sessions[start])}"
            new_files.append(write_part(SPANS, target, rows.slice(start, end - start)))
            start = end
    _replace(used, new_files, rows.num_rows, summary)
    return True


def _quiet(files: list[LakeRoot], older_than_s: float, now: float) -> bool:
    try:
        return bool(files) and now - max(size_and_mtime(p)[1] for p in files) >= older_than_s
    except FileNotFoundError:
        return False


def mixed_plan(root: LakeRoot, older_than_minutes: float = 10, tenant: str | None = None) -> list[LakeRoot]:
    """Shared ``session=~mixed`` folders with no new part for ``older_than_minutes``."""
    now = time.time()
    folders = (mixed_dir(day_dir) for _, _, _, day_dir in day_dirs(root, SPANS, tenant))
    return [f for f in folders if _quiet(data_files(f), older_than_minutes * 60, now)]


def _worth_it(folder: LakeRoot, older_than_s: float, now: float) -> bool:
    """More than one part, and none newer than ``older_than_s`` (one listing; sizes and times come with it)."""
    files = data_files(folder)
    if len(files) < 2:
        return False
    try:
        newest = max(size_and_mtime(p)[1] for p in files)
    except FileNotFoundError:
        return False
    return now - newest >= older_than_s


def plan(root: LakeRoot, older_than_minutes: float = 10, tenant: str | None = None) -> list[tuple[str, LakeRoot]]:
    """Partitions worth compacting: quiet ``spans`` session folders and closed, quiet ``runs`` days."""
    now = time.time()
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    older_than_s = older_than_minutes * 60
    todo: list[tuple[str, LakeRoot]] = []
    for _, _, _, day_dir in day_dirs(root, SPANS, tenant):
        for session_dir in session_dirs(day_dir):
            if _worth_it(session_dir, older_than_s, now):
                todo.append((SPANS, session_dir))
    for _, _, day, day_dir in day_dirs(root, RUNS, tenant):
        if day < today and _worth_it(day_dir, older_than_s, now):
            todo.append((RUNS, day_dir))
    return todo


def compact(
    root: str | os.PathLike[str] | LakeRoot,
    older_than_minutes: float = 10,
    tenant: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompactionSummary:
    """Compact every quiet partition of the lake (a folder, or an ``s3://`` URL / ``ObjectPath``);
    ``progress(done, total)`` is called as it goes."""
    started = time.perf_counter()
    summary = CompactionSummary()
    if not isinstance(root, (Path, ObjectPath)):
        root = resolve_lake(root) or Path(root)
    mixed = mixed_plan(root, older_than_minutes, tenant)
    for done, folder in enumerate(mixed, start=1):
        try:
            drain_mixed(folder, summary)
        except OSError as error:
            _logger.error("compaction: cannot move the shared parts of %s (%s); they are unchanged", folder, error)
        if progress is not None:
            progress(done, len(mixed))
    todo = plan(root, older_than_minutes, tenant)
    for done, (table, folder) in enumerate(todo, start=1):
        try:
            compact_folder(table, folder, summary)
        except OSError as error:
            _logger.error("compaction: cannot rewrite %s (%s); its parts are unchanged", folder, error)
        if progress is not None:
            progress(done, len(todo))
    summary.seconds = time.perf_counter() - started
    return summary
