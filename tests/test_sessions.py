"""SessionStore and turn().set_state: PraisonAI's runtime-state semantics (seed 001) on real Parquet, real SDK.

The first group mirrors the original implementation's own test list (defaults {}, round trip, old or null data
reads as {}, set/get one and all turns, missing → {}, clear one and all, persistence across instances and
processes, mirroring off, copies not references); then limits, redaction, tombstones, hostile input, forwarding.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import HOSTILE_IDS, PYTHON, lake_files, python_env, read_table
from opentelemetry import trace
from opentelemetry.exporter.runlake import RunlakeSpanExporter
from opentelemetry.exporter.runlake.layout import SPANS, day_of, is_data_file, partition_dir
from opentelemetry.exporter.runlake.mapping import SPANS_SCHEMA
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import runlake
from runlake import SessionStore, sessions, state_policy
from runlake.instrument import shifted_clock

SECRET = "sk-proj-Xq7b2LmN9pQrS4tUvW1xYz3A5bC7dE9fG0hJ2kL4mN6oP8qR0sT2uV4wX6yZ8aB0cD2eF4gH6iJ8"


@pytest.fixture(autouse=True)
def _isolated() -> Iterator[None]:
    """Every test starts with runlake unconfigured and the default state policy."""
    runlake.shutdown()
    yield
    runlake.shutdown()
    sessions.set_policy(sessions.StatePolicy())
    with state_policy._tally_lock:
        state_policy._tally.clear()


@pytest.fixture
def store(lake: Path) -> Iterator[SessionStore]:
    with SessionStore(lake) as s:
        yield s


def parquet_files(lake: Path) -> list[Path]:
    return [p for p in lake_files(lake) if is_data_file(p.name)]


def raw_text(lake: Path) -> str:
    """Every value of every part file, as text: what is physically on disk."""
    return json.dumps([pq.read_table(p).to_pylist() for p in parquet_files(lake)], default=str)


def state_of_size(total_bytes: int, key: str = "x") -> dict[str, str]:
    """A state whose compact JSON is exactly ``total_bytes`` long."""
    overhead = len(json.dumps({key: ""}, separators=(",", ":")))
    return {key: "a" * (total_bytes - overhead)}


def write_spans(lake: Path, *attribute_sets: dict) -> None:
    """Spans made by some other producer (older runlake, another language), through the real exporter."""
    exporter = RunlakeSpanExporter(lake, background_flush=False, keep_runtime_state=True)  # a mirroring producer
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("other-producer")
    for attributes in attribute_sets:
        tracer.start_span("turn", attributes=attributes).end()
    provider.shutdown()


# ---- the original's list --------------------------------------------------------------------------------------
def test_defaults_are_empty(store: SessionStore) -> None:
    assert store.get_runtime_state("s", "native") == {}
    assert store.get_runtime_state("s", "native", "turn-1") == {}
    assert store.export_session("s") == {"session_id": "s", "messages": [], "runtime_state": {}}
    assert store.list_sessions() == []


def test_round_trip_has_the_seed_shape(store: SessionStore) -> None:
    assert store.set_runtime_state("my-session", "native", "turn-1", {"tool_calls": ["call-1"]}) is True
    assert store.set_runtime_state("my-session", "plugin_harness", "turn-1", {"transcript": "..."}) is True
    assert store.export_session("my-session") == {
        "session_id": "my-session",
        "messages": [],
        "runtime_state": {
            "native": {"turn-1": {"tool_calls": ["call-1"]}},
            "plugin_harness": {"turn-1": {"transcript": "..."}},
        },
    }


def test_old_data_without_turn_columns_reads_as_empty(lake: Path, store: SessionStore) -> None:
    folder = partition_dir(lake, SPANS, "default", 30, day_of(1_700_000_000 * 10**9), "old")
    folder.mkdir(parents=True)
    # a part written before runtime state existed: no turn_id / runtime_id / runtime_state / attributes columns
    older = [f for f in SPANS_SCHEMA if f.name not in ("turn_id", "runtime_id", "runtime_state", "attributes")]
    row = {f.name: None for f in older}
    row.update(
        record="end",
        span_type="run",
        tenant_id="default",
        session_id="old",
        run_id="00f067aa0ba902b7",
        span_id="00f067aa0ba902b7",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        start_time_unix_nano=1_700_000_000 * 10**9,
        end_time_unix_nano=1_700_000_001 * 10**9,
        input="hello",
        output="hi there",
        ttl_days=30,
    )
    pq.write_table(pa.Table.from_pylist([row], schema=pa.schema(older)), folder / "part-00000001-1-0.parquet")
    assert store.get_runtime_state("old", "native") == {}
    exported = store.export_session("old")
    assert exported["runtime_state"] == {}
    assert [m["content"] for m in exported["messages"]] == ["hello", "hi there"]
    # older files next to new ones: the new state is read, the old file costs nothing
    assert store.set_runtime_state("old", "native", "t1", {"a": 1})
    assert store.export_session("old")["runtime_state"] == {"native": {"t1": {"a": 1}}}


def test_json_null_and_missing_state_read_as_empty(lake: Path, store: SessionStore, caplog) -> None:
    base = {"runlake.span.type": "turn", "session.id": "legacy", "runlake.runtime.id": "native"}
    write_spans(
        lake,
        {**base, "runlake.turn.id": "null-turn", "runlake.runtime.state": "null"},
        {**base, "runlake.turn.id": "no-state"},  # a turn span that mirrored nothing
        {**base, "runlake.turn.id": "list", "runlake.runtime.state": "[1, 2]"},
        {**base, "runlake.turn.id": "broken", "runlake.runtime.state": "{not json"},
    )
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        assert store.get_runtime_state("legacy", "native", "null-turn") == {}
        assert store.get_runtime_state("legacy", "native", "no-state") == {}
        assert store.get_runtime_state("legacy", "native") == {"null-turn": {}}
    assert "not JSON" in caplog.text and "not an object" in caplog.text, "unreadable entries are named, not fatal"


def test_set_and_get_one_turn_and_all_turns(store: SessionStore) -> None:
    for i in range(1, 4):
        assert store.set_runtime_state("s", "native", f"turn-{i}", {"tool_calls": [f"call-{i}"], "n": i})
    assert store.get_runtime_state("s", "native", "turn-2") == {"tool_calls": ["call-2"], "n": 2}
    assert store.get_runtime_state("s", "native") == {
        "turn-1": {"tool_calls": ["call-1"], "n": 1},
        "turn-2": {"tool_calls": ["call-2"], "n": 2},
        "turn-3": {"tool_calls": ["call-3"], "n": 3},
    }


def test_missing_session_runtime_or_turn_is_empty(store: SessionStore) -> None:
    store.set_runtime_state("s", "native", "turn-1", {"a": 1})
    assert store.get_runtime_state("other-session", "native") == {}
    assert store.get_runtime_state("s", "other-runtime") == {}
    assert store.get_runtime_state("s", "native", "turn-9") == {}


def test_clear_one_runtime(store: SessionStore) -> None:
    store.set_runtime_state("s", "native", "t1", {"a": 1})
    store.set_runtime_state("s", "plugin", "t1", {"b": 2})
    store.set_runtime_state("other", "native", "t1", {"c": 3})
    assert store.clear_runtime_state("s", runtime_id="native") is True
    assert store.get_runtime_state("s", "native") == {}
    assert store.get_runtime_state("s", "plugin") == {"t1": {"b": 2}}
    assert store.get_runtime_state("other", "native") == {"t1": {"c": 3}}, "other sessions are untouched"


def test_clear_all_runtimes(store: SessionStore) -> None:
    store.set_runtime_state("s", "native", "t1", {"a": 1})
    store.set_runtime_state("s", "plugin", "t1", {"b": 2})
    assert store.clear_runtime_state("s") is True
    assert store.export_session("s")["runtime_state"] == {}
    assert store.set_runtime_state("s", "native", "t2", {"after": True})
    assert store.export_session("s")["runtime_state"] == {"native": {"t2": {"after": True}}}, "a later set counts"


def test_persists_across_instances(lake: Path) -> None:
    with SessionStore(lake) as first:
        assert first.set_runtime_state("s", "native", "t1", {"v": 1})
    with SessionStore(lake) as second:
        assert second.get_runtime_state("s", "native", "t1") == {"v": 1}
        assert second.set_runtime_state("s", "native", "t1", {"v": 2})
    with SessionStore(f"file://{lake}") as third:
        assert third.get_runtime_state("s", "native") == {"t1": {"v": 2}}


CHILD = """
import json, sys
from runlake import SessionStore
store = SessionStore(sys.argv[1])
action = sys.argv[2]
if action == "set":
    ok = [store.set_runtime_state("s", "native", f"t{i}", {"from": "child", "i": i}) for i in range(3)]
    print(json.dumps(ok))
