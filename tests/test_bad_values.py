"""Values an application or another instrumentation may hand over that no column can hold as they are: out-of-range
numbers, NaN, metadata that is not JSON, ids that are not strings. None of them may cost another run its place."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
from opentelemetry import trace
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.mapping import COL, RUN_COLUMNS, SpanMapper, run_row
from opentelemetry.exporter.runlake.writer import LakeWriter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from test_exporter import make_spans

import runlake
from runlake.instrument import shifted_clock
from runlake.service import ExecutionHistoryService


def foreign_run(session: str, **attributes: object) -> list:
    """One run span of another instrumentation (OTel GenAI) carrying ``attributes`` as they are, plus a node."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("other")
    run_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "other", "session.id": session}
    with tracer.start_as_current_span("invoke_agent other", attributes={**run_attrs, **attributes}):
        with tracer.start_as_current_span("chat", attributes={"gen_ai.operation.name": "chat", **attributes}):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


def test_the_api_refuses_numbers_no_column_can_hold(configured: Path) -> None:
    with runlake.run("bot", "s-api") as run:
        with runlake.node("llm") as node:
            for bad in (2**63, -1, "many", "7", True, b"1", float("nan")):
                with pytest.raises(ValueError, match="input_tokens"):
                    node.set_usage(input_tokens=bad)
            for bad in (float("inf"), float("-inf"), float("nan"), "x", "2", True, None):
                with pytest.raises(ValueError, match="cents"):
                    node.set_cost(cents=bad)
            node.set_usage(input_tokens=2**62, output_tokens=2**62)  # the total is clamped, not an overflow
            node.set_usage(input_tokens=1.6)  # a float count is rounded
        run.set_output("ok")
    for bad in (0, -3, 2.7, 2**31, 10**9, "abc", "30", True, None):
        with pytest.raises(ValueError, match="ttl_days"):
            with runlake.run("bot", "s-ttl", ttl_days=bad):  # type: ignore[arg-type]
                pass
    runlake.shutdown()
    [item] = runlake.HistoryDB(configured).get_history()
    assert item["status"] == "completed" and item["tokens_used"] == 2 + 2**62


def test_foreign_values_out_of_range_are_left_out_and_every_run_stays(lake: Path) -> None:
    """int64 overflow, NaN / infinite cost, a ttl of a billion days: the columns get None (or the ttl cap), the
    runs index is written, other sessions' runs are all there, statistics and TTL work."""
    exporter = RunlakeSpanExporter(lake)
    good = make_spans(8, sessions=2, prefix="good")
    bad = foreign_run("bad-1", **{"gen_ai.usage.input_tokens": 2**63, "runlake.cost.cents": float("inf")})
    bad += foreign_run("bad-2", **{"runlake.cost.cents": float("nan"), "runlake.ttl_days": 10**9})
    bad += foreign_run("bad-3", **{"gen_ai.usage.output_tokens": 2**62})  # two spans: the run's sum passes int64
    assert exporter.export(good[:4] + bad + good[4:]).name == "SUCCESS"
    exporter.shutdown()
    assert exporter.stats["dropped_rows"] == 0 and exporter.stats["failed_writes"] == 0
    db = runlake.HistoryDB(lake)
    history = db.get_history(limit=100)
    assert {h["run_id"] for h in history} == {f"{s.context.span_id:016x}" for s in good + bad if not s.parent}
    assert all(h["cost_cents"] == 0 for h in history)
    [(ttl, cost, tokens)] = db.sql(
        "SELECT max(ttl_days), max(cost_cents), max(input_tokens) FROM spans WHERE session_id LIKE 'bad-%'"
    ).fetchall()
    assert ttl == 36_500 and cost is None and tokens is None
    [(summed,)] = db.sql("SELECT output_tokens FROM runs WHERE session_id = 'bad-3'").fetchall()
    assert summed == 2**62  # the run's own value; the node sum would be 2**63
    statistics = ExecutionHistoryService(lake).statistics_per_user(days=3650)
    assert statistics and all(math.isfinite(s["avg_cost_cents"] or 0) for s in statistics.values())
    assert db.cleanup_expired(now=None) == {"executions_deleted": 0, "nodes_deleted": 0}


