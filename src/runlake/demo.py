"""A realistic, reproducible agent workload driven through runlake's real instrumentation.

``generate_workload`` configures runlake on a lake, plays several agents (``bug-triager``, ``researcher``,
``support-bot``) across sessions and users spread over the last ``days`` days, and shuts the pipeline down,
so everything is on disk when it returns. Time is simulated with ``shifted_clock`` (no real sleeping), so a
dozen sessions take well under a second of wall time. ``runlake demo`` presents the result; tests and
benchmarks reuse the generator.

Content, sessions, users, timings, failures, tokens and costs follow a seeded ``random.Random``; span and run
ids come from the OpenTelemetry SDK's id generator and differ between runs, as do absolute timestamps
(history is placed relative to now).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import random
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.exporter.runlake.layout import resolve_state_url

from . import instrument as rl

__all__ = ["AGENTS", "USERS", "generate_workload", "lake_usage"]

AGENTS = ("bug-triager", "researcher", "support-bot")
USERS = ("user-alice", "user-bob", "user-chen", "user-dmitri", "user-emeka", "user-farah")

# per-agent retention (CodexOS keeps a ttl_days per execution): chats expire first, triage history lasts
_TTL_DAYS = {"bug-triager": 90, "researcher": 30, "support-bot": 7}
_AGENT_WEIGHTS = (3, 2, 4)

# (model, provider, cents per 1k input tokens, cents per 1k output tokens)
_SMALL = ("gpt-4o-mini", "openai", 0.015, 0.06)
_LARGE = ("gpt-4o", "openai", 0.25, 1.0)
_CLAUDE = ("claude-sonnet-4", "anthropic", 0.3, 1.5)


# ---- errors the agents' tools and models raise (their class names land in error.type) -----------------------
class RateLimitError(Exception):
    """A provider asked us to slow down."""


class ContextWindowExceeded(Exception):
    """The prompt did not fit the model's context window."""


class UpstreamUnavailable(Exception):
    """A backend service the agent depends on is down."""


class PaymentGatewayError(Exception):
    """The refund provider refused the request."""


_ISSUES = (
    ("Crash on startup after upgrading to 2.3.1 (segfault in libssl)", "runtime", "P1"),
    ("Login button does nothing on Safari 17", "auth", "P2"),
    ("CSV export drops rows whose names contain non-ASCII characters like 'Zoë'", "export", "P2"),
    ("Worker memory grows ~200 MB/hour until OOM-killed", "runtime", "P1"),
    ("Broken link to the quickstart in README", "docs", "P4"),
    ("Dark mode setting resets after every reload", "ui", "P3"),
    ("Webhook retries fire twice when the receiver answers 202", "integrations", "P2"),
    ("Timezone off by one hour in weekly report after DST change", "reports", "P3"),
)
_QUESTIONS = (
    "Compare Parquet and ORC for append-heavy log storage",
    "What changed in the OpenTelemetry GenAI semantic conventions this year?",
    "Summarise current approaches to evaluating LLM agents",
    "Best practices for running DuckDB over object storage",
    "How do vector databases handle deletes and compaction?",
    "Is Arrow Flight worth it for internal analytics services?",
)
_SUPPORT = {
    "order_status": ("Where is my order #{order}? It was due on Monday.", "Your order #{order} shipped yesterday."),
    "refund": ("I want a refund for order #{order}, the mug arrived broken.", "I've started a refund for #{order}."),
    "password_reset": ("I can't log in, the reset email never arrives.", "I've sent a new reset link."),
    "smalltalk": ("thanks, that's all!", "You're welcome, have a great day!"),
}


@dataclass
class _Stats:
    runs: int = 0
    nodes: int = 0
    failed_nodes: int = 0
    failed_runs: int = 0
    running_runs: int = 0
    turns: int = 0
    tokens: int = 0
    cost_cents: float = 0.0
    sessions: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    runs_by_agent: Counter = field(default_factory=Counter)
    failed_run_ids: list[str] = field(default_factory=list)
    runs_with_failed_nodes: list[str] = field(default_factory=list)
    running_run_ids: list[str] = field(default_factory=list)