elif action == "clear":
    print(json.dumps(store.clear_runtime_state("s", runtime_id="native")))
else:
    print(json.dumps(store.export_session("s")))
"""


def _child(lake: Path, action: str):
    done = subprocess.run(
        [PYTHON, "-c", CHILD, str(lake), action], env=python_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_persists_across_processes(lake: Path, store: SessionStore) -> None:
    assert _child(lake, "set") == [True, True, True]  # the child has exited: what it wrote is on disk
    assert store.get_runtime_state("s", "native", "t2") == {"from": "child", "i": 2}
    assert store.set_runtime_state("s", "plugin", "t1", {"from": "parent"})
    seen = _child(lake, "read")
    assert seen["runtime_state"]["plugin"] == {"t1": {"from": "parent"}}
    assert len(seen["runtime_state"]["native"]) == 3
    assert _child(lake, "clear") is True
    assert store.get_runtime_state("s", "native") == {}, "another process's clear takes effect here at once"
    assert store.get_runtime_state("s", "plugin") == {"t1": {"from": "parent"}}


def test_mirror_enabled_false_writes_nothing(lake: Path, store: SessionStore) -> None:
    assert store.set_runtime_state("s", "native", "t1", {"a": 1}, mirror_enabled=False) is True
    assert parquet_files(lake) == []
    assert store.get_runtime_state("s", "native") == {}
    with SessionStore(lake, mirror_runtime_state=False) as off:
        assert off.set_runtime_state("s", "native", "t1", {"a": 1}) is True
    assert parquet_files(lake) == []


def test_returned_values_are_copies(store: SessionStore) -> None:
    state = {"tool_calls": ["call-1"], "nested": {"k": [1, 2]}}
    store.set_runtime_state("s", "native", "t1", state)
    state["tool_calls"].append("mutated after set")
    state["nested"]["k"].clear()
    got = store.get_runtime_state("s", "native", "t1")
    assert got == {"tool_calls": ["call-1"], "nested": {"k": [1, 2]}}
    got["tool_calls"].append("mutated after get")
    store.get_runtime_state("s", "native")["t1"]["nested"]["k"].append(3)
    store.export_session("s")["runtime_state"]["native"]["t1"]["tool_calls"].clear()
    assert store.get_runtime_state("s", "native", "t1") == {"tool_calls": ["call-1"], "nested": {"k": [1, 2]}}


def test_a_later_set_of_the_same_turn_wins(lake: Path, store: SessionStore) -> None:
    for i in range(20):
        assert store.set_runtime_state("s", "native", "t1", {"v": i})
    assert store.get_runtime_state("s", "native") == {"t1": {"v": 19}}
    with SessionStore(lake) as other:
        other.set_runtime_state("s", "native", "t1", {"v": "other"})
    assert store.get_runtime_state("s", "native", "t1") == {"v": "other"}


def test_concurrent_sets_from_threads_all_land(store: SessionStore) -> None:
    results: list[bool] = []

    def work(n: int) -> None:
        for i in range(5):
            results.append(store.set_runtime_state("s", f"rt-{n}", f"t{i}", {"n": n, "i": i}))

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [True] * 30
    state = store.export_session("s")["runtime_state"]
    assert state == {f"rt-{n}": {f"t{i}": {"n": n, "i": i} for i in range(5)} for n in range(6)}


# ---- the lake: turn spans, SQL, instrumentation ---------------------------------------------------------------
def test_state_is_a_turn_span_in_the_session_partition_and_queryable(lake: Path, store: SessionStore) -> None:
    store.set_runtime_state("sess-a", "native", "turn-1", {"tool_calls": ["call-1"]})
    (path,) = parquet_files(lake)
    assert path.parent.name == "session=sess-a" and path.parts[-6] == "spans"
    rows = runlake.HistoryDB(lake).sql(
        "SELECT span_type, session_id, runtime_id, turn_id, runtime_state FROM spans WHERE span_type = 'turn'"
    )
    assert rows.fetchall() == [("turn", "sess-a", "native", "turn-1", '{"tool_calls":["call-1"]}')]


def test_turn_set_state_mirrors_through_the_pipeline(lake: Path) -> None:
    runlake.configure(lake, mirror_runtime_state=True)
    with shifted_clock(-120):
        with runlake.run("support-bot", "sess-1", user_id="u1", input="where is my order?") as r:
            with runlake.turn("turn-1") as t:
                assert t.set_state({"tool_calls": ["call-1"], "intent": "order_status"}) is True
            r.set_output("it shipped")
    with runlake.turn("orphan") as t:
        assert t.set_state({"a": 1}) is False, "a turn outside a run has no session"
    assert t.set_state({"a": 1}) is False, "the turn has ended"
    runlake.force_flush()
    with SessionStore(lake) as store:
        assert store.get_runtime_state("sess-1", "native", "turn-1") == {
            "tool_calls": ["call-1"],
            "intent": "order_status",
        }
        exported = store.export_session("sess-1")
        assert [(m["role"], m["content"]) for m in exported["messages"]] == [
            ("user", "where is my order?"),
            ("assistant", "it shipped"),
        ]
        assert exported["messages"][0]["metadata"]["agent_name"] == "support-bot"
        assert exported["messages"][0]["timestamp"] < exported["messages"][1]["timestamp"]
        (listed,) = store.list_sessions()
        assert listed["session_id"] == "sess-1" and listed["user_id"] == "u1" and listed["message_count"] == 2


def test_store_writes_are_visible_to_the_configured_lake(lake: Path) -> None:
    runlake.configure(lake, mirror_runtime_state=True)
    with SessionStore() as store:  # no URL: the lake runlake.configure writes to
        assert store.root == lake
        assert store.set_runtime_state("s", "native", "t1", {"a": 1})
        assert SessionStore(lake).get_runtime_state("s", "native", "t1") == {"a": 1}


def test_span_processors_receive_the_turn_spans(lake: Path) -> None:
    memory = InMemorySpanExporter()
    with SessionStore(lake, span_processors=[SimpleSpanProcessor(memory)]) as store:
        store.set_runtime_state("s", "native", "t1", {"a": 1})
        store.set_runtime_state("s", "native", "t2", {"a": 2}, mirror_enabled=False)
        store.clear_runtime_state("s", "native")
    first, tombstone = memory.get_finished_spans()
    assert first.attributes["runlake.span.type"] == "turn" and first.attributes["session.id"] == "s"
    assert first.attributes["gen_ai.conversation.id"] == "s" and first.attributes["runlake.turn.id"] == "t1"
    assert first.attributes["runlake.runtime.id"] == "native"
    assert json.loads(first.attributes["runlake.runtime.state"]) == {"a": 1}
    assert tombstone.attributes[sessions.CLEARED] == "runtime" and "runlake.runtime.state" not in tombstone.attributes


# ---- mirroring off is a process-wide switch -------------------------------------------------------------------
MARKER = "mirror-marker-7f3a"


def test_mirroring_off_keeps_state_off_disk_whatever_the_code_calls(lake: Path, caplog) -> None:
    runlake.configure(lake)  # mirror_runtime_state defaults to False
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        with SessionStore(lake) as store:
            assert store.set_runtime_state("s", "native", "t1", {"m": MARKER}) is True
            assert store.set_runtime_state("s", "native", "t2", {"m": MARKER}) is True
    assert caplog.text.count("mirror_runtime_state=True") == 1, "said once, with the fix"
    with runlake.run("agent", "s", input="hi"):
        with runlake.turn("t1") as t:
            assert t.set_state({"m": MARKER}) is True
            # code that bypasses set_state and sets the attribute itself
            t.span.set_attribute("runlake.runtime.state", json.dumps({"m": MARKER}))
            trace.get_current_span().set_attribute("runlake.runtime.state", json.dumps({"m": MARKER}))
    runlake.force_flush()
    rows = read_table(lake, "spans").to_pylist()
    assert any(r["span_type"] == "turn" for r in rows), "the turn itself is recorded"
    assert all(r["runtime_state"] is None for r in rows)
    assert MARKER not in raw_text(lake)
    assert SessionStore(lake).get_runtime_state("s", "native") == {}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict]]]:
    """oteltest's OTLP/HTTP sink on 127.0.0.1: a real collector endpoint that keeps what it receives."""
    import socket

    from oteltest.sink import HttpSink
    from oteltest.sink.handler import RequestHandler

    received: list[dict] = []

    class Keep(RequestHandler):
        def handle_logs(self, request, headers) -> None:  # noqa: ARG002
            pass

        def handle_metrics(self, request, headers) -> None:  # noqa: ARG002
            pass

        def handle_trace(self, request, headers) -> None:  # noqa: ARG002
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        attrs = {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in span.attributes}
                        received.append({"name": span.name, "attributes": attrs})

    port = free_port()
    server = HttpSink(Keep(), logging.getLogger("oteltest"), port=port)
    server.start()
    for _ in range(200):  # the sink starts in a thread: connect until it accepts
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.05).close()
            break
        except OSError:
            continue
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        server.stop()