def test_a_time_past_the_int64_range_rejects_that_span_alone(lake: Path) -> None:
    """A unit slip (a start in µs·1000, a year past 2262 or past 9999) cannot be a day folder: that span is
    rejected and counted, the rest of its batch is stored and every reader still answers (it used to cost the
    whole batch uncounted, or be stored with a null start that broke history and traces for every user)."""
    good = make_spans(6, sessions=2, prefix="good")
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("slip")
    attrs = {"runlake.span.type": "run", "gen_ai.agent.name": "slip", "session.id": "s-slip"}
    start = good[0].start_time
    for begin, end in ((start * 1000, start * 1000 + 1), (2**63 + 5, 2**63 + 9), (start, 2**64)):
        tracer.start_span("slip", attributes=attrs, start_time=begin).end(end_time=end)
    bad = list(memory.get_finished_spans())
    exporter = RunlakeSpanExporter(lake)
    assert exporter.export(good[:3] + bad + good[3:]).name == "FAILURE"  # some of the batch could not be stored
    exporter.shutdown()
    assert exporter.stats["rejected_spans"] == 3 and exporter.stats["dropped_rows"] == 0
    db = runlake.HistoryDB(lake)
    roots = {f"{s.context.span_id:016x}" for s in good if not s.parent}
    assert {h["run_id"] for h in db.get_history(limit=100)} == roots
    assert {t["trace_id"] for t in db.get_traces(limit=100)} == {f"{s.context.trace_id:032x}" for s in good}
    assert db.get_runs("s-slip") == []
    assert not [p for p in lake.rglob("day=*") if not p.name.startswith("day=20")]


def test_bytes_attribute_values_are_text_not_a_python_repr(lake: Path) -> None:
    """The SDK keeps bytes attribute values as they are (OTLP has bytes values): UTF-8 is stored as its text, other
    bytes in base64 (as OTLP/JSON writes them) — in the columns, the attributes JSON and through OTLP ingest alike."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

    from runlake.otlp import decode_request

    spans = foreign_run(
        "bytes-1",
        **{"input.value": b"caf\xc3\xa9 input", "gen_ai.request.model": b"gpt-bytes", "blob": b"\x00\x01\xff"},
    )
    received = decode_request(encode_spans(spans).SerializeToString(), "application/x-protobuf").spans
    for where, batch in ((lake / "exported", spans), (lake / "received", received)):  # as a server receives them
        exporter = RunlakeSpanExporter(where)
        assert exporter.export(batch).name == "SUCCESS"
        exporter.shutdown()
        rows = runlake.HistoryDB(where).sql("SELECT input, model, attributes FROM spans").fetchall()
        assert len(rows) == 2
        for text, model, attributes in rows:
            assert (text, model) == ("café input", "gpt-bytes")
            assert json.loads(attributes)["blob"] == "AAH/"


def test_a_value_arrow_cannot_encode_becomes_null_alone(lake: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Defence in depth: a row that reached the writer with a value Arrow refuses keeps its other values (the bad
    one stored as null, counted and said); the rows beside it are written, and the writer is not left failing."""
    mapper = SpanMapper()
    rows = [mapper.map_span(s) for s in make_spans(6, sessions=1, prefix="w")]
    runs = [run_row(r, None) for r in rows if r[COL["span_type"]] == "run"]
    poisoned = list(runs[0])
    poisoned[RUN_COLUMNS.index("input_tokens")] = 2**70
    writer = LakeWriter(lake, background=False)
    with caplog.at_level(logging.ERROR):
        writer.add(rows, [tuple(poisoned), *runs[1:]])
        assert writer.flush() is True and writer.failing is None
    assert writer.stats.repaired_values == 1 and writer.stats.dropped_rows == 0
    assert "stored 1 values of runs rows as null" in caplog.text and "input_tokens" in caplog.text
    db = runlake.HistoryDB(lake)
    assert len(db.get_runs("w0")) == len(runs)
    assert db.sql("SELECT count(*), count(input_tokens) FROM runs").fetchall() == [(len(runs), len(runs) - 1)]


