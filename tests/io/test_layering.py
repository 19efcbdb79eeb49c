"""The io package's imports point one way (no cycle, not even under TYPE_CHECKING), and
errors.py, the bottom layer, imports nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import cryomanifold

PACKAGE = Path(cryomanifold.__file__).parent


def _imports(path: Path) -> set[str]:
    """Every ``cryomanifold.*`` module imported anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("cryomanifold")}


def test_io_modules_form_no_cycle() -> None:
    graph = {
        f"cryomanifold.io.{p.stem}": {m for m in _imports(p) if m.startswith("cryomanifold.io.")}
        for p in (PACKAGE / "io").glob("*.py")
        if p.stem != "__init__"
    }
    done: set[str] = set()

    def visit(node: str, path: tuple[str, ...]) -> None:
        assert node not in path, "import cycle: " + " -> ".join((*path, node))
        if node in done:
            return
        for nxt in graph.get(node, ()):
            visit(nxt, (*path, node))
        done.add(node)

    for module in graph:
        visit(module, ())
    assert "cryomanifold.io.stack" not in set().union(*graph.values())  # the top of io


def test_errors_is_the_bottom_layer() -> None:
    assert _imports(PACKAGE / "errors.py") == set()
