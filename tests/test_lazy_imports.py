"""The write side does not load the read side: an instrumented application that imports runlake to write spans
does not pay for DuckDB (about 0.1 s and tens of MB), yet ``runlake.HistoryDB`` and friends work as before."""

from __future__ import annotations

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_runlake_does_not_load_duckdb() -> None:
    assert _run("import sys, runlake; print('duckdb' in sys.modules)") == "False"


def test_the_read_side_names_resolve_on_first_use() -> None:
    out = _run(
        "import runlake; from runlake import SessionStore; "
        "print(runlake.HistoryDB.__module__, runlake.ExecutionHistoryService.__module__, SessionStore.__module__, "
        "'HistoryDB' in dir(runlake))"
    )
    assert out == "runlake.history runlake.service runlake.sessions True"
    missing = subprocess.run(
        [sys.executable, "-c", "import runlake; runlake.NoSuchThing"], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode != 0 and "has no attribute 'NoSuchThing'" in missing.stderr


def test_writing_spans_through_the_api_does_not_load_duckdb(tmp_path) -> None:
    code = (
        "import sys, runlake\n"
        f"runlake.configure({str(tmp_path / 'lake')!r}, mirror_runtime_state=True)\n"
        "with runlake.run('agent', 's-1', input='hi') as r:\n"
        "    with runlake.turn('t-1') as t:\n"
        "        t.set_state({'step': 1})\n"
        "    with runlake.node('think') as n:\n"
        "        n.set_usage(input_tokens=1, output_tokens=2)\n"
        "    r.set_output('done')\n"
        "runlake.shutdown()\n"
        "print('duckdb' in sys.modules)\n"
    )
    assert _run(code) == "False"


def test_the_command_line_loads_the_server_only_to_serve() -> None:
    """Every ``runlake`` command line builds the ``serve`` command's options; FastAPI is loaded only when a server
    is created."""
    assert _run("import sys, runlake.cli.ops; print('fastapi' in sys.modules)") == "False"  # registers serve
    assert _run("import sys; from runlake.server import create_app; print('fastapi' in sys.modules)") == "True"
    assert _run("import runlake.server; print(runlake.server.app.create_app is runlake.server.create_app)") == "True"
