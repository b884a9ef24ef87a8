"""Live execution events (CodexOS WebSocket shapes) built from ingested span rows, fanned out to bounded queues."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque
from typing import Any

from opentelemetry.exporter.runlake.mapping import COL, NODE, RUN, RUN_COLUMNS

from .auth import (
    Principal,
)
from .history import format_duration, iso_time, whole_cents

_PREVIEW = 2000  # characters of input/output carried in WebSocket events
_RUN_SPAN, _RUN_IN, _RUN_OUT, _RUN_COST = (
    RUN_COLUMNS.index(c) for c in ("span_id", "input_tokens", "output_tokens", "cost_cents")
)


def _preview(text: str | None) -> str | None:
    if text is None or len(text) <= _PREVIEW:
        return text
    return text[:_PREVIEW] + "…"


class EventBuilder:
    """Turns stored span rows of one tenant into CodexOS execution events (called under the export lock)."""

    def __init__(self, max_tracked: int = 10_000) -> None:
        # runs announced as started -> (agent, user) when known; bounded, oldest forgotten
        self._started: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        # runs that ended -> (agent, user): a node that comes after its run (a step that ran on) is announced as
        # no new start and goes to the run's user and agent; bounded likewise
        self._ended: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        # trace -> its root run's id, for nodes stored without a run id (spans ingested without RunStartProcessor)
        self._trace_runs: OrderedDict[str, str] = OrderedDict()
        self._max = max_tracked

    def _known(self, run_id: str) -> tuple[str | None, str | None]:
        """(agent, user) remembered for a run in progress or ended, else (None, None)."""
        return self._started.get(run_id) or self._ended.get(run_id) or (None, None)

    def _announce(self, run_id: str, agent: str | None, user: str | None) -> bool:
        """Remember the run; True when it is new (neither in progress nor ended here before)."""
        if run_id in self._ended:
            return False
        known = self._started.get(run_id)
        if known is not None:
            self._started.move_to_end(run_id)
            self._started[run_id] = (agent or known[0], user or known[1])
            return False
        self._started[run_id] = (agent, user)
        if len(self._started) > self._max:
            self._started.popitem(last=False)
        return True

    def _end(self, run_id: str, agent: str | None, user: str | None) -> None:
        self._started.pop(run_id, None)
        self._ended[run_id] = (agent, user)
        self._ended.move_to_end(run_id)
        if len(self._ended) > self._max:
            self._ended.popitem(last=False)

    def _run_of(self, row: tuple, by_span: dict[str, tuple]) -> str:
        """A row's run: its own run id, else the run its parents lead to in this batch, else its trace's root run
        seen so far, else ``trace:<trace id>`` (its run not seen yet)."""
        c = COL
        if row[c["run_id"]]:
            return row[c["run_id"]]
        parent = by_span.get(row[c["parent_span_id"]])
        for _ in range(64):  # a parent chain, bounded (ids can repeat in hostile input)
            if parent is None:
                break
            if parent[c["span_type"]] == RUN and parent[c["run_id"]]:
                return parent[c["run_id"]]
            parent = by_span.get(parent[c["parent_span_id"]])
        return self._trace_runs.get(row[c["trace_id"]]) or "trace:" + row[c["trace_id"]]

    def events(self, rows: list[tuple], run_rows: list[tuple] = ()) -> list[dict[str, Any]]:
        """Events in time order. A node's agent is its own, else its run's (from this batch or an earlier one).

        ``run_rows``: the exporter's runs-index rows of the batch, whose totals (the run's own usage, else the sum of
        its nodes, from this batch and earlier ones) a run's completion reports, as history and logs do.
        """
        out: list[dict[str, Any]] = []
        c = COL
        run_totals = {run[_RUN_SPAN]: run for run in run_rows}
        runs_here: dict[str, tuple] = {}  # run id -> its run row in this batch
        by_span: dict[str, tuple] = {}
        for row in rows:
            by_span.setdefault(row[c["span_id"]], row)
            if row[c["span_type"]] == RUN and row[c["run_id"]]:
                runs_here[row[c["run_id"]]] = row
                trace = row[c["trace_id"]]
                if row[c["parent_span_id"]] is None or trace not in self._trace_runs:  # the root run wins
                    self._trace_runs[trace] = row[c["run_id"]]
                    self._trace_runs.move_to_end(trace)
                    if len(self._trace_runs) > self._max:
                        self._trace_runs.popitem(last=False)
        for row in sorted(rows, key=lambda r: r[c["end_time_unix_nano"]] or r[c["start_time_unix_nano"]]):
            span_type = row[c["span_type"]]
            if span_type not in (RUN, NODE):
                continue
            run_id = self._run_of(row, by_span)
            run_row = runs_here.get(run_id)
            agent, user = row[c["agent_name"]] or row[c["agent_id"]], row[c["user_id"]]
            if run_row is not None:
                agent = agent or run_row[c["agent_name"]] or run_row[c["agent_id"]]
                user = user or run_row[c["user_id"]]
            if not agent or not user:
                known_agent, known_user = self._known(run_id)
                agent, user = agent or known_agent, user or known_user
            base = {
                "tenant_id": row[c["tenant_id"]],
                "run_id": run_id,
                "trace_id": row[c["trace_id"]],
                "session_id": row[c["session_id"]],
                "user_id": user,
                "agent_id": agent,
            }
            start, end = row[c["start_time_unix_nano"]], row[c["end_time_unix_nano"]]
            failed = row[c["status_code"]] == "ERROR"
            totals = run_totals.get(row[c["span_id"]]) if span_type == RUN else None
            if totals is not None:
                tokens_in, tokens_out, cost = totals[_RUN_IN], totals[_RUN_OUT], totals[_RUN_COST]
            else:
                tokens_in, tokens_out, cost = row[c["input_tokens"]], row[c["output_tokens"]], row[c["cost_cents"]]
            tokens = (tokens_in or 0) + (tokens_out or 0)
            if self._announce(run_id, agent, user):
                if span_type == RUN:
                    run_row = row
                if run_row is not None:  # the run's own row, in this batch
                    run_start = run_row[c["start_time_unix_nano"]]
                    started = {"type": "execution_started", **base, "timestamp": iso_time(run_start)}
                    started["data"] = {"started_at": iso_time(run_start), "input": _preview(run_row[c["input"]])}
                else:  # first seen through a node, its run not arrived yet
                    started = {"type": "execution_started", **base, "timestamp": iso_time(start)}
                    started["data"] = {"started_at": None, "input": None}
                out.append(started)
            if span_type == NODE:
                data = {
                    "id": row[c["node_id"]],
                    "type": row[c["node_type"]],
                    "status": "failed" if failed else "completed",
                    "time": format_duration(start, end),
                    "error_message": row[c["status_message"]] if failed else None,
                    "tokens_used": tokens,
                    "cost_cents": whole_cents(cost),
                    "output": _preview(row[c["output"]]),
                }
                out.append({"type": "node_executed", **base, "timestamp": iso_time(end), "data": data})
            else:
                self._end(run_id, agent, user)
                data = {
                    "status": "failed" if failed else "completed",
                    "started_at": iso_time(start),
                    "completed_at": iso_time(end),
                    "duration": format_duration(start, end),
                    "output": _preview(row[c["output"]]),
                    "error_message": row[c["status_message"]] if failed else None,
                    "tokens_used": tokens,
                    "cost_cents": whole_cents(cost),
                }
                kind = "execution_failed" if failed else "execution_completed"
                out.append({"type": kind, **base, "timestamp": iso_time(end), "data": data})
        return out


class Subscriber:
    """One WebSocket connection: a bounded queue (oldest dropped and counted) and what it may see."""

    def __init__(self, principal: Principal, filters: dict[str, str], maxlen: int) -> None:
        self.principal = principal
        self.filters = filters
        self.queue: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self.dropped = 0
        self.unreported_drops = 0
        self.ready = asyncio.Event()

    def visible(self, event: dict[str, Any]) -> bool:
        p = self.principal
        if p.tenant_id is not None and event["tenant_id"] != p.tenant_id:
            return False
        if p.read_user is not None and event["user_id"] != p.read_user:
            return False
        return all(event.get(k) == v for k, v in self.filters.items())

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue the event; True when the oldest one had to make room (a drop)."""
        full = len(self.queue) == self.queue.maxlen
        if full:
            self.dropped += 1
            self.unreported_drops += 1
        self.queue.append(event)
        self.ready.set()
        return full


