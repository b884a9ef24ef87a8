"""B30: 30 days, 100,000 runs, ~1.1 million spans: runlake beside the stores it replaces.

    python benchmarks/bench_b30.py [--quick] [--runs N] [--reps R] [--workdir DIR] [--keep]
                                   [--budget S] [--min-session-rows N] [--other-min-session-rows N] [--sql-before]

Method and figures: docs/performance-b30.md. The full run takes ~18 min on 2 cores (--quick: under a minute);
give --workdir a folder on a disk with fast metadata operations (printed at start).

One process run measures, on the same rows:

* runlake: ``RunlakeSpanExporter.export`` in batches of 512 mixed-session spans, as an ingest server receives
  them; queries through ``HistoryDB``; before and after ``runlake.compact.compact``; TTL through
  ``HistoryDB.cleanup_expired``;
* (a) SQLite with the CodexOS schema (``executions`` + ``execution_nodes``) and its documented indexes;
* (b) a PraisonAI-style key-value store in SQLite (``run:{session}:{run}``, ``trace:{id}``, ``span:{id}`` JSON
  blobs; ``get_runs`` / ``get_traces`` by prefix scan + one ``get`` per key, as PraisonAIDB does);
* (c) OTLP JSON lines written by the stock ``FileSpanExporter`` (size only; a sample of the batches is
  written and the size extrapolated).

Spans are ``ReadableSpan`` objects built directly (the attributes runlake's own ``run``/``turn``/``node``
set), in a generator that keeps only the sessions in flight, so memory stays bounded. Every store gets the
same deterministic stream in its own pass (its own time and peak memory). An llm span's input is the session's
conversation as a JSON messages list (``Chat``), as chat-API instrumentations record it. Nothing here is a test.
"""

from __future__ import annotations

import argparse
import bisect
import datetime as dt
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import (  # noqa: E402
    Approx,
    Chat,
    differing_fields,
    first_difference,
    fmt_bytes,
    fmt_time,
    median,
    print_table,
)
from common import comparable_text as _text  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import Event, ReadableSpan  # noqa: E402
from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: E402
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags  # noqa: E402

BATCH = 512  # what a BatchSpanProcessor hands to an exporter
NS = 1_000_000_000
DAY_NS = 86_400 * NS

# ---------------------------------------------------------------------------------------------------------------
# workload
# ---------------------------------------------------------------------------------------------------------------
TENANTS = (("acme", 0.55), ("globex", 0.30), ("initech", 0.15))
USERS_PER_TENANT = 200
AGENTS = common.AGENTS  # 8 agents
AGENT_WEIGHTS = (5, 3, 2, 2, 4, 2, 1, 1)
TOOLS = common.TOOLS
MODELS = common.MODELS
TTL_DAYS = 30  # every run keeps the CodexOS default, so "10 of 30 days" expire at one `now`
CONTEXT_CHARS = 24_000  # an llm call's messages are trimmed to this many characters (the model's window)
_KINDS = {"llm": "LLM", "tool": "TOOL", "retrieval": "RETRIEVER", "router": "CHAIN"}
_OPS = {"llm": "chat", "tool": "execute_tool", "retrieval": "retrieval"}


