"""Replay: stored rows back into SDK spans, to backfill another OTLP backend from the lake.

Spans keep their original trace and span ids, parents, times, status, attributes (rebuilt by
``mapping.attributes_of_row``), events and resource. Runtime state cleared with ``clear_runtime_state(...,
purge=False)`` is left out (readers of the lake no longer see it; a backend without runlake's tombstones would).
Spans still in progress have no end to send: they are counted, not sent.
Rows are read one start-time range and one batch at a time: memory does not grow with a day or a session (the
day's rows are copied once to a temporary local folder per range, on disk).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import tempfile
from collections.abc import Callable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any

import duckdb
from opentelemetry.exporter.runlake.layout import (
    SPANS,
    LakeRoot,
    day_dirs,
    day_files,
    day_of_file,
    session_files,
    table_files,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .query import LATEST_ROW, LakeReader, Lister

_logger = logging.getLogger(__name__)

_KINDS = {k.name: k for k in SpanKind}
_STATUS = {"UNSET": StatusCode.UNSET, "OK": StatusCode.OK, "ERROR": StatusCode.ERROR}


def row_to_span(row: dict[str, Any], resources: dict[tuple, Resource] | None = None) -> ReadableSpan:
    """A finished SDK span equal (as runlake maps it) to the stored row."""
    context = SpanContext(int(row["trace_id"], 16), int(row["span_id"], 16), False, TraceFlags(TraceFlags.SAMPLED))
    parent = None
    if row["parent_span_id"]:
        parent = SpanContext(
            int(row["trace_id"], 16), int(row["parent_span_id"], 16), True, TraceFlags(TraceFlags.SAMPLED)
        )
    resource_attrs = json.loads(row["resource"]) if row.get("resource") else {}
    if row.get("service_name") is not None:
        resource_attrs["service.name"] = row["service_name"]
    key = tuple(sorted((k, str(v)) for k, v in resource_attrs.items()))
    cache = resources if resources is not None else {}
    resource = cache.get(key)
    if resource is None:
        resource = cache[key] = Resource(resource_attrs)
    events = [
        Event(e["name"], e.get("attributes") or {}, e.get("time_unix_nano"))
        for e in (json.loads(row["events"]) if row.get("events") else [])
    ]
    status_code = _STATUS.get(row["status_code"] or "UNSET", StatusCode.UNSET)
    return ReadableSpan(
        name=row["name"],
        context=context,
        parent=parent,
        resource=resource,
        attributes=_attributes_for_otlp(row),
        events=events,
        kind=_KINDS.get(row["kind"] or "INTERNAL", SpanKind.INTERNAL),
        status=Status(status_code, row["status_message"] if status_code is StatusCode.ERROR else None),
        start_time=row["start_time_unix_nano"],
        end_time=row["end_time_unix_nano"],
    )


def _attributes_for_otlp(row: dict[str, Any]) -> dict[str, Any]:
    from opentelemetry.exporter.runlake.mapping import attributes_of_row

    attributes = attributes_of_row(row)
    # OTLP attribute values are scalars or homogeneous lists; anything else travels as JSON text
    return {
        k: v if isinstance(v, (str, bool, int, float)) or _homogeneous(v) else json.dumps(v, ensure_ascii=False)
        for k, v in attributes.items()
    }


def _homogeneous(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len({type(x) for x in value}) <= 1
        and all(isinstance(x, (str, bool, int, float)) for x in value)
    )


def stored_spans(
    root: LakeRoot,
    session_id: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    tenant: str | None = None,
    reader: LakeReader | None = None,
    batch_size: int = 512,
) -> Iterator[list[dict[str, Any]]]:
    """Finished spans, oldest first, in lists of at most ``batch_size`` (a list never spans two day folders)."""
    for _, batches in _stored_rows(root, session_id, since, until, tenant, reader, batch_size):
        for rows in batches:
            rows = [r for r in rows if r["end_time_unix_nano"] is not None]
            if rows:
                yield rows


# Rows DuckDB sorts (and de-duplicates) at once: a day or session is read one start-time range of about this many rows
# at a time, so neither DuckDB nor Python ever holds a whole day (~1 KB a row in DuckDB, ~4 KB as Python dicts).
SLICE_ROWS = 10_000
# Rows DuckDB holds, over all ranges, while copying a day to its ranges (``_spill``) before writing them out.
SPILL_ROWS = 20_000


def _stored_rows(
    root: LakeRoot,
    session_id: str | None,
    since: dt.date | None,
    until: dt.date | None,
    tenant: str | None,
    reader: LakeReader | None,
    batch_size: int = 512,
    slice_rows: int | None = None,
) -> Iterator[tuple[str | None, Iterator[list[dict[str, Any]]]]]:
    """``(day, batches)`` per day folder (``(None, batches)`` for one session): one row per span, in progress or not,
    ordered by start time, in lists of at most ``batch_size``; read one batch at a time, so memory stays bounded."""
    reader = reader or LakeReader()
    slice_rows = slice_rows or SLICE_ROWS
    if session_id is not None:  # its own folders and the shared ones: keep its rows only
        files = lambda: _in_range(session_files(root, session_id, tenant), since, until)  # noqa: E731
        yield None, _sliced(reader, files, "session_id = ?", [session_id], batch_size, slice_rows)
        return
    for _, _, day, folder in sorted(day_dirs(root, SPANS, tenant, _iso(since), _iso(until)), key=lambda d: d[2]):
        yield day, _sliced(reader, lambda folder=folder: day_files(folder, SPANS), "", [], batch_size, slice_rows)


def _sliced(
    reader: LakeReader, files: Lister, where: str, params: list[Any], batch_size: int, slice_rows: int
) -> Iterator[list[dict[str, Any]]]:
    """The latest row of each span among ``files`` (``where`` holding), by start time, one start-time range at a time.

    A span's rows share their start time (it is part of ``SPAN_KEY``), so each range de-duplicates on its own. Part
    files are read once, not once a range (a session's files each span most of the day: every range would scan every
    file): one pass copies their rows to a local folder per range (``_spill``), and each range reads its own folder.
    Files listed after that pass (written, or compacted, meanwhile) are read by every range still to come, so their
    rows are read too (as one query over the day would); a row found twice is de-duplicated like any other."""
    cuts = _cuts(reader, files, where, params, slice_rows)
    if not cuts:
        sql = f"SELECT * FROM {{files}} {'WHERE ' + where if where else ''} {LATEST_ROW} ORDER BY start_time_unix_nano"
        yield from reader.batches(sql, files, params, batch_size)
        return
    spill_dir: tempfile.TemporaryDirectory | None = None
    try:
        spill_dir = tempfile.TemporaryDirectory(prefix="runlake-replay-")
        spilled = _spill(reader, files, where, params, cuts, Path(spill_dir.name))
    except (OSError, duckdb.Error) as error:  # a full or read-only temp disk: slower, but every span goes
        _logger.warning(
            "runlake forward: could not copy a day's rows to a temporary folder (%s); reading each of its %d time "
            "ranges from the lake instead (slower; set TMPDIR to a disk with room for a day of spans)",
            error,
            len(cuts) + 1,
        )
        spilled = None
    try:
        yield from _ranges(reader, files, where, params, cuts, batch_size, spilled, spill_dir)
    finally:
        if spill_dir is not None:
            spill_dir.cleanup()


def _ranges(
    reader: LakeReader,
    files: Lister,
    where: str,
    params: list[Any],
    cuts: list[int],
    batch_size: int,
    spilled: set[str] | None,
    spill_dir: tempfile.TemporaryDirectory | None,
) -> Iterator[list[dict[str, Any]]]:
    """Each range's rows: from its folder of the copy plus the files listed since, or (no copy) from the lake."""
    if spilled is None or spill_dir is None:
        for low, high in zip([None, *cuts], [*cuts, None]):
            condition, values = _range_condition(where, params, low, high)
            sql = f"SELECT * FROM {{files}} WHERE {condition} {LATEST_ROW} ORDER BY start_time_unix_nano"
            yield from reader.batches(sql, files, values, batch_size)
        return
    later = lambda: [f for f in files() if str(f) not in spilled]  # noqa: E731
    for i, (low, high) in enumerate(zip([None, *cuts], [*cuts, None])):
        condition, values = _range_condition(where, params, low, high)
        own = sorted(Path(spill_dir.name, f"slice={i}").glob("*.parquet"))
        spill = f"SELECT * FROM read_parquet([{', '.join(_quoted(f) for f in own)}], hive_partitioning=false)"
        sql = f"SELECT * FROM (SELECT * FROM {{files}} UNION ALL BY NAME {spill}) WHERE {condition}"
        read = False
        if own and later():  # {files}: the files listed since (an empty list reads nothing)
            for batch in reader.batches(f"{sql} {LATEST_ROW} ORDER BY start_time_unix_nano", later, values, batch_size):
                read = True
                yield batch
        if not read:  # the range's own rows only, or (no spill) the files listed since
            sql = f"SELECT * FROM {{files}} WHERE {condition} {LATEST_ROW} ORDER BY start_time_unix_nano"
            yield from reader.batches(sql, (lambda own=own: own) if own else later, values, batch_size)