def test_forwarded_turn_spans_carry_no_state_when_mirroring_is_off(lake: Path, collector) -> None:
    endpoint, received = collector
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol="http/protobuf")
    with runlake.run("agent", "s", input="hi"):
        with runlake.turn("t1") as t:
            assert t.set_state({"m": MARKER}) is True
    SessionStore(lake).set_runtime_state("s", "native", "t2", {"m": MARKER})
    runlake.shutdown()
    turns = [s for s in received if s["attributes"].get("runlake.span.type") == "turn"]
    assert [s["name"] for s in turns] == ["turn t1"]
    assert MARKER not in json.dumps(received)


def test_forwarded_turn_spans_carry_redacted_state_when_mirroring_is_on(lake: Path, collector) -> None:
    endpoint, received = collector
    runlake.configure(lake, otlp_endpoint=endpoint, otlp_protocol="http/protobuf", mirror_runtime_state=True)
    with runlake.run("agent", "s", input="hi"):
        with runlake.turn("t1") as t:
            assert t.set_state({"key": SECRET, "tool_calls": ["call-1"]})
    with SessionStore(lake) as store:
        assert store.set_runtime_state("s", "plugin", "t2", {"to": "bob@example.com"})
    runlake.shutdown()
    states = {
        s["attributes"]["runlake.turn.id"]: json.loads(s["attributes"]["runlake.runtime.state"])
        for s in received
        if "runlake.runtime.state" in s["attributes"]
    }
    assert states == {"t1": {"key": "[REDACTED:api_key]", "tool_calls": ["call-1"]}, "t2": {"to": "[REDACTED:email]"}}
    assert SECRET not in json.dumps(received) and SECRET not in raw_text(lake)


