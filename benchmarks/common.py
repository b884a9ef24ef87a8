"""Helpers for the runlake benchmarks: span generation, interleaved timing, peak memory, answers, tables.

Nothing here is a test. Spans are made with the real OpenTelemetry SDK through runlake's own
instrumentation (``runlake.run`` / ``turn`` / ``node`` under ``shifted_clock``), collected in memory, and
reordered the way an ingest server receives them: many sessions in flight, their spans interleaved.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# ---- the process-wide provider -----------------------------------------------------------------------------
# runlake's instrumentation resolves the global tracer provider, which can be set only once per process.
# One provider is installed here; what happens to the spans is switched by pointing ``SWITCH.target``
# at another processor (in-memory collector, a dropping processor, or the real runlake pipeline).


class SwitchProcessor(SpanProcessor):
    """Forwards to ``target`` (a processor or None = drop everything)."""

    def __init__(self) -> None:
        self.target: SpanProcessor | None = None

    def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001
        target = self.target
        if target is not None:
            target.on_start(span, parent_context)

    def on_end(self, span) -> None:  # noqa: ANN001
        target = self.target
        if target is not None:
            target.on_end(span)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self.target.force_flush(timeout_millis) if self.target is not None else True


class DropProcessor(SpanProcessor):
    """A processor that receives every span and keeps none (measures instrumentation only)."""

    def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001
        pass

    def on_end(self, span) -> None:  # noqa: ANN001
        pass


class MultiProcessor(SpanProcessor):
    """Calls several processors in order, like the SDK's synchronous multi-processor."""

    def __init__(self, processors: Sequence[SpanProcessor]) -> None:
        self.processors = list(processors)

    def on_start(self, span, parent_context=None) -> None:  # noqa: ANN001
        for p in self.processors:
            p.on_start(span, parent_context)

    def on_end(self, span) -> None:  # noqa: ANN001
        for p in self.processors:
            p.on_end(span)

    def shutdown(self) -> None:
        for p in self.processors:
            p.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)


SWITCH = SwitchProcessor()
_PROVIDER: TracerProvider | None = None


def provider() -> TracerProvider:
    """The global SDK provider (installed on first call), with ``SWITCH`` as its only processor."""
    global _PROVIDER
    if _PROVIDER is None:
        _PROVIDER = TracerProvider(resource=Resource.create({"service.name": "bench-agents"}))
        _PROVIDER.add_span_processor(SWITCH)
        trace.set_tracer_provider(_PROVIDER)
        if trace.get_tracer_provider() is not _PROVIDER:
            raise RuntimeError("another global TracerProvider is already installed")
    return _PROVIDER


# ---- text --------------------------------------------------------------------------------------------------
_SYLLABLES = [
    c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou", "ea", "er", "an", "in", "or")
]


