"""Read the output folder of ``cryomanifold run`` (the run-folder contract).

The folder holds ``run.json``, ``particles.star`` (and ``particles.cs`` when the
input was a cryoSPARC file), ``classes.csv``, ``class_averages.mrcs``,
``class_examples.mrcs`` and ``embedding.npy``. These readers check what the atlas
and the export need and say which file is wrong when something is missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "CLASS_COLUMN",
    "CS_FIELDS",
    "JUNK_COLUMN",
    "PROBABILITY_COLUMN",
    "RESOLUTION_COLUMN",
    "UMAP_COLUMNS",
    "particle_block_name",
    "read_class_images",
    "read_classes",
    "read_particles_cs",
    "read_particles_star",
    "read_run_info",
]

#: columns that ``cryomanifold run`` adds to ``particles.star``
CLASS_COLUMN = "rlnClassNumber"
PROBABILITY_COLUMN = "cmClassProbability"
JUNK_COLUMN = "cmJunkScore"
UMAP_COLUMNS = ("cmUMAP1", "cmUMAP2")
#: optional classes.csv column: the class average's FRC resolution, Å
RESOLUTION_COLUMN = "resolution_angstrom"
#: fields that ``cryomanifold run`` adds to ``particles.cs``
CS_FIELDS = {
    "class": "cm/class",
    "probability": "cm/probability",
    "umap1": "cm/umap1",
    "umap2": "cm/umap2",
    "junk_score": "cm/junk_score",
}


def _hint(folder: Path) -> str:
    return f"is {folder} the output folder of 'cryomanifold run'?"


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; {_hint(path.parent)}")
    return path


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and check ``run.json``.

    Returns
    -------
    dict
        The parsed JSON; it has at least ``run_id`` (str) and ``n_particles`` (int).

    Raises
    ------
    FileNotFoundError
        If ``run.json`` is missing.
    ValueError
        If it is not valid JSON or lacks ``run_id`` / ``n_particles``.
    """
    path = _require(Path(run_dir) / "run.json")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); rerun 'cryomanifold run'") from exc
    if not isinstance(info, dict) or not isinstance(info.get("run_id"), str):
        raise ValueError(f"{path} has no 'run_id'; {_hint(path.parent)}")
    if not isinstance(info.get("n_particles"), int):
        raise ValueError(f"{path} has no integer 'n_particles'; {_hint(path.parent)}")
    return info


def read_classes(run_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``classes.csv`` (one row per class, sorted by class number).

    Returns
    -------
    DataFrame
        Columns ``class_number, size, umap1, umap2, junk, junk_score, quality``;
        ``class_number`` and ``size`` are int, ``junk`` is bool.
    """
    path = _require(Path(run_dir) / "classes.csv")
    table = pd.read_csv(path)
    missing = {"class_number", "size", "junk"} - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks the column(s) {sorted(missing)}; {_hint(path.parent)}")
    table = table.sort_values("class_number", kind="stable").reset_index(drop=True)
    table["class_number"] = table["class_number"].astype(np.int64)
    table["size"] = table["size"].astype(np.int64)
    table["junk"] = table["junk"].astype(np.int64).astype(bool)
    return table


def particle_block_name(blocks: dict[str, Any], *, source: str = "particles.star") -> str:
    """Name of the particle loop in a star file read with ``starfile.read(always_dict=True)``.

    RELION 3.1+ files have ``optics`` and ``particles`` blocks; a RELION 3.0 file
    has a single loop (any name).
    """
    if isinstance(blocks.get("particles"), pd.DataFrame):
        return "particles"
    loops = [name for name, block in blocks.items() if isinstance(block, pd.DataFrame)]
    if len(loops) == 1:
        return loops[0]
    raise ValueError(f"{source}: no 'particles' data block among {list(blocks)}")


def read_particles_star(
    run_dir: str | os.PathLike[str], *, require_columns: tuple[str, ...] = (CLASS_COLUMN,)
) -> tuple[dict[str, Any], str]:
    """Read ``particles.star`` of a run, every block.

    Returns
    -------
    blocks : dict
        Block name -> DataFrame (loops) or dict (simple blocks), as starfile reads them.
    particles : str
        The key of the particle loop in ``blocks``.
    """
    import starfile

    path = _require(Path(run_dir) / "particles.star")
    blocks = starfile.read(path, always_dict=True)
    name = particle_block_name(blocks, source=str(path))
    missing = [c for c in require_columns if c not in blocks[name].columns]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; {_hint(path.parent)}")
    return blocks, name


def read_particles_cs(run_dir: str | os.PathLike[str]) -> npt.NDArray[np.void]:
    """Read ``particles.cs`` (a numpy structured array, one record per particle).

    Raises
    ------
    FileNotFoundError
        If the run has no ``particles.cs`` (its input was not a cryoSPARC file).
    """
    path = Path(run_dir) / "particles.cs"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the run's input was not a cryoSPARC .cs file, so it can only "
            "be exported as .star"
        )
    with path.open("rb") as f:
        try:
            data = np.load(f, allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path} could not be read as a structured array: {exc}") from exc
    if data.dtype.names is None or CS_FIELDS["class"] not in data.dtype.names:
        raise ValueError(f"{path} has no field {CS_FIELDS['class']!r}; {_hint(path.parent)}")
    return data


def read_class_images(
    run_dir: str | os.PathLike[str], name: str = "class_averages.mrcs"
) -> npt.NDArray[np.float32]:
    """Read an image stack of the run (``class_averages.mrcs`` or ``class_examples.mrcs``).

    Returns
    -------
    ndarray, shape (m, L, L), float32
    """
    import mrcfile

    path = _require(Path(run_dir) / name)
    with mrcfile.open(path, permissive=True) as mrc:
        data = np.asarray(mrc.data, dtype=np.float32)
    if data.ndim == 2:
        data = data[None]
    return data.copy()