class _Workload:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._advance: Callable[[float], None] = lambda seconds: None
        self.elapsed = 0.0
        self.stats = _Stats()
        self._run_had_failed_node = False

    def start_session(self, advance: Callable[[float], None]) -> None:
        """Use the clock of a new ``shifted_clock`` block; ``elapsed`` counts from its start."""
        self._advance = advance
        self.elapsed = 0.0

    # ---- building blocks --------------------------------------------------------------------------------
    def wait(self, seconds: float) -> None:
        self.elapsed += seconds
        self._advance(seconds)

    @contextlib.contextmanager
    def node(
        self,
        node_id: str,
        type: str,  # noqa: A002
        input: Any,  # noqa: A002
        seconds: float,
        **metadata: Any,
    ) -> Iterator[rl.SpanHandle]:
        self.stats.nodes += 1
        try:
            with rl.node(node_id, type=type, input=input, metadata=metadata or None) as handle:
                self.wait(seconds)  # the call takes its time, then succeeds or raises
                yield handle
        except Exception:
            self.stats.failed_nodes += 1
            self._run_had_failed_node = True
            raise

    def llm(
        self, node_id: str, prompt: str, output: Any, model: tuple, tokens_in: int, tokens_out: int, seconds: float
    ) -> None:
        with self.node(node_id, "llm", prompt, seconds, temperature=0.2) as handle:
            name, provider, price_in, price_out = model
            handle.set_model(name, provider)
            handle.set_usage(tokens_in, tokens_out)
            cost = round(tokens_in / 1000 * price_in + tokens_out / 1000 * price_out, 4)
            handle.set_cost(cost)
            handle.set_output(output)
            self.stats.tokens += tokens_in + tokens_out
            self.stats.cost_cents += cost

    def router(self, node_id: str, text: str, choice: str) -> None:
        rng = self.rng
        tokens_in, tokens_out = rng.randint(120, 400), rng.randint(3, 12)
        with self.node(node_id, "router", text, rng.uniform(0.15, 0.9), routes=4) as handle:
            name, provider, price_in, price_out = _SMALL
            handle.set_model(name, provider)
            handle.set_usage(tokens_in, tokens_out)
            cost = round(tokens_in / 1000 * price_in + tokens_out / 1000 * price_out, 4)
            handle.set_cost(cost)
            handle.set_output({"route": choice})
            self.stats.tokens += tokens_in + tokens_out
            self.stats.cost_cents += cost

    def retrieval(self, node_id: str, query: str, hits: list[str], **metadata: Any) -> None:
        with self.node(node_id, "retrieval", query, self.rng.uniform(0.05, 0.6), **metadata) as handle:
            handle.set_output(hits)

    @contextlib.contextmanager
    def run(
        self,
        agent: str,
        session_id: str,
        user_id: str,
        input: str,  # noqa: A002
        **metadata: Any,
    ) -> Iterator[rl.RunHandle]:
        self.stats.runs += 1
        self.stats.runs_by_agent[agent] += 1
        self.stats.sessions.add(session_id)
        self.stats.users.add(user_id)
        self._run_had_failed_node = False
        handle: rl.RunHandle | None = None
        try:
            with rl.run(
                agent, session_id, user_id=user_id, input=input, ttl_days=_TTL_DAYS[agent], metadata=metadata
            ) as handle:
                self.wait(self.rng.uniform(0.02, 0.2))
                yield handle
                self.wait(self.rng.uniform(0.01, 0.1))
        except Exception:
            self.stats.failed_runs += 1
            if handle is not None:
                self.stats.failed_run_ids.append(handle.run_id)
            # the run's exception is recorded on its span; the "process" carries on with the next request
        else:
            if self._run_had_failed_node and handle is not None:
                self.stats.runs_with_failed_nodes.append(handle.run_id)

    # ---- agents -------------------------------------------------------------------------------------------
    def bug_triager(self, session_id: str, user_id: str, index: int) -> None:
        rng = self.rng
        title, component, severity = rng.choice(_ISSUES)
        number = rng.randint(1000, 9999)
        issue = f"#{number}: {title}"
        with self.run("bug-triager", session_id, user_id, issue, channel="github", repo="acme/webapp") as run:
            self.router("route_issue", issue, "bug" if component != "docs" else "docs")
            similar = [f"#{rng.randint(1000, number - 1)}" for _ in range(rng.randint(1, 3))]
            self.retrieval("search_similar_issues", title, similar, index="issues-v3", top_k=5)
            labels = [f"component:{component}", f"severity:{severity}"]
            verdict = {
                "severity": severity,
                "labels": labels,
                "duplicate_of": similar[0] if rng.random() < 0.2 else None,
            }
            self.llm(
                "triage",
                f"Triage this issue and suggest labels.\n\n{issue}\n\nSimilar: {', '.join(similar)}",
                verdict,
                _CLAUDE,
                rng.randint(1500, 4200),
                rng.randint(150, 600),
                rng.uniform(2.0, 9.0),
            )
            for attempt in (1, 2):
                try:
                    with self.node(
                        "github.add_labels",
                        "tool",
                        {"issue": number, "labels": labels},
                        rng.uniform(0.2, 1.2),
                        attempt=attempt,
                    ) as tool:
                        roll = rng.random()
                        if roll < 0.06:
                            raise PermissionError("GitHub token lacks the issues:write scope")
                        if attempt == 1 and roll < 0.25:
                            self.wait(rng.uniform(0.1, 0.4))
                            raise RateLimitError("secondary rate limit exceeded; retry after 2s")
                        tool.set_output({"ok": True, "labels": labels})
                    break
                except RateLimitError:
                    self.wait(2.0)
            run.set_output(f"Labelled #{number} as {severity} ({component})")

    def researcher(self, session_id: str, user_id: str, index: int) -> None:
        rng = self.rng
        question = rng.choice(_QUESTIONS)
        if index:
            question = f"Follow-up: go deeper on the second point of: {question}"
        with self.run("researcher", session_id, user_id, question, channel="web", depth="standard") as run:
            queries = [f"{question.split(':')[-1].strip()[:40]} {suffix}" for suffix in ("benchmark", "docs", "2025")]
            queries = queries[: rng.randint(2, 3)]
            self.llm("plan_queries", question, queries, _SMALL, rng.randint(300, 700), rng.randint(40, 120), 1.1)
            pages = 0
            for query in queries:
                urls = [f"https://example.org/{zlib.crc32(query.encode()) % 997}/{k}" for k in range(rng.randint(2, 4))]
                self.retrieval("web.search", query, urls, engine="searx", top_k=len(urls))
                for url in urls[:2]:
                    try:
                        with self.node("fetch_page", "tool", url, rng.uniform(0.3, 3.0)) as tool:
                            if rng.random() < 0.12:
                                self.wait(10.0)
                                raise TimeoutError(f"GET {url} timed out after 10s")
                            tool.set_output(f"<{rng.randint(2, 40)} KB of text from {url}>")
                            pages += 1
                    except TimeoutError:
                        pass  # the researcher skips pages it cannot fetch
            tokens_in = pages * rng.randint(3000, 9000) + 800
            if rng.random() < 0.1:
                tokens_in = 131_072 + rng.randint(1, 20_000)
            with self.node("synthesize_report", "llm", f"{pages} sources for: {question}", rng.uniform(8, 40)) as llm:
                llm.set_model(_LARGE[0], _LARGE[1])
                if tokens_in > 128_000:
                    raise ContextWindowExceeded(f"prompt is {tokens_in} tokens; gpt-4o accepts 128000")
                tokens_out = rng.randint(600, 2000)
                cost = round(tokens_in / 1000 * _LARGE[2] + tokens_out / 1000 * _LARGE[3], 4)
                llm.set_usage(tokens_in, tokens_out)
                llm.set_cost(cost)
                self.stats.tokens += tokens_in + tokens_out
                self.stats.cost_cents += cost
                report = f"Report on '{question}': {pages} sources read; key findings: ..."
                llm.set_output(report)
            run.set_output(report)

    def support_bot(self, session_id: str, user_id: str, index: int, state: dict[str, Any]) -> None:
        rng = self.rng
        intent = "smalltalk" if index >= 2 and rng.random() < 0.5 else rng.choice(list(_SUPPORT)[:3])
        order = state.setdefault("order_id", rng.randint(10_000, 99_999))
        question, answer = (text.format(order=order) for text in _SUPPORT[intent])
        with self.run("support-bot", session_id, user_id, question, channel=rng.choice(("web", "slack"))) as run:
            with rl.turn(f"turn-{index + 1}") as turn:
                self.stats.turns += 1
                self.router("detect_intent", question, intent)
                if intent != "smalltalk":
                    self.retrieval("kb.search", intent.replace("_", " "), [f"kb/{intent}/{k}" for k in (1, 2)])
                if intent in ("order_status", "refund"):
                    with self.node("orders.lookup", "tool", {"order_id": order}, rng.uniform(0.05, 0.4)) as tool:
                        if rng.random() < 0.07:
                            raise UpstreamUnavailable("orders service returned 503 Service Unavailable")
                        tool.set_output({"order_id": order, "status": "shipped", "carrier": "DHL"})
                if intent == "refund":
                    try:
                        with self.node("refunds.create", "tool", {"order_id": order, "amount_cents": 1499}, 0.8) as t:
                            if rng.random() < 0.25:
                                raise PaymentGatewayError("payment gateway answered 502 Bad Gateway")
                            t.set_output({"refund_id": f"re_{rng.getrandbits(40):010x}", "status": "pending"})
                    except PaymentGatewayError:
                        answer = "I couldn't start the refund right now; a colleague will follow up by email."
                self.llm(
                    "compose_reply",
                    question,
                    answer,
                    _SMALL,
                    rng.randint(500, 1800),
                    rng.randint(40, 200),
                    rng.uniform(0.6, 3.5),
                )
                state.update(intent=intent, turns=index + 1)
                turn.set_state(dict(state))
                run.set_output(answer)

    def open_run(self, session_id: str, user_id: str) -> Callable[[], None]:
        """Start a run and one finished node, and leave the run open (a request still in flight).

        Returns the function that ends it; call it only after ``runlake.shutdown()`` so the end goes nowhere
        and the lake keeps the run as "running" (as when a process dies mid-run).
        """
        context = contextvars.copy_context()
        stack = contextlib.ExitStack()

        def enter() -> None:
            run = stack.enter_context(
                rl.run(
                    "researcher",
                    session_id,
                    user_id=user_id,
                    input="Draft a comparison of open table formats for agent telemetry",
                    ttl_days=_TTL_DAYS["researcher"],
                    metadata={"channel": "web", "depth": "deep"},
                )
            )
            self.stats.running_run_ids.append(run.run_id)
            self.llm("plan_queries", "open table formats", ["iceberg vs delta", "hudi"], _SMALL, 420, 60, 1.4)

        self.stats.runs += 1
        self.stats.running_runs += 1
        self.stats.runs_by_agent["researcher"] += 1
        self.stats.sessions.add(session_id)
        self.stats.users.add(user_id)
        context.run(enter)
        return lambda: context.run(stack.close)