# ---- limits -----------------------------------------------------------------------------------------------------
def test_per_turn_limit_refuses_with_sizes_and_the_fix(lake: Path, store: SessionStore, caplog) -> None:
    assert store.set_runtime_state("s", "native", "t1", state_of_size(1024)) is True, "1 KB itself fits"
    files = parquet_files(lake)
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        assert store.set_runtime_state("s", "native", "t1", state_of_size(1025)) is False
    assert "1025 bytes" in caplog.text and "1024 bytes per turn" in caplog.text
    assert "max_turn_bytes" in caplog.text and "max_turn_state_bytes" in caplog.text
    assert parquet_files(lake) == files, "nothing written"
    assert store.get_runtime_state("s", "native", "t1") == state_of_size(1024), "the earlier state stays"


def test_per_runtime_limit_counts_live_turns(store: SessionStore, caplog) -> None:
    for i in range(10):
        assert store.set_runtime_state("s", "native", f"t{i}", state_of_size(1024)), "10 x 1 KB is exactly 10 KB"
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        assert store.set_runtime_state("s", "native", "t10", state_of_size(100)) is False
    assert "10340 bytes of JSON in 11 turns" in caplog.text and "10240 bytes per runtime" in caplog.text
    assert "clear_runtime_state(session_id, runtime_id='native')" in caplog.text
    assert store.set_runtime_state("s", "native", "t3", state_of_size(1024)), "replacing a turn counts it once"
    assert store.set_runtime_state("s", "native", "t3", state_of_size(924))
    assert store.set_runtime_state("s", "native", "t10", state_of_size(100)), "the 100 bytes freed are usable"
    assert not store.set_runtime_state("s", "native", "t11", state_of_size(8))
    assert store.set_runtime_state("s", "other", "t10", state_of_size(1000)), "another runtime has its own budget"
    assert store.set_runtime_state("s2", "native", "t10", state_of_size(1000)), "another session too"
    assert store.clear_runtime_state("s", "native")
    assert store.set_runtime_state("s", "native", "t11", state_of_size(1000)), "clearing frees the budget"
    assert len(store.get_runtime_state("s", "native")) == 1


