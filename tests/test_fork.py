"""A process that forks after it set runlake up (``multiprocessing`` with the fork start method, a pre-fork server's
workers): the child writes its own spans — with its own flush thread, on locks of its own — and never the rows the
parent had buffered, which the parent writes."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as ds
import pytest
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from test_exporter import make_spans

import runlake

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

CHILD_DEADLINE_S = 60  # a child stuck on a lock is ended by SIGALRM, and the test fails saying so


def in_forked_child(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child; fail if it raised, or was still running after ``CHILD_DEADLINE_S``."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            signal.alarm(CHILD_DEADLINE_S)
            work()
            code = 0
        except BaseException:  # noqa: BLE001 - reported by the exit status
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not os.WIFSIGNALED(status), f"the child was stuck and ended by signal {os.WTERMSIG(status)}"
    assert os.WEXITSTATUS(status) == 0, "the child failed (its traceback is on stderr)"


def fork_while_held(locks: list, work: Callable[[], None]) -> None:
    """Run ``work`` in a child forked while another thread of the parent holds every lock of ``locks``."""
    holding, release = threading.Event(), threading.Event()

    def hold(remaining: list) -> None:
        if not remaining:
            holding.set()
            release.wait(30)
            return
        with remaining[0]:
            hold(remaining[1:])

    holder = threading.Thread(target=hold, args=(list(locks),))
    holder.start()
    assert holding.wait(30)
    try:
        in_forked_child(work)
    finally:
        release.set()
        holder.join(30)


def stored_rows(lake: Path, table: str = "spans") -> list[tuple[str, str]]:
    """Every (span id, record) row in the table's files, duplicates included (readers would hide them)."""
    dataset = ds.dataset(str(lake / table), format="parquet")
    found = dataset.to_table(columns=["span_id", "record"])
    return list(zip(found.column("span_id").to_pylist(), found.column("record").to_pylist()))


def test_a_child_never_writes_the_rows_its_parent_had_buffered(lake: Path) -> None:
    exporter = RunlakeSpanExporter(lake, flush_interval_s=3600)  # the parent's rows wait in the buffer
    parent_spans = make_spans(12, sessions=2, prefix="parent")
    assert exporter.export(parent_spans).name == "SUCCESS"
    assert exporter._writer.buffered_rows and not list(lake.rglob("*.parquet"))
    child_spans: list = []

    def child() -> None:
        child_spans.extend(make_spans(8, sessions=1, prefix="child"))
        assert exporter.export(child_spans).name == "SUCCESS"
        exporter.shutdown()

    in_forked_child(child)
    exporter.shutdown()
    rows = stored_rows(lake)
    assert len(rows) == len(set(rows)) == 12 + 8  # each span once: the parent's by the parent, the child's by it
    runs = stored_rows(lake, "runs")
    assert len(runs) == len(set(runs))


def test_a_child_is_not_stuck_on_locks_a_parent_thread_held_at_the_fork(lake: Path) -> None:
    """Threads of the parent may hold the writer's or the run totals' lock at the very moment of the fork; the
    child has no such thread, so the lock it inherits would never be released."""
    exporter = RunlakeSpanExporter(lake, flush_interval_s=3600)
    assert exporter.export(make_spans(4, prefix="before")).name == "SUCCESS"

    def child() -> None:
        assert exporter.export(make_spans(6, prefix="child")).name == "SUCCESS"
        exporter.shutdown()

    fork_while_held([exporter._writer._lock, exporter._totals_lock], child)
    exporter.shutdown()
    assert len(stored_rows(lake)) == 4 + 6


