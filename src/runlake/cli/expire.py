"""``runlake gc``: delete expired history (``HistoryDB.cleanup_expired``), whole day partitions at a time."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL
from rich.text import Text

from .common import AsJson, RemoteStateUrl, _friendly_errors, app, fail, open_db
from .output import _stderr, print_json
from .render import _print_gc


@app.command()
def gc(
    now: Annotated[
        str | None,
        typer.Option("--now", metavar="YYYY-MM-DD", help="Take this UTC day as today (default: the real today)."),
    ] = None,
    max_age_days: Annotated[
        int | None,
        typer.Option("--max-age-days", min=1, help="Also remove anything older than this, whatever its own TTL."),
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")] = False,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Delete expired history: every day partition whose TTL has passed goes, folder by folder.

    A run started on UTC day D with `ttl_days` N is kept through day D+N and removed from day D+N+1.
    Prints how many executions and nodes were deleted (`--json`: the dict `HistoryDB.cleanup_expired` returns).
    Expired folders vanish from readers at once; the command waits until their files are deleted. A folder that
    cannot be removed (read-only disk, permissions) is named in the error (exit 1) and not counted.

    **Example:**

        runlake gc --now 2030-01-01 --state-url ./runlake-data
    """
    today: dt.datetime | None = None
    if now is not None:
        try:
            today = dt.datetime.combine(dt.date.fromisoformat(now), dt.time(12), tzinfo=dt.timezone.utc)
        except ValueError:
            fail(f"--now must be a day as YYYY-MM-DD, got {now!r}", code=2)
    from ..ttl import ExpireError

    db = open_db(state_url)
    error: ExpireError | None = None
    try:
        with _friendly_errors():
            try:
                counts = db.cleanup_expired(now=today, max_age_days=max_age_days, dry_run=dry_run)
            except ExpireError as failed:  # some folders could not be removed: report the rest, then fail
                counts, error = failed.counts, failed
    finally:
        _finish_deletes()
    if as_json:
        print_json(counts)
    elif error is None or counts["executions_deleted"] or counts["nodes_deleted"]:
        _print_gc(counts, db, state_url, today, dry_run)
    if error is not None:
        fail(str(error))


def _finish_deletes(patience_s: float = 1.0) -> None:
    """Expired folders are hidden at once but deleted in the background: finish before the process exits."""
    from ..ttl import pending_deletes, wait_for_deletes

    if wait_for_deletes(timeout=patience_s):
        return
    _stderr().print(Text(f"runlake: removing {pending_deletes()} expired folders…", style="dim"), soft_wrap=True)
    wait_for_deletes()