class Corpus:
    """Prose-like text, fast: slices of one long Zipf-vocabulary text (``common.TextMaker``'s words).

    ``TextMaker.text`` costs ~0.1 µs per byte, far too slow for the ~1.5 GB of fresh text a pass needs; slicing a
    24 MB corpus at random offsets costs ~1 µs and keeps the same statistics. Any two slices overlap with a
    probability of about (their length / corpus size), so a 1 MB Parquet page sees ~4% repeated text at most (apart
    from the conversation history an llm prompt re-sends on purpose).
    """

    def __init__(self, rng: random.Random, nbytes: int) -> None:
        maker = common.TextMaker(rng)
        words = rng.choices(maker.words, cum_weights=maker.cum, k=nbytes // 6)
        for i in range(0, len(words), rng.randint(9, 16)):  # sentences
            words[i] = words[i].capitalize()
            if i:
                words[i - 1] += "."
        self.text = " ".join(words)
        self.rng = rng

    def take(self, n: int) -> str:
        text = self.text
        start = self.rng.randrange(0, len(text) - n - 64)
        start = text.find(" ", start) + 1
        return text[start : start + n]


@dataclass
class Workload:
    """Deterministic description of the 30-day workload; ``spans()`` streams it in arrival order."""

    runs: int = 100_000
    days: int = 30
    concurrency: int = 512  # sessions in flight at the ingest server at once
    seed: int = 30
    end_day: dt.date = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).date())
    corpus_bytes: int = 24 << 20

    def __post_init__(self) -> None:
        started = time.perf_counter()
        rng = random.Random(self.seed)
        self.rng = rng
        self.corpus = Corpus(rng, self.corpus_bytes)
        self.docs = [self.corpus.take(rng.randint(300, 900)) for _ in range(3000)]  # retrieval knowledge base
        self.prompts = {a: "You are " + a + ". " + self.corpus.take(rng.randint(500, 1400)) for a in AGENTS}
        self.resources = {
            t: Resource.create(
                {"service.name": f"{t}-agents", "service.version": "1.4.2", "deployment.environment": "prod"}
            )
            for t, _ in TENANTS
        }
        self.scope = InstrumentationScope("runlake", "0.1.0")
        # sessions: run counts and start times, decided up front (a few hundred KB for 20k sessions)
        counts: list[int] = []
        while sum(counts) < self.runs:
            counts.append(min(rng.randint(1, 9), self.runs - sum(counts)))
        first_day_ns = (
            dt.datetime.combine(self.end_day, dt.time(), dt.timezone.utc).timestamp() - self.days * 86400
        ) * NS
        self.first_day_ns = int(first_day_ns)
        starts = []
        for _ in counts:
            day = rng.randrange(self.days)
            hour = min(23.2, max(0.0, rng.gauss(13.5, 4.0)))  # busy in the (UTC) working day
            starts.append(self.first_day_ns + day * DAY_NS + int(hour * 3600 * NS) + rng.randrange(3600 * NS))
        starts.sort()
        self.sessions = list(zip(starts, counts))
        user_weights = [1.0 / (r + 1) ** 0.8 for r in range(USERS_PER_TENANT)]
        self._user_cum = _cumulative(user_weights)
        self._tenant_cum = _cumulative([w for _, w in TENANTS])
        self._agent_cum = _cumulative(AGENT_WEIGHTS)
        self.setup_s = time.perf_counter() - started  # corpus, knowledge base, prompts, session plan

    # ---- helpers ----
    def _pick(self, items: Any, cum: list[float]) -> Any:
        return items[bisect.bisect(cum, self.rng.random() * cum[-1])]

    def _ids(self) -> int:
        return self.rng.getrandbits(64) or 1

    # ---- one session ----
    def session_spans(self, index: int) -> Iterator[ReadableSpan]:
        """Every span of session ``index``, in the order they end (the order an exporter sends them), made one run
        at a time as they are consumed: a session in flight holds its conversation and its current run's spans.
        (A run starts after the previous one ended, so sorting each run's spans sorts the session's.)"""
        rng = self.rng
        start, n_runs = self.sessions[index]
        tenant = self._pick([t for t, _ in TENANTS], self._tenant_cum)
        user = f"{tenant}-user-{self._pick(range(USERS_PER_TENANT), self._user_cum):04d}"
        agent = self._pick(AGENTS, self._agent_cum)
        session_id = f"sess-{index:06d}-{rng.getrandbits(40):010x}"
        chat = Chat(self.prompts[agent], CONTEXT_CHARS)  # the conversation: lives as long as the session
        t = start
        for _ in range(n_runs):
            spans: list[ReadableSpan] = []
            t = self._run(spans, t, tenant, user, agent, session_id, chat) + int(rng.uniform(20, 600) * NS)
            spans.sort(key=lambda s: s.end_time)
            yield from spans

    def _run(self, out: list, t0: int, tenant: str, user: str, agent: str, session_id: str, chat: Chat) -> int:
        rng, corpus = self.rng, self.corpus
        trace_id = self.rng.getrandbits(128) or 1
        run_sid = self._ids()
        run_id = f"{run_sid:016x}"
        inherited = {
            "gen_ai.conversation.id": session_id,
            "session.id": session_id,
            "runlake.run.id": run_id,
            "runlake.ttl_days": TTL_DAYS,
            "user.id": user,
            "runlake.tenant.id": tenant,
        }
        user_text = corpus.take(rng.randint(100, 800))
        chat.begin_run(user_text)
        answer = None  # the run's answer: its last llm output
        run_ctx = SpanContext(trace_id, run_sid, False, TraceFlags(1))
        resource = self.resources[tenant]
        t = t0 + int(rng.uniform(0.002, 0.02) * NS)
        turn_ids = []
        for _ in range(rng.choice((1, 2))):
            turn_sid = self._ids()
            turn_ctx = SpanContext(trace_id, turn_sid, False, TraceFlags(1))
            turn_start = t
            turn_id = f"turn-{rng.getrandbits(32):08x}"
            turn_ids.append(turn_id)
            t += int(rng.uniform(0.001, 0.01) * NS)
            # router
            t, _ = self._node(
                out,
                turn_ctx,
                resource,
                inherited,
                t,
                "router",
                "intent_router",
                "Route: " + user_text[:200],
                json.dumps({"route": rng.choice(TOOLS), "confidence": round(rng.random(), 3)}),
                rng.lognormvariate(-3.5, 0.5),
            )
            if rng.random() < 0.6:
                k = rng.randint(2, 4)
                found = "\n---\n".join(rng.choice(self.docs) for _ in range(k))
                chat.add("system", "Context:\n" + found[: rng.randint(200, 800)])  # what the prompt quotes of it
                t, _ = self._node(
                    out,
                    turn_ctx,
                    resource,
                    inherited,
                    t,
                    "retrieval",
                    "retrieve_docs",
                    corpus.take(rng.randint(60, 200)),
                    found,
                    rng.lognormvariate(-2.0, 0.6),
                )
            steps = rng.randint(1, 4)
            for step in range(steps):  # the ReAct loop: llm → the tool it called → llm …, the last llm answers
                tool = rng.choice(TOOLS) if step < steps - 1 else None
                text = corpus.take(rng.randint(100, 1200))
                t, failed = self._node(
                    out,
                    turn_ctx,
                    resource,
                    inherited,
                    t,
                    "llm",
                    "chat_completion",
                    chat.prompt(),
                    text,
                    rng.lognormvariate(0.2, 0.6),
                )
                if failed:  # rate limited: no answer, no tool call; the loop goes on
                    continue
                answer = text
                if tool is None:
                    chat.add("assistant", text)
                    continue
                args = json.dumps({"query": corpus.take(rng.randint(40, 150)), "k": 5})
                call_id = f"call_{rng.getrandbits(48):012x}"
                chat.add(
                    "assistant",
                    text,
                    tool_calls=[{"id": call_id, "type": "function", "function": {"name": tool, "arguments": args}}],
                )
                result = corpus.take(rng.randint(150, 1500))
                t, failed = self._node(
                    out,
                    turn_ctx,
                    resource,
                    inherited,
                    t,
                    "tool",
                    tool,
                    args,
                    result,
                    rng.lognormvariate(-1.8, 1.0),
                )
                chat.add("tool", f"TimeoutError: {tool} timed out" if failed else result, tool_call_id=call_id)
            t += int(rng.uniform(0.001, 0.02) * NS)
            attrs = dict(inherited)
            attrs.update(
                {
                    "runlake.span.type": "turn",
                    "runlake.turn.id": turn_id,
                    "runlake.runtime.id": "native",
                    "openinference.span.kind": "CHAIN",
                }
            )
            out.append(
                ReadableSpan(
                    f"turn {turn_id}",
                    turn_ctx,
                    run_ctx,
                    resource,
                    attrs,
                    kind=SpanKind.INTERNAL,
                    instrumentation_scope=self.scope,
                    start_time=turn_start,
                    end_time=t,
                )
            )
        t += int(rng.uniform(0.005, 0.05) * NS)
        attrs = {
            "runlake.span.type": "run",
            "gen_ai.operation.name": "invoke_agent",
            "openinference.span.kind": "AGENT",
            "gen_ai.agent.name": agent,
            "gen_ai.agent.id": agent,
            **inherited,
            "input.value": user_text,
            "runlake.metadata": json.dumps({"channel": rng.choice(("web", "api", "slack")), "version": "1.4.2"}),
        }
        status, events = Status(StatusCode.UNSET), ()
        if rng.random() < 0.02 or answer is None:  # gave up, or every llm call of the run was rate limited
            message = "agent gave up: " + corpus.take(40)
            status, events = _failure(attrs, "RuntimeError", message, t)
            chat.end_run(None)
        else:
            attrs["output.value"] = answer
            chat.end_run(answer)
        out.append(
            ReadableSpan(
                f"invoke_agent {agent}",
                run_ctx,
                None,
                resource,
                attrs,
                events=events,
                kind=SpanKind.INTERNAL,
                instrumentation_scope=self.scope,
                status=status,
                start_time=t0,
                end_time=t,
            )
        )
        return t

    def _node(
        self,
        out: list,
        parent: SpanContext,
        resource: Resource,
        inherited: dict,
        t: int,
        node_type: str,
        node_id: str,
        input_text: str,
        output_text: str,
        seconds: float,
    ) -> tuple[int, bool]:
        """Append one node span; returns (when the next step starts, whether this node failed)."""
        rng = self.rng
        sid = self._ids()
        ctx = SpanContext(parent.trace_id, sid, False, TraceFlags(1))
        attrs = dict(inherited)
        attrs.update(
            {
                "runlake.span.type": "node",
                "runlake.node.id": node_id,
                "runlake.node.type": node_type,
                "openinference.span.kind": _KINDS[node_type],
            }
        )
        op = _OPS.get(node_type)
        if op:
            attrs["gen_ai.operation.name"] = op
        if node_type == "tool":
            attrs["gen_ai.tool.name"] = node_id
        attrs["input.value"] = input_text
        end = t + max(int(seconds * NS), 100_000)
        status, events = Status(StatusCode.UNSET), ()
        fail = (node_type == "tool" and rng.random() < 0.03) or (node_type == "llm" and rng.random() < 0.01)
        if node_type == "llm":
            model, provider = rng.choice(MODELS)
            tin, tout = len(input_text) // 4 + rng.randint(0, 200), len(output_text) // 4 + rng.randint(0, 50)
            attrs.update(
                {
                    "gen_ai.request.model": model,
                    "llm.model_name": model,
                    "gen_ai.provider.name": provider,
                    "gen_ai.usage.input_tokens": tin,
                    "llm.token_count.prompt": tin,
                    "gen_ai.usage.output_tokens": tout,
                    "llm.token_count.completion": tout,
                    "llm.token_count.total": tin + tout,
                    "runlake.cost.cents": round(tin * 0.00015 + tout * 0.0006, 4),
                }
            )
        if fail:
            kind = "TimeoutError" if node_type == "tool" else "RateLimitError"
            status, events = _failure(attrs, kind, f"{node_id}: {kind} after {seconds:.1f}s", end)
        else:
            attrs["output.value"] = output_text
        name = f"{op or node_type} {node_id}"
        out.append(
            ReadableSpan(
                name,
                ctx,
                parent,
                resource,
                attrs,
                events=events,
                kind=SpanKind.INTERNAL,
                instrumentation_scope=self.scope,
                status=status,
                start_time=t,
                end_time=end,
            )
        )
        return end + int(rng.uniform(0.0005, 0.01) * NS), fail

    # ---- the stream ----
    def spans(self) -> Iterator[ReadableSpan]:
        """All spans in arrival order: ``concurrency`` sessions in flight, their spans interleaved at random.

        Deterministic: two calls yield identical spans (ids, times, text).
        """
        self.rng.seed(self.seed * 7919 + 1)
        sessions = (self.session_spans(index) for index in range(len(self.sessions)))  # made as consumed
        yield from common.iter_interleaved(sessions, self.concurrency, self.rng)

    def batches(self, size: int = BATCH) -> Iterator[list[ReadableSpan]]:
        batch: list[ReadableSpan] = []
        for span in self.spans():
            batch.append(span)
            if len(batch) == size:
                yield batch
                batch = []
        if batch:
            yield batch


def _failure(attrs: dict, kind: str, message: str, at: int) -> tuple[Status, tuple[Event, ...]]:
    attrs["error.type"] = kind
    trace_text = f'Traceback (most recent call last):\n  File "agent.py", line 88, in step\n{kind}: {message}'
    event = Event(
        "exception",
        {
            "exception.type": kind,
            "exception.message": message,
            "exception.stacktrace": trace_text,
            "exception.escaped": "False",
        },
        timestamp=at,
    )
    return Status(StatusCode.ERROR, f"{kind}: {message}"), (event,)


def _cumulative(weights: Any) -> list[float]:
    out, total = [], 0.0
    for w in weights:
        total += w
        out.append(total)
    return out


# ---------------------------------------------------------------------------------------------------------------
# measuring: phases, peak memory
# ---------------------------------------------------------------------------------------------------------------
def _proc_status() -> dict[str, int]:
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def _trim() -> None:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Peak:
    """Peak resident memory growth of a phase: ``VmHWM − VmRSS at the start`` after resetting the kernel's
    high-water mark (``/proc/self/clear_refs`` = 5), i.e. the most memory the phase held at once above what the
    process already had. Falls back to ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` deltas (which only show
    growth past the process's earlier peak) where /proc is not writable."""

    method = "VmHWM after clear_refs (Linux /proc)"

    def __init__(self) -> None:
        self.start = 0
        self.proc = True
        self.peak: int | None = None

    def __enter__(self) -> Peak:
        gc.collect()
        _trim()  # hand freed heap back to the OS, so the phase's growth is not hidden in pages freed earlier
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = _proc_status()["VmRSS"]
        except (OSError, KeyError):
            import resource

            self.proc = False
            Peak.method = "ru_maxrss delta (resource.getrusage)"
            self.start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.proc:
            self.peak = max(0, _proc_status().get("VmHWM", 0) - self.start)
        else:
            import resource

            self.peak = max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start)