def test_a_child_writes_by_age_with_its_own_flush_thread(lake: Path) -> None:
    """A worker that is killed or exits without shutdown still has its spans on disk within the flush interval:
    the parent's flush thread does not exist in the child, so the child starts one of its own."""
    exporter = RunlakeSpanExporter(lake, flush_interval_s=0.2)
    assert exporter.export(make_spans(3, prefix="parent")).name == "SUCCESS"  # the parent's flush thread runs
    parent_thread = exporter._writer._thread
    assert parent_thread is not None and parent_thread.is_alive()

    def child() -> None:
        writer = exporter._writer
        written = threading.Event()
        write_keys = writer._write_keys

        def noting(keys):  # noqa: ANN001, ANN202 - the writer's own method, watched
            ok = write_keys(keys)
            if writer.buffered_rows == 0:
                written.set()
            return ok

        writer._write_keys = noting
        assert exporter.export(make_spans(5, prefix="child")).name == "SUCCESS"
        assert writer._thread is not parent_thread and writer._thread.is_alive()
        assert written.wait(30), "the child's rows were not written by age"
        # no shutdown: the worker just ends (os._exit, as multiprocessing's children do)

    in_forked_child(child)
    exporter.shutdown()
    assert len(stored_rows(lake)) == 3 + 5


def test_configure_then_fork_keeps_each_run_once(tmp_path: Path) -> None:
    """The whole pipeline (``runlake.configure``): runs of the parent and of a child each stored once, every span
    once, and the parent's run started before the fork and ended after it is whole."""
    lake = tmp_path / "lake"
    runlake.configure(lake, flush_interval_s=3600)
    try:
        with runlake.run("parent-agent", "s-parent", user_id="u") as before:
            with runlake.node("plan", type="llm") as node:
                node.set_usage(input_tokens=3, output_tokens=4)
        runlake.force_flush()  # in the lake
        with runlake.run("parent-agent", "s-parent", user_id="u") as across:

            def child() -> None:
                with runlake.run("child-agent", "s-child", user_id="u") as mine:
                    with runlake.node("work", type="tool"):
                        pass
                runlake.shutdown()
                assert runlake.HistoryDB(lake).get_runs("s-child")[0]["run_id"] == mine.run_id

            in_forked_child(child)
            with runlake.node("after", type="tool"):
                pass
    finally:
        runlake.shutdown()
    db = runlake.HistoryDB(lake)
    assert [r["run_id"] for r in db.get_runs("s-parent")] == [across.run_id, before.run_id]
    assert db.get_logs(across.run_id)["summary"]["total_nodes"] == 1
    assert len(db.get_runs("s-child")) == 1
    rows = stored_rows(lake)
    assert len(rows) == len(set(rows))


def test_object_store_listings_in_a_child_do_not_wait_for_the_parents_threads() -> None:
    """Listings of an object-store lake run on a thread pool; a child inherits the pool's books, not its threads, so
    its listings waited forever for threads it does not have."""
    from opentelemetry.exporter.runlake import layout

    folders = [layout.ObjectPath.__new__(layout.ObjectPath) for _ in range(64)]  # object-store folders, not listed

    def list_each() -> None:
        assert list(layout._each_folder(folders, lambda folder: [folder])) == folders

    list_each()  # the parent's pool has its threads now
    in_forked_child(list_each)


def test_what_is_reset_in_a_child_is_kept_only_while_its_object_lives(tmp_path: Path) -> None:
    """Each writer and exporter asks to be reset in forked children; an application (or a server) that makes many
    over its life must not keep one fork hook per object ever made."""
    import gc

    from opentelemetry.exporter.runlake import writer

    gc.collect()
    RunlakeSpanExporter(tmp_path / "first", background_flush=False)  # prunes what died before this test
    before = len(writer._CHILD_RESETS)
    for i in range(100):
        RunlakeSpanExporter(tmp_path / f"lake-{i}", background_flush=False)
    gc.collect()
    kept = RunlakeSpanExporter(tmp_path / "kept", background_flush=False)
    assert len(writer._CHILD_RESETS) <= before + 2  # the live exporter's and its writer's, not 200 more
    assert kept._writer is not None


def test_module_and_forwarder_locks_are_new_in_a_child() -> None:
    """Locks outside the writer (the runtime-state clock and tally, the forwarder's counts) held by a parent thread at
    the fork would never be released in the child."""
    from runlake import forward, sessions, state_policy

    counting = forward.CountingSpanExporter(RunlakeSpanExporter.__new__(RunlakeSpanExporter), "test")
    locks = [sessions._clock_lock, state_policy._tally_lock, counting._lock]

    def child() -> None:
        for lock in locks:
            with lock:
                pass

    fork_while_held(locks, child)