class DemoWriteError(RuntimeError):
    """The workload ran but the lake could not be written (read-only folder, full disk)."""


def generate_workload(
    state_url: str | os.PathLike[str],
    sessions: int = 12,
    seed: int = 7,
    days: int = 7,
) -> dict[str, Any]:
    """Write a realistic agent history into the lake at ``state_url``; return a summary of what was written.

    Drives the real instrumentation: ``runlake.configure(state_url)``, then ``run`` / ``node`` / ``turn``
    for ``sessions`` sessions spread over the last ``days`` days, then ``runlake.shutdown()``. It replaces
    any runlake pipeline configured in this process. The newest session ends with one run left open, which
    the lake shows as ``running``.

    Summary keys: ``state_url`` (absolute folder), ``runs``, ``nodes``, ``failed_runs``, ``failed_nodes``,
    ``running_runs``, ``turns``, ``sessions``, ``users``, ``runs_by_agent``, ``tokens``, ``cost_cents``,
    ``failed_run_ids``, ``runs_with_failed_nodes``, ``running_run_ids``, ``seed``, ``days``.
    """
    if sessions < 1:
        raise ValueError(f"sessions must be at least 1, got {sessions}")
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    root = resolve_state_url(state_url)
    if root is None:
        raise ValueError("generate_workload() needs a state_url")
    root = root.resolve()
    rng = random.Random(seed)
    # a lake that already holds runs (an earlier demo with the same seed, say) gets sessions of its own
    from opentelemetry.exporter.runlake.layout import RUNS, table_files

    added = root.is_dir() and bool(table_files(root, RUNS))
    suffix = f"-{os.urandom(3).hex()}" if added else ""
    horizon = days * 86_400.0
    # session start times, oldest first; the newest session starts a few minutes ago
    starts = sorted((rng.uniform(900.0, horizon) for _ in range(sessions - 1)), reverse=True)
    starts.append(rng.uniform(600.0, 900.0))

    # generous queue: the demo ends spans much faster than real agents and must not drop any
    rl.configure(root, service_name="runlake-demo", max_queue_size=max(2048, sessions * 200))
    exporter = rl.current_exporter()
    close_open_run: Callable[[], None] | None = None
    work = _Workload(rng)
    try:
        for number, seconds_ago in enumerate(starts):
            newest = number == len(starts) - 1
            agent = "researcher" if newest else rng.choices(AGENTS, weights=_AGENT_WEIGHTS)[0]
            user = rng.choice(USERS)
            session_id = f"{agent.split('-')[0][:4]}-{rng.getrandbits(32):08x}{suffix}"
            runs_planned = {"bug-triager": rng.randint(1, 2), "researcher": rng.randint(1, 2)}.get(
                agent, rng.randint(2, 5)
            )
            with rl.shifted_clock(-seconds_ago) as advance:
                work.start_session(advance)
                state: dict[str, Any] = {}
                for index in range(runs_planned):
                    if index:
                        gap = rng.uniform(15.0, 240.0) if agent == "support-bot" else rng.uniform(120.0, 1800.0)
                        if work.elapsed + gap + 300.0 > seconds_ago:  # never write into the future
                            break
                        work.wait(gap)
                    if agent == "bug-triager":
                        work.bug_triager(session_id, user, index)
                    elif agent == "researcher":
                        work.researcher(session_id, user, index)
                    else:
                        work.support_bot(session_id, user, index, state)
                if newest:
                    work.wait(rng.uniform(20.0, 90.0))
                    close_open_run = work.open_run(session_id, user)
    finally:
        rl.shutdown()
        if close_open_run is not None:
            close_open_run()
    written = exporter.stats if exporter is not None else {}
    if written.get("failed_writes") or written.get("dropped_rows"):
        raise DemoWriteError(f"could not write the lake at {root}: {written.get('failing') or 'write failed'}")
    stats = work.stats
    return {
        "state_url": str(root),
        "runs": stats.runs,
        "nodes": stats.nodes,
        "failed_runs": stats.failed_runs,
        "failed_nodes": stats.failed_nodes,
        "running_runs": stats.running_runs,
        "turns": stats.turns,
        "sessions": len(stats.sessions),
        "users": len(stats.users),
        "runs_by_agent": dict(sorted(stats.runs_by_agent.items())),
        "tokens": stats.tokens,
        "cost_cents": round(stats.cost_cents, 4),
        "failed_run_ids": stats.failed_run_ids,
        "runs_with_failed_nodes": stats.runs_with_failed_nodes,
        "running_run_ids": stats.running_run_ids,
        "seed": seed,
        "days": days,
        "added_to_existing": added,
    }


def lake_usage(state_url: str | os.PathLike[str]) -> tuple[Path, int, int]:
    """``(absolute root, number of part files, total bytes)`` of a lake, listed through the layout module."""
    from opentelemetry.exporter.runlake.layout import TABLES, table_files

    root = resolve_state_url(state_url)
    if root is None:
        raise ValueError("no state_url")
    root = root.resolve()
    files = [f for table in TABLES for f in table_files(root, table)]
    size = 0
    for file in files:
        with contextlib.suppress(OSError):
            size += file.stat().st_size
    return root, len(files), size
