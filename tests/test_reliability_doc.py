"""docs/reliability.md stays true: every test it names exists, every row names a test
(TODO only in rows owned by the pipeline or the simulator), and the fuzz tests keep
at least the 2,000 cases per reader that it promises."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
_TEST_ID = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _case_rows() -> list[list[str]]:
    text = DOC.read_text()
    table = text[text.index("## Cases") :]
    rows = []
    for line in table.splitlines():
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| case"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        assert len(cells) == 4, f"a row needs case | behaviour | exit | test: {line}"
        rows.append(cells)
    return rows


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
    }


def test_every_named_test_exists() -> None:
    rows = _case_rows()
    assert len(rows) >= 40
    named = 0
    for case, behaviour, _, tests in rows:
        ids = _TEST_ID.findall(tests)
        if tests == "TODO":
            assert behaviour.startswith(("pipeline (lead)", "simulate")), case
            continue
        assert ids, f"row {case!r} names no test"
        for file, name in ids:
            assert (ROOT / file).is_file(), f"{file} (row {case!r}) does not exist"
            assert name in _test_functions(ROOT / file), f"{file}::{name} does not exist"
            named += 1
    assert named >= 50


def test_fuzz_tests_run_the_promised_number_of_cases() -> None:
    text = (ROOT / "tests/io/test_fuzz.py").read_text()
    default = re.search(r'CRYOMANIFOLD_FUZZ_EXAMPLES", "(\d+)"', text)
    assert default is not None and int(default.group(1)) >= 2000
    assert text.count("@FUZZ") == 3
