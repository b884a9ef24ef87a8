"""The ``runlake`` command line: generate a demo history, and read runs, traces, history, logs, statistics and SQL.

Every command takes ``--state-url`` (the lake folder or a ``file://`` URL, and for the commands that read, ``gc``,
``compact`` and ``forward`` also an ``s3://bucket/prefix``: ``RemoteStateUrl``; else ``$RUNLAKE_STATE_URL``; else
``./runlake-data``) and ``--json`` (exactly what ``HistoryDB`` returns, as JSON, and nothing else on stdout).

More commands (``serve``, ``compact``, ``forward``, ``import``) are registered on the module-level ``app`` by
other modules, for example::

    from runlake.cli import DEFAULT_STATE_URL, AsJson, StateUrl, app, open_db

    @app.command()
    def compact(state_url: StateUrl = DEFAULT_STATE_URL, as_json: AsJson = False) -> None: ...

and listed in ``COMMAND_MODULES`` so that ``main()`` imports them before it runs the app.

The package, one job per module:

- ``common``: the Typer ``app``, the options every command takes, opening the lake, ``fail``, friendly errors
- ``output``: consoles, closed pipes, JSON, table cells and tables fitted to the terminal
- ``render``: the terminal rendering of each shape (history, traces, logs, sessions, statistics, SQL, gc)
- ``demo``: ``runlake demo``
- ``read``: ``runlake runs / traces / sessions / history / logs / stats / sql``
- ``expire``: ``runlake gc``
- ``ops``: ``runlake compact / forward / import / serve`` (in ``COMMAND_MODULES``: imported by ``main()``)
"""

from __future__ import annotations

import importlib

from opentelemetry.exporter.runlake.layout import DEFAULT_STATE_URL, STATE_URL_ENV

from .common import AsJson, Limit, RemoteStateUrl, StateUrl, app, fail, no_lake, open_db  # noqa: F401
from .output import print_json, quiet_when_stdout_closes

# Importing a command module registers its commands on ``app``, and ``runlake --help`` lists them in the order they
# were registered: these imports stay in this order (not sorted). The names are re-exported, as before the split.
from .demo import DEMO_SQL  # noqa: F401  # isort: skip
from .read import history, logs, runs, sessions, sql, stats, traces  # noqa: F401  # isort: skip
from .expire import gc  # noqa: F401  # isort: skip

__all__ = [
    "COMMAND_MODULES",
    "DEFAULT_STATE_URL",
    "STATE_URL_ENV",
    "AsJson",
    "RemoteStateUrl",
    "StateUrl",
    "app",
    "fail",
    "main",
    "open_db",
    "print_json",
]

# Modules that add commands to ``app`` (imported by ``main()`` before the app runs).
COMMAND_MODULES: list[str] = ["runlake.cli.ops"]


def main() -> None:
    """Entry point of the ``runlake`` console script."""
    for module in COMMAND_MODULES:
        importlib.import_module(module)
    quiet_when_stdout_closes(lambda: app(prog_name="runlake"))
