"""The lake on object storage (``s3://bucket/prefix``), tested against an S3 EMULATOR, not real AWS.

The S3 endpoint in these tests is **moto in server mode** (``moto.server.ThreadedMotoServer``), an S3 emulator that
the ``emulator`` fixture starts on 127.0.0.1 with a free port and stops afterwards; nothing leaves the machine.
runlake reaches it exactly as it would reach S3 or MinIO: ``RUNLAKE_S3_ENDPOINT`` plus the standard AWS
credential variables. Needs ``moto[server]`` (test extras); skipped without it.

Every answer is checked against a local lake that received the very same spans (a second exporter on the same
tracer provider), so "works on S3" means "gives exactly what the local lake gives".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from conftest import HOSTILE_IDS
from opentelemetry import trace
from opentelemetry.exporter.runlake import RunlakeSpanExporter, RunStartProcessor, layout
from opentelemetry.exporter.runlake.layout import (
    RUNS,
    SPANS,
    ObjectPath,
    data_files,
    day_dirs,
    day_files,
    encode_partition_value,
    resolve_lake,
    resolve_state_url,
    session_dirs,
    session_files,
    sessions_files,
    table_files,
)
from opentelemetry.exporter.runlake.mapping import SPAN_COLUMNS
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from test_exporter import make_spans
from test_layout import closed_day_lake

import runlake
from runlake.compact import compact
from runlake.instrument import shifted_clock
from runlake.replay import stored_spans
from runlake.service import ExecutionHistoryService

moto_server = pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (an S3 emulator)")

BUCKET = "runlake-tests"
SESSIONS = [s for s in HOSTILE_IDS if s] + ["plain"]  # runlake.run() refuses an empty session id


# ---- the emulator --------------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class S3Emulator:
    """moto's S3 emulator on loopback; can be stopped and started again on the same port (state is kept)."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None

    def start(self) -> None:
        self._server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def filesystem(self) -> pafs.S3FileSystem:
        """The test's own view of the emulator, to look at the objects independently of runlake."""
        return pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{self.port}",
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            allow_bucket_creation=True,
        )


@pytest.fixture(scope="module")
def emulator() -> Iterator[S3Emulator]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the emulator's request log
    server = S3Emulator()
    server.start()
    try:
        server.filesystem().create_dir(BUCKET)
        yield server
    finally:
        server.stop()