def tree_size(path: Path, suffix: str | None = None) -> tuple[int, int]:
    """(files, bytes) under ``path``; only names ending in ``suffix`` and not hidden when given."""
    files = size = 0
    stack = [path]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif suffix is None or (e.name.endswith(suffix) and not e.name.startswith((".", "_"))):
                        files += 1
                        size += e.stat(follow_symlinks=False).st_size
        except FileNotFoundError:
            continue
    return files, size


def lake_size(root: Path) -> dict[str, tuple[int, int]]:
    return {t: tree_size(root / t, ".parquet") for t in ("spans", "runs")}


# ---------------------------------------------------------------------------------------------------------------
# ingest: one pass of the same stream per store
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Ingest:
    name: str
    spans: int = 0
    busy_s: float = 0.0  # time inside the store's own calls (export / insert / close)
    wall_s: float = 0.0  # the whole pass, including building the spans
    peak: int | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.spans / self.busy_s if self.busy_s else 0.0


def ingest_pass(
    name: str,
    work: Workload,
    sink: Callable[[list], None],
    finish: Callable[[], None],
    every: int = 1,
    observe: Callable[[list], None] | None = None,
) -> Ingest:
    """Stream every batch; hand every ``every``-th batch to ``sink`` (timed), then ``finish`` (timed)."""
    result = Ingest(name)
    perf = time.perf_counter
    started = perf()
    with Peak() as peak:
        for i, batch in enumerate(work.batches()):
            if i % every:
                continue
            if observe is not None:
                observe(batch)
            t = perf()
            sink(batch)
            result.busy_s += perf() - t
            result.spans += len(batch)
        t = perf()
        finish()
        result.busy_s += perf() - t
    result.wall_s = perf() - started
    result.peak = peak.peak
    return result


def ingest_runlake(
    work: Workload, root: Path, flush_every: int, min_session_rows: int, name: str = "runlake"
) -> tuple[Ingest, dict]:
    """The real exporter, batches of 512; ``force_flush`` every ``flush_every`` spans (see docs/performance-b30.md:
    the exporter's 5 s flush at a given ingest rate, made deterministic), ``shutdown`` at the end.
    ``min_session_rows``: sessions with fewer rows in a flush share one file per day (what ``runlake serve`` does)."""
    from opentelemetry.exporter.runlake import RunlakeSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    exporter = RunlakeSpanExporter(root, background_flush=False, min_session_rows=min_session_rows)
    state = {"since": 0, "failed": 0}

    def sink(batch: list) -> None:
        if exporter.export(batch) is not SpanExportResult.SUCCESS:
            state["failed"] += 1
        state["since"] += len(batch)
        if state["since"] >= flush_every:
            exporter.force_flush()
            state["since"] = 0

    result = ingest_pass(name, work, sink, exporter.shutdown)
    stats = dict(exporter.stats, failed_exports=state["failed"])
    return result, stats


# ---------------------------------------------------------------------------------------------------------------
# queries
# ---------------------------------------------------------------------------------------------------------------
P95_VIEW = (
    "SELECT node_type, quantile_cont(duration_ms, 0.95) AS p95_ms, count(*) AS n FROM spans "
    "WHERE span_type = 'node' GROUP BY node_type ORDER BY node_type"
)
_STATS_COLUMNS = (
    "count(*) AS executions, count(*) FILTER (WHERE status_code = 'ERROR') AS failed, "
    "count(*) FILTER (WHERE end_time_unix_nano IS NOT NULL AND status_code != 'ERROR') / count(*) AS success_rate, "
    "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens, sum(cost_cents) AS cost_cents, "
    "quantile_cont((end_time_unix_nano - start_time_unix_nano) / 1e6, 0.5) AS p50_ms, "
    "quantile_cont((end_time_unix_nano - start_time_unix_nano) / 1e6, 0.95) AS p95_ms"
)


def stats_view_sql(user: str | None, since: dt.datetime, until: dt.datetime) -> str:
    """The same statistics through ``HistoryDB.sql`` over the ``runs`` view (no parameters there: literals), of the
    runs started in ``[since, until]``."""
    cols = (
        "count(*) AS executions, count(*) FILTER (WHERE status_code = 'ERROR') AS failed, "
        "count(*) FILTER (WHERE end_time IS NOT NULL AND status_code != 'ERROR') / count(*) AS success_rate, "
        "sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0)) AS tokens, sum(cost_cents) AS cost_cents, "
        "quantile_cont(duration_ms, 0.5) AS p50_ms, quantile_cont(duration_ms, 0.95) AS p95_ms"
    )
    when = (
        f"start_time >= TIMESTAMP '{since.strftime('%Y-%m-%d %H:%M:%S')}' "
        f"AND start_time <= TIMESTAMP '{until.strftime('%Y-%m-%d %H:%M:%S')}'"
    )
    if user is not None:
        return f"SELECT {cols} FROM runs WHERE user_id = '{user.replace(chr(39), chr(39) * 2)}' AND {when}"
    return f"SELECT user_id, {cols} FROM runs WHERE {when} GROUP BY user_id ORDER BY user_id"


@dataclass
class Keys:
    sessions: list[str]
    runs: list[str]
    users: list[str]
    agents: list[str]
    skips: list[int]


def _rounded_sum_slack(n: int) -> float:
    """How far a sum of ``n`` costs each rounded to whole cents ((a)'s INTEGER column) may lie from the exact sum
    without a wrong cost: each rounding error is uniform in ±0.5, so the sum's spread is sqrt(n / 12); 5 of those
    (a false alarm about once in two million comparisons). The hard bound, 0.5 × n, let a cost 30 % off pass."""
    return max(0.5, 5 * (n / 12) ** 0.5)


def pick_keys(root: Path, count: int, seed: int = 3) -> Keys:
    """Query parameters drawn from the data: sessions with ≥ 2 runs, runs with nodes, users, agents, offsets."""
    import pyarrow.dataset as ds
    from opentelemetry.exporter.runlake.layout import RUNS, table_files

    table = ds.dataset([str(p) for p in table_files(root, RUNS)], format="parquet").to_table(
        columns=["session_id", "run_id", "user_id", "agent_name", "node_count"]
    )
    rng = random.Random(seed)
    sessions = table.column("session_id").to_pylist()
    per_session: dict[str, int] = {}
    for s in sessions:
        per_session[s] = per_session.get(s, 0) + 1
    multi = sorted(s for s, n in per_session.items() if n >= 2)
    runs = sorted(r for r, n in zip(table.column("run_id").to_pylist(), table.column("node_count").to_pylist()) if n)
    users = sorted(set(table.column("user_id").to_pylist()))
    agents = sorted(set(table.column("agent_name").to_pylist()))
    return Keys(
        sessions=rng.sample(multi, min(count, len(multi))),
        runs=rng.sample(runs, min(count, len(runs))),
        users=rng.sample(users, min(count, len(users))),
        agents=[agents[i % len(agents)] for i in range(count)],
        skips=[rng.choice((0, 20, 50, 100, 200)) for _ in range(count)],
    )


def _cycle(items: list, i: int) -> Any:
    return items[i % len(items)]


# ---------------------------------------------------------------------------------------------------------------
# same answers: what the "same answer" column compares
# ---------------------------------------------------------------------------------------------------------------
# A signature is a dict {field: value} of what a user reads in one answer, in the answer's order. A call agrees with
# runlake's when every field both signatures hold is equal; a field one of them cannot give is left out (each
# query's note says which). Numbers that a store keeps or shows to a coarser resolution are ``Approx``.
MS = 1e-3  # seconds


def _shown_seconds(text: str | None) -> Approx:
    """A duration as runlake's CodexOS shapes show it ("0.035s" below one second, else "45.2s" / "45s")."""
    if text is None:
        return Approx(None)
    seconds = float(text.rstrip("s"))
    return Approx(seconds, 0.0005 if seconds < 1 else 0.05)


_OK_FAILED = {"ok": "completed", "error": "failed"}  # PraisonAI record status -> CodexOS status
_A, _B = "(a)", "(b)"


def runs_signature(system: str, result: Any) -> dict[str, Any]:
    """get_runs: every store returns PraisonAI's run dicts; all of them compared, newest first, times to the ms."""
    return {
        "run_id": [r["run_id"] for r in result],
        "status": [r["status"] for r in result],
        "input": [_text(r["input_content"]) for r in result],
        "output": [_text(r["output_content"]) for r in result],
        "started_at": [Approx(r["started_at"], MS / 2) for r in result],
        "ended_at": [Approx(r["ended_at"], MS / 2) for r in result],
    }