def test_metadata_and_outputs_are_stored_as_a_user_expects(configured: Path) -> None:
    class Ticket:
        def __str__(self) -> str:
            return "TICKET-7"

    looped: dict = {"k": 1}
    looped["self"] = looped
    with runlake.run("bot", 12345, metadata={(1, 2): "tuple key", "loop": looped}) as run:  # type: ignore[arg-type]
        with runlake.node("bytes") as node:
            node.set_output(b"caf\xc3\xa9 \xff")
        with runlake.node("none") as node:
            node.set_output(None)
        run.set_output(Ticket())
    runlake.shutdown()
    db = runlake.HistoryDB(configured)
    [run_dict] = db.get_runs(12345)  # type: ignore[arg-type]
    assert run_dict["output_content"] == "TICKET-7"
    assert run_dict["metadata"]["(1, 2)"] == "tuple key" and run_dict["metadata"]["loop"]["self"] == "<cycle>"
    nodes = {n["id"]: n for n in db.get_logs(run_dict["run_id"])["nodes"]}
    assert nodes["bytes"]["output"] == "café \ufffd" and nodes["none"]["output"] is None


def test_metadata_of_another_instrumentation_that_is_not_json_keeps_the_run(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake)
    exporter.export(foreign_run("meta", **{"runlake.metadata": "plain words, not JSON"}))
    exporter.shutdown()
    [run_dict] = runlake.HistoryDB(lake).get_runs("meta")
    assert run_dict["metadata"]["value"] == "plain words, not JSON"


def test_shutdown_says_what_is_lost_when_the_lake_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("x")
    exporter = RunlakeSpanExporter(not_a_folder)
    with caplog.at_level(logging.ERROR):
        exporter.export(make_spans(5))  # buffered: the lake is only found refusing at the flush
        exporter.shutdown()
    assert "rows not written" in caplog.text and "they are lost" in caplog.text


def test_a_huge_ttl_folder_does_not_stop_ttl(lake: Path) -> None:
    runlake.configure(lake)
    try:
        with shifted_clock(-5 * 86400):
            with runlake.run("bot", "old", ttl_days=1):
                pass
            with runlake.run("bot", "kept", ttl_days=36_500):
                pass
    finally:
        runlake.shutdown()
    (lake / "spans" / "tenant=default" / "ttl=999999999" / "day=2026-01-01").mkdir(parents=True)  # foreign folder
    assert runlake.HistoryDB(lake).cleanup_expired()["executions_deleted"] == 1
    assert [r["session_id"] for r in runlake.HistoryDB(lake).get_runs("kept")] == ["kept"]


def test_api_misuse_is_said_once_not_silently_lost(lake: Path, caplog: pytest.LogCaptureFixture) -> None:
    import runlake.instrument as instrument

    instrument._warned.clear()
    not_a_folder = lake.parent / "file-lake"
    not_a_folder.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        runlake.configure(not_a_folder)
    runlake.configure(lake)
    try:
        with caplog.at_level(logging.WARNING):
            for _ in range(3):
                with runlake.node("orphan"):
                    pass
            with runlake.run("bot", "s-switch"):
                runlake.configure(lake)
    finally:
        runlake.shutdown()
    assert caplog.text.count("outside any run") == 1
    assert "configure() inside an open run" in caplog.text