@pytest.fixture
def s3_url(emulator: S3Emulator, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> str:
    """A fresh prefix in the emulator's bucket, reached the standard way (endpoint and credentials from env)."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUNLAKE_S3_ENDPOINT", emulator.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return f"s3://{BUCKET}/{request.node.name}-{uuid.uuid4().hex[:8]}"


def objects(emulator: S3Emulator, url: str) -> list[str]:
    """Every object key under a prefix, relative to it (the test's own listing, not runlake's)."""
    base = url.removeprefix("s3://")
    infos = emulator.filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
    return sorted(i.path[len(base) + 1 :] for i in infos if i.type == pafs.FileType.File)


# ---- the same spans into an S3 lake and a local lake ---------------------------------------------------------------
class _Mirror(SpanProcessor):
    """Feeds every span also to a second runlake exporter (a local lake), so both lakes get identical rows."""

    def __init__(self) -> None:
        self.exporter: RunlakeSpanExporter | None = None
        self._start: RunStartProcessor | None = None
        self._end: SimpleSpanProcessor | None = None

    def attach(self, exporter: RunlakeSpanExporter | None) -> None:
        self.exporter = exporter
        self._start = RunStartProcessor(exporter) if exporter else None
        self._end = SimpleSpanProcessor(exporter) if exporter else None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self._start is not None:
            self._start.on_start(span, parent_context=parent_context)

    def on_end(self, span: Any) -> None:
        if self._end is not None:
            self._end.on_end(span)


def _mirror() -> _Mirror:
    provider = trace.get_tracer_provider()
    assert isinstance(provider, TracerProvider)
    mirror = getattr(provider, "_runlake_test_mirror", None)
    if mirror is None:
        mirror = _Mirror()
        provider.add_span_processor(mirror)
        provider._runlake_test_mirror = mirror  # type: ignore[attr-defined]
    return mirror


def workload(s3_url: str, local: Path) -> dict[str, Any]:
    """Runs and nodes over several days, TTLs, tenants and hostile session ids, through runlake.configure.

    Several flushes put more than one part file in some partitions (for compaction). Returns what was written.
    """
    runlake.configure(s3_url, service_name="s3-tests")
    mirror = _mirror()
    mirror.attach(RunlakeSpanExporter(local, background_flush=False))
    written: dict[str, Any] = {"runs": 0, "nodes": 0, "expired_runs": 0, "expired_nodes": 0}

    def one_run(session: str, *, fail: bool = False, ttl: int = 30, tenant: str | None = None, nodes: int = 2) -> None:
        try:
            with runlake.run("triager", session, user_id="u1", tenant_id=tenant, input=f"in {session}", ttl_days=ttl):
                for i in range(nodes):
                    with runlake.node(f"step{i}", type="llm" if i % 2 == 0 else "tool", input={"i": i}) as n:
                        n.set_output(f"out {i}")
                        n.set_usage(input_tokens=100 + i, output_tokens=10 + i)
                        n.set_cost(cents=1.5)
                        if fail and i == nodes - 1:
                            raise ValueError(f"tool broke in {session}")
        except ValueError:
            pass
        written["runs"] += 1
        written["nodes"] += nodes

    try:
        with shifted_clock(-40 * 86400):  # past a 30-day TTL
            one_run("old session", nodes=3)
        with shifted_clock(-20 * 86400):  # past a 7-day TTL, not a 30-day one
            one_run("week", ttl=7)
            one_run("month")
        written["expired_runs"], written["expired_nodes"] = 2, 5
        runlake.force_flush()
        mirror.exporter.force_flush()
        with shifted_clock(-2 * 86400) as advance:
            for round_ in range(3):  # three flushes: three parts per partition
                for session in SESSIONS:
                    one_run(session, fail=round_ == 1)
                    advance(1)
                one_run("plain", tenant="acme")
                runlake.force_flush()
                mirror.exporter.force_flush()
        one_run("today")
    finally:
        runlake.shutdown()
        if mirror.exporter is not None:
            mirror.exporter.shutdown()
        mirror.attach(None)
    return written


@pytest.fixture
def lakes(s3_url: str, tmp_path: Path) -> tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]]:
    written = workload(s3_url, tmp_path / "local")
    return runlake.HistoryDB(s3_url), runlake.HistoryDB(tmp_path / "local"), written


def answers(db: runlake.HistoryDB, light: bool = False) -> dict[str, Any]:
    """What the query API gives for the workload (``light``: fewer calls; the emulator takes ~10 ms a request)."""
    out: dict[str, Any] = {"history": db.get_history(limit=1000)}
    sessions = SESSIONS[::3] if light else [*SESSIONS, "old session", "week", "today", "no such session"]
    for session in sessions:
        out[f"runs {session!r}"] = runs = db.get_runs(session)
        if runs:  # the logs of one run per session: nodes read through the session's own prefixes
            out[f"logs {session!r}"] = db.get_logs(runs[-1]["run_id"])
        if not light:
            out[f"traces {session!r}"] = db.get_traces(session_id=session)
    out["sql"] = db.sql(
        "SELECT session_id, span_type, node_type, count(*) AS n, sum(input_tokens) AS tokens, "
        "sum(cost_cents) AS cost, count(*) FILTER (WHERE status_code = 'ERROR') AS errors "
        "FROM spans GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    if light:
        return out
    out["history by agent"] = db.get_history(agent_id="triager", skip=3, limit=5)
    out["traces"] = db.get_traces()
    out["traces by user"] = db.get_traces(user_id="u1", limit=7)
    out["acme"] = db.scoped(tenant_id="acme").get_history()
    out["sql runs"] = db.sql("SELECT agent_name, tenant_id, count(*) FROM runs GROUP BY ALL ORDER BY ALL").fetchall()
    return out


# ---- tests ---------------------------------------------------------------------------------------------------------
def test_state_url_forms(emulator: S3Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RUNLAKE_S3_ENDPOINT", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.endpoint)  # the standard variable works too
    root = resolve_lake(f"s3://{BUCKET}/a/b/")
    assert isinstance(root, ObjectPath) and root.path == f"{BUCKET}/a/b" and str(root) == f"s3://{BUCKET}/a/b"
    assert root.store.options["endpoint_override"] == f"127.0.0.1:{emulator.port}"
    assert root.store.options["scheme"] == "http"
    explicit = resolve_lake(f"s3://{BUCKET}/x?endpoint_override=127.0.0.1:{emulator.port}&scheme=http&region=eu-west-3")
    assert explicit.store.options == {
        "endpoint_override": f"127.0.0.1:{emulator.port}",
        "scheme": "http",
        "region": "eu-west-3",
    }
    monkeypatch.setenv("RUNLAKE_STATE_URL", f"s3://{BUCKET}/from-env")
    assert resolve_lake(None) == resolve_lake(f"s3://{BUCKET}/from-env")
    assert (resolve_lake(f"s3://{BUCKET}/p") / "spans").table == "spans"
    with pytest.raises(ValueError, match="unknown option"):
        resolve_lake(f"s3://{BUCKET}/x?endpointoverride=1")
    with pytest.raises(ValueError, match="bucket"):
        resolve_lake("s3:///no-bucket")
    with pytest.raises(ValueError, match="local lake folder"):  # code that needs a folder says so clearly
        resolve_state_url(f"s3://{BUCKET}/p")


@pytest.mark.slow
def test_s3_lake_answers_like_a_local_lake(
    lakes: tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]], emulator: S3Emulator, s3_url: str
) -> None:
    remote, local, written = lakes
    assert isinstance(remote.root, ObjectPath) and isinstance(local.root, Path)
    keys = objects(emulator, s3_url)
    local_keys = sorted(p.relative_to(local.root).as_posix() for p in local.root.rglob("*") if p.is_file())
    # the same partitions, every object a finished part under its final key: nothing hidden or temporary
    assert [k.rpartition("/")[0] for k in keys] == [k.rpartition("/")[0] for k in local_keys]
    assert keys and all(k.rpartition("/")[2].startswith("part-") and k.endswith(".parquet") for k in keys)
    for session in SESSIONS:
        assert any(f"/session={encode_partition_value(session)}/" in k for k in keys), session
    assert len(session_files(remote.root, "plain")) == 6  # three flushes, two tenants

    expected = answers(local)
    got = answers(remote)
    # what is built on the same listing and reader works there too: statistics, replay
    now = dt.datetime.now(dt.timezone.utc)
    for name, lake in (("expected", local), ("got", remote)):
        service = ExecutionHistoryService(lake)
        result = expected if name == "expected" else got
        result["statistics"] = asyncio.run(service.get_execution_statistics(days=60, now=now))
        result["agent metrics"] = asyncio.run(service.get_agent_performance_metrics("triager", days=60, now=now))
        replayed = [{c: row[c] for c in SPAN_COLUMNS} for rows in stored_spans(lake.root) for row in rows]
        result["replay"] = sorted(replayed, key=lambda row: row["span_id"])
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], key
    # and the answers are the workload's, not two equally empty ones
    assert len(expected["history"]) == written["runs"]
    assert sum(h["node_count"] for h in expected["history"]) == written["nodes"]
    assert got["logs '../x'"]["summary"]["total_nodes"] == 2 and got["logs '../x'"]["summary"]["cost_cents"] == 3
    assert len(got["runs 'a/b'"]) == 3
    assert [r["status"] for r in got["runs '../x'"]] == ["completed", "error", "completed"]


def test_unreadable_and_hidden_objects_are_set_aside(
    lakes: tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]],
    emulator: S3Emulator,
    s3_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote, local, _ = lakes
    expected = local.get_traces(session_id="a/b")  # read from the session's span files
    folder = session_files(remote.root, "a/b")[0].parent
    fs = emulator.filesystem()
    for name, data in [
        ("part-0000000000000000-1-broken.parquet", b"not parquet at all"),
        (".part-0000000000000001-1-x.parquet.tmp", b"PAR1 half written"),
        ("_temporary.parquet", b"junk"),
    ]:
        with fs.open_output_stream(f"{folder.path}/{name}") as out:
            out.write(data)
    with caplog.at_level(logging.WARNING):
        assert remote.get_traces(session_id="a/b") == expected
    warnings = [r.getMessage() for r in caplog.records if "unreadable part file" in r.getMessage()]
    assert len(warnings) == 1 and "part-0000000000000000-1-broken.parquet" in warnings[0]
    assert remote.get_traces(session_id="a/b") == expected  # remembered: no second warning needed
    assert remote.sql("SELECT count(*) FROM spans WHERE session_id = 'a/b'").fetchall()[0][0] == len(
        local.sql("SELECT span_id FROM spans WHERE session_id = 'a/b'").fetchall()
    )


def test_ttl_deletes_exactly_the_expired_day_prefixes(
    lakes: tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]], emulator: S3Emulator, s3_url: str
) -> None:
    remote, local, written = lakes
    before = objects(emulator, s3_url)
    now = dt.datetime.now(dt.timezone.utc)

    dry = remote.cleanup_expired(now=now, dry_run=True)
    assert objects(emulator, s3_url) == before  # a dry run deletes nothing
    counts = remote.cleanup_expired(now=now)
    assert counts == dry == local.cleanup_expired(now=now)
    assert counts == {"executions_deleted": written["expired_runs"], "nodes_deleted": written["expired_nodes"]}

    after = objects(emulator, s3_url)
    # exactly the 40-day-old ttl=30 day and the 20-day-old ttl=7 day went; the ttl=30 day of 20 days ago stays
    d40, d20 = ((now - dt.timedelta(days=n)).date().isoformat() for n in (40, 20))
    expired = {k for k in before if (_day_of(k), _ttl_of(k)) in {(d40, "30"), (d20, "7")}}
    assert expired and {_table_of(k) for k in expired} == {"spans", "runs"}
    assert set(before) - set(after) == expired and set(after) <= set(before)
    assert remote.get_history(limit=1000) == local.get_history(limit=1000)
    assert remote.get_runs("old session") == [] and remote.get_runs("week") == []
    assert len(remote.get_runs("month")) == 1
    assert remote.cleanup_expired(now=now) == {"executions_deleted": 0, "nodes_deleted": 0}  # idempotent


def test_ttl_on_s3_counts_only_the_prefixes_it_deleted(
    s3_url: str, emulator: S3Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On an object store each expired day prefix is deleted in turn; one the store refuses to delete is still there,
    so the ``ExpireError`` counts what did go (the other day's runs and nodes alone), never the stuck day as well:
    a caller (``runlake gc``, the server's TTL task) reports those counts as deleted."""
    from runlake import ttl

    runlake.configure(s3_url, service_name="s3-tests")
    try:
        for days_ago, session, runs, nodes in ((40, "stuck", 1, 2), (41, "gone", 2, 3)):
            with shifted_clock(-days_ago * 86400):
                for _ in range(runs):
                    with runlake.run("agent", session):
                        for n in range(nodes):
                            with runlake.node(f"n{n}"):
                                pass
    finally:
        runlake.shutdown()
    root = resolve_lake(s3_url)
    folders = {table: sorted((day, folder) for _, _, day, folder in day_dirs(root, table)) for table in (RUNS, SPANS)}
    assert all(len(days) == 2 for days in folders.values()), "two expired days in each table"
    stuck = {str(days[1][1]) for days in folders.values()}  # the newer day (40 days ago): the "stuck" session's
    real_remove_dir = ttl.remove_dir

    def refusing(folder: Any) -> None:
        if str(folder) in stuck:
            raise PermissionError(13, "Access Denied", str(folder))
        real_remove_dir(folder)

    monkeypatch.setattr(ttl, "remove_dir", refusing)
    db = runlake.HistoryDB(s3_url)
    with pytest.raises(ttl.ExpireError) as raised:
        db.cleanup_expired()
    assert {str(folder) for folder, _ in raised.value.failed} == stuck
    assert raised.value.counts == {"executions_deleted": 2, "nodes_deleted": 6}, "the 'gone' day alone"
    assert "4 executions" not in str(raised.value) and "2 executions and 6 nodes" in str(raised.value)
    assert len(db.get_runs("stuck")) == 1 and db.get_runs("gone") == []
    monkeypatch.setattr(ttl, "remove_dir", real_remove_dir)
    assert db.cleanup_expired() == {"executions_deleted": 1, "nodes_deleted": 2}, "the stuck day goes next time"
    assert not [key for key in objects(emulator, s3_url) if key.endswith(".parquet")]


def _part(key: str, prefix: str) -> str:
    return next((part[len(prefix) :] for part in key.split("/") if part.startswith(prefix)), "")


def _day_of(key: str) -> str:
    return _part(key, "day=")


def _ttl_of(key: str) -> str:
    return _part(key, "ttl=")


def _table_of(key: str) -> str:
    return key.split("/", 1)[0]


def test_compaction_merges_parts_on_s3(
    lakes: tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]], emulator: S3Emulator, s3_url: str
) -> None:
    remote, local, _ = lakes
    expected = answers(local, light=True)
    before = objects(emulator, s3_url)
    summary = compact(s3_url, older_than_minutes=0)
    local_summary = compact(local.root, older_than_minutes=0)
    for field in ("partitions", "files_before", "files_after", "rows", "skipped_files"):
        assert getattr(summary, field) == getattr(local_summary, field), field
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    closed_days = {k.rpartition("/session=")[0] for k in before if k.startswith("spans/") and _day_of(k) < today}
    assert (
        summary.days_merged == len(closed_days) == local_summary.days_merged
        and summary.files_after == summary.partitions
    )
    assert summary.bytes_before > summary.bytes_after > 0
    after = objects(emulator, s3_url)
    assert len(after) == len(before) - summary.files_before + summary.files_after
    for day in closed_days:  # each closed day is one new object in its shared folder; the session prefixes are gone
        [merged] = [k for k in after if k.startswith(day + "/")]
        assert merged.startswith(f"{day}/session=~mixed/compact-") and merged not in before
    assert not [d for d in closed_days if session_dirs(remote.root / d)], "no empty session prefix is left listed"
    # the emptied session prefixes keep pyarrow's `folder/` marker (deleting a prefix could take a part uploaded
    # into it meanwhile along): listings skip them
    fs = emulator.filesystem()
    markers = [
        info
        for day in closed_days
        for info in fs.get_file_info(pafs.FileSelector(f"{remote.root.path}/{day}"))
        if info.base_name != "session=~mixed"
    ]
    assert markers and all(info.type == pafs.FileType.Directory for info in markers)
    assert answers(remote, light=True) == expected  # nothing lost, nothing doubled
    assert compact(s3_url, older_than_minutes=0).partitions == 0