def logs_signature(system: str, result: Any) -> dict[str, Any]:
    """get_logs: per node (oldest first) id, type, status, input, output, duration; and (runlake, (a)) the run's
    final output, tokens and cost. (b) returns its span records (no summary): their attributes are read."""
    nodes = result["nodes"]
    if system.startswith(_B):
        attrs = [n["attributes"] for n in nodes]
        return {
            "node_id": [a.get("runlake.node.id") for a in attrs],
            "type": [a.get("runlake.node.type") for a in attrs],
            "status": [_OK_FAILED.get(n["status"], n["status"]) for n in nodes],
            "input": [_text(a.get("input.value")) for a in attrs],
            "output": [_text(a.get("output.value")) for a in attrs],
            "duration": [Approx(n["ended_at"] - n["started_at"], 1e-6) for n in nodes],
        }
    if system.startswith(_A):  # "0.035s" from the INTEGER duration_ms column: truncated to the ms
        durations = [Approx(float(n["time"].rstrip("s")), MS) for n in nodes]
    else:
        durations = [_shown_seconds(n["time"]) for n in nodes]
    return {
        "node_id": [n["id"] for n in nodes],
        "type": [n["type"] for n in nodes],
        "status": [n["status"] for n in nodes],
        "input": [_text(n["input"]) for n in nodes],
        "output": [_text(n["output"]) for n in nodes],
        "duration": durations,
        "final_output": _text(result["final_output"]),
        "tokens_used": result["summary"]["tokens_used"],
        "cost_cents": result["summary"]["cost_cents"],
    }


def traces_signature(system: str, result: Any) -> dict[str, Any]:
    """get_traces: trace and run ids in order, statuses, spans per trace. (a) has no trace id (its ``trace_id`` is
    the run id) and keeps the run itself in ``executions``, not among the trace's nodes: its span count + 1 is
    compared (one run per trace here). (b)'s trace records hold no spans (PraisonAI fills ``spans: []``)."""
    out: dict[str, Any] = {}
    if not system.startswith(_A):
        out["trace_id"] = [t["trace_id"] for t in result]
    out["run_id"] = [t["run_id"] for t in result]
    out["status"] = [t["status"] for t in result]
    if not system.startswith(_B):
        out["spans"] = [len(t["spans"]) + (1 if system.startswith(_A) else 0) for t in result]
    return out