class EventHub:
    """Fans events out to the WebSocket subscribers that may see them (runs on the event loop)."""

    MAX_COUNTED_TENANTS = 10_000  # with keys, a tenant per key; without (--no-auth), spans name any tenant they like

    def __init__(self) -> None:
        self.subscribers: set[Subscriber] = set()
        self.published_by_tenant: dict[str, int] = {}  # per tenant, for the first MAX_COUNTED_TENANTS
        self.published_uncounted = 0  # events of tenants past that: in the total, not per tenant
        # events dropped for slow clients since the start, per tenant of the connection (None: no keys), like
        # published: the figure stays when the clients that dropped them go
        self.dropped_by_tenant: dict[str | None, int] = {}
        self.dropped_uncounted = 0

    def publish(self, events: list[dict[str, Any]]) -> None:
        counts = self.published_by_tenant
        for event in events:
            tenant = event["tenant_id"]
            if tenant in counts or len(counts) < self.MAX_COUNTED_TENANTS:
                counts[tenant] = counts.get(tenant, 0) + 1
            else:
                self.published_uncounted += 1
        dropped = self.dropped_by_tenant
        for sub in list(self.subscribers):
            lost = 0
            for event in events:
                if sub.visible(event) and sub.offer(event):
                    lost += 1
            if lost:
                tenant = sub.principal.tenant_id
                if tenant in dropped or len(dropped) < self.MAX_COUNTED_TENANTS:
                    dropped[tenant] = dropped.get(tenant, 0) + lost
                else:
                    self.dropped_uncounted += lost

    @property
    def dropped(self) -> int:
        """Events dropped for slow clients since the start, connected or gone."""
        return sum(self.dropped_by_tenant.values()) + self.dropped_uncounted

    def counters(self, tenant: str | None) -> dict[str, int]:
        """Connections and events of one tenant (None: all), for ``/api/v1/status``."""
        subs = [s for s in self.subscribers if tenant is None or s.principal.tenant_id == tenant]
        return {
            "connections": len(subs),
            "events_published": sum(self.published_by_tenant.values()) + self.published_uncounted
            if tenant is None
            else self.published_by_tenant.get(tenant, 0),
            "events_dropped": self.dropped if tenant is None else self.dropped_by_tenant.get(tenant, 0),
        }
