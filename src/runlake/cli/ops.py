"""Lake operations on the command line: ``compact``, ``forward`` (replay to OTLP) and ``import`` (OTLP JSON lines)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO

import typer
from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .common import AsJson, RemoteStateUrl, StateUrl, _lake_root, app, fail, no_lake
from .output import _count, _human_bytes, _stderr, _stdout, print_json

if TYPE_CHECKING:
    from opentelemetry.exporter.runlake.layout import LakeRoot

DEFAULT_MAX_STEP_MB = 64  # runlake.compact.DEFAULT_MAX_STEP_BYTES in MiB (not imported: pyarrow stays out of start-up)


def _progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_stderr(),
        transient=True,
    )


def _existing_lake(state_url: str, remote_ok: bool = False) -> LakeRoot:
    """The lake's root folder (or, with ``remote_ok``, an ``s3://`` lake); a missing folder exits with a hint."""
    root = _lake_root(state_url, remote_ok=remote_ok)
    if isinstance(root, Path) and not root.exists():
        no_lake(root)
    if isinstance(root, Path) and not root.is_dir():
        fail(f"{root.resolve()} is not a folder; a runlake lake is a folder")
    return root


def _day(value: str | None, flag: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        fail(f"{flag} must be a day as YYYY-MM-DD, got {value!r}", code=2)


@app.command()
def compact(
    older_than: Annotated[
        float,
        typer.Option("--older-than", metavar="MINUTES", min=0, help="Only partitions with no new part for this long."),
    ] = 10,
    max_step_mb: Annotated[
        float,
        typer.Option(
            "--max-step-mb",
            metavar="MB",
            min=0.001,
            help="Rows per merge step, in MiB decoded (as held in memory, not compressed on disk). A closed day "
            "bigger than this is still one file, merged in several steps; memory peaks at about 2.5x this "
            "plus ~150-200 MB.",
        ),
    ] = DEFAULT_MAX_STEP_MB,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Merge the small part files of quiet days: one file per closed day, one per folder for today.

    A closed day (before today, UTC) with no new part for `--older-than` minutes becomes one file sorted by
    session; today's session folders and shared `session=~mixed` parts become one file each; closed days of the
    `runs/` index one file each. Readers and writers can go on meanwhile (see docs/design.md). One compaction at a
    time: a second one finds the lake locked and returns at once.

    **Example:**

        runlake compact --older-than 30 --state-url ./runlake-data
    """
    from ..compact import BUSY_MESSAGE, LOCK_FILE, CompactError
    from ..compact import compact as run_compaction

    root = _existing_lake(state_url, remote_ok=True)  # compaction works on an s3:// lake too
    where = str(root.resolve()) if isinstance(root, Path) else str(root)
    with _progress() as progress:
        task = progress.add_task("compacting", total=None)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        try:
            summary = run_compaction(
                root, older_than_minutes=older_than, progress=advance, max_step_bytes=int(max_step_mb * (1 << 20))
            )
        except CompactError as error:
            progress.stop()
            fail(str(error))
    if as_json:
        print_json(summary.as_dict())
        return
    if summary.busy:
        _stdout().print(f"Nothing done: {BUSY_MESSAGE} on {where} (it holds {root / LOCK_FILE}).")
        return
    table = Table(title=f"Compaction of {where}", show_header=True)
    for column in ("partitions", "days merged", "files before", "files after", "bytes before", "bytes after"):
        table.add_column(column, justify="right")
    for column in ("rows", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        str(summary.partitions),
        str(summary.days_merged),
        str(summary.files_before),
        str(summary.files_after),
        _human_bytes(summary.bytes_before),
        _human_bytes(summary.bytes_after),
        str(summary.rows),
        f"{summary.seconds:.2f}",
    )
    _stdout().print(table)
    if summary.days_in_steps:
        _stdout().print(
            f"{summary.days_in_steps} closed day folders (spans/ and runs/ count apart) held more than "
            f"{max_step_mb:g} MiB of rows decoded (--max-step-mb): each became its one file in several steps "
            f"({summary.merge_steps} steps in all)."
        )
    if summary.skipped_files:
        _stderr().print(f"{summary.skipped_files} unreadable part files were left alone (see the warnings above).")
    if summary.days_not_quiet:
        _stdout().print(
            f"{_count(summary.days_not_quiet, 'day folder')} left for now: parts written less than "
            f"{older_than:g} minutes ago (--older-than); a later run merges them (--older-than 0: at once)."
        )
    elif not summary.partitions:
        _stdout().print("Nothing to compact: every day is already compacted.")


@app.command()
def forward(
    endpoint: Annotated[
        str, typer.Option("--endpoint", help="OTLP endpoint, e.g. http://collector:4317 (gRPC) or :4318 (HTTP).")
    ],
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="grpc (collectors, port 4317) or http/protobuf (port 4318; the only one `runlake serve` speaks).",
        ),
    ] = "grpc",
    header: Annotated[
        list[str] | None, typer.Option("--header", help="key=value (taken as written), repeatable.")
    ] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only this session.")] = None,
    since: Annotated[str | None, typer.Option("--since", metavar="YYYY-MM-DD", help="From this UTC day.")] = None,
    until: Annotated[str | None, typer.Option("--until", metavar="YYYY-MM-DD", help="Up to this UTC day.")] = None,
    state_url: RemoteStateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Replay stored spans to an OTLP endpoint with their original ids, times, attributes and events.

    Use it to backfill a new backend (Jaeger, Phoenix, Langfuse, another runlake: `--protocol http/protobuf`) from
    the lake. Spans still in progress are not sent (counted); runtime state cleared since is left out. After three
    refused batches in a row the replay stops and says which day to resume from (`--since`). Exits 1 if any span was
    refused (also inside an accepted request: OTLP/HTTP partial success).

    **Example:**

        runlake forward --endpoint http://localhost:4318 --protocol http/protobuf --since 2026-11-01
    """
    from ..forward import PartialSuccess, build_otlp_exporter, forwarding_settings
    from ..replay import forward as replay

    root = _existing_lake(state_url, remote_ok=True)  # an s3:// lake replays too
    headers: dict[str, str] = {}
    for item in header or []:  # as given: no list splitting, no URL decoding (that is the env variable's form)
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--header must be key=value, got {item!r}", code=2)
        headers[key.strip()] = value.strip()
    try:
        settings = forwarding_settings(endpoint, protocol, headers)
    except ValueError as error:
        fail(str(error), code=2)
    assert settings is not None
    partial = PartialSuccess()
    exporter = build_otlp_exporter(*settings, timeout_s=10, partial=partial)
    with _progress() as progress:
        task = progress.add_task("forwarding spans", total=None)
        result = replay(
            root,
            exporter,
            session_id=session,
            since=_day(since, "--since"),
            until=_day(until, "--until"),
            progress=lambda n: progress.advance(task, n),
            rejected=partial.take,
        )
    exporter.shutdown()
    if as_json:
        print_json(result)
    else:
        _report_forward(result, settings[0], settings[1])
    if result["failed"] or result["stopped"]:
        raise typer.Exit(1)


def _report_forward(result: dict, endpoint: str, protocol: str) -> None:
    out = _stdout()
    out.print(f"Forwarded {result['sent']} spans to {endpoint} ({protocol}); {result['failed']} failed.")
    if result["rejected"]:
        reasons = "; ".join(dict.fromkeys(result["errors"])) or "no reason given"
        out.print(f"{_count(result['rejected'], 'span')} of accepted requests refused by the receiver: {reasons}")
    if result["stopped"]:
        where = f" Resume with --since {result['stopped_at_day']}." if result["stopped_at_day"] else ""
        out.print(f"Stopped: the endpoint refused several batches in a row (down or unreachable?).{where}")
    if result["in_progress"]:
        out.print(f"{_count(result['in_progress'], 'span')} still in progress (no end yet) not sent.")
    if result["cleared_states"]:
        out.print(f"{_count(result['cleared_states'], 'runtime state')} cleared since were left out.")


@app.command("import")
def import_files(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="OTLP JSON lines files.")],
    tenant: Annotated[str | None, typer.Option("--tenant", help="Store under this tenant.")] = None,
    state_url: StateUrl = DEFAULT_STATE_URL,
    as_json: AsJson = False,
) -> None:
    """Import OTLP JSON lines (the collector's file exporter, opentelemetry-exporter-otlp-json-file) into the lake.

    Each line is one ExportTraceServiceRequest in OTLP/JSON; gzipped files are read as they are. A bad line is
    reported with its file and line number and skipped; the rest is imported, and the command exits 1.

    **Example:**

        runlake import traces.jsonl more.jsonl --state-url ./runlake-data
    """
    from opentelemetry.exporter.runlake import RunlakeSpanExporter

    from ..otlp import JSON, OTLPDecodeError, decode_request

    root = _lake_root(state_url)
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        fail(f"no such file: {', '.join(missing)}")
    folders = [str(f) for f in files if not f.is_file()]
    if folders:
        fail(f"not a file: {', '.join(folders)} (give the .jsonl files themselves)")
    # --tenant: every span goes there, whatever tenant it names (as `runlake serve` does for a tenant's key)
    exporter = RunlakeSpanExporter(root, force_tenant=tenant, keep_runtime_state=True)  # import what was exported
    summary = {"files": len(files), "lines": 0, "spans": 0, "rejected_spans": 0, "bad_lines": 0}
    problems: list[str] = []
    total = sum(_content_size(f) for f in files)
    summary["unreadable_files"] = 0
    try:
        with _progress() as progress:
            task = progress.add_task("importing", total=total)
            for path in files:
                number = 0
                try:
                    with _open_lines(path) as stream:
                        for number, line in enumerate(stream, start=1):
                            progress.advance(task, len(line))
                            if not line.strip():
                                continue
                            summary["lines"] += 1
                            try:
                                decoded = decode_request(line, JSON)
                            except OTLPDecodeError as error:
                                summary["bad_lines"] += 1
                                problems.append(f"{path}:{number}: {error}")
                                continue
                            summary["rejected_spans"] += decoded.rejected
                            if decoded.rejected:
                                problems.append(f"{path}:{number}: {decoded.error_message}")
                            exporter.export(decoded.spans)
                            summary["spans"] += len(decoded.spans)
                except (OSError, EOFError) as error:  # unreadable, or a truncated / corrupt gzip: keep what was read
                    summary["unreadable_files"] += 1
                    problems.append(f"{path}: cannot be read past line {number}: {error or type(error).__name__}")
    finally:
        exporter.shutdown()  # what was read is written, whatever stopped the reading
    if exporter.stats["dropped_rows"] or exporter.stats["failing"]:
        fail(f"could not write the lake at {root}: {exporter.stats['failing']}")
    for problem in problems:
        _stderr().print(problem, markup=False, highlight=False, soft_wrap=True)
    if as_json:
        print_json(summary)
    else:
        _stdout().print(
            f"Imported {summary['spans']} spans from {summary['lines']} lines of {summary['files']} file(s) into "
            f"{root.resolve()}; {_count(summary['bad_lines'], 'bad line')} and "
            f"{_count(summary['rejected_spans'], 'invalid span')} skipped."
        )
    if summary["unreadable_files"] and not as_json:
        _stdout().print(f"{_count(summary['unreadable_files'], 'file')} could not be read to the end (above).")
    if summary["bad_lines"] or summary["rejected_spans"] or summary["unreadable_files"]:
        raise typer.Exit(1)


def _content_size(path: Path) -> int:
    """Bytes of lines the file holds: its size, or for gzip the size its trailer records (mod 4 GiB)."""
    size = path.stat().st_size
    with path.open("rb") as stream:
        if stream.read(2) != b"\x1f\x8b" or size < 18:
            return size
        stream.seek(-4, 2)
        return int.from_bytes(stream.read(4), "little")


def _open_lines(path: Path) -> BinaryIO:
    """The file's bytes, gunzipped when it is gzip (``.jsonl.gz`` as collectors rotate them)."""
    import gzip

    stream = path.open("rb")
    if stream.read(2) == b"\x1f\x8b":
        stream.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    stream.seek(0)
    return stream


def _register_serve() -> None:
    from ..server import serve_command

    app.command("serve")(serve_command)


_register_serve()
