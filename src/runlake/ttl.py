"""TTL: whole day partitions go once every run in them has passed its ``ttl_days``.

Counts are true (executions = distinct runs, nodes = finished nodes, each span once: what readers see) and come
from the counts ``write_part`` stores with each part file (in its name, so a listing says them; older files: in the
footer, ``runlake.counts``) wherever that is exact, else from DuckDB over those files only:

- a day folder that is one file (every day compaction has merged: one ``compact-…`` file) counts that file's stored
  distinct span ids (runs) or distinct finished nodes (spans), without opening it;
- a day folder with several files, or a file without stored counts, is counted by DuckDB, one row per span as
  readers keep it (span and trace id, start, tenant): the same span can sit in several files of a day (a run's
  start and end rows; a span stored twice by a client's retry, an ingest-log replay or an import run twice; a
  compaction between writing its file and removing the merged parts).

Locally each expired day folder is first renamed to a hidden sibling (``.expired-day=…-<random>`` in its ``ttl=``
folder): readers stop seeing the whole day at once, and only what was renamed is counted, so a folder that could
not be moved is never reported as deleted. The hidden folders are then deleted right away when they hold few files,
else by a background daemon thread (:func:`wait_for_deletes` lets short-lived callers finish that work); hidden
folders left behind by a crash are swept at the next call. On an object store (no rename) each folder is deleted
synchronously, as before.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
import shutil
import sys
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    LakeRoot,
    ObjectPath,
    counts_in_name,
    day_dirs,
    day_files,
    remove_dir,
    ttl_subdirs,
)
from opentelemetry.exporter.runlake.writer import read_part_counts

from .moments import utc_moment
from .query import LakeReader

__all__ = ["EXPIRED_PREFIX", "ExpireError", "expire", "pending_deletes", "wait_for_deletes"]

_logger = logging.getLogger(__name__)

EXPIRED_PREFIX = ".expired-"  # hidden: layout lists only "day=…" folders, so readers never see these
INLINE_FILES = 16  # hidden folders holding at most this many files are deleted before expire() returns
_REMOTE_THREADS = 16  # footer reads on an object store are round trips: overlap them
_PROBE = 8  # footers read before deciding whether expired files without counts in their names have any
_SPAN_KEY = "(span_id, trace_id, start_time_unix_nano, tenant_id)"  # one span, as readers de-duplicate (query.py)
_AGGREGATE = {
    RUNS: f"count(DISTINCT {_SPAN_KEY})",
    SPANS: f"count(DISTINCT {_SPAN_KEY}) FILTER (WHERE span_type = 'node' AND record = 'end')",
}
_COUNT_KEY = {RUNS: "spans", SPANS: "nodes"}

Days = dict[LakeRoot, list[LakeRoot]]  # day folder -> its part files


class ExpireError(OSError):
    """Some expired folders could not be removed: ``counts`` is what was removed, ``failed`` what was not (and why).

    An ``OSError`` so storage-error handling catches it; raised after everything else was removed.
    """

    def __init__(self, counts: dict[str, int], failed: list[tuple[LakeRoot, OSError]]) -> None:
        self.counts = counts
        self.failed = failed
        folder, error = failed[0]
        more = f" (and {len(failed) - 1} more expired folders)" if len(failed) > 1 else ""
        done = (
            f"{counts['executions_deleted']} executions and {counts['nodes_deleted']} nodes were deleted from the rest"
            if counts["executions_deleted"] or counts["nodes_deleted"]
            else "nothing was deleted"
        )
        super().__init__(
            f"cannot remove expired folder {folder}{more}: {error.strerror or error}; it is not counted as "
            f"deleted; {done}"
        )


def expire(
    root: LakeRoot,
    reader: LakeReader,
    tenant: str | None = None,
    now: dt.datetime | None = None,
    max_age_days: int | None = None,
    dry_run: bool = False,
    *,
    inline_files: int = INLINE_FILES,
) -> dict[str, int]:
    """Delete expired day folders of ``root`` (one tenant's if given); ``{"executions_deleted", "nodes_deleted"}``.

    Raises :class:`ExpireError` (carrying the counts of what did go) if some folder could not be removed.
    ``inline_files``: delete the hidden folders before returning when they hold at most this many files.
    """
    if max_age_days is not None and (
        isinstance(max_age_days, bool) or not isinstance(max_age_days, int) or max_age_days < 0
    ):
        raise ValueError(
            f"max_age_days must be a whole number of days (0: all but today) or None; got {max_age_days!r}"
        )
    today = utc_moment(now).date()
    expired = {table: _expired_folders(root, table, tenant, today, max_age_days) for table in (RUNS, SPANS)}
    if dry_run:
        return _counts(reader, {table: _listed(folders, table) for table, folders in expired.items()})
    if isinstance(root, ObjectPath):
        return _expire_remote(reader, expired)
    _schedule(_leftovers(root, tenant))
    return _expire_local(reader, expired, inline_files)


def _expired_folders(
    root: LakeRoot, table: str, tenant: str | None, today: dt.date, max_age_days: int | None
) -> list[LakeRoot]:
    folders = []
    for _, ttl, day, folder in day_dirs(root, table, tenant):
        try:
            day_date = dt.date.fromisoformat(day)
        except ValueError:
            continue
        keep = ttl if max_age_days is None else min(ttl, max_age_days)
        if (today - day_date).days > keep:  # not day + keep < today: a huge ttl= folder would overflow the date
            folders.append(folder)
    return folders


def _listed(folders: list[LakeRoot], table: str) -> Days:
    return {folder: day_files(folder, table) for folder in folders}


def _expire_local(reader: LakeReader, expired: dict[str, list[LakeRoot]], inline_files: int) -> dict[str, int]:
    """Hide every expired folder (runs first), count what was hidden, then delete it."""
    hidden: dict[str, list[tuple[Path, Path]]] = {RUNS: [], SPANS: []}
    failed: list[tuple[LakeRoot, OSError]] = []
    for table in (RUNS, SPANS):
        for folder in expired[table]:
            target = folder.parent / f"{EXPIRED_PREFIX}{folder.name}-{secrets.token_hex(4)}"
            try:
                os.rename(folder, target)
            except FileNotFoundError:
                continue  # removed meanwhile by another process, which counted it
            except OSError as error:
                failed.append((folder, error))
            else:
                hidden[table].append((folder, target))
    try:
        days = {table: _listed([target for _, target in pairs], table) for table, pairs in hidden.items()}
        counts = _counts(reader, days)
    except BaseException:
        _restore([pair for pairs in hidden.values() for pair in pairs])
        raise
    targets = [target for pairs in hidden.values() for _, target in pairs]
    if sum(len(files) for by_day in days.values() for files in by_day.values()) <= inline_files:
        for target in targets:
            _delete(target)
    else:
        _schedule(targets)
    if failed:
        raise ExpireError(counts, failed)
    return counts


def _restore(pairs: list[tuple[Path, Path]]) -> None:
    """Counting failed: put the hidden folders back, so the call changes nothing (else they are deleted)."""
    for folder, target in pairs:
        try:
            os.rename(target, folder)
        except OSError as error:
            _logger.error("runlake TTL: cannot move %s back to %s (%s); it will be deleted", target, folder, error)
            _schedule([target])


def _expire_remote(reader: LakeReader, expired: dict[str, list[LakeRoot]]) -> dict[str, int]:
    """Object store: count, then delete folder by folder; a folder that cannot be deleted is not counted."""
    days = {table: _listed(folders, table) for table, folders in expired.items()}
    counts = _counts(reader, days)
    failed: list[tuple[LakeRoot, OSError]] = []
    for table in (RUNS, SPANS):
        for folder in days[table]:
            try:
                # Deliberately recursive: every object under the expired day prefix goes, including a part uploaded
                # after the listing above (a very late span of an expired day: expired too). Compaction, which must
                # keep such parts, never deletes a prefix (runlake.compact._remove_empty_folders).
                remove_dir(folder)
            except OSError as error:
                failed.append((folder, error))
    if not failed:
        return counts
    left = {str(folder) for folder, _ in failed}
    kept = _counts(reader, {t: {f: files for f, files in d.items() if str(f) in left} for t, d in days.items()})
    raise ExpireError({key: counts[key] - kept[key] for key in counts}, failed)


# ---- counting ---------------------------------------------------------------------------------------------------
def _counts(reader: LakeReader, days: dict[str, Days]) -> dict[str, int]:
    return {"executions_deleted": _count(reader, RUNS, days[RUNS]), "nodes_deleted": _count(reader, SPANS, days[SPANS])}


def _count(reader: LakeReader, table: str, days: Days) -> int:
    """Stored counts of the days that are one file, one DuckDB query over the files of every other day.

    Stored counts never add up across files: a span can be in two files of a day (a run's start and end rows, a
    span stored twice, a compaction's file beside the parts it merged), so a day of several files is counted by
    DuckDB, de-duplicated like readers. A compacted day is one file: TTL of compacted days opens no file.
    """
    alone = [files[0] for files in days.values() if len(files) == 1]
    rest = [file for files in days.values() if len(files) > 1 for file in files]
    total = 0
    for file, n in zip(alone, _stored_counts(alone, _COUNT_KEY[table])):
        if n is None:
            rest.append(file)  # no stored counts (older files), or an unreadable footer
        else:
            total += n
    return total + (_duckdb_count(reader, _AGGREGATE[table], rest) if rest else 0)


def _duckdb_count(reader: LakeReader, aggregate: str, files: list[LakeRoot]) -> int:
    rows = reader.rows(f"SELECT {aggregate} AS n FROM {{files}}", _lister(files))
    return int(rows[0]["n"] or 0) if rows else 0


def _stored_counts(files: list[LakeRoot], key: str) -> list[int | None]:
    """``key`` of each file's stored counts (its name, else its footer); None where there are none (older files)
    or the footer is unreadable.

    Names cost nothing to read. Of the files whose names hold no counts, if the first ``_PROBE`` footers have none
    either, the lake predates stored counts: the rest are not read (DuckDB counts them all in one pass, as cheaply).
    """
    out = [_valid((counts_in_name(f) or {}).get(key)) for f in files]
    unnamed = [i for i, n in enumerate(out) if n is None]
    head = _read_footers([files[i] for i in unnamed[:_PROBE]], key)
    if len(unnamed) > _PROBE and any(n is not None for n in head):
        head += _read_footers([files[i] for i in unnamed[_PROBE:]], key)
    for i, n in zip(unnamed, head):
        out[i] = n
    return out


def _read_footers(files: list[LakeRoot], key: str) -> list[int | None]:
    if len(files) > 1 and isinstance(files[0], ObjectPath):
        with ThreadPoolExecutor(min(_REMOTE_THREADS, len(files)), thread_name_prefix="runlake-ttl") as pool:
            return list(pool.map(lambda f: _footer_count(f, key), files))
    return [_footer_count(f, key) for f in files]


def _footer_count(file: LakeRoot, key: str) -> int | None:
    try:
        counts = read_part_counts(file)
    except Exception:  # noqa: BLE001 - unreadable or gone: the DuckDB count decides (and warns about broken files)
        return None
    return _valid(counts.get(key) if isinstance(counts, dict) else None)


def _valid(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _lister(files: list[LakeRoot]) -> Callable[[], list[LakeRoot]]:
    """The files as listed; when the reader asks again (a file vanished), only those still there."""
    calls = [0]

    def listing() -> list[LakeRoot]:
        calls[0] += 1
        return files if calls[0] == 1 else [f for f in files if f.exists()]

    return listing


# ---- deleting hidden folders ------------------------------------------------------------------------------------
_cond = threading.Condition()
_queue: deque[Path] = deque()
_pending: set[str] = set()  # queued or being deleted
_worker: threading.Thread | None = None


def _leftovers(root: Path, tenant: str | None) -> list[Path]:
    """Hidden folders of earlier calls that were not deleted (the process ended first, or a delete failed)."""
    return [folder for table in (RUNS, SPANS) for folder in ttl_subdirs(root, table, tenant, EXPIRED_PREFIX)]


def _schedule(folders: list[Path]) -> None:
    """Queue hidden folders for the background deleter (each once), starting it if it is not running."""
    global _worker
    if not folders:
        return
    with _cond:
        for folder in folders:
            if str(folder) not in _pending:
                _pending.add(str(folder))
                _queue.append(folder)
        if _worker is None and _queue:
            _worker = threading.Thread(target=_work, name="runlake-ttl-delete", daemon=True)
            _worker.start()


def _work() -> None:
    global _worker
    while True:
        with _cond:
            if not _queue:
                _worker = None
                _cond.notify_all()
                return
            folder = _queue.popleft()
        try:
            _delete(folder)
        finally:
            with _cond:
                _pending.discard(str(folder))
                _cond.notify_all()


def _delete(folder: Path) -> None:
    """Delete one hidden folder; a failure is logged (naming it) and the next call's sweep tries again."""
    errors: list[BaseException] = []

    def record(_function: Any, _path: Any, error: Any) -> None:
        error = error[1] if isinstance(error, tuple) else error  # onerror passes exc_info, onexc the exception
        if not isinstance(error, FileNotFoundError):  # already gone (another process sweeping): fine
            errors.append(error)

    try:
        if sys.version_info >= (3, 12):
            shutil.rmtree(folder, onexc=record)
        else:
            shutil.rmtree(folder, onerror=record)
    except Exception as error:  # noqa: BLE001 - never let one folder stop the deleter
        errors.append(error)
    if errors:
        _logger.error(
            "runlake TTL: cannot delete expired folder %s (%s); readers no longer see it, the next cleanup retries",
            folder,
            errors[0],
        )


def pending_deletes() -> int:
    """How many hidden expired folders are still queued or being deleted in this process."""
    with _cond:
        return len(_pending)


def wait_for_deletes(timeout: float | None = None) -> bool:
    """Block until the background deletions of this process are done (or ``timeout`` seconds); True if done.

    For short-lived callers (``runlake gc``, scripts): a daemon thread stops with the process, and what it had not
    deleted yet is swept by the next cleanup.
    """
    with _cond:
        return _cond.wait_for(lambda: not _pending, timeout)


def _after_fork() -> None:
    """A forked child has no deleter thread: forget the parent's queue (its folders are swept later)."""
    global _cond, _worker
    _cond = threading.Condition()
    _queue.clear()
    _pending.clear()
    _worker = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
