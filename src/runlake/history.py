"""``HistoryDB``: the documented shapes (PraisonAI runs and traces, CodexOS history and logs) from the lake.

A session is read through its own folders; cross-session listings read the small ``runs/`` index.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import duckdb
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    LakeRoot,
    day_dirs,
    day_of,
    day_of_file,
    resolve_lake,
    sessions_files,
    table_files,
)
from opentelemetry.exporter.runlake.mapping import INT64_MAX, SPAN_COLUMNS, attributes_of_row

from .query import (
    FIRST_RUN_OF_TRACE,
    LAST_ATTEMPT,
    NEWEST_RUN_FIRST,
    LakeReader,
    _vanished,
    attempts_after_waits,
    first_run_rank,
)
from .run_index import DEFAULT_MAX_ROWS, RunIndex
from .ttl import expire

_logger = logging.getLogger(__name__)

_RUN_STATUS = {"ERROR": "error"}  # PraisonAI: running | completed | error
_TRACE_STATUS = {"ERROR": "error"}  # PraisonAI: running | ok | error


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def epoch_seconds(unix_nano: int | None) -> float | None:
    return None if unix_nano is None else unix_nano / 1e9


def iso_time(unix_nano: int | None) -> str | None:
    if unix_nano is None:
        return None
    # whole seconds from the integer: a float of the nanoseconds rounds 23:59:59.9999999995 up to the next day
    moment = _EPOCH + dt.timedelta(seconds=unix_nano // 1_000_000_000)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def format_duration(start_ns: int | None, end_ns: int | None) -> str | None:
    """CodexOS-style durations: ``"45s"``, ``"45.2s"``, ``"0.035s"``; ``None`` while running."""
    if start_ns is None or end_ns is None:
        return None
    seconds = max(end_ns - start_ns, 0) / 1e9
    text = f"{seconds:.3f}" if seconds < 1 else f"{seconds:.1f}"
    return text.rstrip("0").rstrip(".") + "s" if "." in text else text + "s"


def _json_object(text: str | None) -> dict[str, Any]:
    """Stored metadata as a dict. Any other instrumentation may have put anything in ``runlake.metadata``: text that
    is not a JSON object comes back as ``{"value": ...}`` rather than costing the run its place in the answer."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {"value": text}
    return value if isinstance(value, dict) else {"value": value}


def _codexos_status(row: dict[str, Any]) -> str:
    if row["end_time_unix_nano"] is None:
        return "running"
    return "failed" if row["status_code"] == "ERROR" else "completed"


def _id_text(value: Any) -> Any:
    """An id as the text it is stored as (``run(session_id=12345)`` stores ``"12345"``); None stays None."""
    return value if value is None or isinstance(value, str) else str(value)


def whole_cents(value: float | None) -> int:
    """Whole cents, as CodexOS types them, halves rounded up (2.5 -> 3, as a bill would; ``round`` gives 2); a
    non-finite stored cost (written by an older version) counts as 0."""
    return int(math.floor(value + 0.5)) if value is not None and math.isfinite(value) else 0


_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_LIVE_RUN_NS = 86_400 * 10**9  # a run in progress for less than this is counted as it goes (history)
_MAX_DAYS_OF_RUN = 400  # a run's spans are looked for on the days it lasted, up to this many


def _days_of(start_ns: int | None, end_ns: int | None, margin: int = 0) -> list[str] | None:
    """The UTC days a run lasted (through today while it runs), and ``margin`` days either side; None when that is
    not known or too long."""
    if not isinstance(start_ns, int):
        return None
    first = dt.date.fromisoformat(day_of(start_ns))
    last = dt.date.fromisoformat(day_of(end_ns)) if isinstance(end_ns, int) else dt.datetime.now(dt.timezone.utc).date()
    span = (last - first).days
    if span < 0 or span > _MAX_DAYS_OF_RUN:
        return None
    return [(first + dt.timedelta(days=i)).isoformat() for i in range(-margin, span + 1 + margin)]


def _nodes_missing(run: dict[str, Any], nodes_found: int) -> bool:
    """Whether the exporter counted more nodes for a finished run than were found on the days it lasted: a node
    filed on a day outside them (a clock a little behind across midnight, a step that ran on after the run, the
    next day). Those are looked for a day either side."""
    return run.get("end_time_unix_nano") is not None and (run.get("node_count") or 0) > nodes_found


# the columns each shape is built from: DuckDB pays for every column read, wanted or not
_RUN_DICT_COLUMNS = (
    "run_id, session_id, tenant_id, user_id, start_time_unix_nano, end_time_unix_nano, input, output, status_code, "
    "status_message, error_type, metadata, agent_name"
)
_RUN_TEXT_COLUMNS = "input, output, metadata, status_message"  # what a run dict needs beyond the index
_LOG_COLUMNS = (
    "span_id, parent_span_id, span_type, session_id, user_id, run_id, trace_id, node_id, node_type, input, output, "
    "start_time_unix_nano, "
    "end_time_unix_nano, status_code, status_message, error_type, metadata, input_tokens, output_tokens, cost_cents"
)


# a trace's spans: every column the span dicts are rebuilt from (not kind, status message, service or resource)
_TRACE_COLUMNS = [c for c in SPAN_COLUMNS if c not in ("record", "kind", "status_message", "service_name", "resource")]