class TextMaker:
    """Prose-like text: a Zipf-distributed vocabulary of pseudo-words, so it compresses like real prose
    (neither random bytes nor one repeated template)."""

    def __init__(self, rng: random.Random, vocabulary: int = 6000) -> None:
        self.rng = rng
        words = set()
        while len(words) < vocabulary:
            words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((1, 2, 2, 3, 3, 4)))))
        self.words = sorted(words)
        rng.shuffle(self.words)
        weights = [1.0 / (rank + 1) for rank in range(vocabulary)]
        total = 0.0
        self.cum: list[float] = []
        for w in weights:
            total += w
            self.cum.append(total)

    def text(self, nbytes: int) -> str:
        words = self.rng.choices(self.words, cum_weights=self.cum, k=max(3, nbytes // 6))
        out = " ".join(words)
        return (out[:nbytes].rsplit(" ", 1)[0] + ".").capitalize()


_json_string = json.encoder.encode_basestring_ascii  # json.dumps(str), the C function


CHAT_BUDGET = 24_000  # an llm call's messages are trimmed to this many characters (the model's window)


class Chat:
    """One session's conversation as an LLM instrumentation records it: the JSON list of role-tagged messages
    (``[{"role": "system", "content": …}, {"role": "user", …}, …]``) that a chat API call sends.

    Chat APIs are stateless, so every llm call re-sends the conversation: the system prompt, the session's earlier
    user requests and answers (a session is one conversation, a run one user turn), then the current run's request,
    retrieved context, assistant tool calls and tool results (the ReAct loop). When a run ends only its request
    and answer stay in the history (the framework's chat history; intermediate steps are per run). ``prompt()`` is
    the messages list trimmed, oldest first after the system prompt, to ``budget`` characters, as frameworks trim to
    the model's window. Messages are serialised once when added; a prompt is a join of the kept ones.
    """

    __slots__ = ("budget", "parts", "roles", "run_start")

    def __init__(self, system_prompt: str, budget: int) -> None:
        self.budget = budget
        self.parts = [json.dumps({"role": "system", "content": system_prompt})]
        self.roles = ["system"]
        self.run_start = 1

    def add(self, role: str, content: str, **extra: Any) -> None:
        if extra:
            self.parts.append(json.dumps({"role": role, "content": content, **extra}))
        else:  # what json.dumps writes for {"role": role, "content": content}, 2× faster
            self.parts.append(f'{{"role": "{role}", "content": {_json_string(content)}}}')
        self.roles.append(role)

    def begin_run(self, request: str) -> None:
        self.run_start = len(self.parts)
        self.add("user", request)

    def end_run(self, answer: str | None) -> None:
        """Keep the run's request and answer; drop its context, tool calls and tool results. A failed run
        (``answer`` None) leaves nothing behind (the framework rolls its history back)."""
        request = self.parts[self.run_start]
        del self.parts[self.run_start :], self.roles[self.run_start :]
        if answer is not None:
            self.parts.append(request)
            self.roles.append("user")
            self.add("assistant", answer)

    def prompt(self) -> str:
        parts, roles = self.parts, self.roles
        size = sum(map(len, parts)) + 2 * len(parts)
        first = 1
        last = len(parts) - 1  # the newest message is always sent
        while first < last and (size > self.budget or roles[first] == "tool"):  # no tool result without its call
            size -= len(parts[first]) + 2
            first += 1
        return "[" + ", ".join([parts[0], *parts[first:]]) + "]"


# ---- span generation ---------------------------------------------------------------------------------------
MODELS = [
    ("gpt-4o-mini", "openai"),
    ("gpt-4.1", "openai"),
    ("claude-sonnet-4", "anthropic"),
    ("gemini-2.5-flash", "gcp.gemini"),
]
TOOLS = ["web_search", "sql_query", "read_file", "send_email", "calculator", "http_get", "vector_lookup"]
AGENTS = [f"agent-{name}" for name in ("support", "sales", "research", "coder", "triage", "billing", "hr", "ops")]


@dataclass
class SpanSet:
    spans: list[ReadableSpan]  # in arrival order (sessions interleaved)
    sessions: int
    runs: int
    users: int
    days: int

    def batches(self, size: int = 512) -> list[list[ReadableSpan]]:
        return [self.spans[i : i + size] for i in range(0, len(self.spans), size)]


def build_spans(
    n_spans: int,
    *,
    days: int = 1,
    concurrency: int = 256,
    users: int = 300,
    runs_per_session: tuple[int, int] = (1, 9),
    seed: int = 7,
    text_model: str = "prose",
) -> SpanSet:
    """Make at least ``n_spans`` finished spans through ``runlake.run/turn/node`` (real SDK, real clock
    shifted into the past) and return them in the order an ingest server would receive them.

    A session is a conversation of several runs; ``days`` spreads session starts over the last ``days``
    UTC days (1 = all within the last hour). Arrival order: ``concurrency`` sessions are in flight at once
    and their spans interleave at random, so one 512-span batch touches hundreds of sessions.

    ``text_model``: ``"prose"`` gives every text attribute fresh prose; ``"chat"`` makes an llm node's input the
    session's conversation as a JSON messages list (``Chat``), as chat-API instrumentations record it.
    """
    if text_model not in ("prose", "chat"):
        raise ValueError(f"text_model must be 'prose' or 'chat', not {text_model!r}")
    import runlake

    provider()
    rng = random.Random(seed)
    texts = TextMaker(rng)
    collector = InMemorySpanExporter()
    SWITCH.target = SimpleSpanProcessor(collector)
    now = time.time()
    user_weights = [1.0 / (rank + 1) ** 0.8 for rank in range(users)]  # a few heavy users, a long tail
    per_session: list[list[ReadableSpan]] = []
    made = runs = 0
    try:
        while made < n_spans:
            s = len(per_session)
            session_id = f"sess-{seed}-{s:06d}-{rng.getrandbits(32):08x}"
            user_id = f"user-{rng.choices(range(users), weights=user_weights)[0]:04d}"
            agent = rng.choice(AGENTS)
            if days <= 1:
                start = now - 3600 + rng.random() * 3000
            else:
                start = now - rng.random() * (days - 0.1) * 86400 - 600
            chat = (
                Chat(f"You are {agent}. " + texts.text(rng.randint(500, 1400)), CHAT_BUDGET)
                if text_model == "chat"
                else None
            )
            for _ in range(rng.randint(*runs_per_session)):
                _one_run(runlake, rng, texts, start - time.time(), session_id, user_id, agent, chat)
                runs += 1
                start += rng.uniform(20, 600)
            spans = list(collector.get_finished_spans())
            collector.clear()
            per_session.append(spans)
            made += len(spans)
    finally:
        SWITCH.target = None
    arrival = interleave(per_session, concurrency, rng)
    return SpanSet(arrival, len(per_session), runs, len({_attr(s, "user.id") for s in arrival}), days)


def freeze_prebuilt() -> None:
    """Move everything alive now (the pre-built spans) out of the cyclic GC's reach (``gc.freeze``).

    Without it, every full collection during a timed case walks the tens of thousands of pre-built spans,
    a cost a real exporter process (whose queue holds at most a few thousand spans) does not pay, and one
    that penalises allocation-heavy exporters most: the stock JSON exporter ran 3–4× slower with 20k
    spans alive. ``gc.unfreeze()`` undoes it.
    """
    gc.collect()
    gc.freeze()


def _attr(span: ReadableSpan, key: str) -> Any:
    return (span.attributes or {}).get(key)


def iter_interleaved(
    streams: Iterable[Iterable[ReadableSpan]], concurrency: int, rng: random.Random
) -> Iterator[ReadableSpan]:
    """Merge per-session span streams: ``concurrency`` sessions in flight, one span at a time at random.

    Both levels are consumed lazily: a new session is taken only when one in flight ends, and a session's spans
    are drawn one at a time (a session may be a generator that makes its spans as it goes), so memory stays
    bounded. Empty sessions are skipped.
    """
    pending = iter(streams)
    active: list[Iterator[ReadableSpan]] = []
    heads: list[ReadableSpan] = []  # each active session's next span

    def start() -> tuple[Iterator[ReadableSpan], ReadableSpan] | None:
        for stream in pending:
            it = iter(stream)
            first = next(it, None)
            if first is not None:
                return it, first
        return None

    while len(active) < concurrency:
        got = start()
        if got is None:
            break
        active.append(got[0])
        heads.append(got[1])
    while active:
        i = rng.randrange(len(active))
        yield heads[i]
        nxt = next(active[i], None)
        if nxt is not None:
            heads[i] = nxt
            continue
        got = start()
        if got is None:
            active[i], heads[i] = active[-1], heads[-1]
            active.pop()
            heads.pop()
        else:
            active[i], heads[i] = got


def interleave(per_session: list[list[ReadableSpan]], concurrency: int, rng: random.Random) -> list[ReadableSpan]:
    """``iter_interleaved`` as a list."""
    return list(iter_interleaved(per_session, concurrency, rng))


def fs_probe(scratch: Path, count: int = 200) -> tuple[float, float]:
    """Milliseconds per mkdir and per create+write+rename of a 16 KB file in ``scratch`` (per-file costs)."""
    probe = scratch / "fs-probe"
    probe.mkdir()
    start = time.perf_counter()
    for i in range(count):
        (probe / f"d{i}").mkdir()
    mkdir_s = (time.perf_counter() - start) / count
    payload = b"x" * 16_384
    start = time.perf_counter()
    for i in range(count):
        tmp = probe / f"d{i}" / ".f.tmp"
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, probe / f"d{i}" / "f.parquet")
    create_s = (time.perf_counter() - start) / count
    shutil.rmtree(probe)
    return mkdir_s * 1e3, create_s * 1e3


def _one_run(
    runlake: Any,
    rng: random.Random,
    texts: TextMaker,
    offset: float,
    session_id: str,
    user_id: str,
    agent: str,
    chat: Chat | None = None,
) -> None:
    """One agent run: run → turn → 2–7 nodes (retrieval, llm calls, tools), with realistic durations. With a
    ``chat``, llm inputs are its messages list and the run's request, context, answers and tool results join it."""
    from runlake.instrument import shifted_clock

    fail_run = rng.random() < 0.01
    request = texts.text(rng.randint(80, 400))
    if chat is not None:
        chat.begin_run(request)
    answer = None
    with shifted_clock(offset) as advance:
        try:
            with runlake.run(
                agent,
                session_id,
                user_id=user_id,
                input=request,
                metadata={"channel": rng.choice(("web", "api", "slack")), "version": "1.4.2"},
            ) as r:
                with runlake.turn(f"turn-{rng.getrandbits(24):06x}"):
                    advance(rng.uniform(0.005, 0.05))
                    if rng.random() < 0.5:
                        with runlake.node("retrieve_docs", type="retrieval", input=texts.text(120)) as n:
                            advance(rng.lognormvariate(-2.5, 0.6))
                            found = texts.text(rng.randint(300, 700))
                            n.set_output(found)
                        if chat is not None:
                            chat.add("system", "Context:\n" + found)
                    for _ in range(rng.randint(1, 3)):
                        model, prov = rng.choice(MODELS)
                        prompt = chat.prompt() if chat is not None else texts.text(rng.randint(200, 600))
                        with runlake.node("chat_completion", type="llm", input=prompt) as n:
                            n.set_model(model, prov)
                            tin, tout = rng.randint(200, 4000), rng.randint(20, 800)
                            n.set_usage(tin, tout)
                            n.set_cost(round(tin * 0.00015 + tout * 0.0006, 4))
                            advance(rng.lognormvariate(0.0, 0.6))
                            said = texts.text(rng.randint(100, 500))
                            n.set_output(said)
                        if chat is not None:
                            chat.add("assistant", said)
                        if rng.random() < 0.6:
                            tool = rng.choice(TOOLS)
                            result = f"TimeoutError: {tool} timed out"
                            try:
                                with runlake.node(tool, type="tool", input={"query": texts.text(60), "k": 5}) as n:
                                    advance(rng.lognormvariate(-1.8, 1.0))
                                    if rng.random() < 0.03:
                                        raise TimeoutError(f"{tool} timed out")
                                    result = texts.text(rng.randint(100, 400))
                                    n.set_output(result)
                            except TimeoutError:
                                pass
                            if chat is not None:
                                chat.add("tool", result)
                    if fail_run:
                        raise RuntimeError("agent gave up: " + texts.text(40))
                    answer = texts.text(rng.randint(150, 500))
                    r.set_output(answer)
        except RuntimeError:
            pass
    if chat is not None:
        chat.end_run(answer)


def hardlink_copy(src: Path, dst: Path) -> None:
    """A snapshot that costs no data copy: the same files, linked (compaction and TTL of one do not touch the other)."""
    for folder, _, names in os.walk(src):
        target = dst / Path(folder).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            os.link(Path(folder) / name, target / name)


# ---- timing ------------------------------------------------------------------------------------------------
class Stopwatch:
    """Wall time and process CPU time (all threads, user + system) since creation."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.cpu = time.process_time()

    def stop(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def interleaved(cases: dict[str, Callable[[], Any]], repeats: int, label: str = "") -> dict[str, list[Any]]:
    """Run each case ``repeats`` times, interleaved (a, b, c, a, b, c, ...), rotating the order each round.

    Each case returns its own measurement (seconds, or a ``Stopwatch.stop()`` pair), so set-up and clean-up
    stay outside the timed region.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            times[name].append(cases[name]())
        if label:
            print(f"  .. {label}: round {r + 1}/{repeats} done", file=sys.stderr, flush=True)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float:
    """Median over rounds of numerator[i] / denominator[i]: each ratio compares two cases timed side by side
    in the same round, so slow drifts of a shared, noisy machine cancel out."""
    return statistics.median(a / b for a, b in zip(numerator, denominator) if b)


# ---- peak memory -------------------------------------------------------------------------------------------
def _proc_status() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(value.split()[0]) * 1024
    return out


def peak_memory_in_child(fn: Callable[..., Any], setup: Callable[[], Any] | None = None) -> int | None:
    """Peak resident-memory growth (bytes) of ``fn()`` (or ``fn(setup())``) run once in a forked child.

    The child inherits the parent's state (pre-built spans, lake), resets the kernel's RSS high-water mark
    (``/proc/self/clear_refs`` = 5), runs ``fn`` and reports ``VmHWM - VmRSS at start``: every byte the case
    made resident (Python objects, Arrow buffers, zstd/DuckDB memory), without disturbing the timings.
    Returns None where this is not available (not Linux).
    """
    if not hasattr(os, "fork") or not os.path.exists("/proc/self/clear_refs"):
        return None
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            os.close(read_fd)
            state = setup() if setup is not None else None
            gc.collect()
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _proc_status()["VmRSS"]
            fn(state) if setup is not None else fn()
            peak = _proc_status()["VmHWM"]
            os.write(write_fd, str(max(0, peak - base)).encode())
        except BaseException as error:  # noqa: BLE001
            os.write(write_fd, f"error {type(error).__name__}: {error}".encode())
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    while True:
        chunk = os.read(read_fd, 4096)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    if text.startswith("error"):
        print(f"  !! memory pass failed: {text}", file=sys.stderr)
        return None
    return int(text) if text else None


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between the closest ranks of sorted values: DuckDB's ``quantile_cont``."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


# ---- comparing answers -------------------------------------------------------------------------------------
# An answer is checked through a signature: a dict {field: value} of what a user reads in it, in its order.
class Approx:
    """A number known to ``± tol`` (its resolution: a rounded display, a truncated column): equal to another when
    they differ by no more than both tolerances together (and float noise). None equals None only."""

    __slots__ = ("tol", "value")

    def __init__(self, value: float | None, tol: float = 0.0) -> None:
        self.value = None if value is None else float(value)
        self.tol = tol

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Approx):
            return NotImplemented
        if self.value is None or other.value is None:
            return self.value is None and other.value is None
        slack = self.tol + other.tol + 1e-9 * max(abs(self.value), abs(other.value), 1.0)
        return abs(self.value - other.value) <= slack

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return "None" if self.value is None else f"{self.value:.6g}±{self.tol:.2g}"