def test_limits_are_configurable(lake: Path) -> None:
    with SessionStore(lake, max_turn_bytes=64, max_runtime_bytes=100) as store:
        assert store.set_runtime_state("s", "r", "t1", state_of_size(64))
        assert not store.set_runtime_state("s", "r", "t2", state_of_size(65))
        assert not store.set_runtime_state("s", "r", "t2", state_of_size(40))
        assert store.set_runtime_state("s", "r", "t2", state_of_size(36))
    runlake.configure(lake, mirror_runtime_state=True, max_turn_state_bytes=32, max_runtime_state_bytes=50)
    with SessionStore(lake) as store:
        assert store.policy.max_turn_bytes == 32 and store.policy.max_runtime_bytes == 50
        assert not store.set_runtime_state("s", "q", "t1", state_of_size(33))
    with runlake.run("agent", "s"):
        with runlake.turn("t1") as t:
            assert t.set_state(state_of_size(30)) is True
        with runlake.turn("t2") as t:
            assert t.set_state(state_of_size(30)) is False, "this process already mirrored 30 of 50 bytes"
        with runlake.turn("t3") as t:
            assert t.set_state(state_of_size(33)) is False
    for bad in (0, -1, "1k", 1.5, True):
        with pytest.raises(ValueError, match="positive number of bytes"):
            runlake.configure(lake, max_turn_state_bytes=bad)
        with pytest.raises(ValueError, match="positive number of bytes"):
            SessionStore(lake, max_runtime_bytes=bad)


# ---- redaction -------------------------------------------------------------------------------------------------
def test_state_is_redacted_before_it_reaches_disk(lake: Path, store: SessionStore) -> None:
    state = {
        "tool_calls": ["call-1"],
        "transcript": f"user: my key is {SECRET}, mail me at jane.doe@example.com or call +44 20 7946 0958",
        "headers": {"Authorization": "Bearer 2YotnFZFEjr1zCsicMWpAA9xk3Qm", "Accept": "application/json"},
        "password": "hunter2",
    }
    assert store.set_runtime_state("s", "native", "t1", state)
    stored = store.get_runtime_state("s", "native", "t1")
    assert stored == {
        "tool_calls": ["call-1"],
        "transcript": "user: my key is [REDACTED:api_key], mail me at [REDACTED:email] or call [REDACTED:phone]",
        "headers": {"Authorization": "[REDACTED:secret]", "Accept": "application/json"},
        "password": "[REDACTED:secret]",
    }
    on_disk = raw_text(lake)
    for secret in (SECRET, "jane.doe@example.com", "7946 0958", "2YotnFZFEjr1zCsicMWpAA9xk3Qm", "hunter2"):
        assert secret not in on_disk


def test_state_under_a_secret_key_goes_whole_whatever_its_type_or_key_spelling(lake: Path, store: SessionStore) -> None:
    state = {
        "password": ["hunter2"],
        "token": {"value": "abc123secretvalue"},
        "accessToken": "abc123secretvalue",
        "clientSecret": "abc123secretvalue",
        "refreshToken": "abc123secretvalue",
        "sessionToken": "abc123secretvalue",
        "tool_calls": ["call-1"],
    }
    assert store.set_runtime_state("s", "native", "t1", state)
    stored = store.get_runtime_state("s", "native", "t1")
    assert stored == {key: ("[REDACTED:secret]" if key != "tool_calls" else ["call-1"]) for key in state}
    assert "hunter2" not in raw_text(lake) and "abc123secretvalue" not in raw_text(lake)


def test_forwarded_store_spans_keep_their_ids_with_redact_on(lake: Path, collector) -> None:
    """Ids are join keys: a collector (maybe another runlake) must see the session the lake sees."""
    endpoint, received = collector
    runlake.configure(
        lake, otlp_endpoint=endpoint, otlp_protocol="http/protobuf", mirror_runtime_state=True, redact=True
    )
    with SessionStore(lake) as store:
        assert store.set_runtime_state("bob@example.com", "native", "t1", {"to": "carol@example.com"})
        assert store.set_runtime_state("dave@example.com", "native", "t1", {"to": "carol@example.com"})
    runlake.shutdown()
    sessions = sorted(s["attributes"]["session.id"] for s in received)
    assert sessions == ["bob@example.com", "dave@example.com"]
    assert all(s["attributes"]["gen_ai.conversation.id"] == s["attributes"]["session.id"] for s in received)
    assert "carol@example.com" not in json.dumps(received)


