"""compact, import and forward on the command line, on real lakes and real OTLP JSON lines."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from conftest import lake_files
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from test_compact import small_parts_lake
from test_exporter import make_spans
from test_forward import Collected, free_port
from typer.testing import CliRunner

import runlake
import runlake.cli_ops  # noqa: F401 - registers the commands on the app
from runlake.cli import app

runner = CliRunner()


def invoke(*args: object) -> tuple[int, str, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.stdout, result.stderr


def test_compact_command(lake: Path) -> None:
    small_parts_lake(lake)
    before = len(lake_files(lake, "spans"))
    code, out, _ = invoke("compact", "--older-than", 0, "--state-url", lake, "--json")
    assert code == 0
    summary = json.loads(out)
    assert summary["files_before"] == before and summary["files_after"] == 4 and summary["rows"] == 400
    code, out, _ = invoke("compact", "--older-than", 0, "--state-url", lake)
    assert code == 0 and "Nothing to compact" in out


def test_compact_command_says_when_parts_are_too_recent(lake: Path) -> None:
    small_parts_lake(lake)
    code, out, _ = invoke("compact", "--older-than", 60, "--state-url", lake, "--json")
    assert code == 0 and json.loads(out)["partitions"] == 0 and json.loads(out)["days_not_quiet"] > 0
    code, out, _ = invoke("compact", "--older-than", 60, "--state-url", lake)
    text = " ".join(out.split())
    assert code == 0 and "left for now" in text and "--older-than 0" in text and "Nothing to compact" not in text


def test_compact_command_merges_a_big_closed_day_in_steps(lake: Path) -> None:
    from test_compact import history_lake

    history_lake(lake, days_ago=(2,))
    code, out, _ = invoke("compact", "--older-than", 0, "--max-step-mb", 0.001, "--state-url", lake)
    assert code == 0 and "each became its one file in several steps" in " ".join(out.split()), out
    assert len(lake_files(lake, "spans")) == 1 and len(lake_files(lake, "runs")) == 1
    code, _, err = invoke("compact", "--max-step-mb", 0, "--state-url", lake)
    assert code == 2 and "max-step-mb" in err, "a step of nothing is refused"


def test_import_otlp_json_lines_with_bad_lines(lake: Path, tmp_path: Path) -> None:
    jsonl = tmp_path / "spans.jsonl"
    exporter = FileSpanExporter(jsonl)
    spans = make_spans(30, sessions=3)
    for start in range(0, 30, 10):
        exporter.export(spans[start : start + 10])
    exporter.shutdown()
    lines = jsonl.read_text().splitlines()
    assert len(lines) == 3
    bad_id = json.loads(lines[0])
    bad_id["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["spanId"] = "not-hex"
    jsonl.write_text("\n".join([lines[0], "{not json", json.dumps(bad_id), lines[1], "", lines[2]]) + "\n")
    code, out, err = invoke("import", jsonl, "--state-url", lake, "--json")
    assert code == 1, err  # what could be read is imported; the bad lines make it exit 1
    summary = json.loads(out)
    expected = {"files": 1, "lines": 5, "spans": 30 + 9, "rejected_spans": 1, "bad_lines": 1, "unreadable_files": 0}
    assert summary == expected
    assert f"{jsonl}:2:" in err and "not valid JSON" in err and f"{jsonl}:3:" in err
    db = runlake.HistoryDB(lake)
    assert db.sql("SELECT count(DISTINCT span_id) FROM spans").fetchall() == [(30,)]
    assert sum(len(db.get_runs(f"s{i}")) for i in range(3)) == len([s for s in spans if s.parent is None])


def test_import_missing_file_is_a_clear_error(lake: Path, tmp_path: Path) -> None:
    code, _, err = invoke("import", tmp_path / "nope.jsonl", "--state-url", lake)
    assert code == 1 and "no such file" in err


def test_forward_command_to_a_real_receiver(lake: Path) -> None:
    from oteltest.sink import GrpcSink

    small_parts_lake(lake, spans=60, sessions=2, batches=2)
    collected = Collected()
    port = free_port()
    sink = GrpcSink(collected, logging.getLogger("oteltest"), port=port)
    sink.start()
    try:
        code, out, err = invoke(
            "forward", "--endpoint", f"http://127.0.0.1:{port}", "--session", "s1", "--state-url", lake, "--json"
        )
    finally:
        sink.stop()
    assert code == 0, err
    [(expected,)] = runlake.HistoryDB(lake).sql("SELECT count(*) FROM spans WHERE session_id = 's1'").fetchall()
    result = json.loads(out)
    assert (result["sent"], result["failed"], result["stopped"]) == (expected, 0, False) and expected > 0
    assert len({s["span_id"] for s in collected.spans}) == expected


def test_forward_to_nothing_fails_with_exit_1(lake: Path) -> None:
    small_parts_lake(lake, spans=10, sessions=1, batches=1)
    code, out, _ = invoke(
        "forward",
        "--endpoint",
        f"http://127.0.0.1:{free_port()}",
        "--protocol",
        "http/protobuf",
        "--state-url",
        lake,
        "--json",
    )
    assert code == 1 and json.loads(out)["failed"] == 10


def test_serve_help_states_the_lake_default_like_every_command() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "240"})  # no wrapping inside a phrase
    code, text = result.exit_code, " ".join(result.stdout.replace("│", " ").split())
    assert code == 0
    assert "./runlake-data" in text and "PRAISONAI_STATE_URL" in text
    assert "the lake's .ingest-log folder" in text


def test_help_shows_every_option_name_whole_and_each_example_on_its_own_line() -> None:
    """On a 100-column terminal no option name is cut (``serve`` groups its many options in panels, each table
    sized to its own), and a command's examples are not run together into one line."""
    for command in [*S3_COMMANDS, *FOLDER_COMMANDS, "serve"]:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "100"})
        assert result.exit_code == 0 and "…" not in result.stdout, (command, result.stdout)
    lines = runner.invoke(app, ["stats", "--help"], env={"COLUMNS": "100"}).stdout.splitlines()
    examples = [line.strip() for line in lines if line.strip().startswith("runlake stats")]
    expected = ["runlake stats --days 7", "runlake stats --agent bug-triager", "runlake stats --per-user --json"]
    assert examples == expected


