"""The stack files a .star or .cs names: finding them on disk and checking them.

RELION and cryoSPARC store stack paths relative to the project folder; they are
looked for under ``--datadir``, then beside the metadata file and in each of its
parent folders. :func:`check_stacks` reads every header once and checks it
against the rows (image indices, square and equal boxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cryomanifold.io.base import ParticleIOError
from cryomanifold.io.mrc import StackInfo, stack_info

__all__ = ["check_stacks", "resolve_stack_paths"]


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False for a name the OS cannot even look up (too long, NUL)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _search_dirs(source: Path, datadir: Path | None) -> list[Path]:
    base = source.resolve().parent
    dirs = [datadir] if datadir is not None else []
    return [*dirs, base, *base.parents]


def _resolve(
    name: str, dirs: list[Path], datadir: Path | None, hint: int
) -> tuple[Path | None, int]:
    """Find ``name`` in ``dirs`` (trying the last successful one, ``hint``, first)."""
    p = Path(name)
    if p.is_absolute():
        if _is_file(p):
            return p, hint
        return (
            ((datadir / p.name), hint) if datadir and _is_file(datadir / p.name) else (None, hint)
        )
    for i in [hint, *range(len(dirs))]:
        candidate = dirs[i] / p
        if _is_file(candidate):
            return candidate, i
    if datadir is not None and _is_file(datadir / p.name):
        return datadir / p.name, hint
    return None, hint


def resolve_stack_paths(
    names: Sequence[str], source: Path, datadir: Path | None
) -> list[Path | None]:
    """Find each stack file named in ``source`` (a .star or .cs).

    A relative name is looked for under ``datadir`` (when given), then the folder of
    ``source`` and each of its parents in turn (RELION and cryoSPARC store paths
    relative to the project folder), then by file name alone in ``datadir``.

    Returns
    -------
    list of Path or None
        The file found for each name, None where none was found.
    """
    dirs = _search_dirs(source, datadir)
    hint = 0
    out: list[Path | None] = []
    for name in names:
        path, hint = _resolve(name, dirs, datadir, hint)
        out.append(path)
    return out


def _first_rows(file_index: np.ndarray, n_files: int) -> np.ndarray:
    """First particle row that uses each file (-1 for an unused file)."""
    first = np.full(n_files, -1, dtype=np.int64)
    used, rows = np.unique(file_index, return_index=True)
    first[used] = rows
    return first


def check_stacks(
    source: Path,
    files: list[Path | None],
    names: list[str],
    file_index: np.ndarray,
    image_index: np.ndarray,
) -> list[StackInfo]:
    """Read the header of every stack a .star/.cs file uses and check it against the rows.

    Parameters
    ----------
    source : Path
        The .star or .cs file, for messages.
    files : list of Path or None, length m
        Resolved stack files (None: not found).
    names : list of str, length m
        The stack names as written in ``source``.
    file_index, image_index : ndarray of int64, shape (n,)
        Stack (into ``files``) and 0-based image index of each particle row.

    Returns
    -------
    list of StackInfo, length m

    Raises
    ------
    ParticleIOError
        If a stack is missing or unreadable, a row asks for an image past the end of
        its stack, images are not square, or box sizes differ between stacks.
    """
    first = _first_rows(file_index, len(files))
    missing = [i for i, f in enumerate(files) if f is None]
    if missing:
        i = missing[0]
        raise ParticleIOError(
            f"{source}: stack file {names[i]!r} (first used on row {first[i] + 1}) not found "
            f"next to {source.name} or in its parent folders ({len(missing)} of {len(files)} "
            "stack files missing). Keep the RELION/cryoSPARC project layout or name the folder "
            "that holds the stacks (--datadir FOLDER; datadir= in Python)"
        )
    infos = [stack_info(f) for f in files if f is not None]
    n_images = np.array([info.n_images for info in infos], dtype=np.int64)
    last = np.zeros(len(files), dtype=np.int64)
    np.maximum.at(last, file_index, image_index)
    past = np.flatnonzero(last >= n_images)
    if past.size:
        i = int(past[0])
        bad_rows = np.flatnonzero((file_index == i) & (image_index >= n_images[i]))
        raise ParticleIOError(
            f"{source}: row {bad_rows[0] + 1} asks for image {image_index[bad_rows[0]] + 1} of "
            f"{files[i]}, which has only {n_images[i]} images; the metadata does not match the "
            "stack (re-extract, or point --datadir at the right stacks)"
        )
    for i, info in enumerate(infos):
        if info.shape[0] != info.shape[1]:
            raise ParticleIOError(
                f"{info.path} (first used on row {first[i] + 1} of {source}): "
                f"images are not square {info.shape}; re-extract with a "
                "square box"
            )
        if info.shape != infos[0].shape:
            raise ParticleIOError(
                f"{source}: box sizes differ between stacks: {infos[0].path} has "
                f"{infos[0].shape[0]} px but {info.path} (row {first[i] + 1}) has "
                f"{info.shape[0]} px; re-extract all particles with one box size"
            )
    return infos