def _second(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def history_signature(system: str, result: Any) -> dict[str, Any]:
    """get_history: run ids in order, status, start (to the second, as runlake shows it), duration (as shown:
    ± half its last digit); with (a) also input, output, node count, tokens, cost. (b) reads its trace records:
    no input, output or totals in them."""
    if system.startswith(_B):
        return {
            "run_id": [t["run_id"] for t in result],
            "status": [_OK_FAILED.get(t["status"], t["status"]) for t in result],
            "started_at": [_second(t["started_at"]) for t in result],
            "duration": [Approx(t["ended_at"] - t["started_at"], 1e-6) for t in result],
        }
    if system.startswith(_A):  # "45.2s" always one decimal; started_at "YYYY-MM-DD HH:MM:SS.ffffff"
        durations = [Approx(float(h["duration"].rstrip("s")), 0.05) for h in result]
    else:
        durations = [_shown_seconds(h["duration"]) for h in result]
    return {
        "run_id": [h["run_id"] for h in result],
        "status": [h["status"] for h in result],
        "started_at": [h["started_at"][:19].replace("T", " ") for h in result],
        "duration": durations,
        "input": [_text(h["input"]) for h in result],
        "output": [_text(h["output"]) for h in result],
        "node_count": [h["node_count"] for h in result],
        "tokens_used": [h["tokens_used"] for h in result],
        "cost_cents": [h["cost_cents"] for h in result],
    }


_STATS_FIELDS = ("executions", "failed", "tokens", "cost_cents", "p50_ms", "p95_ms")


def _statistics(system: str, figures: Any) -> dict[str, Any]:
    """One set of statistics: executions, failed, tokens, cost, p50/p95 of run durations (to 0.01 ms).

    Cost: runlake's service shows whole cents of the sum (± 0.5); ``HistoryDB.sql`` the sum itself; (a) sums whole
    cents per execution (CodexOS's INTEGER ``cost_cents``), so it may differ by its rounding (``_rounded_sum_slack``).
    (b) has no tokens or cost (only in its span records)."""
    if isinstance(figures, dict) and "total_executions" in figures:  # ExecutionHistoryService
        values = (
            figures["total_executions"],
            figures["failed_executions"],
            figures["tokens_used"],
            Approx(figures["cost_cents"], 0.5),
            figures["p50_duration_ms"],
            figures["p95_duration_ms"],
        )
    elif isinstance(figures, tuple):  # a HistoryDB.sql row: executions, failed, success_rate, tokens, cost, p50, p95
        values = (figures[0], figures[1], figures[3], Approx(figures[4]), figures[5], figures[6])
    else:  # b30_baselines._stats
        n = figures["executions"]
        values = (
            n,
            figures["failed"],
            figures["tokens"],
            Approx(figures["cost_cents"], _rounded_sum_slack(n)),
            figures["p50_ms"],
            figures["p95_ms"],
        )
    out = dict(zip(_STATS_FIELDS, values))
    out["p50_ms"], out["p95_ms"] = Approx(out["p50_ms"], 0.005), Approx(out["p95_ms"], 0.005)
    if system.startswith(_B):
        del out["tokens"], out["cost_cents"]
    return out


def statistics_signature(system: str, result: Any) -> dict[str, Any]:
    return _statistics(system, result[0] if isinstance(result, list) else result)


def statistics_per_user_signature(system: str, result: Any) -> dict[str, Any]:
    """The same figures per user: the users, then each field as {user: value}."""
    if isinstance(result, list):  # HistoryDB.sql rows: user_id first
        per_user = {row[0]: _statistics(system, tuple(row[1:])) for row in result}
    else:
        per_user = {user: _statistics(system, figures) for user, figures in result.items()}
    users = sorted(per_user)
    out: dict[str, Any] = {"users": users}
    for name in next(iter(per_user.values()), {}):
        out[name] = {u: per_user[u][name] for u in users}
    return out


def p95_signature(system: str, result: Any) -> dict[str, Any]:
    """p95 node duration per node type: the types, and the values to 0.01 ms; (a) reads CodexOS's INTEGER
    ``duration_ms`` (truncated to the ms), so its values are compared to 1 ms. Node counts: runlake only."""
    if isinstance(result, dict):
        tol = 1.0 if system.startswith(_A) else 0.005
        return {"node_type": sorted(result), "p95_ms": {t: Approx(v, tol) for t, v in sorted(result.items())}}
    rows = [(r["node_type"], r["p95_ms"], r["n"]) if isinstance(r, dict) else tuple(r) for r in result]
    rows.sort(key=lambda r: r[0])
    return {
        "node_type": [r[0] for r in rows],
        "p95_ms": {r[0]: Approx(r[1], 0.005) for r in rows},
        "n": {r[0]: r[2] for r in rows},
    }


@dataclass
class Query:
    name: str
    runlake: dict[str, Callable[[Any, int], Any]]  # label -> fn(HistoryDB, i)
    alternatives: dict[str, Callable[[int], Any]]  # system -> fn(i)
    signature: Callable[[str, Any], Any]  # (system, result) -> comparable value
    target_ms: float | None = None
    target_text: str = ""
    compares: str = ""  # what the same-answer check compares, for the report


def define_queries(keys: Keys, root_of: Callable[[], Path], codexos: Any, kv: Any, since_ns: int) -> list[Query]:
    from opentelemetry.exporter.runlake.layout import SPANS, table_files

    from runlake.query import LakeReader

    since = dt.datetime.fromtimestamp(since_ns / NS, dt.timezone.utc)
    since_sql = since.replace(tzinfo=None).isoformat(" ")

    def reader_of(db: Any) -> LakeReader:  # one LakeReader per HistoryDB, like its own
        r = _READERS.get(id(db))
        if r is None:
            r = _READERS[id(db)] = LakeReader()
        return r

    # ExecutionHistoryService (what `runlake serve` answers with) over the db's in-memory runs index; its window is
    # `days` back from `now`, so now = since + 30 days gives the alternatives' window exactly
    window_end = since + dt.timedelta(days=30)
    until_sql = window_end.replace(tzinfo=None).isoformat(" ", "microseconds")

    def service_of(db: Any) -> Any:
        from runlake.service import ExecutionHistoryService

        svc = _SERVICES.get(id(db))
        if svc is None:
            svc = _SERVICES[id(db)] = ExecutionHistoryService(db)
        return svc

    def service_stats(db: Any, i: int) -> Any:
        return service_of(db).statistics(_cycle(keys.users, i), days=30, now=window_end)

    def service_stats_all(db: Any, i: int) -> Any:
        return service_of(db).statistics_per_user(days=30, now=window_end)

    def raw_p95(db: Any, i: int) -> Any:
        sql = (
            "SELECT node_type, quantile_cont((end_time_unix_nano - start_time_unix_nano) / 1e6, 0.95) AS p95_ms, "
            "count(*) AS n FROM {latest} GROUP BY node_type ORDER BY node_type"
        )  # {latest}: one row per span, no de-duplication over compacted days
        return reader_of(db).rows(sql, lambda: table_files(db.root, SPANS), where="span_type = 'node'")

    return [
        Query(
            "get_runs(session)",
            {"HistoryDB.get_runs": lambda db, i: db.get_runs(_cycle(keys.sessions, i))},
            {
                "(a) SQLite CodexOS": lambda i: codexos.get_runs(_cycle(keys.sessions, i)),
                "(b) PraisonAI KV": lambda i: kv.get_runs(_cycle(keys.sessions, i)),
            },
            runs_signature,
            3.0,
            "≤ 3 ms",
            compares=("started_at / ended_at: equal to the ms."),
        ),
        Query(
            "get_logs(run)",
            {"HistoryDB.get_logs": lambda db, i: db.get_logs(_cycle(keys.runs, i))},
            {
                "(a) SQLite CodexOS": lambda i: codexos.get_logs(_cycle(keys.runs, i)),
                "(b) PraisonAI KV": lambda i: kv.get_logs(_cycle(keys.runs, i)),
            },
            logs_signature,
            5.0,
            "≤ 5 ms",
            compares=(
                "Node durations as each shows them: runlake's text ± half its last digit, (a) whole ms (INTEGER "
                "duration_ms), (b) exact; (b) gives no final output, tokens or cost (no summary in its span records)."
            ),
        ),
        Query(
            "get_traces(user_id, limit=10)",
            {"HistoryDB.get_traces": lambda db, i: db.get_traces(user_id=_cycle(keys.users, i), limit=10)},
            {
                "(a) SQLite CodexOS": lambda i: codexos.get_traces(_cycle(keys.users, i), 10),
                "(b) PraisonAI KV": lambda i: kv.get_traces(user_id=_cycle(keys.users, i), limit=10),
            },
            traces_signature,
            10.0,
            "≤ 10 ms",
            compares=(
                "(a) has no trace id (its trace_id is the run id) and keeps the run as an execution, not a node: its "
                "span count + 1 is compared; (b)'s trace records hold no spans."
            ),
        ),
        Query(
            "get_history(agent, skip, limit=20)",
            {
                "HistoryDB.get_history": lambda db, i: db.get_history(
                    _cycle(keys.agents, i), skip=_cycle(keys.skips, i), limit=20
                )
            },
            {
                "(a) SQLite CodexOS": lambda i: codexos.get_history(_cycle(keys.agents, i), _cycle(keys.skips, i), 20),
                "(b) PraisonAI KV": lambda i: kv.get_history(_cycle(keys.agents, i), _cycle(keys.skips, i), 20),
            },
            history_signature,
            10.0,
            "≤ 10 ms",
            compares=(
                "Start to the second, duration as shown (± half its last digit); (b)'s trace records have no input, "
                "output, node count, tokens or cost."
            ),
        ),
        Query(
            "statistics, one user, 30 days",
            {
                "ExecutionHistoryService.statistics": service_stats,
                "HistoryDB.sql (runs view)": lambda db, i: db.sql(
                    stats_view_sql(_cycle(keys.users, i), since, window_end)
                ).fetchall(),
            },
            {
                "(a) SQLite CodexOS": lambda i: codexos.user_statistics(_cycle(keys.users, i), since_sql, until_sql),
                "(b) PraisonAI KV": lambda i: kv.user_statistics(
                    _cycle(keys.users, i), since_ns / NS, window_end.timestamp()
                ),
            },
            statistics_signature,
            compares=(
                "p50/p95 to 0.01 ms; cost: the service shows whole cents of the sum (± 0.5), HistoryDB.sql the sum, "
                "(a) sums whole cents per execution (within 5 × sqrt(n / 12)); (b) has no tokens or cost (only in its "
                "span records)."
            ),
        ),
        Query(
            "statistics per user, 30 days",
            {
                "ExecutionHistoryService.statistics_per_user": service_stats_all,
                "HistoryDB.sql (runs view)": lambda db, i: db.sql(stats_view_sql(None, since, window_end)).fetchall(),
            },
            {
                "(a) SQLite CodexOS": lambda i: codexos.all_user_statistics(since_sql, until_sql),
                "(b) PraisonAI KV": lambda i: kv.all_user_statistics(since_ns / NS, window_end.timestamp()),
            },
            statistics_per_user_signature,
            None,
            "≥ 10× faster than (a)",
            compares=(
                "Per user, as for one user: p50/p95 to 0.01 ms; cost: service ± 0.5, (a) within 5 × sqrt(n / 12); "
                "(b) no tokens or cost."
            ),
        ),
        Query(
            "p95 node duration per node type",
            {
                "spans files (LakeReader)": raw_p95,
                "HistoryDB.sql (spans view)": lambda db, i: db.sql(P95_VIEW).fetchall(),
            },
            {
                "(a) SQLite CodexOS": lambda i: codexos.p95_by_node_type(),
                "(b) PraisonAI KV": lambda i: kv.p95_by_node_type(),
            },
            p95_signature,
            compares=(
                "p95 to 0.01 ms, (a)'s to 1 ms (from CodexOS's INTEGER duration_ms, truncated); node counts: runlake "
                "only."
            ),
        ),
    ]


@dataclass
class Timing:
    times: list[float] = field(default_factory=list)
    peak: int | None = None
    warm_s: float = 0.0
    sigs: dict[int, Any] = field(default_factory=dict)
    error: str | None = None
    single: bool = False  # one call only (the warm-up): a full scan longer than the time budget

    @property
    def n(self) -> str:
        return "1*" if self.single else str(len(self.times))

    @property
    def p50(self) -> float | None:
        return median(self.times) if self.times else None


def measure(
    cases: dict[str, Callable[[int], Any]], reps: int, budget_s: float, sig: Callable[[str, Any], Any], label: str
) -> dict[str, Timing]:
    """Warm each case once (untimed; its peak memory measured), then ``reps`` timed calls per case with
    parameters varying by repetition, cases interleaved (rotating order). A case whose warm-up took longer than
    ``budget_s / reps`` gets fewer repetitions (at least 3), so slow full scans fit the time budget."""
    timings = {name: Timing() for name in cases}
    n_reps: dict[str, int] = {}
    warm_index = reps  # keys hold reps + 1 parameter sets: the last one is only used for the warm-up
    for name, fn in cases.items():
        t = timings[name]
        try:
            with Peak() as peak:
                start = time.perf_counter()
                result = fn(warm_index)
                t.warm_s = time.perf_counter() - start
            t.peak = peak.peak
            t.sigs[-1] = sig(name, result)
        except Exception as error:  # noqa: BLE001 - report, do not abort the benchmark
            t.error = f"{type(error).__name__}: {error}"
            n_reps[name] = 0
            continue
        if t.warm_s * reps <= budget_s:
            n_reps[name] = reps
        elif t.warm_s <= budget_s / 2:
            n_reps[name] = max(3, int(budget_s / max(t.warm_s, 1e-9)))
        else:  # a full scan of every record: its one call (the warm-up, page cache already warm) is the sample
            n_reps[name] = 0
            t.times = [t.warm_s]
            t.single = True
    names = list(cases)
    perf = time.perf_counter
    for r in range(max(n_reps.values(), default=0)):
        gc.collect()
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if r >= n_reps[name]:
                continue
            start = perf()
            result = cases[name](r)
            timings[name].times.append(perf() - start)
            timings[name].sigs[r] = sig(name, result)
    print(
        f"  .. {label}: " + ", ".join(f"{n} {fmt_time(t.p50) if t.p50 else t.error}" for n, t in timings.items()),
        file=sys.stderr,
        flush=True,
    )
    return timings


# ---------------------------------------------------------------------------------------------------------------
# reporting helpers
# ---------------------------------------------------------------------------------------------------------------
def ratio(alt: float | None, ours: float | None) -> str:
    """``alt ÷ runlake``: > 1 means runlake is faster (or smaller)."""
    if not alt or not ours:
        return "n/a"
    r = alt / ours
    return f"{r:,.0f}×" if r >= 100 else f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def ms(t: float | None) -> str:
    return "n/a" if t is None else fmt_time(t)


def agreement(reference: Timing, other: Timing) -> str:
    """``same/compared``: calls whose answer equals the reference's (same parameters) in every field both give;
    ``≠ fields`` names the fields that differed in any call."""
    common_reps = [r for r in other.sigs if r in reference.sigs]
    if not common_reps:
        return "-"
    same, fields = 0, {}
    for r in common_reps:
        diff = differing_fields(reference.sigs[r], other.sigs[r])
        same += not diff
        fields.update(dict.fromkeys(diff))
    return f"{same}/{len(common_reps)}" + (f" ≠ {','.join(fields)}" if fields else "")


def compared_fields(reference: Timing, other: Timing) -> list[str]:
    """The fields compared between two cases (those both signatures hold)."""
    for r, sig in other.sigs.items():
        if r in reference.sigs:
            return [name for name in reference.sigs[r] if name in sig]
    return []


def disagreements(reference: Timing, other: Timing) -> list[str]:
    """One example per differing field: the call, where the answers first differ and the two values."""
    out: dict[str, str] = {}
    for r in sorted(r for r in other.sigs if r in reference.sigs):
        ref, sig = reference.sigs[r], other.sigs[r]
        for name in differing_fields(ref, sig):
            call = "warm-up call" if r < 0 else f"call {r}"
            out.setdefault(name, f"{call}: {name}{first_difference(ref[name], sig[name])}")
    return list(out.values())


# ---------------------------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------------------------
def code_version() -> str:
    """The checkout's commit and whether the library differs from it (read-only git commands)."""
    import subprocess

    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "src", "exporters"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head or 'unknown'}" + (
        f" + uncommitted library changes ({len(dirty.splitlines())} files)" if dirty else ""
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="3,000 runs, same code path; under a minute")
    p.add_argument("--runs", type=int, help="agent runs (default 100,000; --quick 3,000); ~11 spans each")
    p.add_argument("--days", type=int, default=30, help="days of history, ending yesterday (UTC) (default 30)")
    p.add_argument("--reps", type=int, help="timed repetitions per query, varied parameters (default 20; --quick 5)")
    p.add_argument(
        "--budget",
        type=float,
        help="seconds per slow case: fewer reps (≥ 3) once warm-up × reps passes it, one call past half of it "
        "(default 20; --quick 2)",
    )
    p.add_argument("--concurrency", type=int, default=512, help="sessions in flight at the ingest server (512)")
    p.add_argument(
        "--ingest-rate",
        type=int,
        default=5000,
        help="spans/s the simulated ingest server receives; the exporter is flushed every 5 s of it "
        "(default 5000 → force_flush every 25,000 spans)",
    )
    p.add_argument(
        "--min-session-rows",
        type=int,
        help="writer setting of the query lake: sessions with fewer rows per flush share a per-day file "
        "(default: runlake serve's DEFAULT_MIN_SESSION_ROWS, 256; the exporter's own default is 0 = off)",
    )
    p.add_argument(
        "--other-min-session-rows",
        type=int,
        default=-1,
        help="also ingest the same stream with this setting, ingest figures only (default: 0 if the query lake "
        "uses a threshold, else 256; -2 = skip)",
    )
    p.add_argument("--json-every", type=int, help="write every N-th batch as OTLP JSON and extrapolate (default 10)")
    p.add_argument("--workdir", help="scratch folder parent (default: the system temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the scratch folder")
    p.add_argument(
        "--sql-before",
        action="store_true",
        help="also time the HistoryDB.sql variants before compaction (each call lists and counts every file)",
    )
    p.add_argument("--seed", type=int, default=30)
    a = p.parse_args()
    a.runs = a.runs or (3_000 if a.quick else 100_000)
    a.reps = a.reps or (5 if a.quick else 20)
    a.budget = a.budget or (2.0 if a.quick else 20.0)
    a.json_every = a.json_every or (1 if a.quick else 10)
    if a.min_session_rows is None:
        from runlake.server import DEFAULT_MIN_SESSION_ROWS

        a.min_session_rows = DEFAULT_MIN_SESSION_ROWS
    if a.other_min_session_rows == -1:
        a.other_min_session_rows = 0 if a.min_session_rows else 256
    elif a.other_min_session_rows < 0:
        a.other_min_session_rows = None
    return a


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    from b30_baselines import CodexOSStore, PraisonKV
    from opentelemetry.exporter.otlp.json.file import FileSpanExporter

    import runlake
    from runlake.compact import compact

    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="runlake-b30-", dir=args.workdir))
    print("runlake B30 benchmark" + (" (--quick)" if args.quick else ""))
    print("command: python " + " ".join(sys.argv))
    print("machine: " + ", ".join(f"{k} {v}" for k, v in common.machine().items()))
    print(f"code: {code_version()}")
    mkdir_ms, create_ms = common.fs_probe(scratch)
    print(
        f"scratch: {scratch}: mkdir {mkdir_ms:.2f} ms, create+write+rename of a 16 KB file {create_ms:.2f} ms"
        + (
            "  << slow file-system metadata: per-file costs dominate runlake here; try --workdir on another disk"
            if mkdir_ms > 0.2
            else ""
        )
    )
    print(
        f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} (2 cores; other processes share them)"
    )
    print(f"peak memory = {Peak.method}: the most resident memory a phase added")
    today = dt.datetime.now(dt.timezone.utc).date()  # the history ends yesterday: every day is closed
    t0 = time.perf_counter()
    work = Workload(runs=args.runs, days=args.days, concurrency=args.concurrency, seed=args.seed, end_day=today)
    first_day = today - dt.timedelta(days=args.days)
    print(
        f"workload: {args.runs:,} runs in {len(work.sessions):,} sessions over {args.days} days "
        f"({first_day} .. {today - dt.timedelta(days=1)}), {len(TENANTS)} tenants, "
        f"{len(TENANTS) * USERS_PER_TENANT} users, {len(AGENTS)} agents, ttl_days={TTL_DAYS}; "
        f"{args.concurrency} sessions in flight; set-up {time.perf_counter() - t0:.1f}s",
        flush=True,
    )
    flush_every = args.ingest_rate * 5
    try:
        report = run_benchmark(
            args, work, scratch, first_day, flush_every, FileSpanExporter, runlake, CodexOSStore, PraisonKV, compact
        )
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            print(f"kept {scratch}")
    del report
    print(f"\nload average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"total wall time {time.perf_counter() - started:.0f}s")


def run_benchmark(
    args: argparse.Namespace,
    work: Workload,
    scratch: Path,
    first_day: dt.date,
    flush_every: int,
    FileSpanExporter: Any,
    runlake: Any,
    CodexOSStore: Any,
    PraisonKV: Any,
    compact: Any,
) -> dict:  # noqa: N803
    # ---- 1. ingest, one pass per store -------------------------------------------------------------------------
    root = scratch / "lake"
    print(
        f"\n[ingest] runlake: RunlakeSpanExporter(min_session_rows={args.min_session_rows}).export(512 spans), "
        f"force_flush every {flush_every:,} spans{_at()}",
        flush=True,
    )
    rl, rl_stats = ingest_runlake(
        work, root, flush_every, args.min_session_rows, f"runlake, min_session_rows={args.min_session_rows}"
    )
    n = rl.spans
    print(
        f"  .. {n:,} spans in {rl.busy_s:.1f}s of export ({rl.rate:,.0f} spans/s); pass {rl.wall_s:.1f}s; "
        f"exporter stats {rl_stats}",
        flush=True,
    )
    before = lake_size(root)
    extra: list[Ingest] = []
    if args.other_min_session_rows is not None:  # the same stream with the other writer setting: ingest only
        other = scratch / "lake-other"
        print(f"[ingest] runlake, min_session_rows={args.other_min_session_rows} (ingest only){_at()}", flush=True)
        o_ing, o_stats = ingest_runlake(
            work,
            other,
            flush_every,
            args.other_min_session_rows,
            f"runlake, min_session_rows={args.other_min_session_rows}",
        )
        o_files, o_bytes = (sum(v[i] for v in lake_size(other).values()) for i in (0, 1))
        o_ing.note = f"{o_files:,} files, {fmt_bytes(o_bytes)} (lake not kept)"
        extra.append(o_ing)
        shutil.rmtree(other, ignore_errors=True)
    print(f"[ingest] (a) SQLite CodexOS{_at()}", flush=True)
    codexos = CodexOSStore(scratch / "codexos.sqlite")
    a_ing = ingest_pass("(a) SQLite CodexOS", work, codexos.ingest, codexos.close)
    print(f"[ingest] (b) PraisonAI KV{_at()}", flush=True)
    kv = PraisonKV(scratch / "praisonai-kv.sqlite")
    b_ing = ingest_pass("(b) PraisonAI KV", work, kv.ingest, kv.close)
    print(f"[ingest] (c) OTLP JSON FileSpanExporter, every {args.json_every}. batch{_at()}", flush=True)
    json_path = scratch / "spans.otlp.jsonl"
    json_exporter = FileSpanExporter(json_path)
    text: dict[str, Any] = {"bytes": 0, "spans": 0, "sessions": [], "kinds": {}}

    def observe(batch: list) -> None:  # facts about the stream (untimed): text volume, sessions per batch
        text["spans"] += len(batch)
        text["sessions"].append(len({s.attributes.get("session.id") for s in batch}))
        kinds = text["kinds"]
        for s in batch:
            a = s.attributes
            i, o = len(a.get("input.value") or ""), len(a.get("output.value") or "")
            text["bytes"] += i + o
            k = kinds.setdefault(a.get("runlake.node.type") or a.get("runlake.span.type"), [0, 0, 0, 0])
            k[0] += 1
            k[1] += i
            k[2] += o
            k[3] = max(k[3], i)

    c_ing = ingest_pass(
        "(c) OTLP JSON lines",
        work,
        json_exporter.export,
        json_exporter.shutdown,
        every=args.json_every,
        observe=observe,
    )
    json_bytes_sample = json_path.stat().st_size
    json_bytes = json_bytes_sample * n / max(1, c_ing.spans)
    json_path.unlink()
    a_bytes, b_bytes = codexos.size(), kv.size()
    c_ing.note = (
        f"{c_ing.spans:,} spans written ({100 / args.json_every:.0f}%), "
        f"{fmt_bytes(json_bytes_sample)} → ×{n / max(1, c_ing.spans):.2f}"
    )
    rl.note = f"{sum(f for f, _ in before.values()):,} files, {fmt_bytes(sum(b for _, b in before.values()))}: the lake"
    rows = [
        [
            i.name,
            f"{i.spans:,}",
            f"{i.rate:,.0f}",
            ratio(i.busy_s / max(1, i.spans), rl.busy_s / n),
            fmt_time(i.busy_s),
            fmt_time(i.wall_s),
            fmt_bytes(i.peak),
            i.note,
        ]
        for i in (rl, *extra, a_ing, b_ing, c_ing)
    ]
    text_per_span = text["bytes"] / max(1, text["spans"])
    kinds = text["kinds"]
    by_kind = ", ".join(
        f"{k} {v[1] / v[0]:,.0f} / {v[2] / v[0]:,.0f}" for k, v in sorted(kinds.items(), key=lambda kv: -kv[1][1])
    )
    llm = kinds.get("llm", [1, 0, 0, 0])
    passes = (rl, *extra, a_ing, b_ing, c_ing)
    stream_s = median([i.wall_s - i.busy_s for i in passes])
    print_table(
        f"B30.1 ingest: {n:,} spans ({args.runs:,} runs), batches of {BATCH}, median "
        f"{median(text['sessions']):.0f} sessions per batch, {text_per_span:,.0f} B of input/output text per span",
        ["store", "spans", "spans/s", "vs runlake", "store time", "pass wall", "peak mem", "note"],
        rows,
        [
            "store time = inside the store's calls only (export/insert/flush/close); pass wall adds building the "
            "ReadableSpans (same stream each pass).",
            "'vs runlake' = the store's time per span ÷ runlake's: > 1 means runlake ingests faster.",
            f"peak mem = {Peak.method}, whole pass (incl. the span generator's sessions in flight).",
            "(a)/(b): SQLite WAL, synchronous=NORMAL, one transaction per batch (favourable to SQLite); runlake: no "
            "fsync either (atomic rename).",
            f"text per span (input / output B, the spans (c) saw): {by_kind}; llm input = the conversation "
            f"re-sent as a JSON messages list, at most {llm[3]:,} B (budget {CONTEXT_CHARS:,}).",
            f"building the span stream: {stream_s:.1f}s per pass (pass wall − store time, median of "
            f"{len(passes)} passes), {n / max(stream_s, 1e-9):,.0f} spans/s; workload set-up {work.setup_s:.1f}s.",
        ],
    )

    # ---- 2. bytes ---------------------------------------------------------------------------------------------
    rl_before_bytes = sum(b for _, b in before.values())
    snapshot = scratch / "lake-before-compaction"
    common.hardlink_copy(root, snapshot)  # for TTL on the uncompacted lake, later

    # ---- 3. queries before compaction: runlake and the alternatives --------------------------------------------
    keys = pick_keys(root, args.reps + 1)
    since_ns = work.first_day_ns
    queries = define_queries(keys, lambda: root, codexos, kv, since_ns)
    db_before = runlake.HistoryDB(snapshot)
    print(
        f"\n[queries] before compaction: {args.reps} timed repetitions per case (parameters vary), warm{_at()}",
        flush=True,
    )
    before_t: dict[str, dict[str, Timing]] = {}
    for q in queries:
        cases: dict[str, Callable[[int], Any]] = {
            f"runlake {label}": (lambda i, fn=fn: fn(db_before, i))
            for label, fn in q.runlake.items()
            if args.sql_before or not label.startswith("HistoryDB.sql")
        }
        cases.update(q.alternatives)
        before_t[q.name] = measure(cases, args.reps, args.budget, q.signature, q.name)
        for label in q.runlake:  # HistoryDB.sql variants: after compaction only, unless --sql-before
            before_t[q.name].setdefault(f"runlake {label}", Timing(error="not run (see --sql-before)"))

    # ---- 4. compaction ------------------------------------------------------------------------------------------
    print(f"\n[compaction] runlake.compact.compact(root, older_than_minutes=0){_at()}", flush=True)
    with Peak() as cpeak:
        summary = compact(root, older_than_minutes=0)
    after = lake_size(root)
    rl_after_bytes = sum(b for _, b in after.values())
    print_table(
        "B30.2 compaction (runlake.compact.compact, older_than_minutes=0)",
        ["table", "files before", "files after", "bytes before", "bytes after"],
        [
            [t, f"{before[t][0]:,}", f"{after[t][0]:,}", fmt_bytes(before[t][1]), fmt_bytes(after[t][1])]
            for t in ("spans", "runs")
        ]
        + [
            [
                "total",
                f"{sum(v[0] for v in before.values()):,}",
                f"{sum(v[0] for v in after.values()):,}",
                fmt_bytes(rl_before_bytes),
                fmt_bytes(rl_after_bytes),
            ]
        ],
        [
            f"took {summary.seconds:.1f}s ({summary.partitions:,} partitions rewritten, {summary.rows:,} rows), "
            f"peak mem {fmt_bytes(cpeak.peak)}; skipped files {summary.skipped_files}"
        ],
    )
    print_table(
        "B30.3 bytes on disk (same rows)",
        ["store", "bytes", "B/span", "÷ runlake before", "÷ runlake after", "target"],
        [
            ["runlake, before compaction", fmt_bytes(rl_before_bytes), f"{rl_before_bytes / n:,.0f}", "1.00×", "", ""],
            ["runlake, after compaction", fmt_bytes(rl_after_bytes), f"{rl_after_bytes / n:,.0f}", "", "1.00×", ""],
            [
                "(a) SQLite CodexOS (+indexes)",
                fmt_bytes(a_bytes),
                f"{a_bytes / n:,.0f}",
                ratio(a_bytes, rl_before_bytes),
                ratio(a_bytes, rl_after_bytes),
                _met(a_bytes / rl_after_bytes >= 20, "≥ 20×"),
            ],
            [
                "(b) PraisonAI KV (SQLite)",
                fmt_bytes(b_bytes),
                f"{b_bytes / n:,.0f}",
                ratio(b_bytes, rl_before_bytes),
                ratio(b_bytes, rl_after_bytes),
                "",
            ],
            [
                "(c) OTLP JSON lines (extrapolated)",
                fmt_bytes(json_bytes),
                f"{json_bytes / n:,.0f}",
                ratio(json_bytes, rl_before_bytes),
                ratio(json_bytes, rl_after_bytes),
                _met(json_bytes / rl_after_bytes >= 20, "≥ 20×"),
            ],
        ],
        ["÷ runlake = the store's bytes ÷ runlake's (how many times fewer bytes runlake needs)."],
    )

    # ---- 5. queries after compaction ------------------------------------------------------------------------------
    db_after = runlake.HistoryDB(root)
    started = time.perf_counter()
    footers = db_after.warm()  # what `runlake serve` does at start: the runs index and compacted files' footers
    print(
        f"\n[queries] after compaction: runlake, {args.reps} timed repetitions per case{_at()}; HistoryDB.warm() "
        f"first: {time.perf_counter() - started:.2f} s (runs index of {db_after.run_index().size:,} runs, "
        f"{footers} footers)",
        flush=True,
    )
    after_t: dict[str, dict[str, Timing]] = {}
    for q in queries:
        cases = {f"runlake {label}": (lambda i, fn=fn: fn(db_after, i)) for label, fn in q.runlake.items()}
        after_t[q.name] = measure(cases, args.reps, args.budget, q.signature, q.name)
    summary_rows, answer_problems = report_queries(queries, before_t, after_t)

    # ---- 6. TTL: 10 of the 30 days ----------------------------------------------------------------------------
    cut = first_day + dt.timedelta(days=10)
    now = dt.datetime.combine(first_day + dt.timedelta(days=TTL_DAYS + 10), dt.time(12), dt.timezone.utc)
    print(
        f"\n[ttl] expire {first_day} .. {cut - dt.timedelta(days=1)} (10 days): "
        f"cleanup_expired(now={now:%Y-%m-%d %H:%M}Z){_at()}"
    )
    ttl_rows = []
    ttl: dict[str, tuple[float, dict, int | None]] = {}
    ttl_dry: dict[str, float | None] = {}
    for label, fn in (
        ("runlake, before compaction", lambda: runlake.HistoryDB(snapshot).cleanup_expired(now=now)),
        ("runlake, after compaction", lambda: runlake.HistoryDB(root).cleanup_expired(now=now)),
        ("(a) SQLite CodexOS DELETE", lambda: codexos.delete_before(cut.isoformat())),
        (
            "(b) PraisonAI KV DELETE",
            lambda: kv.delete_before(dt.datetime.combine(cut, dt.time(), dt.timezone.utc).timestamp()),
        ),
    ):
        dry = None
        if label.startswith("runlake"):  # list + count alone first (nothing deleted): where the time goes
            lake_root = snapshot if "before" in label else root
            t = time.perf_counter()
            runlake.HistoryDB(lake_root).cleanup_expired(now=now, dry_run=True)
            dry = time.perf_counter() - t
        with Peak() as tpeak:
            t = time.perf_counter()
            result = fn()
            elapsed = time.perf_counter() - t
        ttl[label] = (elapsed, result, tpeak.peak)
        ttl_dry[label] = dry
    rl_ttl_before, rl_ttl_after = ttl["runlake, before compaction"][0], ttl["runlake, after compaction"][0]
    for label, (elapsed, result, peak) in ttl.items():
        ttl_rows.append(
            [
                label,
                fmt_time(elapsed),
                fmt_time(ttl_dry[label]) if ttl_dry[label] is not None else "",
                ratio(elapsed, rl_ttl_before),
                ratio(elapsed, rl_ttl_after),
                fmt_bytes(peak),
                json.dumps(result),
                _met(elapsed <= 0.050, "≤ 50 ms") if label.startswith("runlake") else "",
            ]
        )
    remaining = min(d for _, _, d, _ in _day_dirs(root))
    print_table(
        "B30.5 TTL: expire 10 of 30 days (each measured once: it deletes)",
        [
            "store",
            "time",
            "list+count (dry run)",
            "÷ runlake before",
            "÷ runlake after",
            "peak mem",
            "result",
            "target",
        ],
        ttl_rows,
        [
            f"runlake: HistoryDB.cleanup_expired(now) removes day folders (ttl=30, day + 30 < today); oldest day left: "
            f"{remaining}. (a): DELETE nodes + executions WHERE started_at < '{cut}' (started_at index).",
            "(b): PraisonAI has no TTL; DELETE WHERE json_extract(value,'$.started_at') < cut-off "
            "(reads every record).",
            "list+count = the same call with dry_run=True, run just before (lists and counts, deletes nothing); "
            "time − list+count ≈ removing the folders.",
            "runlake counts nodes by their own start day, SQLite by their run's: runs that cross midnight differ.",
        ],
    )
    summary_rows.insert(
        0,
        [
            "ingest spans/s",
            f"{rl.rate:,.0f}",
            "",
            f"{a_ing.rate:,.0f}",
            f"{b_ing.rate:,.0f}",
            f"{c_ing.rate:,.0f}",
            f"{ratio(a_ing.busy_s / a_ing.spans, rl.busy_s / n)} / "
            f"{ratio(b_ing.busy_s / b_ing.spans, rl.busy_s / n)} / "
            f"{ratio(c_ing.busy_s / c_ing.spans, rl.busy_s / n)}",
            "",
            "",
            "",
        ],
    )
    summary_rows.insert(
        1,
        [
            "bytes on disk",
            fmt_bytes(rl_before_bytes),
            fmt_bytes(rl_after_bytes),
            fmt_bytes(a_bytes),
            fmt_bytes(b_bytes),
            fmt_bytes(json_bytes),
            f"{ratio(a_bytes, rl_after_bytes)} / {ratio(b_bytes, rl_after_bytes)} / "
            f"{ratio(json_bytes, rl_after_bytes)}",
            "≥ 20× vs (a), (c)",
            _met(a_bytes / rl_after_bytes >= 20 and json_bytes / rl_after_bytes >= 20),
            "",
        ],
    )
    summary_rows.append(
        [
            "TTL 10 of 30 days",
            fmt_time(rl_ttl_before),
            fmt_time(rl_ttl_after),
            fmt_time(ttl["(a) SQLite CodexOS DELETE"][0]),
            fmt_time(ttl["(b) PraisonAI KV DELETE"][0]),
            "n/a",
            f"{ratio(ttl['(a) SQLite CodexOS DELETE'][0], rl_ttl_after)} / "
            f"{ratio(ttl['(b) PraisonAI KV DELETE'][0], rl_ttl_after)} / n/a",
            "≤ 50 ms",
            _met(rl_ttl_after <= 0.050),
            " / ".join(  # executions deleted (nodes are counted by different days, see B30.5)
                "same"
                if ttl[k][1]["executions_deleted"] == ttl["runlake, after compaction"][1]["executions_deleted"]
                else "DIFFERS"
                for k in ("(a) SQLite CodexOS DELETE", "(b) PraisonAI KV DELETE")
            ),
        ]
    )
    print_table(
        f"B30 summary: {n:,} spans, {args.runs:,} runs, {args.days} days (p50; ratios = alternative ÷ runlake after "
        "compaction, > 1 = runlake better)",
        [
            "figure",
            "runlake before",
            "runlake after",
            "(a) SQLite",
            "(b) KV",
            "(c) OTLP JSON",
            "ratios a / b / c",
            "target",
            "met (after)",
            "same answer a / b",
        ],
        summary_rows,
        [
            "same answer = calls of (a) / (b) whose answer equals runlake-before's in every field both give (B30.4 "
            "tables: which fields); TTL: executions deleted."
        ],
    )
    if answer_problems:
        print(f"\nanswers: {len(answer_problems)} disagreement(s) with runlake-before (one example per field):")
        for line in answer_problems:
            print(f"  ≠ {line}")
    else:
        print("\nanswers: every call of every case gave runlake-before's answer in every field compared")
    return {}


def _day_dirs(root: Path) -> Iterator[tuple[str, int, str, Path]]:
    from opentelemetry.exporter.runlake.layout import SPANS, day_dirs

    return day_dirs(root, SPANS)


_STARTED = time.perf_counter()


def _at() -> str:
    """Where a phase starts: seconds since the script started (for planning runs)."""
    return f" (at {time.perf_counter() - _STARTED:.0f}s)"


def _met(ok: bool, target: str = "") -> str:
    return ("met" if ok else "MISSED") + (f" ({target})" if target else "")


def report_queries(queries: list[Query], before_t: dict, after_t: dict) -> tuple[list[list[str]], list[str]]:
    """The B30.4 tables; returns the summary rows and the disagreements found (one line each)."""
    summary: list[list[str]] = []
    problems: list[str] = []
    for q in queries:
        bt, at = before_t[q.name], after_t[q.name]
        primary = next(iter(q.runlake))
        ref_b, ref_a = bt[f"runlake {primary}"], at[f"runlake {primary}"]
        rows = []
        details: list[str] = []  # disagreements, one example per field
        fields: dict[str, list[str]] = {}  # fields compared -> the cases compared on them
        checked = [
            (f"runlake {lb}, {ph}", x[f"runlake {lb}"]) for lb in q.runlake for ph, x in (("before", bt), ("after", at))
        ]
        checked += [(system, bt[system]) for system in q.alternatives]
        for name, t in checked:
            if t is ref_b:
                continue
            compared = compared_fields(ref_b, t)
            if compared:  # "(a) SQLite CodexOS" is listed as "(a)"
                fields.setdefault(", ".join(compared), []).append(name.split(" ")[0] if name[0] == "(" else name)
            for line in disagreements(ref_b, t):
                details.append(f"≠ {name}, {line}")
                problems.append(f"{q.name}: {name}, {line}")
        for label in q.runlake:
            name = f"runlake {label}"
            for phase, t in (("before compaction", bt[name]), ("after compaction", at[name])):
                target = ""
                if q.target_ms is not None and phase.startswith("after"):
                    target = _met(t.p50 is not None and t.p50 * 1e3 <= q.target_ms, q.target_text)
                rows.append(
                    [
                        f"{name}, {phase}",
                        ms(t.p50) if t.p50 else (t.error or "n/a"),
                        t.n,
                        fmt_bytes(t.peak),
                        "",
                        "",
                        agreement(ref_b, t) if t is not ref_b else "ref",
                        target,
                    ]
                )
        for system in q.alternatives:
            t = bt[system]
            target = ""
            if q.target_ms is None and q.target_text and system.startswith("(a)"):
                best = min(x.p50 for k, x in at.items() if x.p50)
                target = _met(t.p50 is not None and t.p50 / best >= 10, q.target_text)
            rows.append(
                [
                    system,
                    ms(t.p50) if t.p50 else (t.error or "n/a"),
                    t.n,
                    fmt_bytes(t.peak),
                    ratio(t.p50, ref_b.p50),
                    ratio(t.p50, ref_a.p50),
                    agreement(ref_b, t),
                    target,
                ]
            )
        print_table(
            f"B30.4 {q.name}",
            ["case", "p50", "n", "peak mem (warm-up)", "÷ runlake before", "÷ runlake after", "same answer", "target"],
            rows,
            [
                "÷ runlake = the alternative's p50 ÷ runlake's (first runlake row): > 1 means runlake is faster.",
                "n = timed calls (parameters vary); 1* = one call only: a full scan longer than the --budget.",
                "same answer = calls whose answer equals runlake-before's (same parameters) in every field both "
                "give; ≠ names the fields that differed. " + q.compares,
                *(f"fields compared with {', '.join(names)}: {f}" for f, names in fields.items()),
                *details,
            ],
        )
        a_sys = next(s for s in q.alternatives if s.startswith("(a)"))
        b_sys = next(s for s in q.alternatives if s.startswith("(b)"))
        best_after = min((x for x in at.values() if x.p50), key=lambda x: x.p50, default=ref_a)
        best_before = min(
            (x for x in bt.values() if x.p50 and x in [bt[f"runlake {lb}"] for lb in q.runlake]),
            key=lambda x: x.p50,
            default=ref_b,
        )
        if q.target_ms is not None:
            target, met = q.target_text, _met(best_after.p50 is not None and best_after.p50 * 1e3 <= q.target_ms)
        elif q.target_text:
            target, met = q.target_text, _met(bool(bt[a_sys].p50) and bt[a_sys].p50 / best_after.p50 >= 10)
        else:
            target, met = "", ""
        summary.append(
            [
                q.name,
                ms(best_before.p50),
                ms(best_after.p50),
                ms(bt[a_sys].p50),
                ms(bt[b_sys].p50),
                "n/a",
                f"{ratio(bt[a_sys].p50, best_after.p50)} / {ratio(bt[b_sys].p50, best_after.p50)} / n/a",
                target,
                met,
                f"{agreement(ref_b, bt[a_sys]).split(' ')[0]} / {agreement(ref_b, bt[b_sys]).split(' ')[0]}",
            ]
        )
    return summary, problems


_READERS: dict[int, Any] = {}
_SERVICES: dict[int, Any] = {}

if __name__ == "__main__":
    main()
