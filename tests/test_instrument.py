"""The instrumentation API's contract with the application: flushing within the time given, re-configuring without
a gap, the queue in front of the lake, the decorators' arguments, and what a run records for unusual values and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter import runlake as exporter_package
from opentelemetry.exporter.runlake import RunlakeBatchSpanProcessor, RunlakeSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from test_exporter import make_spans
from test_forward import free_port

import runlake
from runlake import instrument


class SlowProcessor(SpanProcessor):
    """A processor whose flush takes as long as it is allowed to (up to ``most`` seconds), or ``most`` seconds
    whatever it is allowed (``ignores_timeout``): a test double for a collector that is down or slow."""

    def __init__(self, most: float = 5.0, ignores_timeout: bool = False) -> None:
        self.most = most
        self.ignores_timeout = ignores_timeout
        self.asked: list[int] = []

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        self.asked.append(timeout_millis)
        time.sleep(self.most if self.ignores_timeout else min(timeout_millis / 1000, self.most))
        return True


def runs_in(lake: Path, session: str) -> list[dict]:
    return runlake.HistoryDB(lake).get_runs(session)


# ---- 1: force_flush keeps one deadline ----------------------------------------------------------------------------
def test_force_flush_shares_one_deadline_across_processors(configured: Path) -> None:
    slow = [SlowProcessor(), SlowProcessor(), SlowProcessor()]
    instrument._pipeline.processors.extend(slow)  # type: ignore[union-attr]
    with runlake.run("bot", "s-flush"):
        pass
    started = time.monotonic()
    done = runlake.force_flush(400)
    took = time.monotonic() - started
    assert took < 0.75, f"force_flush(400) took {took:.2f} s: each processor was given the whole timeout"
    assert done is False, "what did not finish within the timeout is not reported as flushed"
    assert sum(slow[0].asked) + sum(slow[1].asked) + sum(slow[2].asked) <= 400
    del instrument._pipeline.processors[-3:]  # type: ignore[union-attr]
    assert runlake.force_flush() is True
    assert len(runs_in(configured, "s-flush")) == 1, "the lake is flushed first"


def test_the_provider_slot_shares_one_deadline_too() -> None:
    slot = instrument._PipelineSlot()
    slot.processors = (SlowProcessor(), SlowProcessor())
    started = time.monotonic()
    assert slot.force_flush(300) is False
    assert time.monotonic() - started < 0.55
    slot.processors = (SlowProcessor(most=0.01), SlowProcessor(most=0.01))
    assert slot.force_flush(300) is True


def test_the_exit_hook_for_s3_is_bounded(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hook that flushes before pyarrow finalizes S3 must not hold the exit for a processor that hangs."""
    hooks: list[Any] = []
    monkeypatch.setattr(exporter_package.atexit, "register", hooks.append)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    exporter_package._flush_before_s3_finalizes(exporter)
    [hook] = hooks
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SlowProcessor(most=3.0, ignores_timeout=True))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    monkeypatch.setattr(exporter_package, "_EXIT_PROVIDER_FLUSH_S", 0.3, raising=False)
    exporter.export(make_spans(4))
    started = time.monotonic()
    hook()
    assert time.monotonic() - started < 1.5, "the exit hook waited for a processor that hangs"
    assert exporter.stats["rows_written"] > 0, "the lake's rows are still written"
    exporter.shutdown()