S3_COMMANDS = ["runs", "traces", "history", "logs", "stats", "sql", "gc", "compact", "forward"]  # open_db, remote_ok
FOLDER_COMMANDS = ["demo", "sessions", "import"]


def test_state_url_help_says_which_commands_take_an_s3_lake() -> None:
    for command in S3_COMMANDS + FOLDER_COMMANDS:
        result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "240"})
        text = " ".join(result.stdout.replace("│", " ").split())
        assert result.exit_code == 0 and "--state-url" in text and "RUNLAKE_STATE_URL" in text, command
        assert ("s3://" in text) == (command in S3_COMMANDS), f"{command}: {text}"
    for command, *args in (["demo"], ["sessions"], ["import", "spans.jsonl"]):  # and those refuse one plainly
        result = runner.invoke(app, [command, *args, "--state-url", "s3://bucket/lake"], env={"COLUMNS": "240"})
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), command
        assert "s3://" in result.stderr and "Traceback" not in result.output, command


def test_import_reads_gzip_and_forces_the_tenant(lake: Path, tmp_path: Path) -> None:
    """`--tenant` stores every span under it, whatever tenant a span names; a .jsonl.gz file is read as it is."""
    import gzip

    from opentelemetry.exporter.runlake.layout import tenants

    jsonl = tmp_path / "spans.jsonl"
    exporter = FileSpanExporter(jsonl)
    spans = make_spans(20, sessions=2)
    exporter.export(spans)
    exporter.shutdown()
    text = jsonl.read_text().replace(
        '"session.id"', '"runlake.tenant.id","value":{"stringValue":"acme"}},{"key":"session.id"'
    )
    assert '"acme"' in text
    packed = tmp_path / "spans.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    code, out, err = invoke("import", packed, "--tenant", "globex", "--state-url", lake, "--json")
    assert code == 0, err
    assert json.loads(out)["spans"] == 20 and json.loads(out)["bad_lines"] == 0
    assert tenants(lake, "spans") == ["globex"] and tenants(lake, "runs") == ["globex"]
    assert len(runlake.HistoryDB(lake).scoped("globex").get_runs("s0")) > 0


