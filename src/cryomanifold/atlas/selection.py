"""The ``selection.json`` file that the atlas downloads and ``cryomanifold export`` reads.

Format (version 1)::

    {
      "format": "cryomanifold-selection",
      "version": 1,
      "run_id": "<32 hex digits of the run>",
      "n_particles": 123456,              # particles in the run
      "n_selected": 2345,
      "class_numbers": [3, 5],           # optional: the selection is these whole classes
      "particle_indices": [0, 17, ...]   # optional: 0-based rows of particles.star
    }

At least one of ``class_numbers`` and ``particle_indices`` is present. When both
are, ``particle_indices`` is what the user selected and ``class_numbers`` tells
that it is exactly the union of those classes. The ``run_id`` ties the file to one
run, so it cannot be applied to another run's particles by mistake.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable

__all__ = [
    "SELECTION_FORMAT",
    "SELECTION_VERSION",
    "RunMismatchError",
    "Selection",
    "check_selection_run",
    "read_selection",
    "selection_from_dict",
    "selection_to_dict",
    "write_selection",
]

SELECTION_FORMAT = "cryomanifold-selection"
SELECTION_VERSION = 1


class RunMismatchError(ValueError):
    """A selection made for one run was applied to another."""


@dataclass(frozen=True)
class Selection:
    """A selection of particles of one run.

    Attributes
    ----------
    run_id : str
        ``run_id`` of the run (from its ``run.json``).
    n_particles : int or None
        Number of particles in that run, when known.
    particle_indices : ndarray of int64, shape (m,), or None
        Sorted, unique 0-based rows of the run's ``particles.star``.
    class_numbers : tuple of int, or None
        Sorted 1-based class numbers.
    """

    run_id: str
    n_particles: int | None = None
    particle_indices: npt.NDArray[np.int64] | None = None
    class_numbers: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.particle_indices is None and self.class_numbers is None:
            raise ValueError("a selection needs particle_indices or class_numbers")


def _int_list(value: Any, key: str, source: str) -> npt.NDArray[np.int64]:
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"{source}: {key!r} must be a list of integers")
    return np.unique(np.asarray(value, dtype=np.int64))


def selection_from_dict(data: Any, *, source: str = "selection") -> Selection:
    """Validate a parsed ``selection.json`` and return a :class:`Selection`.

    Raises
    ------
    ValueError
        If the format, version, run id or index lists are malformed; the message
        names ``source``.
    """
    if not isinstance(data, dict) or data.get("format") != SELECTION_FORMAT:
        raise ValueError(
            f'{source} is not a cryomanifold selection (expected "format": '
            f'"{SELECTION_FORMAT}"); download it from the run\'s atlas.html'
        )
    if data.get("version") != SELECTION_VERSION:
        raise ValueError(
            f"{source} has selection format version {data.get('version')!r}; this "
            f"cryomanifold reads version {SELECTION_VERSION}: upgrade cryomanifold"
        )
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"{source} has no 'run_id'")
    n_particles = data.get("n_particles")
    if n_particles is not None and not isinstance(n_particles, int):
        raise ValueError(f"{source}: 'n_particles' must be an integer")
    indices = classes = None
    if data.get("particle_indices") is not None:
        indices = _int_list(data["particle_indices"], "particle_indices", source)
        if indices.size and indices[0] < 0:
            raise ValueError(f"{source}: negative particle index {int(indices[0])}")
    if data.get("class_numbers") is not None:
        classes = tuple(int(c) for c in _int_list(data["class_numbers"], "class_numbers", source))
    if indices is None and classes is None:
        raise ValueError(f"{source} has neither 'particle_indices' nor 'class_numbers'")
    return Selection(
        run_id=run_id, n_particles=n_particles, particle_indices=indices, class_numbers=classes
    )


def selection_to_dict(selection: Selection) -> dict[str, Any]:
    """The JSON-ready form of a selection (the inverse of :func:`selection_from_dict`)."""
    out: dict[str, Any] = {
        "format": SELECTION_FORMAT,
        "version": SELECTION_VERSION,
        "run_id": selection.run_id,
        "n_particles": selection.n_particles,
    }
    if selection.particle_indices is not None:
        out["n_selected"] = int(selection.particle_indices.size)
        out["particle_indices"] = [int(i) for i in selection.particle_indices]
    if selection.class_numbers is not None:
        out["class_numbers"] = list(selection.class_numbers)
    return out


def read_selection(path: str | os.PathLike[str]) -> Selection:
    """Read a ``selection.json`` written by the atlas (or :func:`write_selection`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If it is not valid JSON or not a cryomanifold selection.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"selection file {p} not found")
    try:
        data = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p} is not valid JSON ({exc})") from exc
    return selection_from_dict(data, source=str(p))


def write_selection(
    path: str | os.PathLike[str], selection: Selection, *, overwrite: bool = False
) -> Path:
    """Write ``selection`` as JSON (atomically); refuses to replace a file unless asked."""
    p = check_writable(path, overwrite=overwrite)
    with atomic_path(p) as tmp:
        tmp.write_text(json.dumps(selection_to_dict(selection)))
    return p


def check_selection_run(
    selection: Selection, *, run_id: str, n_particles: int, source: str = "selection"
) -> None:
    """Refuse a selection that was made for another run.

    Raises
    ------
    RunMismatchError
        If the run ids differ, or the particle counts differ.
    ValueError
        If a particle index is out of range.
    """
    if selection.run_id != run_id:
        raise RunMismatchError(
            f"{source} was made for run {selection.run_id}, but this run is {run_id}: "
            "it selects particles of another run. Open this run's atlas.html and "
            "download a new selection there."
        )
    if selection.n_particles is not None and selection.n_particles != n_particles:
        raise RunMismatchError(
            f"{source} was made for {selection.n_particles} particles but run {run_id} "
            f"has {n_particles}; download a new selection from this run's atlas.html"
        )
    idx = selection.particle_indices
    if idx is not None and idx.size and int(idx[-1]) >= n_particles:
        raise ValueError(
            f"{source}: particle index {int(idx[-1])} is out of range for a run of "
            f"{n_particles} particles"
        )
