"""compact, import and forward on the command line, on real lakes and real OTLP JSON lines."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from conftest import lake_files
from opentelemetry.exporter.otlp.json.file import FileSpanExporter
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
    assert code == 0, err
    summary = json.loads(out)
    assert summary == {"files": 1, "lines": 5, "spans": 30 + 9, "rejected_spans": 1, "bad_lines": 1}
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
    assert json.loads(out) == {"sent": expected, "failed": 0} and expected > 0
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