def comparable_text(value: Any) -> Any:
    """Text as compared: itself when short, else its start, length and a hash (signatures are kept per call)."""
    if not isinstance(value, str) or len(value) <= 48:
        return value
    digest = hashlib.blake2b(value.encode(), digest_size=8).hexdigest()
    return f"{value[:24]!r}… ({len(value):,} chars, #{digest})"


def differing_fields(reference: dict[str, Any], other: dict[str, Any]) -> list[str]:
    """The fields both signatures hold whose values differ."""
    return [name for name, value in reference.items() if name in other and other[name] != value]


def first_difference(a: Any, b: Any, where: str = "", reference: str = "runlake") -> str:
    """Where two signature values first differ, and the two values there (for the report); ``a`` is the
    ``reference``'s."""
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where}: {len(a)} items vs {len(b)}"
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return first_difference(x, y, f"{where}[{i}]", reference)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            only_ref, only_here = sorted(a.keys() - b.keys())[:4], sorted(b.keys() - a.keys())[:4]
            return f"{where}: keys only in {reference} {only_ref}, only here {only_here}"
        for k in a:
            if a[k] != b[k]:
                return first_difference(a[k], b[k], f"{where}[{k!r}]", reference)
    return f"{where}: {reference} {_short(a)} vs {_short(b)}"


def _short(value: Any, width: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# ---- formatting --------------------------------------------------------------------------------------------
def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]], notes: Sequence[str] = ()) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = "  ".join("-" * w for w in widths)
    print()
    print(f"== {title}")
    print("  ".join(str(h).ljust(w) for h, w in zip(header, widths)))
    print(line)
    for row in rows:
        cells = [str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        print("  ".join(cells))
    for note in notes:
        print(f"   {note}")


def machine() -> dict[str, str]:
    import duckdb
    import pyarrow
    from opentelemetry.sdk.version import __version__ as otel_sdk

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cores": str(os.cpu_count()),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "pyarrow": pyarrow.__version__,
        "opentelemetry-sdk": otel_sdk,
    }
