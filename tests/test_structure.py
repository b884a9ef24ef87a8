"""The shape of the code base: which module may import which (read from the source, nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "runlake"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """runlake's modules and the runlake modules each imports, anywhere in the file (inside functions too).

    ``from . import x`` counts as importing the submodule ``x``, not its package; a package's ``__init__`` importing
    its own submodules is left out (a submodule reaching the package it belongs to is not a cycle Python trips on).
    """
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name in files}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                submodules = {f"{target}.{a.name}" for a in node.names} & files.keys()
                found |= submodules or ({target} & files.keys())
        graph[name] = {d for d in found if d != name and not (path.name == "__init__.py" and d.startswith(name + "."))}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                found.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = import_graph()
    assert "runlake.instrument" in graph["runlake.sessions"]  # top level
    assert "runlake.forward" in graph["runlake.sessions"]  # inside a function
    assert "runlake.otlp" in graph["runlake.server.ingest"]  # from .. import otlp


def test_runlake_modules_import_each_other_without_cycles() -> None:
    """No module imports one that (directly or not) imports it back, not even lazily inside a function: such an
    import only works because of where it sits, and breaks when someone moves it to the top."""
    assert cycles(import_graph()) == []


def test_the_http_layer_does_not_import_the_command_line() -> None:
    """``runlake.server`` works without the CLI: shared defaults live with the lake layout, not in ``runlake.cli``."""
    graph = import_graph()
    for name, imported in graph.items():
        if name == "runlake.server" or name.startswith("runlake.server."):
            assert not {"runlake.cli", "runlake.cli_ops"} & imported, name
            assert not any(module.startswith("runlake.cli.") for module in imported), name


def test_instrument_imports_the_state_policy_at_module_level() -> None:
    graph = import_graph()
    assert "runlake.sessions" not in graph["runlake.instrument"]
    assert not {"runlake.instrument", "runlake.sessions"} & graph["runlake.state_policy"]
    tree = ast.parse((PACKAGE / "instrument.py").read_text(encoding="utf-8"))
    top = {a.name for n in tree.body if isinstance(n, ast.ImportFrom) and n.level == 1 for a in n.names}
    assert "state_policy" in top