def test_import_of_nothing_readable_exits_1(lake: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.jsonl"
    junk.write_bytes(b"\x00\x01 not json\n{}{\n")
    code, out, err = invoke("import", junk, "--state-url", lake)
    assert code == 1 and "Imported 0 spans" in " ".join(out.split()) and f"{junk}:1:" in err


class _Receiver:
    """A real OTLP/HTTP receiver on 127.0.0.1 that keeps request headers and answers every request with a
    ``partial_success`` refusing one span (as `runlake serve` does for a span it cannot store)."""

    def __init__(self) -> None:
        import http.server

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTracePartialSuccess,
            ExportTraceServiceResponse,
        )

        receiver = self
        self.headers: list[dict[str, str]] = []
        self.spans = 0
        reply = ExportTraceServiceResponse(
            partial_success=ExportTracePartialSuccess(rejected_spans=1, error_message="span 1: end before start")
        ).SerializeToString()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest.FromString(body)
                receiver.headers.append({k.lower(): v for k, v in self.headers.items()})
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_forward_counts_spans_refused_in_a_partial_success_and_sends_headers_as_written(lake: Path) -> None:
    small_parts_lake(lake, spans=10, sessions=1, batches=1)
    with _Receiver() as receiver:
        code, out, _ = invoke(
            "forward",
            "--endpoint",
            receiver.url,
            "--protocol",
            "http/protobuf",
            "--header",
            "X-Tags=a,b",
            "--header",
            "Authorization=Bearer abc%2Bdef",
            "--state-url",
            lake,
            "--json",
        )
    result = json.loads(out)
    assert code == 1 and receiver.spans == 10
    assert (result["sent"], result["failed"], result["rejected"]) == (9, 1, 1)
    assert result["errors"] == ["span 1: end before start"]
    assert receiver.headers[0]["x-tags"] == "a,b" and receiver.headers[0]["authorization"] == "Bearer abc%2Bdef"
    with _Receiver() as receiver:  # the table output says why
        code, out, _ = invoke("forward", "--endpoint", receiver.url, "--protocol", "http/protobuf", "--state-url", lake)
    assert code == 1 and "refused by the receiver: span 1: end before start" in " ".join(out.split())


class _GrpcReceiver:
    """A real OTLP/gRPC receiver (grpcio's server on 127.0.0.1) answering every request with a
    ``partial_success`` that refuses one span."""

    def __init__(self) -> None:
        from concurrent import futures

        import grpc
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTracePartialSuccess,
            ExportTraceServiceResponse,
        )

        receiver = self
        self.spans = 0

        class Service(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # noqa: ANN001, ANN202, ARG002, N802 - the gRPC method
                receiver.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                refusal = ExportTracePartialSuccess(rejected_spans=1, error_message="span 1: end before start")
                return ExportTraceServiceResponse(partial_success=refusal)

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
        self.url = f"http://127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def __enter__(self) -> _GrpcReceiver:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(grace=None).wait(10)


def test_forward_over_grpc_counts_spans_refused_in_a_partial_success(lake: Path) -> None:
    small_parts_lake(lake, spans=10, sessions=1, batches=1)
    with _GrpcReceiver() as receiver:
        code, out, _ = invoke(
            "forward", "--endpoint", receiver.url, "--protocol", "grpc", "--state-url", lake, "--json"
        )
    result = json.loads(out)
    assert code == 1 and receiver.spans == 10
    assert (result["sent"], result["failed"], result["rejected"]) == (9, 1, 1)
    assert result["errors"] == ["span 1: end before start"]


def test_live_forwarding_over_grpc_counts_refused_spans(lake: Path) -> None:
    import runlake

    with _GrpcReceiver() as receiver:
        runlake.configure(lake, otlp_endpoint=receiver.url, otlp_protocol="grpc")
        with runlake.run("agent", "s-1"):
            with runlake.node("step"):
                pass
        runlake.shutdown()
    stats = runlake.forwarding_stats()
    assert receiver.spans == 2 and stats["rejected"] == 1, stats


def test_import_keeps_what_a_truncated_gzip_held_and_names_it(lake: Path, tmp_path: Path) -> None:
    import gzip

    good = tmp_path / "good.jsonl"
    exporter = FileSpanExporter(good)
    exporter.export(make_spans(20, sessions=2))
    exporter.shutdown()
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(good.read_bytes())[:-20])  # cut before its end
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 10)
    code, out, err = invoke("import", good, broken, garbage, "--state-url", lake, "--json")
    summary = json.loads(out)
    assert code == 1 and summary["unreadable_files"] == 2 and summary["spans"] >= 20, (out, err)
    assert f"{broken}: cannot be read past line" in err and f"{garbage}: cannot be read" in err
    assert "Traceback" not in err
    [(spans,)] = runlake.HistoryDB(lake).sql("SELECT count(DISTINCT span_id) FROM spans").fetchall()
    assert spans == 20, "the good file's spans are written"
