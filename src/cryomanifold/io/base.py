"""What the readers and writers of ``cryomanifold.io`` share: the kinds of input, the
protocol a particle source offers the writers, and the errors.

The format modules (:mod:`~cryomanifold.io.star`, :mod:`~cryomanifold.io.cryosparc`,
:mod:`~cryomanifold.io.mrc`) import from here and from nothing else in the
package's io layer except their own helpers; :mod:`~cryomanifold.io.stack` builds
on all of them. So imports point one way only: base -> formats -> stack.
"""

from __future__ import annotations

import os
from collections.abc import Container
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from cryomanifold.ctf import CTFParams
from cryomanifold.errors import (
    CryomanifoldError,
    MetadataError,
    OutputRefusedError,
    ParticleIOError,
)

__all__ = [
    "SUFFIXES",
    "CryomanifoldError",
    "Kind",
    "MetadataError",
    "OutputRefusedError",
    "ParticleIOError",
    "ParticleSource",
    "StarTables",
    "free_name",
    "one_line",
    "refuse_input",
    "same_values",
]

#: the kinds of particle input
Kind = Literal["star", "cs", "mrcs"]
#: file suffix (lower case) -> kind
SUFFIXES: dict[str, Kind] = {".star": "star", ".cs": "cs", ".mrcs": "mrcs", ".mrc": "mrcs"}


class StarTables(Protocol):
    """The blocks of a parsed STAR file (what :func:`~cryomanifold.io.star.write_star` keeps)."""

    @property
    def blocks(self) -> dict[str, Any]:
        """Every data block, in file order: DataFrame (loops) or dict (simple blocks)."""
        ...

    @property
    def particles_key(self) -> str:
        """The key of the particles table in :attr:`blocks`."""
        ...


class ParticleSource(Protocol):
    """What the writers need of a particle set (:class:`~cryomanifold.io.ParticleStack` is one)."""

    @property
    def path(self) -> Path:
        """The file the particles were read from."""
        ...

    @property
    def kind(self) -> Kind:
        """The input format."""
        ...

    @property
    def box_size(self) -> int:
        """Image side, pixels."""
        ...

    @property
    def pixel_size_angstrom(self) -> float:
        """Pixel size, Å."""
        ...

    @property
    def ctf(self) -> CTFParams | None:
        """Per-particle CTF, or None."""
        ...

    @property
    def cs_records(self) -> np.ndarray | None:
        """The cryoSPARC records as read (a .cs input), or None."""
        ...

    @property
    def star_tables(self) -> StarTables | None:
        """The STAR blocks as read (a .star input), or None."""
        ...

    def __len__(self) -> int: ...

    def image_names(self, *, relative_to: str | os.PathLike[str] | None = None) -> np.ndarray:
        """RELION image names ``k@path`` of every particle, shape (n,)."""
        ...


def refuse_input(out: Path, source: Path) -> None:
    """Raise :class:`OutputRefusedError` if ``out`` is the input ``source`` (or a link to it)."""
    same = out.resolve() == source.resolve()
    if not same and out.exists() and source.exists():
        same = os.path.samefile(out, source)
    if same:
        raise OutputRefusedError(
            f"{out}: refusing to overwrite the input file {source}; choose another name"
        )


def same_values(old: np.ndarray, new: np.ndarray) -> bool:
    """Whether a column keeps its values (a replaced column with other values is kept)."""
    try:
        return old.shape == new.shape and bool(np.all(old == new))
    except (TypeError, ValueError):
        return False


def free_name(base: str, taken: Container[str]) -> str:
    """``base``, or ``base2``, ``base3``, ... : the first not in ``taken``."""
    candidate, k = base, 2
    while candidate in taken:
        candidate, k = f"{base}{k}", k + 1
    return candidate


def one_line(err: BaseException) -> str:
    """A third-party error message on one line (for quoting it inside ours)."""
    text = " ".join(str(err).split())
    return text or type(err).__name__
