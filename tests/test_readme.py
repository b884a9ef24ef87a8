"""The README's Python tour runs as written: its Instrument and Query blocks, verbatim, in a fresh process."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import runlake

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_python_tour_runs_verbatim(tmp_path: Path) -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 2, "README lost its Instrument and Query blocks"
    script = tmp_path / "tour.py"
    script.write_text("\n".join(blocks), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("RUNLAKE_STATE_URL", "PRAISONAI_STATE_URL")}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]

    runs = runlake.HistoryDB(tmp_path / "runlake-data").get_runs("s-42")
    assert len(runs) == 1
    assert runs[0]["input_content"] == "Process PR #42" and runs[0]["output_content"] == "No issues found"