def test_state_redaction_can_be_turned_off_or_replaced(lake: Path) -> None:
    with SessionStore(lake, redact=False) as plain:
        assert plain.set_runtime_state("s", "native", "t1", {"mail": "jane@example.com"})
        assert plain.get_runtime_state("s", "native", "t1") == {"mail": "jane@example.com"}
    custom = runlake.redact.Redactor(patterns=[("ticket", r"TICKET-\d+")])
    with SessionStore(lake, redact=custom) as store:
        store.set_runtime_state("s", "native", "t2", {"t": "TICKET-42 for jane@example.com"})
        assert store.get_runtime_state("s", "native", "t2") == {"t": "[REDACTED:ticket] for jane@example.com"}
    runlake.configure(lake, mirror_runtime_state=True, redact_runtime_state=False)
    with runlake.run("agent", "s2"):
        with runlake.turn("t1") as t:
            t.set_state({"mail": "jane@example.com"})
    runlake.force_flush()
    assert SessionStore(lake, redact=False).get_runtime_state("s2", "native", "t1") == {"mail": "jane@example.com"}


# ---- tombstones ------------------------------------------------------------------------------------------------
def test_clear_is_a_tombstone_every_reader_honours(lake: Path, store: SessionStore) -> None:
    store.set_runtime_state("s", "native", "t1", {"m": MARKER})
    store.set_runtime_state("s", "plugin", "t1", {"keep": 1})
    assert store.clear_runtime_state("s", "native", purge=False)
    with SessionStore(lake) as other:
        assert other.get_runtime_state("s", "native") == {}, "another reader sees the clear at once"
    assert MARKER in raw_text(lake), "without purge the row is still on disk, hidden"
    tombstones = runlake.HistoryDB(lake).sql(
        "SELECT runtime_id, turn_id, runtime_state, attributes FROM spans "
        "WHERE span_type = 'turn' AND attributes LIKE '%runlake.runtime.cleared%'"
    )
    ((runtime_id, turn_id, state, attributes),) = tombstones.fetchall()
    assert (runtime_id, turn_id, state) == ("native", None, None)
    assert json.loads(attributes)[sessions.CLEARED] == "runtime"
    assert store.purge_runtime_state("s") == 1
    assert MARKER not in raw_text(lake), "purged: physically gone"
    assert store.purge_runtime_state("s") == 0
    assert store.get_runtime_state("s", "plugin") == {"t1": {"keep": 1}}


def test_clear_purges_by_default(lake: Path, store: SessionStore) -> None:
    for i in range(3):
        store.set_runtime_state("s", "native", f"t{i}", {"m": MARKER})
    store.set_runtime_state("s", "plugin", "t1", {"m": "plugin-" + MARKER})
    files_before = len(parquet_files(lake))
    assert store.clear_runtime_state("s")
    assert MARKER not in raw_text(lake)
    assert len(parquet_files(lake)) == files_before + 1, "each file replaced by its clean copy, plus the tombstone"
    spans = runlake.HistoryDB(lake).sql("SELECT count(*) FROM spans WHERE span_type = 'turn'").fetchall()
    assert spans == [(5,)], "the turn spans themselves stay (they may belong to runs); only their state went"


def test_rows_older_than_a_tombstone_stay_hidden_even_if_they_arrive_later(lake: Path, store: SessionStore) -> None:
    store.set_runtime_state("s", "native", "t1", {"v": "before"})
    assert store.clear_runtime_state("s")
    with shifted_clock(-60):  # a write stamped before the clear, landing after it (a slow process)
        assert store.set_runtime_state("s", "native", "t1", {"v": "late"})
    assert store.get_runtime_state("s", "native") == {}
    assert store.set_runtime_state("s", "native", "t1", {"v": "after"})
    assert store.get_runtime_state("s", "native") == {"t1": {"v": "after"}}


def test_a_tombstone_lives_as_long_as_what_it_hides(lake: Path) -> None:
    with SessionStore(lake, ttl_days=90) as long_lived:
        long_lived.set_runtime_state("s", "native", "t1", {"a": 1})
    with SessionStore(lake, ttl_days=7) as short_lived:
        assert short_lived.clear_runtime_state("s", purge=False)
    ttls = (
        runlake.HistoryDB(lake)
        .sql("SELECT ttl_days FROM spans WHERE attributes LIKE '%runlake.runtime.cleared%'")
        .fetchall()
    )
    assert ttls == [(90,)]


def test_ttl_removes_state_physically(lake: Path) -> None:
    with SessionStore(lake, ttl_days=30) as store:
        with shifted_clock(-40 * 86400):
            store.set_runtime_state("s", "native", "old", {"m": MARKER})
        store.set_runtime_state("s", "native", "new", {"fresh": True})
        runlake.HistoryDB(lake).cleanup_expired()
        assert MARKER not in raw_text(lake)
        assert store.get_runtime_state("s", "native") == {"new": {"fresh": True}}


# ---- hostile and bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [v for v in HOSTILE_IDS if v], ids=range(len([v for v in HOSTILE_IDS if v])))
def test_hostile_ids_round_trip_inside_the_lake(lake: Path, store: SessionStore, value: str) -> None:
    assert store.set_runtime_state(value, value, value, {"id": value})
    assert store.set_runtime_state("neighbour", "native", "t1", {"n": 1})
    assert store.get_runtime_state(value, value, value) == {"id": value}
    assert store.export_session(value)["runtime_state"] == {value: {value: {"id": value}}}
    assert store.get_runtime_state("neighbour", "native") == {"t1": {"n": 1}}
    assert value in [s["session_id"] for s in store.list_sessions()]
    assert store.clear_runtime_state(value, value)
    assert store.get_runtime_state(value, value) == {}
    assert store.get_runtime_state("neighbour", "native") == {"t1": {"n": 1}}
    root = lake.resolve()
    for path in lake_files(lake):
        assert path.resolve().is_relative_to(root)


