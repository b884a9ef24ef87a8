"""What every ``runlake`` command shares: the Typer ``app`` they register on, the ``--state-url`` / ``--json`` /
``--limit`` options, opening the lake (``open_db``, with clear errors for a missing lake), ``fail`` and the
translation of storage and query failures into one-line errors. Commands of other modules use them too (the
example in ``runlake.cli``).
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from opentelemetry.exporter.runlake.layout import STATE_URL_ENV, STATE_URL_ENVS
from rich.text import Text

from .output import _safe, _stderr

if TYPE_CHECKING:
    from ..history import HistoryDB


app = typer.Typer(
    name="runlake",
    help=(
        "Keep, query and expire AI agents' execution history: OpenTelemetry spans in a Parquet lake, "
        "read back with DuckDB in PraisonAI and CodexOS shapes.\n\n"
        "Start with `runlake demo`, then try `runlake history` and `runlake logs RUN_ID`. Every command "
        "reads the lake given by `--state-url`, else `$RUNLAKE_STATE_URL`, else `$PRAISONAI_STATE_URL`, "
        "else `./runlake-data`."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="markdown",
    pretty_exceptions_show_locals=False,  # locals can hold prompts and credentials
    context_settings={"help_option_names": ["-h", "--help"]},
)

_PRECEDENCE = (
    "Precedence: --state-url if given, else $RUNLAKE_STATE_URL, else $PRAISONAI_STATE_URL, else ./runlake-data."
)


def _state_url_option(metavar: str, what: str) -> Any:
    """``--state-url`` with the environment variables runlake reads, saying what kind of lake the command takes."""
    return typer.Option(
        "--state-url",
        envvar=list(STATE_URL_ENVS),
        show_envvar=True,
        metavar=metavar,
        help=f"{what} {_PRECEDENCE}",
    )


# commands that need a local folder (demo, sessions, import)
StateUrl = Annotated[str, _state_url_option("PATH|file://URL", "Lake folder (or file:// URL).")]
# commands that take an s3:// lake too (open_db, _lake_root(..., remote_ok=True))
RemoteStateUrl = Annotated[
    str,
    _state_url_option(
        "PATH|file://URL|s3://BUCKET/PREFIX", "Lake folder, file:// URL, or s3://bucket/prefix (S3 or S3-compatible)."
    ),
]
AsJson = Annotated[
    bool,
    typer.Option(
        "--json",
        help=(
            "Machine output as indented JSON, nothing else on stdout (history, runs, traces, logs: the dicts HistoryDB "
            "returns)."
        ),
    ),
]


def _all_when_zero(limit: int | None) -> int | None:
    return limit or None


Limit = Annotated[
    int | None,
    typer.Option("--limit", "-n", min=0, callback=_all_when_zero, help="At most this many rows; 0 for all of them."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` on stderr (no traceback) and exit with ``code``."""
    _stderr().print(Text(_safe(f"runlake: {message}"), style="red"), soft_wrap=True)
    raise typer.Exit(code)


def _lake_root(state_url: str, remote_ok: bool = False) -> Path:
    """The lake's root: a folder, or (for commands that only read, with ``remote_ok``) an ``s3://`` lake."""
    from opentelemetry.exporter.runlake.layout import resolve_lake, resolve_state_url

    try:
        root = resolve_lake(state_url) if remote_ok else resolve_state_url(state_url)
    except ValueError as error:
        fail(str(error))
    if root is None:
        fail(f"no lake given: pass --state-url or set ${STATE_URL_ENV}")
    return root


def no_lake(root: Path) -> NoReturn:
    """Exit 1 saying the lake folder is missing, and how to give one or make one."""
    fail(
        f"no lake at {root.resolve()}: the folder does not exist. "
        f"Pass --state-url or set ${STATE_URL_ENV}; `runlake demo --state-url {shlex.quote(str(root))}` "
        "creates an example lake."
    )


def open_db(state_url: str) -> HistoryDB:
    """A ``HistoryDB`` on an existing lake; a missing folder is a clear error (exit 1), not a traceback."""
    from opentelemetry.exporter.runlake.layout import is_remote

    from ..history import HistoryDB

    root = _lake_root(state_url, remote_ok=True)
    if is_remote(root):
        return HistoryDB(root)
    if not root.exists():
        no_lake(root)
    if not root.is_dir():
        fail(f"{root.resolve()} is not a folder; a runlake lake is a folder")
    return HistoryDB(root)


@contextlib.contextmanager
def _friendly_errors() -> Iterator[None]:
    """Turn storage and query failures into a one-line message and exit code 1."""
    import duckdb

    try:
        yield
    except (typer.Exit, typer.Abort):
        raise
    except duckdb.Error as error:
        fail(f"query failed: {error}")
    except OSError as error:
        fail(f"cannot read the lake: {error}")
