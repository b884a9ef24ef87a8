"""TTL: whole day partitions go once every run in them has passed its ``ttl_days``."""

from __future__ import annotations

import datetime as dt

from opentelemetry.exporter.runlake.layout import RUNS, SPANS, LakeRoot, day_dirs, day_files, remove_dir

from .query import LakeReader


def expire(
    root: LakeRoot,
    reader: LakeReader,
    tenant: str | None = None,
    now: dt.datetime | None = None,
    max_age_days: int | None = None,
    dry_run: bool = False,
) -> dict[str, int]:
    """Delete expired day folders of ``root`` (one tenant's if given); ``{"executions_deleted", "nodes_deleted"}``."""
    today = (now or dt.datetime.now(dt.timezone.utc)).astimezone(dt.timezone.utc).date()
    expired: dict[str, list[LakeRoot]] = {RUNS: [], SPANS: []}
    for table in (RUNS, SPANS):
        for _, ttl, day, folder in day_dirs(root, table, tenant):
            try:
                day_date = dt.date.fromisoformat(day)
            except ValueError:
                continue
            keep = ttl if max_age_days is None else min(ttl, max_age_days)
            if day_date + dt.timedelta(days=keep) < today:
                expired[table].append(folder)
    runs = _count(reader, RUNS, expired[RUNS], "count(DISTINCT span_id)")
    nodes = _count(reader, SPANS, expired[SPANS], "count(*) FILTER (WHERE span_type = 'node' AND record = 'end')")
    for folder in [] if dry_run else expired[RUNS] + expired[SPANS]:
        remove_dir(folder)
    return {"executions_deleted": runs, "nodes_deleted": nodes}


def _count(reader: LakeReader, table: str, folders: list[LakeRoot], aggregate: str) -> int:
    files: list[LakeRoot] = []
    for folder in folders:
        files.extend(day_files(folder, table))
    if not files:
        return 0
    rows = reader.rows(f"SELECT {aggregate} AS n FROM {{files}}", lambda: files)
    return int(rows[0]["n"]) if rows else 0