def _rows_of_run(trace_rows: list[dict[str, Any]], run: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's own span row and its nodes among the rows of its trace.

    A node is the run's when it names the run (``run_id``), or, naming none, when the nearest run above it in the
    span tree is this run; a node with no run above it in the lake belongs to the trace's (first) root run.
    """
    by_id = {r["span_id"]: r for r in trace_rows}
    run_id, own = run["run_id"], run["span_id"]
    first_root = _first_root_run(trace_rows)
    root = run["parent_span_id"] is None and first_root in (None, own)
    out = []
    for row in trace_rows:
        if row["span_id"] == own:
            out.append(row)
        elif row["span_type"] == "node":
            found = _nearest_run(row, by_id)
            if found == run_id or (found is None and root):
                out.append(row)
    return out


def _first_root_run(trace_rows: list[dict[str, Any]]) -> str | None:
    """The span id of the trace's first run with no parent: nodes with no run above them go to it (a trace rarely
    has two roots)."""
    roots = [r for r in trace_rows if r["span_type"] == "run" and r["parent_span_id"] is None]
    return min(roots, key=lambda r: (r["start_time_unix_nano"], r["span_id"]))["span_id"] if roots else None


def _nearest_run(row: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str | None:
    """The run a span names, else the nearest run above it in the span tree (``by_id``: the trace's rows)."""
    for _ in range(len(by_id) + 1):  # a cycle of bad parent ids ends here
        if row["run_id"]:
            return row["run_id"]
        if row["span_type"] == "run":
            return row["span_id"]
        parent = by_id.get(row["parent_span_id"]) if row["parent_span_id"] else None
        if parent is None:
            return None
        row = parent
    return None


def rows_a_user_may_see(trace_rows: list[dict[str, Any]], user_id: str) -> list[dict[str, Any]]:
    """The rows of one trace that a reader scoped to ``user_id`` may see: those whose user is the user — a row's own
    ``user_id``, else that of its nearest ancestor that names one (a nested run or a node of another
    instrumentation inherits its run's user). Another user's run in the same trace (a hand-off) and everything under
    it stay hidden, as do rows of no user at all (a root HTTP span) and rows whose ancestry is not in the lake.

    A row that names a user is that user's, whatever other rows share its span id (another user's client may send
    a span with this one's ids); a span id whose rows name different users passes no user down to its children.
    """
    by_id: dict[str, dict[str, Any]] = {}
    users: dict[str, str | None] = {}  # span id -> the user its rows (or their ancestry) name, None if several
    for r in trace_rows:
        by_id.setdefault(r["span_id"], r)
        if r["user_id"]:
            if users.setdefault(r["span_id"], r["user_id"]) != r["user_id"]:
                users[r["span_id"]] = None

    def user_of(row: dict[str, Any]) -> str | None:
        if row["user_id"]:
            return row["user_id"]
        chain = []
        found = None
        for _ in range(len(by_id) + 1):  # a cycle of bad parent ids ends here
            if row["span_id"] in users:
                found = users[row["span_id"]]
                break
            chain.append(row["span_id"])
            row = by_id.get(row["parent_span_id"]) if row["parent_span_id"] else None
            if row is None:
                break
        for span_id in chain:
            users[span_id] = found
        return found

    return [row for row in trace_rows if user_of(row) == user_id]


def owners_of_unnamed_nodes(trace_rows: list[dict[str, Any]]) -> dict[str, str]:
    """For each node of one trace that names no run: the run it belongs to (as ``_rows_of_run`` decides), by span
    id. Rows need ``span_id, parent_span_id, span_type, run_id, start_time_unix_nano``."""
    by_id = {r["span_id"]: r for r in trace_rows}
    first_root = _first_root_run(trace_rows)
    out = {}
    for row in trace_rows:
        if row["span_type"] == "node" and not row["run_id"]:
            owner = _nearest_run(row, by_id) or first_root
            if owner is not None:
                out[row["span_id"]] = owner
    return out


def _first_run_rank(run: dict[str, Any]) -> tuple[bool, int, str]:
    return first_run_rank(run["parent_span_id"], run["start_time_unix_nano"], run["span_id"])


def _trace_key(row: dict[str, Any]) -> tuple[str | None, str]:
    """A trace as readers tell traces apart: its id within a tenant."""
    return row["tenant_id"], row["trace_id"]


def _names(columns: str) -> list[str]:
    return [c.strip() for c in columns.split(",")]


def _one_tenant(rows: list[dict[str, Any]]) -> str | None:
    """The tenant all the rows belong to (their files are then listed in that tenant only), else None."""
    tenants = {r.get("tenant_id") for r in rows}
    return tenants.pop() if len(tenants) == 1 and None not in tenants else None


def _trace_days(runs: list[dict[str, Any]], others: list[dict[str, Any]], margin: int) -> dict[str, set[str] | None]:
    """The sessions (and days) to read the runs' traces from: each run's session and the spans without one on the
    days it lasted (``margin`` days either side), the sessions of the traces' other runs on theirs."""
    wanted: dict[str, set[str] | None] = {}
    for run in runs:
        days = _days_of(run["start_time_unix_nano"], run["end_time_unix_nano"], margin)
        _add_days(wanted, run["session_id"] or "", days)
        _add_days(wanted, "", days)
    for other in others:
        if other["session_id"]:
            days = _days_of(other["start_time_unix_nano"], other["end_time_unix_nano"], margin)
            _add_days(wanted, other["session_id"], days)
    return wanted


def _with_node_counts(runs: list[dict[str, Any]], index: RunIndex | None) -> list[dict[str, Any]]:
    """Runs read from the spans table (a session's traces) with the node counts of their index rows, when the index
    is in memory (without it, a session's every day is read)."""
    if index is None or all("node_count" in run for run in runs):
        return runs
    key = ("span_id", "trace_id", "tenant_id")
    out = []
    for run in runs:
        if "node_count" not in run:
            same = [r for r in index.runs_of_id(run["run_id"]) if all(r[k] == run[k] for k in key)]
            run = {**run, "node_count": same[0]["node_count"] if same else None}
        out.append(run)
    return out


def _traces_short_of_nodes(runs: list[dict[str, Any]], found: list[dict[str, Any]]) -> set[str]:
    """Ids of the traces in which fewer nodes were found than the exporter counted for the listed runs of them
    (a trace is told apart by tenant as well: the same trace stored by two tenants is two)."""
    counted: dict[tuple[str | None, str], int] = {}
    for run in runs:
        if run.get("end_time_unix_nano") is not None:
            key = _trace_key(run)
            counted[key] = counted.get(key, 0) + (run.get("node_count") or 0)
    if not any(counted.values()):
        return set()
    nodes: dict[tuple[str | None, str], set[str]] = {}
    for row in found:
        if row["span_type"] == "node":
            nodes.setdefault(_trace_key(row), set()).add(row["span_id"])
    return {key[1] for key, count in counted.items() if count > len(nodes.get(key, ()))}


def _add_days(wanted: dict[str, set[str] | None], session: str, days: list[str] | None) -> None:
    """Add ``days`` to what is read of ``session`` (None: every day, which stays so)."""
    known = wanted.get(session, set())
    wanted[session] = None if days is None or known is None else known | set(days)


def _in_list(column: str, values: list[Any], params: list[Any]) -> str:
    """``column IN (?, ...)``: with literal parameters DuckDB checks it against Parquet row-group statistics."""
    params.extend(values)
    return f"{column} IN ({', '.join('?' * len(values))})" if values else "false"


class HistoryDB:
    """Read agent history from a runlake lake.

    ``state_url``: a folder, a ``file://`` URL or ``s3://bucket/prefix``, else ``RUNLAKE_STATE_URL``, else
    ``PRAISONAI_STATE_URL``. ``root`` is a ``Path`` for a local lake and a ``layout.ObjectPath`` on S3.
    ``tenant_id`` / ``user_id`` scope every read (the server passes the caller's). ``index_max_rows``: runs kept
    in the in-memory copy of the ``runs/`` index (``runlake.run_index``; 0 turns it off).
    """

    def __init__(
        self,
        state_url: str | os.PathLike[str] | None = None,
        *,
        tenant_id: str | None = None,
        user_id: str | None = None,
        index_max_rows: int = DEFAULT_MAX_ROWS,
        _reader: LakeReader | None = None,
    ) -> None:
        self.root: LakeRoot | None = resolve_lake(state_url)
        self.tenant_id = tenant_id
        self.user_id = user_id
        self._reader = _reader or LakeReader()
        self._index = RunIndex(self.root, index_max_rows) if self.root is not None else None

    def scoped(self, tenant_id: str | None = None, user_id: str | None = None) -> HistoryDB:
        """The same lake, seen by one tenant (and one user); shares the DuckDB connection and the runs index."""
        scoped = HistoryDB.__new__(HistoryDB)
        scoped.root, scoped._reader, scoped._index = self.root, self._reader, self._index
        scoped.tenant_id, scoped.user_id = tenant_id, user_id
        return scoped

    # ---- helpers ----
    def _unconfigured(self, method: str) -> bool:
        if self.root is None:
            _logger.warning("%s() called but no state_url configured; returning []", method)
            return True
        return False

    def _scope_sql(self, params: list[Any], by_user: bool = True) -> str:
        """`` AND ...`` limiting rows to this scope (its tenant only, without ``by_user``)."""
        clauses = ""
        if self.tenant_id is not None:
            clauses += " AND tenant_id = ?"
            params.append(self.tenant_id)
        if by_user and self.user_id is not None:
            clauses += " AND user_id = ?"
            params.append(self.user_id)
        return clauses

    def warm(self) -> int:
        """Load the runs index and the footers of compacted files, newest days first, as a long-lived reader (the
        server) would have them after its first queries; the number of footers kept. Optional: a cold reader
        answers the same, a few milliseconds slower per file it opens for the first time."""
        if self.root is None or self.run_index() is None:
            return 0
        listing = self._index.listing
        files = listing.table_files(self.root, RUNS, self.tenant_id) + listing.table_files(
            self.root, SPANS, self.tenant_id
        )
        files.sort(key=day_of_file, reverse=True)
        return self._reader.warm(files)

    def run_index(self) -> RunIndex | None:
        """The in-memory runs index brought up to date, or None (no lake, turned off, or unreadable just now)."""
        index = self._index
        if index is None:
            return None
        try:
            return index if index.refresh() else None
        except (OSError, duckdb.Error) as error:
            _logger.warning("runlake: the in-memory runs index is unavailable (%s); reading the files", error)
            return None

    def _runs_lister(self, since: str | None = None, until: str | None = None) -> Callable[[], list[LakeRoot]]:
        return lambda: table_files(self.root, RUNS, self.tenant_id, since, until)

    def _runs_of_days(self, days: set[str], tenant: str | None = None) -> Callable[[], list[LakeRoot]]:
        """The ``runs/`` part files of some days (a run's rows are in the day it started), of one tenant if given."""
        tenant = self.tenant_id if tenant is None else tenant
        listing = self._index.listing if self._index is not None else None

        def files() -> list[LakeRoot]:
            since, until = min(days), max(days)
            if listing is not None:
                found = listing.table_files(self.root, RUNS, tenant, since, until)
            else:
                found = table_files(self.root, RUNS, tenant, since, until)
            return [f for f in found if day_of_file(f) in days]

        return files

    def _sessions_lister(self, sessions: dict[str, set[str] | None], tenant: str | None = None) -> Callable:
        """The span part files of sessions on their days (None: every day), of one tenant if given."""
        tenant = self.tenant_id if tenant is None else tenant
        listing = self._index.listing if self._index is not None else None
        if listing is not None:
            return lambda: listing.sessions_files(self.root, sessions, tenant)
        return lambda: sessions_files(self.root, sessions, tenant)

    def _index_rows(
        self, where: str, params: list[Any], order_limit: str = "", tail: Sequence[Any] = ()
    ) -> list[dict[str, Any]]:
        """One row per run from the ``runs/`` files (the index in memory is off or unavailable); ``tail``: the
        parameters of ``order_limit``."""
        sql = f"SELECT * FROM {{latest}} {order_limit}"
        return self._reader.rows(sql, self._runs_lister(), tail, where=f"true {where}", where_params=params)

    def _newest_index_rows(
        self, where: str, params: list[Any], order: str, skip: int, limit: int
    ) -> list[dict[str, Any]]:
        """``SELECT * ... WHERE true {where} ORDER BY {order} LIMIT limit OFFSET skip`` over the ``runs/`` files
        (one row per run), for an ``order`` that puts the newest start first: reads day folders newest first.

        A day folder holds the runs that started that day (both rows of a run), so whole days come in order and the
        walk stops once ``skip + limit`` rows are known; days are read 1, 2, 4, ... at a time, so a sparse filter
        costs a few queries, not one per day. Day folders not named like days: the whole index in one query.
        """
        days = sorted({day for _, _, day, _ in day_dirs(self.root, RUNS, self.tenant_id)}, reverse=True)
        if not all(_DAY.fullmatch(day) for day in days):
            return self._index_rows(where, params, f"{order} LIMIT ? OFFSET ?", [limit, skip])
        sql = (
            "WITH latest AS (SELECT * FROM {latest}) "
            f"SELECT * FROM (SELECT *, count(*) OVER () AS _runlake_n, row_number() OVER ({order}) AS _runlake_i "
            "FROM latest) WHERE _runlake_i = 1 OR _runlake_i BETWEEN ? AND ? ORDER BY _runlake_i"
        )  # the first row always comes back: it carries the day's count
        out: list[dict[str, Any]] = []
        end = skip + limit
        seen = start = 0
        batch = 1
        while start < len(days) and seen < end:
            chunk = days[start : start + batch]
            start, batch = start + batch, batch * 2
            first, last = max(1, skip - seen + 1), end - seen  # the wanted positions within these days
            lister = self._runs_lister(chunk[-1], chunk[0])
            rows = self._reader.rows(sql, lister, [first, last], where=f"true {where}", where_params=params)
            if not rows:
                continue
            seen += rows[0]["_runlake_n"]
            for row in rows:
                position = row.pop("_runlake_i")
                del row["_runlake_n"]
                if first <= position <= last:
                    out.append(row)
        return out

    def _with_text(self, runs: list[dict[str, Any]], columns: str = "*") -> list[dict[str, Any]]:
        """Index rows completed with the columns the in-memory index leaves out (text), from their day files;
        ``columns``: the ones wanted (each column read costs, whether used or not)."""
        if not runs:
            return runs
        params: list[Any] = []
        sessions = sorted({r["session_id"] for r in runs if r["session_id"] is not None})
        where = _in_list("span_id", [r["span_id"] for r in runs], params)
        if all(r["session_id"] is not None for r in runs):  # the files are sorted by session: skip other row groups
            where += " AND " + _in_list("session_id", sessions, params)
        days = {day_of(r["start_time_unix_nano"]) for r in runs}
        tenant = _one_tenant(runs)
        lister = self._runs_of_days(days, tenant)
        by_session = columns != "*" and sessions and all(r["session_id"] is not None for r in runs)

        def read(key_columns: list[str]) -> list[dict[str, Any]]:
            found = None
            if by_session:
                found = self._reader.session_rows(lister, sessions, [*key_columns, "session_id", *_names(columns)])
            if found is None:
                sql = f"SELECT {', '.join(key_columns)}, {columns} FROM {{latest}}"
                found = self._reader.rows(sql, lister, where=where, where_params=params)
            return found

        # a run is found by its span id; only where a wanted span id is there twice (a client reusing ids in another
        # trace or at another start, the same spans in another tenant) is the whole span key read (each column costs)
        key_columns = ["span_id"]
        found = read(key_columns)
        wanted, seen = {r["span_id"] for r in runs}, set()
        for row in found:
            if row["span_id"] in wanted:
                if row["span_id"] in seen:
                    key_columns = ["span_id", "trace_id", "start_time_unix_nano", "tenant_id"]
                    found = read(key_columns)
                    break
                seen.add(row["span_id"])
        full = {tuple(r[c] for c in key_columns): r for r in found}
        missing = {"input": None, "output": None, "metadata": None, "status_message": None}
        return [{**full.get(tuple(r[c] for c in key_columns), missing), **r} for r in runs]

    @staticmethod
    def _each(rows: list[dict[str, Any]], build: Callable[[dict[str, Any]], dict[str, Any]], what: str) -> list:
        out = []
        for row in rows:
            try:
                out.append(build(row))
            except (ValueError, TypeError, KeyError) as error:
                name = row.get("run_id") or row.get("trace_id") or row.get("span_id")
                _logger.warning("skipping %s %s: cannot be read (%s)", what, name, error)
        return out

    def _scope_equal(self) -> dict[str, Any]:
        """The scope as column values (for ``RunIndex.newest``)."""
        equal: dict[str, Any] = {}
        if self.tenant_id is not None:
            equal["tenant_id"] = self.tenant_id
        if self.user_id is not None:
            equal["user_id"] = self.user_id
        return equal

    def _in_scope(self, row: dict[str, Any] | None) -> bool:
        return (
            row is not None
            and (self.tenant_id is None or row["tenant_id"] == self.tenant_id)
            and (self.user_id is None or row["user_id"] == self.user_id)
        )

    def _session_days(self, session_id: str, index: RunIndex | None) -> tuple[list[str] | None, str | None]:
        """``(days, tenant)``: the days the session's runs ran on and the tenant they are in, from the index (the
        caller's fresh ``run_index()``); ``(None, None)`` (every day, every tenant in scope) when it cannot say."""
        if index is None:
            return None, None
        runs = [r for r in index.session(session_id) if self._in_scope(r)]
        if not runs:
            return None, None  # not in the index (yet): look everywhere
        # from the first start to the last start or end (a clock that stepped back ends a run before its own start;
        # one ahead starts it after today), through today while one runs
        starts = [r["start_time_unix_nano"] for r in runs]
        ends = [r["end_time_unix_nano"] for r in runs if r["end_time_unix_nano"] is not None]
        last = max(starts + ends)
        if len(ends) < len(runs):
            last = max(last, time.time_ns())
        return _days_of(min(starts), last), _one_tenant(runs)

    # ---- PraisonAI ----
    def get_runs(self, session_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """Runs of one session, newest ``started_at`` first (PraisonAI's run dicts).

        Read from the ``runs/`` files of the days the index knows the session's runs started on (those files are
        sorted by session once compacted); a session the index does not know is looked for in its span files.
        """
        if self._unconfigured("get_runs") or (limit is not None and limit <= 0):
            return []
        session_id = _id_text(session_id)
        params: list[Any] = [session_id]
        where = f"session_id = ? AND span_type = 'run' {self._scope_sql(params)}"
        sql = f"SELECT {_RUN_DICT_COLUMNS} FROM {{latest}} ORDER BY {NEWEST_RUN_FIRST}"
        tail: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            tail.append(int(limit))
        index = self.run_index()
        known = [r for r in index.session(session_id) if self._in_scope(r)] if index is not None else []
        if known:
            # the index rows are newest first; only their text is read, from the runs/ files of their days (four
            # column chunks instead of the shape's thirteen: the per-chunk cost is what a point read pays)
            known = known if limit is None else known[: int(limit)]
            return self._each(self._with_text(known, _RUN_TEXT_COLUMNS), self._run_dict, "run")
        rows = self._reader.rows(sql, self._sessions_lister({session_id: None}), tail, where=where, where_params=params)
        return self._each(rows, self._run_dict, "run")

    @staticmethod
    def _run_dict(row: dict[str, Any]) -> dict[str, Any]:
        ended = row["end_time_unix_nano"]
        status = "running" if ended is None else _RUN_STATUS.get(row["status_code"], "completed")
        metadata = {"agent_name": row["agent_name"], **_json_object(row["metadata"])}
        if status == "error":
            metrics: dict[str, Any] = {"error": row["status_message"] or row["error_type"] or "error"}
        elif ended is not None:
            metrics = {"duration_ms": max(ended - row["start_time_unix_nano"], 0) / 1e6}
        else:
            metrics = {}
        return {
            "run_id": row["run_id"],
            "session_id": row["session_id"],
            "started_at": epoch_seconds(row["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "input_content": row["input"],
            "output_content": row["output"],
            "status": status,
            "metadata": metadata,
            "metrics": metrics,
        }

    def get_traces(
        self, session_id: str | None = None, user_id: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Traces (one per trace id) with their spans, newest first.

        A trace is described by its first run in scope: its root run, or, where the root is not in the lake (a
        parent in another service) or not the user's (an HTTP span above the agent), the first run that is.
        """
        if self._unconfigured("get_traces") or (limit is not None and limit <= 0):
            return []
        session_id, user_id = _id_text(session_id), _id_text(user_id)
        index = self.run_index()  # once a call: each refresh stats every day folder of the index
        if session_id is not None:
            runs = self._session_root_runs(session_id, user_id, limit, index)
        else:
            params: list[Any] = []
            where = self._scope_sql(params)
            if user_id is not None:
                where += " AND user_id = ?"
                params.append(user_id)
            order = f"ORDER BY {NEWEST_RUN_FIRST}"
            if index is not None:
                equal = self._scope_equal()
                if user_id is not None and equal.setdefault("user_id", user_id) != user_id:
                    return []  # another user than the scope's
                runs = index.newest(equal, 0, None if limit is None else int(limit), roots_only=True)
            else:
                runs = self._first_runs_of_newest_traces(where, params, order, limit)
        spans_by_trace = self._spans_of(runs, index)
        if self.user_id is not None:  # a user's view: not the spans of other users' runs in the same traces
            spans_by_trace = {t: rows_a_user_may_see(rows, self.user_id) for t, rows in spans_by_trace.items()}
        return self._each(runs, lambda r: self._trace_dict(r, spans_by_trace.get(_trace_key(r), [])), "trace")

    def _first_runs_of_newest_traces(
        self, where: str, params: list[Any], order: str, limit: int | None
    ) -> list[dict[str, Any]]:
        """Without the in-memory index: each trace once, by its first run in scope, newest first.

        With a limit only the newest runs are read, a window that grows (x4) until it holds ``limit`` traces besides
        the oldest one it reaches (whose first run may lie past the window) or the whole index: traces of many
        nested runs take many runs each. A trace whose earlier runs started before every run of the window is
        described by its first run within it.
        """
        window = None if limit is None else 4 * int(limit) + 50
        while True:
            if window is None:
                runs = self._index_rows(where, params, order)
            else:
                runs = self._newest_index_rows(where, params, order, 0, window)
            first: dict[tuple[str | None, str], dict[str, Any]] = {}
            for run in runs:
                known = first.get(_trace_key(run))
                if known is None or _first_run_rank(run) < _first_run_rank(known):
                    first[_trace_key(run)] = run
            if window is None or len(runs) < window or len(first) > int(limit):
                break
            window *= 4
        runs = sorted(first.values(), key=lambda r: (-r["start_time_unix_nano"], r["run_id"]))  # NEWEST_RUN_FIRST
        return runs if limit is None else runs[: int(limit)]

    def _session_root_runs(
        self, session_id: str, user_id: str | None, limit: int | None, index: RunIndex | None
    ) -> list[dict]:
        days, tenant = self._session_days(session_id, index)
        params: list[Any] = [session_id]
        where = self._scope_sql(params)
        if user_id is not None:
            where += " AND user_id = ?"
            params.append(user_id)
        sql = (
            "SELECT * FROM {latest} QUALIFY row_number() OVER (PARTITION BY tenant_id, trace_id "
            f"ORDER BY {FIRST_RUN_OF_TRACE}) = 1 ORDER BY {NEWEST_RUN_FIRST}"
        )
        tail: list[Any] = []
        if limit is not None:
            sql += " LIMIT ?"
            tail.append(int(limit))
        lister = self._sessions_lister({session_id: days and set(days)}, tenant)
        where = f"session_id = ? AND span_type = 'run' {where}"
        return self._reader.rows(sql, lister, tail, where=where, where_params=params)

    def _spans_of(
        self, runs: list[dict[str, Any]], index: RunIndex | None
    ) -> dict[tuple[str | None, str], list[dict[str, Any]]]:
        """All spans of the runs' traces by (tenant, trace id), read in one query over the files of the runs'
        sessions and of spans without a session (on the days the runs lasted, when known). By tenant too: the same
        trace stored by two tenants is each one's own.

        A trace's spans need not share its run's session: instrumentations often set the session on the agent span
        only, and a root HTTP span has none. Where a run has no session, the sessions of the other runs of its trace
        are read too.
        """
        if not runs:
            return {}
        traces = sorted({run["trace_id"] for run in runs})
        others = self._runs_of_traces(traces, index)  # nested runs elsewhere
        counted = _with_node_counts(runs, index)
        # runs with no node count to compare (read from the spans table without the index): a day either side at once
        margin = 1 if any(run.get("node_count") is None for run in counted) else 0
        found = self._trace_rows(_trace_days(runs, others, margin), traces, _TRACE_COLUMNS, _one_tenant(runs))
        short = _traces_short_of_nodes(counted, found) if not margin else set()
        if short:  # a node on a day outside its run's: those traces once more, a day either side
            runs = [r for r in runs if r["trace_id"] in short]
            others = [r for r in others if r["trace_id"] in short]
            found = [r for r in found if r["trace_id"] not in short]
            found += self._trace_rows(_trace_days(runs, others, 1), sorted(short), _TRACE_COLUMNS, _one_tenant(runs))
        found.sort(key=lambda r: (r["start_time_unix_nano"], r["parent_span_id"] is not None, r["span_id"]))
        out: dict[tuple[str | None, str], list[dict[str, Any]]] = {}
        for row in found:
            out.setdefault(_trace_key(row), []).append(row)
        return out

    def _trace_rows(
        self, sessions: dict[str, set[str] | None], traces: list[str], columns: Sequence[str], tenant: str | None
    ) -> list[dict[str, Any]]:
        """``columns`` of the traces' spans in the files of ``sessions`` (each with its days; ``""``: spans without
        a session): pyarrow on compacted days, else DuckDB through the de-duplication."""
        lister = self._sessions_lister(sessions, tenant)
        found = self._reader.session_rows(lister, list(sessions), list(columns), also=("trace_id", traces))
        if found is not None:
            return found
        params: list[Any] = []
        where = _in_list("session_id", [s for s in sessions if s], params)
        if "" in sessions:
            where = f"({where} OR session_id IS NULL OR session_id = '')"
        params.append(traces)
        sql = f"SELECT {', '.join(columns)} FROM {{latest}}"
        return self._reader.rows(sql, lister, where=f"{where} AND list_contains(?, trace_id)", where_params=params)

    def _trace_dict(self, run: dict[str, Any], spans: list[dict[str, Any]]) -> dict[str, Any]:
        ended = run["end_time_unix_nano"]
        if "metadata" in run:
            metadata = run["metadata"]
        else:  # an in-memory index row: the run's own span row has it
            metadata = next((s["metadata"] for s in spans if s["span_id"] == run["span_id"]), None)
        return {
            "trace_id": run["trace_id"],
            "session_id": run["session_id"],
            "run_id": run["run_id"],
            "agent_name": run["agent_name"],
            "user_id": run["user_id"],
            "started_at": epoch_seconds(run["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "status": "running" if ended is None else _TRACE_STATUS.get(run["status_code"], "ok"),
            "metadata": _json_object(metadata),
            "spans": [self._span_dict(s) for s in spans],
        }

    @staticmethod
    def _span_dict(row: dict[str, Any]) -> dict[str, Any]:
        ended = row["end_time_unix_nano"]
        status = "running" if ended is None else ("error" if row["status_code"] == "ERROR" else "ok")
        return {
            "span_id": row["span_id"],
            "trace_id": row["trace_id"],
            "name": row["name"],
            "parent_span_id": row["parent_span_id"],
            "started_at": epoch_seconds(row["start_time_unix_nano"]),
            "ended_at": epoch_seconds(ended),
            "status": status,
            "attributes": attributes_of_row(row),
            "events": json.loads(row["events"]) if row["events"] else [],
        }

    # ---- CodexOS ----
    def get_history(self, agent_id: str | None = None, skip: int = 0, limit: int | None = 100) -> list[dict[str, Any]]:
        """Execution history items, newest first (CodexOS ``GET /api/v1/agents/history``); ``limit=None``: all."""
        if skip < 0 or (limit is not None and limit < 0):
            raise ValueError("skip and limit must not be negative")
        if self._unconfigured("get_history") or limit == 0:
            return []
        agent_id = _id_text(agent_id)
        params: list[Any] = []
        where = self._scope_sql(params)
        if agent_id is not None:
            where += " AND (agent_name = ? OR agent_id = ?)"
            params += [agent_id, agent_id]
        order = f"ORDER BY {NEWEST_RUN_FIRST}"
        index = self.run_index()
        if index is not None:
            page = index.newest(self._scope_equal(), int(skip), None if limit is None else int(limit), agent=agent_id)
            rows = self._with_text(page, "input, output")
        elif limit is None:
            rows = self._index_rows(where, params, f"{order} OFFSET ?", [int(skip)])
        else:
            rows = self._newest_index_rows(where, params, order, int(skip), int(limit))
        rows = self._with_totals_so_far(rows, index is not None)
        return self._each(rows, self._history_item, "run")

    @staticmethod
    def _history_item(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": row["run_id"],
            "status": _codexos_status(row),
            "started_at": iso_time(row["start_time_unix_nano"]),
            "duration": format_duration(row["start_time_unix_nano"], row["end_time_unix_nano"]),
            "input": row["input"],
            "output": row["output"],
            "node_count": row["node_count"] or 0,
            "tokens_used": (row["input_tokens"] or 0) + (row["output_tokens"] or 0),
            "cost_cents": whole_cents(row["cost_cents"]),
        }

    def _rest_of_trace(
        self, trace_rows: list[dict[str, Any]], run: dict[str, Any], read: set[str]
    ) -> list[dict[str, Any]]:
        """The trace's spans in the sessions of its other runs, when the rows read so far lack a parent (a run of
        another session may sit between a node and this run); usually nothing to read."""
        ids = {r["span_id"] for r in trace_rows}
        if all(r["parent_span_id"] is None or r["parent_span_id"] in ids for r in trace_rows):
            return []
        others: dict[str, set[str] | None] = {}
        for other in self._runs_of_traces([run["trace_id"]], self.run_index()):
            session = other["session_id"] or ""
            if session not in read:
                _add_days(others, session, _days_of(other["start_time_unix_nano"], other["end_time_unix_nano"]))
        if not others:
            return []
        found = self._trace_rows(others, [run["trace_id"]], _names(_LOG_COLUMNS), run.get("tenant_id"))
        return [r for r in found if r["span_id"] not in ids]

    def _runs_of_traces(self, traces: list[str], index: RunIndex | None) -> list[dict[str, Any]]:
        """Session and times of every run of the traces in this scope's tenant — of every user: a user's view reads
        the whole trace and then keeps its own rows (``rows_a_user_may_see`` needs the other users' runs to know
        what is theirs); ``index``: the caller's fresh ``run_index()``."""
        params: list[Any] = [traces]
        where = "list_contains(?, trace_id)" + self._scope_sql(params, by_user=False)
        columns = "trace_id, session_id, start_time_unix_nano, end_time_unix_nano"
        if index is not None:
            found = index.of_traces(traces, ["tenant_id", *_names(columns)])
            return [r for r in found if self.tenant_id is None or r["tenant_id"] == self.tenant_id]
        return self._index_rows(f" AND {where}", params)

    def _indexed_run(self, run_id: str) -> tuple[bool, dict[str, Any] | None]:
        """``(index in use, the run's in-memory index row in this scope or None)``."""
        index = self.run_index()
        if index is None:
            return False, None
        return True, next((row for row in index.runs_of_id(run_id) if self._in_scope(row)), None)

    def find_run(self, run_id: str) -> dict[str, Any] | None:
        """The run's ``runs/`` index row (in this scope), or None.

        With the index in memory only the day folder of the run's start is read; otherwise the whole index.
        """
        if self.root is None:
            return None
        indexed, row = self._indexed_run(run_id)
        if indexed:
            return self._with_text([row])[0] if row is not None else None
        params: list[Any] = [run_id]
        rows = self._index_rows(f" AND run_id = ? {self._scope_sql(params)}", params, "LIMIT 1")
        return rows[0] if rows else None

    def _rows_of_run(self, run: dict[str, Any], indexed: bool) -> list[dict[str, Any]]:
        """The run's own span row and its node rows (``_LOG_COLUMNS``), oldest first."""
        rows = self._read_rows_of_run(run, indexed, 0)
        if indexed and _nodes_missing(
            run, sum(r["span_type"] == "node" and r["span_id"] != run["span_id"] for r in rows)
        ):
            rows = self._read_rows_of_run(run, indexed, 1)
        return rows

    def _read_rows_of_run(self, run: dict[str, Any], indexed: bool, margin: int) -> list[dict[str, Any]]:
        session = run["session_id"] or ""
        days = _days_of(run["start_time_unix_nano"], run["end_time_unix_nano"], margin) if indexed else None
        # the run's trace in its session's files and in those of spans without a session (instrumentations often
        # name the session on the agent span only); which nodes are the run's is decided by ancestry
        sessions = {session: days and set(days), "": days and set(days)}
        tenant = run["tenant_id"] if indexed else None
        trace_rows = self._trace_rows(sessions, [run["trace_id"]], _names(_LOG_COLUMNS), tenant)
        trace_rows += self._rest_of_trace(trace_rows, run, set(sessions))
        if self.user_id is not None:  # a user's view: not the spans of another user's run in the same trace
            trace_rows = rows_a_user_may_see(trace_rows, self.user_id)
        return sorted(_rows_of_run(trace_rows, run), key=lambda r: (r["start_time_unix_nano"], r["span_id"]))

    def _with_totals_so_far(self, rows: list[dict[str, Any]], indexed: bool) -> list[dict[str, Any]]:
        """Runs still in progress have no totals in the index yet (their ``start`` row): count their nodes so far,
        as ``get_logs`` does (one read each, so only for runs started in the last day: older ones are runs whose end
        never came, and a page of those would cost a read per run). Finished runs are left as they are."""
        out = []
        recent = time.time_ns() - _LIVE_RUN_NS
        for row in rows:
            if row["end_time_unix_nano"] is None and row["start_time_unix_nano"] >= recent:
                nodes = [r for r in self._rows_of_run(row, indexed) if r["span_type"] == "node"]
                row = {
                    **row,
                    "node_count": len(nodes),
                    "failed_nodes": sum(1 for n in nodes if n["status_code"] == "ERROR"),
                    # the start row's figures are "not known yet" (zeros, or usage set as the run began): the nodes'
                    # so far, as get_logs counts them; usage set on the run span counts once it ends
                    **{
                        key: min(sum(n[key] or 0 for n in nodes), INT64_MAX)
                        for key in ("input_tokens", "output_tokens")
                    },
                    "cost_cents": sum(n["cost_cents"] or 0 for n in nodes),
                }
            out.append(row)
        return out

    def get_logs(self, run_id: str) -> dict[str, Any]:
        """Node-level logs of one run (CodexOS ``GET /api/v1/agents/logs``). Unknown run: ``LookupError``."""
        if self.root is None:
            raise LookupError(f"run {run_id!r} not found: no state_url configured")
        run_id = _id_text(run_id)
        indexed, run = self._indexed_run(run_id)
        if not indexed:
            run = self.find_run(run_id)
        if run is None:
            raise LookupError(f"run {run_id!r} not found")
        rows = self._rows_of_run(run, indexed)
        nodes = [r for r in rows if r["span_type"] == "node" and r["span_id"] != run["span_id"]]
        if "output" not in run:  # an in-memory index row: the text comes from the run's own span row
            own = next((r for r in rows if r["span_id"] == run["span_id"]), None)
            run = {**own, **run} if own is not None else (self.find_run(run_id) or run)
        node_dicts = self._each(nodes, self._node_dict, "node")
        failed = [n for n in nodes if n["status_code"] == "ERROR"]
        errors = [
            {"node_id": n["node_id"], "error_type": n["error_type"], "error_message": n["status_message"]}
            for n in failed
        ]
        if run["status_code"] == "ERROR" and run["status_message"] not in {e["error_message"] for e in errors}:
            errors.append({"node_id": None, "error_type": run["error_type"], "error_message": run["status_message"]})
        # the run's own usage and cost when its span carries them (an agent span that reports its total), else the
        # sum of its nodes: the same rule as the runs index, so history, statistics and logs agree
        # (the run's own span row, not its index row, which holds the exporter's sums; a run in progress has only
        # its start row, whose zeros mean "not known yet")
        span_row = next((r for r in rows if r["span_id"] == run["span_id"]), None) or run
        own = run["end_time_unix_nano"] is not None
        tokens = sum(  # each kind's sum capped at int64, as the runs index stores it
            span_row[key] if own and span_row[key] is not None else min(sum(n[key] or 0 for n in nodes), INT64_MAX)
            for key in ("input_tokens", "output_tokens")
        )
        cost = span_row["cost_cents"]
        if not own or cost is None:
            cost = sum(n["cost_cents"] or 0 for n in nodes)
        return {
            "run_id": run_id,
            "nodes": node_dicts,
            "errors": errors,
            "final_output": run.get("output"),
            "summary": {
                "total_nodes": len(nodes),
                "successful_nodes": sum(1 for n in nodes if n["status_code"] != "ERROR"),
                "failed_nodes": len(failed),
                "total_duration": format_duration(run["start_time_unix_nano"], run["end_time_unix_nano"]),
                "tokens_used": tokens,
                "cost_cents": whole_cents(cost),
            },
        }

    @staticmethod
    def _node_dict(row: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": row["node_id"],
            "type": row["node_type"],
            "input": row["input"],
            "output": row["output"],
            "time": format_duration(row["start_time_unix_nano"], row["end_time_unix_nano"]),
            "status": _codexos_status(row),
            "error_message": row["status_message"] if row["status_code"] == "ERROR" else None,
            "metadata": _json_object(row["metadata"]),
        }

    # ---- SQL ----
    def sql(self, query: str) -> duckdb.DuckDBPyRelation:
        """A DuckDB relation for ``query`` over views ``spans`` and ``runs`` (docs/schema.md).

        The relation reads the files when it runs: if compaction or TTL removes one of them in between, running it
        raises ``duckdb.IOException`` (make it again). ``sql_rows`` runs the query at once and retries for you.
        """
        return self._run_sql(query, lambda relation: relation)

    def sql_rows(self, query: str, limit: int | None = None) -> tuple[list[str], list[tuple]] | None:
        """Run ``query`` now: ``(column names, rows)``, at most ``limit`` rows; None for a statement without a
        result. A file that compaction or TTL removes while it runs makes it list the lake and run again."""

        def fetch(relation: duckdb.DuckDBPyRelation | None) -> tuple[list[str], list[tuple]] | None:
            if relation is None:
                return None
            if limit is not None:
                relation = relation.limit(limit)
            return list(relation.columns), relation.fetchall()

        return self._run_sql(query, fetch)

    def _run_sql(self, query: str, use: Callable[[Any], Any]) -> Any:
        named = tuple(t for t in (SPANS, RUNS) if re.search(rf"\b{t}\b", query, re.IGNORECASE)) or (SPANS, RUNS)
        for attempt in attempts_after_waits():
            con = self._reader.views(self.root, self.tenant_id, named)  # only the views the statement names
            try:
                return use(con.sql(query))
            except (duckdb.IOException, duckdb.InvalidInputException) as error:
                if attempt == LAST_ATTEMPT or not _vanished(str(error)):
                    raise  # a file removed after the views were made (TTL, compaction): make them again
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- TTL ----
    def cleanup_expired(
        self, now: dt.datetime | None = None, max_age_days: int | None = None, dry_run: bool = False
    ) -> dict[str, int]:
        """Delete every day partition whose TTL has passed; true counts of what went (``runlake.ttl``).

        A run started on UTC day D with ``ttl_days`` N is kept through day D+N and removed from day D+N+1.
        ``max_age_days``, when given, also removes anything older than that, whatever its own TTL.
        ``dry_run`` counts what would go and deletes nothing.
        """
        if self.root is None:
            _logger.warning("cleanup_expired() called but no state_url configured; nothing to do")
            return {"executions_deleted": 0, "nodes_deleted": 0}
        return expire(self.root, self._reader, self.tenant_id, now, max_age_days, dry_run)


__all__ = ["HistoryDB"]