def test_decorated_generators_span_their_iteration(configured: Path) -> None:
    """A streaming step (sync or async generator) lasts from its first item to its last, records what it yielded,
    fails with an error raised while iterating, owns the nodes opened in its body, and is not current for the
    caller's code between two items."""
    import asyncio

    @runlake.step(type="llm")
    def stream(words: int) -> object:
        for i in range(words):
            with runlake.node(f"inner-{i}", type="tool"):
                pass
            yield f"w{i} "

    @runlake.step(type="llm")
    def broken() -> object:
        yield "one"
        raise RuntimeError("stream cut")

    @runlake.step(type="llm")
    async def astream(words: int) -> object:
        for i in range(words):
            await asyncio.sleep(0)
            yield f"a{i} "

    with runlake.run("bot", "s-gen") as run:
        got = []
        for word in stream(3):
            with runlake.node(f"caller-{word.strip()}", type="tool"):  # between items: a child of the run
                got.append(word)
        with pytest.raises(RuntimeError, match="stream cut"):
            list(broken())
        first = stream(5)
        next(first)
        first.close()  # the consumer stops early: the span ends, not failed

        @runlake.step(type="tool")
        def echo() -> object:
            got = yield "ready"
            while True:
                try:
                    got = yield f"echo {got}"
                except KeyError as error:
                    got = yield f"caught {error}"

        chat = echo()  # send() and throw() reach the generator as they would undecorated
        replies = [next(chat), chat.send(1), chat.throw(KeyError("k")), chat.send(2), chat.throw(KeyError("j"))]
        assert replies == ["ready", "echo 1", "caught 'k'", "echo 2", "caught 'j'"]
        chat.close()

        async def consume() -> list:
            return [w async for w in astream(2)]

        assert asyncio.run(consume()) == ["a0 ", "a1 "]
    runlake.shutdown()
    assert got == ["w0 ", "w1 ", "w2 "]
    db = runlake.HistoryDB(configured)
    logs = db.get_logs(run.run_id)
    nodes = {n["id"]: n for n in logs["nodes"]}
    assert sorted(n["output"] for n in logs["nodes"] if n["id"] == "stream") == ["w0 ", "w0 w1 w2 "]  # one closed
    assert nodes["broken"]["status"] == "failed" and "stream cut" in (nodes["broken"]["error_message"] or "")
    assert nodes["astream"]["output"] == "a0 a1 " and nodes["astream"]["status"] == "completed"
    spans = [s for t in db.get_traces(session_id="s-gen") for s in t["spans"]]
    run_span = next(s["span_id"] for s in spans if s["parent_span_id"] is None)
    stream_ids = {s["span_id"] for s in spans if s["name"].endswith(" stream")}
    assert len(stream_ids) == 2
    assert {s["parent_span_id"] for s in spans if "caller-" in s["name"]} == {run_span}, "not inside the stream"
    assert {s["parent_span_id"] for s in spans if "inner-" in s["name"]} <= stream_ids, "the stream owns its body"