def test_readers_and_writers_go_on_during_compaction_on_s3(s3_url: str) -> None:
    exporter = RunlakeSpanExporter(s3_url, background_flush=False)
    made = make_spans(240, sessions=1)
    for i in range(0, len(made), 30):
        exporter.export(made[i : i + 30])
        exporter.force_flush()  # eight small parts
    exporter.shutdown()
    root = resolve_lake(s3_url)
    assert len(session_files(root, "s0")) == 8
    expected = len(runlake.HistoryDB(s3_url).get_runs("s0"))
    seen: list[int] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def read_loop() -> None:
        reader = runlake.HistoryDB(s3_url)
        while not stop.is_set():
            try:
                seen.append(len(reader.get_runs("s0")))
            except BaseException as error:  # noqa: BLE001 - reported below
                failures.append(error)
                return

    late = make_spans(120, sessions=1, prefix="late")
    writer = RunlakeSpanExporter(s3_url, background_flush=False, max_part_rows=20)
    readers = [threading.Thread(target=read_loop) for _ in range(2)]
    for t in readers:
        t.start()
    writing = threading.Thread(target=lambda: [writer.export(late[i : i + 30]) for i in range(0, 120, 30)])
    writing.start()
    for _ in range(2):
        compact(s3_url, older_than_minutes=0)
    writing.join(timeout=60)
    writer.shutdown()
    compact(s3_url, older_than_minutes=0)
    stop.set()
    for t in readers:
        t.join(timeout=60)
    assert not failures, failures
    assert seen and set(seen) == {expected}, "no reader ever saw a run twice or missed one"
    assert len(session_files(root, "s0")) == 1
    assert len(runlake.HistoryDB(s3_url).get_runs("late0")) == len([s for s in late if s.parent is None])