def test_bad_ids_are_refused_with_a_warning_and_lose_nothing(lake: Path, store: SessionStore, caplog) -> None:
    store.set_runtime_state("s", "native", "t1", {"keep": 1})
    files = parquet_files(lake)
    bad = ["", 123, None, "x" * 2000, "lone \ud800 surrogate", b"bytes"]
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        for value in bad:
            assert store.set_runtime_state(value, "native", "t1", {"a": 1}) is False
            assert store.set_runtime_state("s", value, "t1", {"a": 1}) is False
            assert store.set_runtime_state("s", "native", value, {"a": 1}) is False
            assert store.get_runtime_state(value, "native") == {}
            if value is not None:
                assert store.clear_runtime_state("s", value) is False
    for reason in ("must be a string", "must not be empty", "characters long", "lone surrogate"):
        assert reason in caplog.text
    assert parquet_files(lake) == files
    assert store.get_runtime_state("s", "native") == {"t1": {"keep": 1}}


class Unserialisable:
    pass


def test_bad_state_is_refused_with_a_warning_and_loses_nothing(lake: Path, store: SessionStore, caplog) -> None:
    store.set_runtime_state("s", "native", "t1", {"keep": 1})
    files = parquet_files(lake)
    circular: dict = {}
    circular["self"] = circular
    bad = [
        ["not", "a", "dict"],
        "a string",
        None,
        {"set": {1, 2}},
        {"nan": math.nan},
        {"inf": math.inf},
        {"object": Unserialisable()},
        {"bytes": b"\x00\x01"},
        circular,
        {"text": "lone \udc80 surrogate"},
        {("tuple", "key"): 1},
    ]
    with caplog.at_level(logging.WARNING, logger="runlake.sessions"):
        for state in bad:
            assert store.set_runtime_state("s", "native", "t1", state) is False, state
    assert "state must be a dict" in caplog.text and "not plain JSON" in caplog.text
    assert parquet_files(lake) == files
    assert store.get_runtime_state("s", "native") == {"t1": {"keep": 1}}
    runlake.configure(lake, mirror_runtime_state=True)
    with runlake.run("agent", "s"):
        with runlake.turn("t9") as t:
            assert t.set_state({"set": {1}}) is False


def test_write_failures_return_false_and_never_raise(tmp_path: Path, caplog) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the lake should be")
    store = SessionStore(blocker / "lake")
    with caplog.at_level(logging.WARNING):
        assert store.set_runtime_state("s", "native", "t1", {"a": 1}) is False
        assert store.clear_runtime_state("s") is False
    assert store.get_runtime_state("s", "native") == {}
    assert "could not write" in caplog.text
    store.close()
    assert SessionStore(tmp_path / "lake2").set_runtime_state("s", "n", "t", {"a": 1})
    closed = SessionStore(tmp_path / "lake3")
    closed.close()
    assert closed.set_runtime_state("s", "native", "t1", {"a": 1}) is False


# ---- listing -------------------------------------------------------------------------------------------------
def test_list_sessions_newest_first_with_user_filter_and_limit(lake: Path) -> None:
    runlake.configure(lake)
    for offset, session, user in ((-3000, "oldest", "u1"), (-2000, "middle", "u2"), (-1000, "newest", "u1")):
        with shifted_clock(offset):
            with runlake.run("agent", session, user_id=user, input=f"hello from {session}") as r:
                r.set_output("ok")
    runlake.shutdown()
    with SessionStore(lake) as store:
        store.set_runtime_state("state-only", "native", "t1", {"a": 1})
        listed = store.list_sessions()
        assert [s["session_id"] for s in listed] == ["state-only", "newest", "middle", "oldest"]
        assert set(listed[1]) == {
            "session_id",
            "id",
            "user_id",
            "agent_name",
            "created_at",
            "updated_at",
            "message_count",
            "run_count",
        }
        assert listed[1]["user_id"] == "u1" and listed[1]["agent_name"] == "agent" and listed[1]["run_count"] == 1
        assert listed[0]["user_id"] is None and listed[0]["message_count"] == 0
        assert listed[1]["updated_at"] > listed[2]["updated_at"] > listed[3]["updated_at"]
        assert [s["session_id"] for s in store.list_sessions(user_id="u1")] == ["newest", "oldest"]
        assert [s["session_id"] for s in store.list_sessions(limit=2)] == ["state-only", "newest"]
        assert store.list_sessions(limit=0) == [] and store.list_sessions(limit=-1) == []
        assert "state-only" not in [s["session_id"] for s in store.list_sessions(include_state_only=False)]
        assert store.export_session("middle")["messages"][0]["content"] == "hello from middle"


def test_state_only_sessions_of_compacted_days_are_still_listed(lake: Path) -> None:
    """Compaction merges a closed day's session folders into one shared file: such sessions are found by their rows."""
    from runlake.compact import compact

    with SessionStore(lake) as store:
        with shifted_clock(-3 * 86400):
            store.set_runtime_state("old-state", "native", "t1", {"a": 1})
            store.set_runtime_state("old-state", "native", "t2", {"a": 2})
        store.set_runtime_state("new-state", "native", "t1", {"b": 1})
    before = {s["session_id"]: s for s in SessionStore(lake).list_sessions()}
    summary = compact(lake, older_than_minutes=0)
    assert summary.days_merged >= 1
    assert not list((lake / "spans").rglob("session=old-state")), "the closed day's session folder was merged"
    with SessionStore(lake) as store:
        after = {s["session_id"]: s for s in store.list_sessions()}
        assert set(after) == {"old-state", "new-state"} == set(before)
        assert after["old-state"]["created_at"] < after["new-state"]["created_at"]
        assert store.get_runtime_state("old-state", "native") == {"t1": {"a": 1}, "t2": {"a": 2}}