def test_runs_before_configure_are_said_to_go_nowhere(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = "import runlake\nfor i in range(3):\n    with runlake.run('bot', 's'):\n        pass\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("call runlake.configure() first") == 1


def test_a_lone_surrogate_costs_one_character_not_the_value_or_the_reads(configured: Path) -> None:
    """A lone surrogate (no UTF-8 for it) becomes U+FFFD in the column and in the folder name alike, and reads by the
    id as given find the run instead of raising."""
    odd = "\ud800surr"
    with runlake.run("bot", odd, user_id=odd) as run:
        with runlake.node(odd, type="tool") as node:
            node.set_output("ok \udc00")
    runlake.shutdown()
    db = runlake.HistoryDB(configured)
    [stored] = db.get_runs(odd)
    assert stored["session_id"] == "\ufffdsurr" and stored["run_id"] == run.run_id
    [node_row] = db.get_logs(run.run_id)["nodes"]
    assert node_row["id"] == "\ufffdsurr" and node_row["output"] == "ok \ufffd"
    assert len(db.get_traces(user_id=odd)) == 1 and len(db.get_traces(session_id=odd)) == 1
    folders = {p.name for p in configured.rglob("session=*")}
    assert folders == {"session=%EF%BF%BDsurr"}, folders


def _strict_json(text: str) -> object:
    """``json.loads`` that refuses what is not JSON but Python accepts (NaN, Infinity, -Infinity)."""

    def refuse(constant: str) -> object:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_nan_and_infinity_in_flattened_messages_are_null_in_the_nodes_text(configured: Path) -> None:
    """OpenLLMetry's ``gen_ai.prompt.{i}.*`` and OpenInference's ``llm.input_messages.{i}.message.*`` fields become
    the node's input and output as JSON: a NaN or infinite field (alone or in a list) is null there, as a number
    column stores None for it, so every JSON parser reads the text; the other fields and the text "NaN" stay."""
    tracer = trace.get_tracer("other")
    with runlake.run("agent", session_id="nan-messages") as r:
        with tracer.start_as_current_span(
            "openai.chat",
            attributes={
                "llm.request.type": "chat",
                "gen_ai.prompt.0.role": "user",
                "gen_ai.prompt.0.content": "is NaN a number?",
                "gen_ai.prompt.0.temperature": float("nan"),
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.scores": (1.5, float("inf"), float("-inf")),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "ChatCompletion",
            attributes={
                "openinference.span.kind": "LLM",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.weight": float("-inf"),
                "llm.output_messages.0.message.role": "assistant",
                "llm.output_messages.0.message.logprob": float("nan"),
            },
        ):
            pass
    runlake.force_flush()
    db = runlake.HistoryDB(configured)
    chat, completion = db.get_logs(r.run_id)["nodes"]
    assert _strict_json(chat["input"]) == [{"role": "user", "content": "is NaN a number?", "temperature": None}]
    assert _strict_json(chat["output"]) == [{"role": "assistant", "scores": [1.5, None, None]}]
    assert _strict_json(completion["input"]) == [{"role": "user", "weight": None}]
    assert _strict_json(completion["output"]) == [{"role": "assistant", "logprob": None}]
    # the spans' attributes are rebuilt from that text, nulls included
    spans = {s["name"]: s["attributes"] for s in db.get_traces(session_id="nan-messages")[0]["spans"]}
    assert spans["openai.chat"]["gen_ai.prompt.0.content"] == "is NaN a number?"
    assert spans["openai.chat"]["gen_ai.prompt.0.temperature"] is None
    assert spans["openai.chat"]["gen_ai.completion.0.scores"] == [1.5, None, None]
    assert spans["ChatCompletion"]["llm.output_messages.0.message.role"] == "assistant"
    assert spans["ChatCompletion"]["llm.output_messages.0.message.logprob"] is None


def test_nan_and_infinity_in_any_json_column_are_null(configured: Path) -> None:
    """Every JSON column (leftover attributes, events, resource, a sequence input) holds strict JSON: a NaN or
    infinite attribute value is null there, as a number column stores None for it."""
    from opentelemetry.sdk.resources import Resource

    provider = TracerProvider(resource=Resource.create({"service.name": "nan-svc", "host.load": float("nan")}))
    provider.add_span_processor(SimpleSpanProcessor(runlake.current_exporter()))
    tracer = provider.get_tracer("nan")
    with tracer.start_as_current_span(
        "invoke_agent nan",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "nan",
            "session.id": "nan-json",
            "custom.score": float("nan"),
            "custom.bounds": (float("-inf"), 2.0),
            "input.value": "fine",
        },
    ) as span:
        span.add_event("scored", {"value": float("inf"), "label": "NaN"})
    provider.shutdown()
    runlake.force_flush()
    row = (
        runlake.HistoryDB(configured)
        .sql("SELECT attributes, events, resource FROM spans WHERE session_id = 'nan-json'")
        .fetchall()[0]
    )
    attributes, events, resource = (_strict_json(text) for text in row)
    assert attributes["custom.score"] is None and attributes["custom.bounds"] == [None, 2.0]
    assert events[0]["attributes"] == {"value": None, "label": "NaN"}
    assert resource["host.load"] is None


def test_cost_sums_and_mean_durations_do_not_depend_on_the_order_rows_are_added(configured: Path) -> None:
    """Statistics sum costs over many rows in whatever order DuckDB's threads meet them; a plain sum of doubles
    gives another total for another order (a half cent rounded either way), so the same lake answered differently
    from one call to the next; DuckDB's compensated sums too, only less often. Costs that no sum of doubles gets
    right: a charge and its refund with one cent between them (summed each within 1e14 cents), and ten of 0.05."""
    with shifted_clock(-3600, frozen=True) as advance:
        for cents in [1e16, 1.0, -1e16, *[0.05] * 10]:
            with runlake.run("billing", "s-sum") as run:
                with runlake.node("llm") as node:
                    node.set_cost(cents=cents)
                    advance(0.001)
                run.set_output("ok")
            advance(1)
    runlake.shutdown()
    service = ExecutionHistoryService(runlake.HistoryDB(configured))
    overall = service.statistics(None, None, 30)
    agent = service.statistics(None, "billing", 30)
    assert overall["cost_cents"] == agent["cost_cents"] == 2  # 1.5, halves rounded up
    assert agent["node_types"]["llm"]["cost_cents"] == 1.5
    assert agent["node_types"]["llm"]["avg_duration_ms"] == 1.0 and overall["avg_duration_ms"] == 1.0


def test_ttl_days_of_another_instrumentation_are_read_as_schema_md_says(lake: Path) -> None:
    """``True`` is no ttl of one day (the default); past the cap (an infinity, 10**30) is the cap, not the default."""
    cases = {"bool": True, "inf": float("inf"), "huge": 10**30, "nan": float("nan"), "text": "12", "low": 0}
    exporter = RunlakeSpanExporter(lake)
    for name, value in cases.items():
        exporter.export(foreign_run(f"ttl-{name}", **{"runlake.ttl_days": value}))
    exporter.shutdown()
    rows = runlake.HistoryDB(lake).sql("SELECT session_id, max(ttl_days) FROM runs GROUP BY 1").fetchall()
    assert dict(rows) == {
        "ttl-bool": 30, "ttl-inf": 36_500, "ttl-huge": 36_500, "ttl-nan": 30, "ttl-text": 12, "ttl-low": 30,
    }  # fmt: skip


def test_history_and_logs_give_one_total_at_the_extremes(lake: Path) -> None:
    """Two nodes of int64-max tokens and costs of 1e300 cents: history and logs give the same totals (the sums were
    capped for history only, and a cost came back as a 301-digit number); a negative token count is no count."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("extremes")
    run_attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "x", "session.id": "s-x"}
    node_attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.usage.input_tokens": 2**63 - 1,
        "gen_ai.usage.output_tokens": -5,
        "runlake.cost.cents": 1e300,
    }
    with tracer.start_as_current_span("invoke_agent x", attributes=run_attrs) as run:
        for _ in range(2):
            with tracer.start_as_current_span("chat", attributes=node_attrs):
                pass
    provider.shutdown()
    exporter = RunlakeSpanExporter(lake)
    exporter.export(list(memory.get_finished_spans()))
    exporter.shutdown()
    assert exporter.stats["repaired_values"] == 0
    db = runlake.HistoryDB(lake)
    [item] = db.get_history()
    summary = db.get_logs(f"{run.get_span_context().span_id:016x}")["summary"]
    assert item["tokens_used"] == summary["tokens_used"] == 2**63 - 1
    assert item["cost_cents"] == summary["cost_cents"] == 2 * 10**14
    [(negative,)] = db.sql("SELECT count(output_tokens) FROM spans WHERE name = 'chat'").fetchall()
    assert negative == 0