def test_shutdown_after_the_exit_hook_gave_up_on_the_store_does_not_try_again(
    lake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An object store that takes connections and never answers: the exit hook stops waiting after its bound; the
    provider's shutdown, which runs after it, must not start a second unbounded upload."""
    hooks: list[Any] = []
    monkeypatch.setattr(exporter_package.atexit, "register", hooks.append)
    monkeypatch.setattr(exporter_package, "_EXIT_PROVIDER_FLUSH_S", 0.1, raising=False)
    monkeypatch.setattr(exporter_package, "_EXIT_LAKE_FLUSH_S", 0.3, raising=False)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    exporter_package._flush_before_s3_finalizes(exporter)
    [hook] = hooks
    answer = threading.Event()
    writes: list[int] = []
    write_keys = exporter._writer._write_keys

    def never_answers(keys: Any) -> bool:
        writes.append(len(list(keys)))
        answer.wait(30)
        return False

    exporter._writer._write_keys = never_answers
    exporter.export(make_spans(4))
    exporter.record_start(make_spans(1)[0])  # a row that comes after the hung upload took the others
    try:
        hook()
        started = time.monotonic()
        with caplog.at_level(logging.ERROR):
            exporter.shutdown()
        assert time.monotonic() - started < 1.0, "shutdown tried the store again"
        assert len(writes) == 1
        # the 5 rows the hung upload holds (4 spans, 1 run) and the start row buffered after it (spans and runs/)
        assert "with 7 rows not written" in caplog.text and "lost" in caplog.text
    finally:
        answer.set()
        exporter._writer._write_keys = write_keys


def test_the_exit_hook_flushes_where_no_thread_may_start(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.12.0-3.12.1 refuse to start threads in atexit hooks (RuntimeError); simulated here, as this machine
    runs another Python. The hook then flushes on its own thread rather than not at all."""
    hooks: list[Any] = []
    monkeypatch.setattr(exporter_package.atexit, "register", hooks.append)
    exporter = RunlakeSpanExporter(lake, background_flush=False)
    exporter_package._flush_before_s3_finalizes(exporter)
    [hook] = hooks

    def refuse(self: threading.Thread) -> None:
        raise RuntimeError("can't create new thread at interpreter shutdown")

    exporter.export(make_spans(4))
    monkeypatch.setattr(threading.Thread, "start", refuse)
    hook()
    monkeypatch.undo()
    assert exporter.stats["rows_written"] > 0, "the lake's rows are written"
    exporter.shutdown()


def test_force_flush_returns_in_time_when_the_collector_is_down(lake: Path) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol="http/protobuf", otlp_timeout_s=3.0)
    try:
        for i in range(600):
            with runlake.run("bot", f"s-down-{i % 3}"):
                pass
        started = time.monotonic()
        runlake.force_flush(300)
        took = time.monotonic() - started
    finally:
        runlake.shutdown()
    assert took < 1.5, f"force_flush(300) took {took:.1f} s with the collector down"


# ---- 3: @agent's session and user, however passed -------------------------------------------------------------------
def test_agent_takes_session_and_user_passed_by_position(configured: Path) -> None:
    @runlake.agent("researcher")
    def research(question: str, session_id: str, user_id: str | None = None) -> str:
        return "answer"

    research("why?", "s-pos", "u-pos")
    research("why?", session_id="s-pos", user_id="u-pos")
    research(question="why?", session_id="s-pos")
    runlake.shutdown()
    db = runlake.HistoryDB(configured)
    assert len(db.get_runs("s-pos")) == 3
    assert len(db.get_traces(user_id="u-pos")) == 2


# ---- 5: a burst fits the lake's queue; what a full queue drops is counted --------------------------------------------
class BlockingExporter(SpanExporter):
    def __init__(self) -> None:
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.release.wait(10)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


def test_a_full_queue_counts_what_it_drops(lake: Path, caplog: pytest.LogCaptureFixture) -> None:
    lake_exporter = RunlakeSpanExporter(lake, background_flush=False)
    blocked = BlockingExporter()
    processor = RunlakeBatchSpanProcessor(blocked, max_queue_size=4, max_export_batch_size=1, counts_to=lake_exporter)
    spans = make_spans(40)
    with caplog.at_level(logging.ERROR):
        for span in spans:
            processor.on_end(span)
        blocked.release.set()
        processor.force_flush()
        processor.shutdown()
    assert processor.dropped_spans > 0
    assert blocked.exported + processor.dropped_spans == len(spans), "every span is exported or counted"
    assert lake_exporter.stats["queue_dropped_spans"] == processor.dropped_spans
    said = [r.getMessage() for r in caplog.records if "span queue" in r.getMessage()]
    assert len(said) == 2 and "max_queue_size=4" in said[0], "the first drop and the total at shutdown"
    lake_exporter.shutdown()


def test_the_lake_queue_is_sized_for_bursts_and_stays_configurable(lake: Path) -> None:
    def lake_queue() -> int:
        [batch] = [p for p in instrument._pipeline.processors if isinstance(p, RunlakeBatchSpanProcessor)]  # type: ignore[union-attr]
        return exporter_package._sdk_queue(batch).maxlen

    runlake.configure(lake)
    try:
        assert lake_queue() >= 16_384
        assert runlake.current_exporter().stats["queue_dropped_spans"] == 0  # type: ignore[union-attr]
        runlake.configure(lake, max_queue_size=100)
        assert lake_queue() == 100
    finally:
        runlake.shutdown()


# ---- 6: re-configuring builds the new pipeline before closing the old one ------------------------------------------
def test_a_configure_that_fails_leaves_the_old_pipeline_working(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    runlake.configure(first)
    try:
        with pytest.raises(ValueError, match="max_queue_size"):
            runlake.configure(second, max_queue_size=0)
        assert runlake.current_exporter().root == first  # type: ignore[union-attr]
        with runlake.run("bot", "s-kept"):
            pass
        assert runlake.force_flush() is True
    finally:
        runlake.shutdown()
    assert len(runs_in(first, "s-kept")) == 1


def test_reconfigure_swaps_in_the_new_pipeline_before_closing_the_old(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    provider = runlake.configure(first)
    old = instrument._pipeline
    seen: list[Any] = []
    [old_batch] = [p for p in old.processors if isinstance(p, SpanProcessor) and hasattr(p, "_batch_processor")]  # type: ignore[union-attr]
    original = old_batch.shutdown

    def shutdown_and_look() -> None:
        seen.append((runlake.current_exporter(), instrument._slot_of(provider).processors))  # type: ignore[arg-type]
        original()

    old_batch.shutdown = shutdown_and_look  # type: ignore[method-assign]
    try:
        runlake.configure(second)
        [(exporter, attached)] = seen
        assert exporter is not None and exporter.root == second, "the new pipeline serves while the old one closes"
        assert attached and old_batch not in attached
    finally:
        runlake.shutdown()


# ---- 7: a relative lake stays where it was when configured ---------------------------------------------------------
def test_a_relative_lake_does_not_move_with_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    runlake.configure("rel-lake")
    try:
        assert runlake.current_exporter().root == tmp_path / "rel-lake"  # type: ignore[union-attr]
        with runlake.run("bot", "s-rel"):
            pass
        runlake.force_flush()
        os.chdir(tmp_path / "elsewhere")
        with runlake.run("bot", "s-rel"):
            pass
    finally:
        runlake.shutdown()
    assert len(runs_in(tmp_path / "rel-lake", "s-rel")) == 2
    assert not (tmp_path / "elsewhere" / "rel-lake").exists()
    monkeypatch.setenv("RUNLAKE_STATE_URL", "env-lake")
    assert RunlakeSpanExporter(background_flush=False).root == tmp_path / "elsewhere" / "env-lake"
    monkeypatch.delenv("RUNLAKE_STATE_URL")
    monkeypatch.delenv("PRAISONAI_STATE_URL", raising=False)
    assert RunlakeSpanExporter(background_flush=False).root == tmp_path / "elsewhere" / "runlake-data"


# ---- 8: a global provider runlake cannot use -----------------------------------------------------------------------
def test_a_provider_that_is_not_the_sdks_is_a_clear_error(configured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: trace.NoOpTracerProvider())
    with pytest.raises(RuntimeError, match="not an OpenTelemetry SDK TracerProvider"):
        runlake.configure(configured.parent / "other")
    monkeypatch.undo()
    with runlake.run("bot", "s-still"):  # the pipeline configured before keeps working
        pass
    runlake.shutdown()
    assert len(runs_in(configured, "s-still")) == 1


# ---- 9: an async generator left early records what was taken -------------------------------------------------------
def test_an_async_generator_left_early_records_what_was_taken(configured: Path) -> None:
    @runlake.step(type="llm", name="sync_stream")
    def sync_stream():  # noqa: ANN202
        yield from ("Hello", " world", "!")

    @runlake.step(type="llm", name="async_stream")
    async def async_stream():  # noqa: ANN202
        for text in ("Hello", " world", "!"):
            await asyncio.sleep(0)
            yield text

    async def main() -> str:
        with runlake.run("bot", "s-agen") as run:
            for i, _ in enumerate(sync_stream()):
                if i == 1:
                    break
            stream = async_stream()
            i = 0
            async for _ in stream:
                if i == 1:
                    break
                i += 1
            await stream.aclose()
        return run.run_id

    run_id = asyncio.run(main())
    runlake.shutdown()
    outputs = {n["id"]: n["output"] for n in runlake.HistoryDB(configured).get_logs(run_id)["nodes"]}
    assert outputs == {"sync_stream": "Hello world", "async_stream": "Hello world"}


# ---- 10: NaN and infinities are stored as JSON null -----------------------------------------------------------------
def test_nan_and_infinities_are_stored_as_valid_json(configured: Path) -> None:
    nan, inf = float("nan"), float("inf")
    with runlake.run("bot", "s-nan", metadata={"score": nan, "inf": inf, "ok": 1.5}) as run:
        run.set_output({"loss": nan, "list": [inf, -inf, 2]})
        with runlake.node("judge", metadata={1: nan}) as node:  # a non-string key takes the slow path
            node.set_output(nan)
    runlake.shutdown()
    [stored] = runs_in(configured, "s-nan")

    def strict(text: str) -> Any:
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))

    assert strict(stored["output_content"]) == {"loss": None, "list": [None, None, 2]}
    assert stored["metadata"]["score"] is None and stored["metadata"]["ok"] == 1.5
    json.dumps(stored, allow_nan=False)
    [node] = runlake.HistoryDB(configured).get_logs(stored["run_id"])["nodes"]
    assert strict(node["output"]) is None and node["metadata"] == {"1": None}


# ---- 11: node and turn ids are required, as run's are ---------------------------------------------------------------
def test_node_and_turn_refuse_an_empty_id(configured: Path) -> None:
    with runlake.run("bot", "s-ids"):
        for bad in ("", None):
            with pytest.raises(ValueError, match="node_id"):
                with runlake.node(bad):  # type: ignore[arg-type]
                    pass
            with pytest.raises(ValueError, match="turn_id"):
                with runlake.turn(bad):  # type: ignore[arg-type]
                    pass
        with runlake.node("0", type="tool"):
            pass


# ---- 14: final forwarding counts; a clean sys.exit is not a failure -------------------------------------------------
def test_forwarding_stats_stay_readable_after_shutdown(lake: Path) -> None:
    runlake.configure(lake, otlp_endpoint=f"http://127.0.0.1:{free_port()}", otlp_timeout_s=0.5)
    with runlake.run("bot", "s-fwd"):
        pass
    runlake.shutdown()
    stats = runlake.forwarding_stats()
    assert stats is not None and stats["ended"] == 1 and stats["sent"] == 0
    runlake.configure(lake)  # a new pipeline without forwarding: no counts of the old one
    try:
        assert runlake.forwarding_stats() is None
    finally:
        runlake.shutdown()


def test_a_clean_sys_exit_inside_a_run_is_not_a_failure(configured: Path) -> None:
    for code, session in ((0, "s-exit-0"), (None, "s-exit-none"), (3, "s-exit-3"), ("bye", "s-exit-text")):
        with pytest.raises(SystemExit):
            with runlake.run("bot", session):
                sys.exit(code)
    with pytest.raises(KeyboardInterrupt):
        with runlake.run("bot", "s-interrupted"):
            raise KeyboardInterrupt
    runlake.shutdown()
    status = {s: runs_in(configured, s)[0]["status"] for s in ("s-exit-0", "s-exit-none", "s-exit-3")}
    status["s-exit-text"] = runs_in(configured, "s-exit-text")[0]["status"]
    status["s-interrupted"] = runs_in(configured, "s-interrupted")[0]["status"]
    assert status == {
        "s-exit-0": "completed",
        "s-exit-none": "completed",
        "s-exit-3": "error",
        "s-exit-text": "error",
        "s-interrupted": "error",
    }


def test_a_child_forked_while_spans_end_can_end_its_own(tmp_path: Path) -> None:
    """A fork copies locks as they are at that instant; one held by another thread of the parent must not hang the
    child's first span (gunicorn --preload, multiprocessing with fork)."""
    processor = RunlakeBatchSpanProcessor(RunlakeSpanExporter(tmp_path / "lake", background_flush=False))
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("t")
    stop = threading.Event()

    def busy() -> None:
        while not stop.is_set():
            with tracer.start_as_current_span("parent work"):
                pass

    worker = threading.Thread(target=busy)
    worker.start()
    hung = 0
    try:
        for _ in range(40):
            pid = os.fork()
            if pid == 0:  # the child: one span, then out
                with tracer.start_as_current_span("child work"):
                    pass
                os._exit(0)
            waiter = threading.Thread(target=os.waitpid, args=(pid, 0))
            waiter.start()
            waiter.join(10)
            if waiter.is_alive():
                hung += 1
                os.kill(pid, 9)
                waiter.join()
    finally:
        stop.set()
        worker.join()
        provider.shutdown()
    assert hung == 0, f"{hung} of 40 forked children hung on their first span"


def test_configure_takes_min_session_rows_and_a_slow_flush_of_many_sessions_says_so(
    lake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An application serving many sessions at once: ``configure(min_session_rows=)`` makes small sessions share a
    file; without it, a flush of one file per session that outlasts the flush interval says what to do, once."""
    from opentelemetry.exporter.runlake.writer import LakeWriter

    runlake.configure(lake, min_session_rows=100)
    try:
        for i in range(5):
            with runlake.run("bot", f"s-{i}"):
                with runlake.node("step"):
                    pass
    finally:
        runlake.shutdown()
    folders = {p.name for p in (lake / "spans").rglob("session=*")}
    assert folders == {"session=~mixed"}
    assert len(runlake.HistoryDB(lake).get_history()) == 5

    spans = make_spans(300, sessions=300, run_nodes=0)
    exporter = RunlakeSpanExporter(lake / "many", background_flush=False)
    rows, run_rows = exporter.map_spans(spans)
    writer = LakeWriter(lake / "many", background=False, flush_interval_s=1e-6)
    with caplog.at_level(logging.WARNING, logger="opentelemetry.exporter.runlake"):
        writer.add(rows, run_rows)
        writer.flush()
        writer.add(rows, run_rows)
        writer.flush()
    hints = [r.getMessage() for r in caplog.records if "min_session_rows" in r.getMessage()]
    assert len(hints) == 1 and "RUNLAKE_MIN_SESSION_ROWS" in hints[0]