def test_a_session_is_listed_while_compaction_merges_its_day(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Listing reads the session folders first and the shared ``~mixed`` files after: compaction writes the merged
    file before it removes the folders, so a session that leaves its folder meanwhile is found in the merged file.
    The merge is forced between the two listings of a day."""
    from runlake import sessions as sessions_module
    from runlake.compact import compact

    with SessionStore(lake) as store, shifted_clock(-3 * 86400):
        store.set_runtime_state("old-state", "native", "t1", {"a": 1})
    real_session_dirs = sessions_module.session_dirs

    def merged_first(day_dir: Path) -> list[Path]:
        compact(lake, older_than_minutes=0)  # the day is merged just as its session folders are listed
        return real_session_dirs(day_dir)

    monkeypatch.setattr(sessions_module, "session_dirs", merged_first)
    assert [s["session_id"] for s in SessionStore(lake).list_sessions()] == ["old-state"]


def test_listing_sessions_while_compaction_merges_the_shared_parts(lake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The shared ``~mixed`` parts of a day are merged just before they are read: the reader lists them again and
    finds the merged file (the list of files is not fixed once)."""
    from runlake.compact import compact
    from runlake.query import LakeReader

    t0 = (time.time_ns() // 10**9 - 3 * 86400) * 10**9
    for k in range(2):  # two flushes of small sessions: two parts in the day's session=~mixed
        exporter = RunlakeSpanExporter(lake, background_flush=False, min_session_rows=256)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        span = provider.get_tracer("x").start_span("turn", start_time=t0 + k, attributes={"session.id": f"sess-{k}"})
        span.end(end_time=t0 + k + 10)
        provider.shutdown()
    real_rows = LakeReader.rows

    def merged_just_before(self, sql, lister, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if "min(start_time_unix_nano) AS first" in sql:
            monkeypatch.setattr(LakeReader, "rows", real_rows)
            assert compact(lake, older_than_minutes=0).days_merged == 1
        return real_rows(self, sql, lister, *args, **kwargs)

    monkeypatch.setattr(LakeReader, "rows", merged_just_before)
    assert sorted(s["session_id"] for s in SessionStore(lake).list_sessions()) == ["sess-0", "sess-1"]


def test_tenants_are_isolated(lake: Path) -> None:
    with SessionStore(lake, tenant_id="acme") as acme, SessionStore(lake, tenant_id="globex") as globex:
        acme.set_runtime_state("s", "native", "t1", {"tenant": "acme"})
        assert globex.get_runtime_state("s", "native") == {}
        assert globex.list_sessions() == []
        globex.clear_runtime_state("s")
        assert acme.get_runtime_state("s", "native") == {"t1": {"tenant": "acme"}}


def test_turns_and_runtimes_keep_the_order_they_were_first_set(store: SessionStore) -> None:
    """As PraisonAI's dict assignment: setting a turn again keeps its place; a cleared runtime set again comes last."""
    store.set_runtime_state("s-order", "native", "turn-1", {"v": 1})
    store.set_runtime_state("s-order", "plugin_harness", "turn-1", {"v": 1})
    store.set_runtime_state("s-order", "native", "turn-2", {"v": 2})
    store.set_runtime_state("s-order", "native", "turn-1", {"v": 3})
    assert list(store.get_runtime_state("s-order", "native").items()) == [("turn-1", {"v": 3}), ("turn-2", {"v": 2})]
    assert list(store.export_session("s-order")["runtime_state"]) == ["native", "plugin_harness"]
    store.clear_runtime_state("s-order", "native")
    store.set_runtime_state("s-order", "native", "turn-9", {"v": 9})
    assert list(store.export_session("s-order")["runtime_state"]) == ["plugin_harness", "native"]


def test_turn_set_state_refuses_what_the_sdk_length_limit_would_cut(lake: Path) -> None:
    """With OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT the SDK cuts long attribute values: a state that would be cut is refused
    (False, with a warning), never stored as broken JSON. A real process with the real variable."""
    import os
    import sys
    import textwrap

    script = textwrap.dedent(
        f"""
        import runlake
        from runlake import SessionStore
        runlake.configure({str(lake)!r}, mirror_runtime_state=True)
        with runlake.run("bot", "s-limit") as r:
            with runlake.turn("turn-1") as t:
                print("long", t.set_state({{"calls": ["call-%03d" % i for i in range(20)]}}))
            with runlake.turn("turn-2") as t:
                print("short", t.set_state({{"ok": 1}}))
        runlake.shutdown()
        with SessionStore({str(lake)!r}) as store:
            print("read", store.get_runtime_state("s-limit", "native"))
        """
    )
    env = {**os.environ, "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "100"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["long False", "short True", "read {'turn-2': {'ok': 1}}"], done.stdout
    assert "attribute length limit (100" in done.stderr
