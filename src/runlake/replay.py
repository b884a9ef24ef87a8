"""Replay: stored rows back into SDK spans, to backfill another OTLP backend from the lake.

Spans keep their original trace and span ids, parents, times, status, attributes (rebuilt by
``mapping.attributes_of_row``), events and resource.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.exporter.runlake.layout import SPANS, LakeRoot, day_dirs, day_files, session_files
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from .query import LATEST_ROW, LakeReader

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
) -> Iterator[list[dict[str, Any]]]:
    """Finished spans, one list per day folder (or the one session), oldest first."""
    reader = reader or LakeReader()
    sql = f"SELECT * FROM {{files}} WHERE end_time_unix_nano IS NOT NULL {LATEST_ROW} ORDER BY start_time_unix_nano"
    if session_id is not None:  # its own folders and the shared ones: keep its rows only
        session_sql = sql.replace("WHERE ", "WHERE session_id = ? AND ", 1)
        files = lambda: _in_range(session_files(root, session_id, tenant), since, until)  # noqa: E731
        rows = reader.rows(session_sql, files, [session_id])
        if rows:
            yield rows
        return
    for _, _, _, folder in sorted(day_dirs(root, SPANS, tenant, _iso(since), _iso(until)), key=lambda d: d[2]):
        rows = reader.rows(sql, lambda folder=folder: day_files(folder, SPANS))
        if rows:
            yield rows


def _iso(day: dt.date | None) -> str | None:
    return day.isoformat() if day else None


def _in_range(files: list[LakeRoot], since: dt.date | None, until: dt.date | None) -> list[LakeRoot]:
    out = []
    for f in files:
        day = next((p[4:] for p in f.parts if p.startswith("day=")), "")
        if (since and day < since.isoformat()) or (until and day > until.isoformat()):
            continue
        out.append(f)
    return out


def forward(
    root: LakeRoot,
    exporter: SpanExporter,
    session_id: str | None = None,
    since: dt.date | None = None,
    until: dt.date | None = None,
    batch_size: int = 512,
    progress: Callable[[int], None] | None = None,
) -> dict[str, int]:
    """Send stored spans through ``exporter`` in batches; counts of spans sent and failed."""
    sent = failed = 0
    resources: dict[tuple, Resource] = {}
    for rows in stored_spans(root, session_id, since, until):
        for start in range(0, len(rows), batch_size):
            batch = [row_to_span(r, resources) for r in rows[start : start + batch_size]]
            if exporter.export(batch) is SpanExportResult.SUCCESS:
                sent += len(batch)
            else:
                failed += len(batch)
            if progress is not None:
                progress(len(batch))
    return {"sent": sent, "failed": failed}