def _range_condition(where: str, params: list[Any], low: int | None, high: int | None) -> tuple[str, list[Any]]:
    """SQL (and its parameters) for the rows of one start-time range ``[low, high)``, ``where`` holding; the first and
    last ranges are open, and rows without a start time (last in one ORDER BY over all) go with the last range."""
    conditions, values = [where] if where else [], list(params)
    if low is not None:
        conditions.append(
            "(start_time_unix_nano >= ? OR start_time_unix_nano IS NULL)"
            if high is None
            else "start_time_unix_nano >= ?"
        )
        values.append(low)
    if high is not None:
        conditions.append("start_time_unix_nano < ?")
        values.append(high)
    return " AND ".join(conditions) or "true", values


def _spill(
    reader: LakeReader, files: Lister, where: str, params: list[Any], cuts: list[int], folder: Path
) -> set[str] | None:
    """Copy the rows of ``files`` (``where`` holding) to ``folder/slice=<range>/``, one scan of the files; the files
    copied, or None if the copy did not happen (no readable file). DuckDB writes a range's rows out once it holds a
    share of ``SPILL_ROWS`` (by default it would hold half a million rows a range), so the pass holds about that many
    rows, not the day; zstd, as the lake, so the copy takes about the lake's bytes on the temp disk. A retried copy
    starts from an empty folder (``OVERWRITE``): nothing of an attempt that failed stays."""
    listed: list[LakeRoot] = []

    def listing() -> list[LakeRoot]:  # listed again if a file went meanwhile: the files of the last listing were read
        listed[:] = files()
        return listed

    condition = f"WHERE {where}" if where else ""
    copied = reader.write(
        f"COPY (SELECT *, {_range_of(cuts)} AS slice FROM {{files}} {condition}) TO {_quoted(folder)}"
        f" (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (slice), OVERWRITE)",
        listing,
        params,
        {"partitioned_write_flush_threshold": max(256, SPILL_ROWS // (len(cuts) + 1))},
    )
    return {str(f) for f in listed} if copied else None


def _quoted(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _range_of(cuts: list[int], first: int = 0) -> str:
    """SQL: the index of the range a row's start time falls in, by halving (a row is compared log2(ranges) times);
    a row without a start time is in the last range."""
    if not cuts:
        return str(first)
    mid = len(cuts) // 2
    below, above = _range_of(cuts[:mid], first), _range_of(cuts[mid + 1 :], first + mid + 1)
    return f"CASE WHEN start_time_unix_nano < {int(cuts[mid])} THEN {below} ELSE {above} END"


def _cuts(
    reader: LakeReader,
    files: Lister,
    where: str,
    params: list[Any],
    slice_rows: int,
    low: int | None = None,
    high: int | None = None,
) -> list[int]:
    """Start times that cut the rows (those in ``[low, high]``) into ranges of at most ``slice_rows``, from a histogram
    of a few buckets per range (never the rows themselves); a bucket too full is cut again. More rows than that only
    where they share one nanosecond."""
    conditions, values = [where] if where else [], list(params)
    if low is not None:
        conditions.append("start_time_unix_nano BETWEEN ? AND ?")
        values += [low, high]
    condition = " AND ".join(conditions) or "true"
    stats = reader.rows(
        f"SELECT min(start_time_unix_nano) AS lo, max(start_time_unix_nano) AS hi, count(*) AS n"
        f" FROM {{files}} WHERE {condition}",
        files,
        values,
    )
    if not stats or stats[0]["n"] <= slice_rows or stats[0]["lo"] is None or stats[0]["lo"] == stats[0]["hi"]:
        return []
    lo, hi, n = stats[0]["lo"], stats[0]["hi"], stats[0]["n"]
    width = -(-(hi - lo + 1) // (4 * -(-n // slice_rows)))  # about four buckets per range wanted
    buckets = reader.rows(
        f"SELECT (start_time_unix_nano - {int(lo)}) // {int(width)} AS b, count(*) AS n FROM {{files}}"
        f" WHERE {condition} AND start_time_unix_nano IS NOT NULL GROUP BY b ORDER BY b",
        files,
        values,  # lo and width are written into the SQL: locally the file list is its first parameter
    )
    cuts: list[int] = []
    held = 0
    for bucket in buckets:
        start = lo + bucket["b"] * width
        if held and held + bucket["n"] > slice_rows:
            cuts.append(start)
            held = 0
        if bucket["n"] > slice_rows:
            cuts += _cuts(reader, files, where, params, slice_rows, start, min(start + width - 1, hi))
        held += bucket["n"]
    return cuts


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def _in_range(files: list[LakeRoot], since: dt.date | None, until: dt.date | None) -> list[LakeRoot]:
    out = []
    for f in files:
        day = day_of_file(f)
        if (since and day < since.isoformat()) or (until and day > until.isoformat()):
            continue
        out.append(f)
    return out


def _tombstones(root: LakeRoot, reader: LakeReader, session_id: str | None) -> dict[tuple, int]:
    """When runtime state was last cleared: ``{(tenant, session, runtime or None): time}`` (None: all runtimes);
    read from the one session's files when replaying one session, else from every span file."""
    from opentelemetry.exporter.runlake.mapping import CLEARED_ALL, CLEARED_RUNTIME
    from opentelemetry.exporter.runlake.mapping import RUNTIME_CLEARED as CLEARED

    sql = f"""
        SELECT tenant_id, session_id, runtime_id, cleared, max(coalesce(end_time_unix_nano, start_time_unix_nano)) AS ts
        FROM (SELECT *, json_extract_string(attributes, '$."{CLEARED}"') AS cleared FROM {{files}}
              WHERE span_type = 'turn' AND record = 'end' AND contains(attributes, '{CLEARED}'))
        WHERE cleared IN ('{CLEARED_ALL}', '{CLEARED_RUNTIME}') GROUP BY ALL"""
    if session_id is not None:
        rows = reader.rows(
            sql.replace("WHERE span_type", "WHERE session_id = ? AND span_type"),
            lambda: session_files(root, session_id),
            [session_id],
        )
    else:
        rows = reader.rows(sql, lambda: table_files(root, SPANS))
    return {
        (r["tenant_id"], r["session_id"], r["runtime_id"] if r["cleared"] == CLEARED_RUNTIME else None): r["ts"]
        for r in rows
    }


def _without_cleared_state(row: dict[str, Any], cleared: dict[tuple, int]) -> dict[str, Any]:
    """The row, its runtime state left out if a later ``clear_runtime_state`` hides it from readers."""
    if not cleared or row["runtime_state"] is None or row["span_type"] != "turn":
        return row
    at = row["end_time_unix_nano"] or row["start_time_unix_nano"]
    key = (row["tenant_id"], row["session_id"])
    if at <= cleared.get((*key, None), -1) or at <= cleared.get((*key, row["runtime_id"]), -1):
        return {**row, "runtime_state": None}
    return row


def forward(
    root: LakeRoot,
    exporter: SpanExporter,
    session_id: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
    rejected: Callable[[], tuple[int, str | None]] | None = None,
    give_up_after: int = 3,
) -> dict[str, Any]:
    """Send stored spans through ``exporter`` in batches, oldest day first.

    Returns counts: ``sent``, ``failed`` (batches refused, and spans the receiver rejected), ``rejected`` (of
    those, spans refused by an OTLP ``partial_success``, read through ``rejected()`` after each export),
    ``in_progress`` (no end yet: not sent), ``cleared_states`` (runtime states left out). After ``give_up_after``
    failed batches in a row with nothing sent since, the replay stops (the endpoint is down): ``stopped``, and
    ``stopped_at_day`` names the first day not fully sent, to resume with ``since``; ``errors`` holds the
    receiver's first partial-success messages.
    """
    reader = LakeReader()
    out: dict[str, Any] = {"sent": 0, "failed": 0, "rejected": 0, "in_progress": 0, "cleared_states": 0}
    out["stopped"], out["stopped_at_day"] = False, None
    errors: list[str] = []
    resources: dict[tuple, Resource] = {}
    cleared = _tombstones(root, reader, session_id)
    failing = 0
    first_failed_day: str | None = None
    for day, batches in _stored_rows(root, session_id, since, until, None, reader, batch_size):
        finished: list[dict[str, Any]] = []  # under two batches of rows: the day is read a batch at a time
        for rows in chain(batches, [None]):  # None: the day's end, send what is left
            for row in rows or ():
                if row["end_time_unix_nano"] is None:
                    out["in_progress"] += 1
                    continue
                kept = _without_cleared_state(row, cleared)
                out["cleared_states"] += kept is not row
                finished.append(kept)
            while len(finished) >= batch_size or (rows is None and finished):
                batch = [row_to_span(r, resources) for r in finished[:batch_size]]
                del finished[:batch_size]
                if exporter.export(batch) is SpanExportResult.SUCCESS:
                    refused, message = rejected() if rejected is not None else (0, None)
                    refused = min(refused, len(batch))
                    out["sent"] += len(batch) - refused
                    out["failed"] += refused
                    out["rejected"] += refused
                    if message and len(errors) < 10:
                        errors.append(message)
                    failing = 0
                else:
                    out["failed"] += len(batch)
                    failing += 1
                    if failing == 1:
                        first_failed_day = day  # where this run of refusals began: the first day not fully sent
                if progress is not None:
                    progress(len(batch))
                if failing >= give_up_after:
                    out["stopped"], out["stopped_at_day"] = True, first_failed_day
                    out["errors"] = errors
                    return out
    out["errors"] = errors
    return out