def closed_day_on_s3(s3_url: str, sessions: int = 2) -> dict[str, set[str]]:
    """``sessions`` sessions of a closed day on S3, two parts each; each session's span ids."""
    return closed_day_lake(s3_url, sessions)


def test_compaction_never_deletes_a_part_uploaded_into_a_session_prefix_meanwhile(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed day still gets late spans (a run across midnight, a collector's retry, a replay): their part goes
    into the session's prefix while compaction merges the day. Compaction must never delete it: no recursive delete
    of a prefix it found empty (the upload is placed right before such a delete would run, by a hook)."""
    import runlake.compact as compaction

    closed_day_on_s3(s3_url, sessions=1)
    late = make_spans(4, sessions=1, prefix="s")  # session s0 too: the same prefix
    for span in late:
        span._start_time -= 2 * 86_400 * 10**9
        span._end_time -= 2 * 86_400 * 10**9
    writer = RunlakeSpanExporter(s3_url, background_flush=False)
    uploaded: list[Any] = []

    def upload_late(folder: Any = None) -> None:
        if not uploaded:
            writer.export(late)
            assert writer.force_flush(), "the late part is acknowledged"
            uploaded.append(folder)

    def remove_dir(folder: Any) -> None:  # where a compaction that deletes emptied prefixes would
        upload_late(folder)
        real_remove_dir(folder)

    real_remove_dir = layout.remove_dir
    monkeypatch.setattr(compaction, "remove_dir", remove_dir, raising=False)
    monkeypatch.setattr(layout, "remove_dir", remove_dir)
    real_remove_empty = compaction._remove_empty_folders

    def remove_empty_folders(folders: set[Any]) -> None:  # and in any case once compaction tidies the day
        real_remove_empty(folders)
        upload_late()

    monkeypatch.setattr(compaction, "_remove_empty_folders", remove_empty_folders)
    assert compact(s3_url, older_than_minutes=0).days_merged == 1
    writer.shutdown()
    assert uploaded
    late_ids = {f"{span.context.span_id:016x}" for span in late}
    stored = {row[0] for row in runlake.HistoryDB(s3_url).sql_rows("SELECT span_id FROM spans")[1]}
    assert late_ids <= stored and len(stored) == 12, "every acknowledged span is still in the lake"


def test_listings_on_s3_never_miss_rows_while_compaction_merges_the_day(
    s3_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 a reader lists a day's folders concurrently. Whatever compaction does meanwhile, a listing gives every
    row or a file that vanished (the reader lists again): ``session=~mixed`` is listed only after every session
    folder's listing has finished. Forced interleavings: compaction right after the day's session level was listed
    (``table_files``, ``day_files``, a reader's query); the session folders listed only after ``~mixed`` was listed
    and the day compacted (``sessions_files``, whose folders are listed at once: they wait for that, up to 1 s)."""
    real_listing = layout._listing
    state: dict[str, Any] = {"merged": None, "busy": False, "url": s3_url}
    mixed_listed = threading.Event()

    def compact_once() -> None:
        if state["merged"] is None:
            state["busy"] = True
            state["merged"] = compact(state["url"], older_than_minutes=0).days_merged
            state["busy"] = False

    def after_day_level(path: Any, *args: Any, **kwargs: Any) -> Any:
        found = real_listing(path, *args, **kwargs)
        if not state["busy"] and path.name.startswith("day=") and path.table == SPANS:
            compact_once()
        return found

    def session_folders_wait(path: Any, *args: Any, **kwargs: Any) -> Any:
        if not state["busy"] and path.name.startswith("session=") and path.name != "session=~mixed":
            mixed_listed.wait(timeout=1)
        found = real_listing(path, *args, **kwargs)
        if not state["busy"] and path.name == "session=~mixed":
            compact_once()
            mixed_listed.set()
        return found

    wanted = {"absent": None, "s0": None, "s1": None}  # a session without folders first: its day's ~mixed next
    checks: list[tuple[str, Callable[[Any], list], Callable[..., Any]]] = [
        ("table_files", lambda root: table_files(root, SPANS), after_day_level),
        (
            "day_files",
            lambda root: [f for *_, d in day_dirs(root, SPANS) for f in day_files(d, SPANS)],
            after_day_level,
        ),
        ("sessions_files", lambda root: sessions_files(root, wanted), session_folders_wait),
    ]
    for name, listing, hook in checks:
        url = state["url"] = f"{s3_url}-{name}"
        sessions = closed_day_on_s3(url)
        state["merged"] = None
        mixed_listed.clear()
        monkeypatch.setattr(layout, "_listing", hook)
        files = listing(resolve_lake(url))
        monkeypatch.setattr(layout, "_listing", real_listing)
        assert state["merged"] == 1, name
        vanished = any(not f.exists() for f in files)
        listed = {
            span_id
            for f in files
            if not vanished
            for span_id in pq.read_table(f.path, filesystem=f.fs, columns=["span_id"]).column(0).to_pylist()
        }
        assert vanished or sessions["s0"] | sessions["s1"] <= listed, f"{name} missed rows, with no file vanished"

    # a reader's query, end to end
    url = state["url"] = f"{s3_url}-reader"
    closed_day_on_s3(url)
    db = runlake.HistoryDB(url)
    assert db.sql_rows("SELECT count(*) FROM spans")[1] == [(16,)]
    state["merged"] = None
    monkeypatch.setattr(layout, "_listing", after_day_level)
    assert db.sql_rows("SELECT count(*) FROM spans")[1] == [(16,)] and state["merged"] == 1


@pytest.mark.parametrize("path", ["folder merge", "day merge"])
def test_a_day_ttl_expires_while_compaction_merges_it_does_not_come_back_on_s3(
    s3_url: str, emulator: S3Emulator, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 there are no folders to be missing: a merged object uploaded after TTL deleted the day's parts would
    bring their rows back. Compaction checks the parts it merged are all still there before it removes them, and
    takes its own object away when one went. Forced: TTL runs just before the merged object is uploaded, for an
    open day's folder merge (expired by a TTL run "five days later") and a closed day's merge."""
    from test_compact import expiring_lake

    from runlake.compact import PartStream, compact

    expiring_lake(s3_url, late_part=False, days_ago=0 if path == "folder merge" else 2)
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=5) if path == "folder merge" else None
    assert runlake.HistoryDB(s3_url).sql_rows("SELECT count(*) FROM spans")[1] == [(4,)]
    expired: list[dict] = []

    def ttl_first(real):  # noqa: ANN001, ANN202
        def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            if not expired:
                expired.append(runlake.HistoryDB(s3_url).cleanup_expired(now=later))
            return real(*args, **kwargs)

        return wrapper

    with monkeypatch.context() as hooked:  # the fixture's environment stays
        if path == "folder merge":
            hooked.setattr(runlake.compact, "write_part", ttl_first(runlake.compact.write_part))
        else:
            hooked.setattr(PartStream, "close", ttl_first(PartStream.close))
        compact(s3_url, older_than_minutes=0)
    assert expired and expired[0]["executions_deleted"] == 2
    assert runlake.HistoryDB(s3_url).sql_rows("SELECT count(*) FROM spans")[1] == [(0,)]
    assert runlake.HistoryDB(s3_url).cleanup_expired(now=later) == {"executions_deleted": 0, "nodes_deleted": 0}
    assert not [key for key in objects(emulator, s3_url) if key.endswith(".parquet")], "nothing came back"


def test_a_part_with_a_damaged_footer_is_set_aside_on_s3(
    s3_url: str, emulator: S3Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    """pyarrow reports a footer it cannot decode as an ``OSError``, like a network failure, which readers raise
    rather than mark a good object bad: every query listing the object failed, and TTL never expired its day."""
    from test_query_paths import lake_with_a_damaged_footer

    damaged = lake_with_a_damaged_footer(s3_url)
    db = runlake.HistoryDB(s3_url)
    with caplog.at_level(logging.WARNING):
        assert len(db.get_history()) == 1 and len(db.get_runs("s")) == 1
        assert db.sql_rows("SELECT count(*) FROM runs")[1] == [(1,)]
    assert damaged in caplog.text
    assert runlake.HistoryDB(s3_url).cleanup_expired() == {"executions_deleted": 1, "nodes_deleted": 0}
    assert not [key for key in objects(emulator, s3_url) if key.endswith(".parquet")]


def test_objects_of_an_older_schema_still_read_and_compact_on_s3(s3_url: str, emulator: S3Emulator) -> None:
    exporter = RunlakeSpanExporter(s3_url, background_flush=False)
    exporter.export(make_spans(8, sessions=1))
    exporter.shutdown()
    [current] = session_files(resolve_lake(s3_url), "s0")
    old = pa.table(
        {
            "record": ["end"],
            "span_type": ["run"],
            "session_id": ["s0"],
            "run_id": ["00000000000000aa"],
            "trace_id": ["0" * 31 + "1"],
            "span_id": ["00000000000000aa"],
            "name": ["invoke_agent legacy"],
            "start_time_unix_nano": [1],
            "end_time_unix_nano": [2],
            "status_code": ["OK"],
            "agent_name": ["legacy"],
            "legacy_column": ["dropped by compaction"],
        }
    )
    fs = emulator.filesystem()
    pq.write_table(old, f"{current.parent.path}/part-0000000000000000-old.parquet", filesystem=fs)
    # the legacy run is only in spans/ (no runs/ row): read through the session's spans
    assert "legacy" in [t["agent_name"] for t in runlake.HistoryDB(s3_url).get_traces(session_id="s0")]
    compact(s3_url, older_than_minutes=0)
    [merged] = data_files(current.parent)
    assert tuple(pq.read_schema(merged.path, filesystem=fs).names) == SPAN_COLUMNS
    assert "legacy" in [t["agent_name"] for t in runlake.HistoryDB(s3_url).get_traces(session_id="s0")]


def test_exporter_survives_the_endpoint_going_down(
    emulator: S3Emulator, s3_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = RunlakeSpanExporter(s3_url, background_flush=False)
    provider = TracerProvider()
    provider.add_span_processor(RunStartProcessor(exporter))
    tracer = provider.get_tracer("s3-tests")

    def spans(session: str, n: int) -> list:
        done = []
        for i in range(n):
            attributes = {"runlake.span.type": "run", "gen_ai.conversation.id": session, "gen_ai.agent.name": "a"}
            span = tracer.start_span(f"run {i}", attributes=attributes)
            span.end()
            done.append(span)
        return done

    assert exporter.export(spans("before", 2)).name == "SUCCESS" and exporter.force_flush()
    emulator.stop()
    try:
        with caplog.at_level(logging.ERROR):
            result = exporter.export(spans("during 1", 3) + spans("during 2", 3))  # buffered: no I/O yet
            assert result.name == "SUCCESS"
            assert exporter.force_flush() is False  # the store is unreachable: no exception, rows kept
            assert exporter.export(spans("during 3", 1)).name == "FAILURE"  # and export says so while it lasts
        stats = exporter.stats
        assert stats["failing"] and stats["failed_writes"] >= 1 and stats["dropped_rows"] == 0
        assert stats["buffered_rows"] == 7 * 4  # per run: start and end rows, in the spans table and the index
        assert sum("cannot write a part file" in r.getMessage() for r in caplog.records) == 1  # logged once
    finally:
        emulator.start()  # same port: the emulator is back
    assert exporter.force_flush() is True
    assert exporter.stats["buffered_rows"] == 0 and exporter.stats["failing"] is None
    exporter.shutdown()
    db = runlake.HistoryDB(s3_url)
    for session, n in [("before", 2), ("during 1", 3), ("during 2", 3), ("during 3", 1)]:
        assert len(db.get_runs(session)) == n, session


@pytest.mark.parametrize("provider_first", [False, True])
def test_spans_reach_s3_when_a_process_exits_without_shutdown(s3_url: str, provider_first: bool) -> None:
    """pyarrow finalizes S3 at exit; an app whose TracerProvider predates runlake's import must still upload."""
    script = textwrap.dedent(
        f"""
        if {provider_first!r}:
            from opentelemetry import trace
            from opentelemetry.sdk.trace import TracerProvider
            trace.set_tracer_provider(TracerProvider())
        import runlake
        runlake.configure({s3_url!r})
        with runlake.run("agent", "exiting", input="x"):
            with runlake.node("n", type="tool"):
                pass
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=dict(os.environ), capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "cannot write" not in done.stderr, done.stderr
    assert [r["status"] for r in runlake.HistoryDB(s3_url).get_runs("exiting")] == ["completed"]


def forward_from(root: Any) -> dict[str, int]:
    """`runlake forward --json` of a lake (local or s3://) into a real OTLP/gRPC receiver on loopback: the counts,
    and the span ids the receiver got must be as many as were sent."""
    import json as _json

    from oteltest.sink import GrpcSink
    from test_forward import Collected, free_port
    from typer.testing import CliRunner

    import runlake.cli_ops  # noqa: F401 - registers forward and compact on the app
    from runlake.cli import app

    collected = Collected()
    port = free_port()
    sink = GrpcSink(collected, logging.getLogger("oteltest"), port=port)
    sink.start()
    try:
        result = CliRunner().invoke(
            app, ["forward", "--endpoint", f"http://127.0.0.1:{port}", "--state-url", str(root), "--json"]
        )
    finally:
        sink.stop()
    assert result.exit_code == 0, result.output
    counts = _json.loads(result.stdout)
    assert len({s["span_id"] for s in collected.spans}) == counts["sent"]
    return counts


def test_cli_reads_an_s3_lake(lakes: tuple[runlake.HistoryDB, runlake.HistoryDB, dict[str, Any]]) -> None:
    """`runlake history` / `sql` / `forward` / `compact` on an s3:// lake do what they do for the local twin."""
    import json as _json

    from typer.testing import CliRunner

    from runlake.cli import app

    remote, local, _ = lakes
    runner = CliRunner()

    def run(*args: str) -> Any:
        result = runner.invoke(app, [*args, "--json"])
        assert result.exit_code == 0, result.output
        return _json.loads(result.stdout)

    assert run("history", "--limit", "50", "--state-url", str(remote.root)) == run(
        "history", "--limit", "50", "--state-url", str(local.root)
    )
    query = "SELECT span_type, count(*) AS n FROM spans GROUP BY 1 ORDER BY 1"
    assert run("sql", query, "--state-url", str(remote.root)) == run("sql", query, "--state-url", str(local.root))
    sent = forward_from(remote.root)
    assert sent == forward_from(local.root) and sent["sent"] > 0 and sent["failed"] == 0
    remote_summary = run("compact", "--older-than", "0", "--state-url", str(remote.root))
    local_summary = run("compact", "--older-than", "0", "--state-url", str(local.root))
    for field in ("partitions", "days_merged", "files_before", "files_after", "rows"):
        assert remote_summary[field] == local_summary[field], field
    assert remote_summary["days_merged"] >= 1
    assert run("sql", query, "--state-url", str(remote.root)) == run("sql", query, "--state-url", str(local.root))
