"""The errors cryomanifold raises for problems the user can fix.

Every expected failure (bad input, a refused output, a full disk) is a
:class:`CryomanifoldError` whose message names the file and, where known, the
row and column, and says what to do. The command line prints that message as one
line and exits with status 1 (see :mod:`cryomanifold.cli._errors`); anything else
that escapes is a bug and is reported with a log file.

This module is the bottom layer of the package: it imports nothing from it.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = [
    "CryomanifoldError",
    "DiskFullError",
    "MetadataError",
    "OutputRefusedError",
    "ParticleIOError",
    "format_bytes",
]


class CryomanifoldError(Exception):
    """A problem the user can fix; the message says where and what to do."""


class ParticleIOError(CryomanifoldError, ValueError):
    """Bad particle input: the message names the file, the row where relevant, and a fix.

    A :class:`ValueError` too, so code that caught ``ValueError`` still does.
    """


class MetadataError(ParticleIOError):
    """A bad value in a metadata table (.star or .cs).

    Attributes
    ----------
    path : Path
        The metadata file.
    column : str
        The column (RELION label without ``_``, or cryoSPARC field name).
    row : int or None
        1-based data row of the table, when the problem is in one row.
    block : str or None
        The STAR data block (``particles``, ``optics``) for a .star file.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        column: str,
        row: int | None,
        problem: str,
        *,
        block: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.column = column
        self.row = row
        self.block = block
        where = [f"data_{block}" if block is not None else "", f"row {row}" if row else ""]
        place = " ".join(w for w in where if w)
        label = "field" if "/" in column else "column"  # cryoSPARC fields are a/b
        place = f"{place}, {label} {column}" if place else f"{label} {column}"
        self.problem = problem
        super().__init__(f"{self.path}: {place}: {problem}")

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild,
            (type(self), (self.path, self.column, self.row, self.problem), {"block": self.block}),
        )


class OutputRefusedError(CryomanifoldError, ValueError):
    """An output that must not be written (it would replace an input or a run's file)."""


class DiskFullError(CryomanifoldError, OSError):
    """No space left for a file: the message names it and the space it needs.

    An :class:`OSError` with ``errno`` ``ENOSPC`` too.

    Attributes
    ----------
    path : Path
        The file that could not be written.
    needed_bytes : int or None
        Its size, when known.
    available_bytes : int or None
        Free space in its folder when the error was raised, when known.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        needed_bytes: int | None = None,
        available_bytes: int | None = None,
    ) -> None:
        self.path = Path(path)
        self.needed_bytes = needed_bytes
        self.available_bytes = available_bytes
        need = "" if needed_bytes is None else f" (needs {format_bytes(needed_bytes)}"
        if need and available_bytes is not None:
            need += f", {format_bytes(available_bytes)} free"
        need += ")" if need else ""
        self.message = (
            f"{self.path}: no space left on the disk{need}; free some space or write to "
            "another disk, then run again"
        )
        OSError.__init__(self, errno.ENOSPC, self.message)
        self.filename = str(self.path)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        args = (self.path, self.needed_bytes, self.available_bytes)
        return (_rebuild, (type(self), args, {}))


def _rebuild(cls: type, args: tuple[object, ...], kwargs: dict[str, object]) -> Exception:
    """Unpickle an error whose ``__init__`` takes other arguments than its message."""
    err: Exception = cls(*args, **kwargs)
    return err


def format_bytes(n: int) -> str:
    """``1536`` -> ``'1.5 KiB'``: a size for messages."""
    value = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
