"""Checks of a STAR file's text that the table parser (``starfile``) cannot make.

``starfile`` reads each loop with pandas: a row with a value too few is padded
with NaN, a row with one too many (an unquoted path with a space) fails with
"Length mismatch: Expected axis has 17 elements", and a second block of the same
name silently replaces the first (``cat a.star b.star`` loses the particles of
``a.star``). These functions find such problems in the text and describe them by
line, block, row and column, so the reader can say what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "LoopRow",
    "duplicate_block",
    "empty_block",
    "layout_problem",
    "loop_rows",
    "read_text",
]

_TOKEN = re.compile(r"""'[^']*'(?=\s|$)|"[^"]*"(?=\s|$)|\S+""")
_DATA = re.compile(r"^data_(\S*)", re.MULTILINE)


@dataclass(frozen=True)
class LoopRow:
    """One data row of a loop, as written in the file."""

    block: str  # data block name (without ``data_``)
    columns: tuple[str, ...]  # the loop's labels (without ``_``)
    line: int  # 1-based line number in the file
    row: int  # 1-based row within the loop
    values: tuple[str, ...]  # whitespace-separated values, quotes kept


def read_text(path: Path) -> str:
    """The file as text (undecodable bytes replaced, so the scan never fails)."""
    return path.read_bytes().decode("utf-8", errors="replace")


def duplicate_block(text: str) -> str | None:
    """The first data block name that occurs twice, or None."""
    seen: set[str] = set()
    for match in _DATA.finditer(text):
        name = match.group(1)
        if name in seen:
            return name
        seen.add(name)
    return None


def empty_block(text: str) -> str | None:
    """The first data block with nothing in it (no loop, no value), or None."""
    matches = list(_DATA.finditer(text))
    ends = [m.start() for m in matches[1:]] + [len(text)]
    for match, end in zip(matches, ends[: len(matches)], strict=True):
        body = text[match.end() : end]
        lines = [ln.strip() for ln in body.splitlines()]
        if not any(ln and not ln.startswith("#") for ln in lines):
            return match.group(1)
    return None


def loop_rows(text: str) -> Iterator[LoopRow]:
    """Every data row of every loop, with its line number and the loop's columns."""
    block: str | None = None
    columns: list[str] = []
    in_header = in_rows = False
    row = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("data_"):
            rest = line[5:].split()
            block = rest[0] if rest else ""
            columns, in_header, in_rows = [], False, False
            continue
        if line == "loop_" or line.startswith("loop_ "):
            columns, in_header, in_rows, row = [], True, False, 0
            continue
        if line.startswith("_"):
            if in_header:
                columns.append(line.split()[0][1:])
            else:
                in_rows = False  # a simple key-value line ends any loop
            continue
        if in_header:
            in_header, in_rows = False, True
        if in_rows and block is not None:
            row += 1
            yield LoopRow(block, tuple(columns), number, row, tuple(_TOKEN.findall(line)))


def layout_problem(path: Path, text: str | None = None) -> str | None:
    """Describe an empty block, or the first row whose number of values differs from its
    loop's columns.

    Returns
    -------
    str or None
        A message naming the file, line, block, row and what to fix (or the empty
        block); None when every block has content and every row has one value
        per column.
    """
    text = read_text(path) if text is None else text
    empty = empty_block(text)
    if empty is not None:
        return (
            f"{path}: the block data_{empty} is empty (no loop_ and no values); remove the "
            f"line data_{empty} or complete the block"
        )
    for r in loop_rows(text):
        n, k = len(r.columns), len(r.values)
        if k == n:
            continue
        where = f"{path}: line {r.line} (data_{r.block} row {r.row})"
        if k < n:
            missing = ", ".join(r.columns[k:])
            return (
                f"{where} has {k} values but the loop has {n} columns (no value for "
                f"{missing}); the row is cut short: complete it or remove it"
            )
        return (
            f"{where} has {k} values but the loop has {n} columns; a value that contains "
            "a space (e.g. a file path) must be in quotes, like '001@my stacks/a.mrcs'"
        )
    return None
