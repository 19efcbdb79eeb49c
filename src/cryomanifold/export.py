"""Select particles of a run and write them back as RELION .star or cryoSPARC .cs.

The exported file holds the selected rows of the run's ``particles.star`` (or
``particles.cs``) exactly as they are there, in their original order, with every
column and the optics block kept, so RELION and cryoSPARC import it directly. The
cryomanifold columns (``rlnClassNumber``, ``cmClassProbability``, ...) stay in the
file; both programs ignore labels they do not use.

The selection is one of: a ``selection.json`` downloaded from the atlas, a list of
class numbers, or all particles; it can then be narrowed by dropping junk classes
and particles whose class probability is below a threshold, and finally inverted.
:func:`particle_mask` is the pure core; :func:`export_selection` reads the run
folder and writes the file.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable
from cryomanifold.atlas.runfolder import (
    CLASS_COLUMN,
    CS_FIELDS,
    PROBABILITY_COLUMN,
    read_classes,
    read_particles_cs,
    read_particles_star,
    read_run_info,
)
from cryomanifold.atlas.selection import Selection, check_selection_run, read_selection
from cryomanifold.errors import OutputRefusedError

__all__ = [
    "ExportResult",
    "check_output_is_safe",
    "export_selection",
    "parse_class_list",
    "particle_mask",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_selection` wrote.

    Attributes
    ----------
    path : Path
        The written file.
    file_format : str
        ``"star"`` or ``"cs"``.
    n_written, n_total : int
        Particles written, and particles in the run.
    """

    path: Path
    file_format: str
    n_written: int
    n_total: int


def parse_class_list(text: str) -> tuple[int, ...]:
    """Parse ``"3,5,8"`` (spaces and ranges such as ``"3-5"`` allowed) into class numbers.

    Raises
    ------
    ValueError
        If an item is not a positive integer or a range of them.
    """
    out: set[int] = set()
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        lo, sep, hi = item.partition("-")
        try:
            first = int(lo)
            last = int(hi) if sep else first
        except ValueError:
            raise ValueError(
                f"invalid class list {text!r}: {item!r} is not a class number; "
                "write e.g. --classes 3,5,8"
            ) from None
        if first < 1:
            raise ValueError(f"invalid class list {text!r}: {item!r} (class numbers start at 1)")
        if last < first:
            raise ValueError(
                f"invalid class list {text!r}: the range {item!r} is reversed; write {last}-{first}"
            )
        out.update(range(first, last + 1))
    if not out:
        raise ValueError(f"invalid class list {text!r}: no class number in it")
    return tuple(sorted(out))


def particle_mask(
    labels: npt.ArrayLike,
    *,
    probabilities: npt.ArrayLike | None = None,
    class_numbers: Iterable[int] | None = None,
    particle_indices: npt.ArrayLike | None = None,
    junk_classes: Iterable[int] = (),
    junk_particles: npt.ArrayLike | None = None,
    exclude_junk: bool = False,
    min_probability: float | None = None,
    invert: bool = False,
) -> npt.NDArray[np.bool_]:
    """Which particles a selection keeps.

    The base selection is ``particle_indices`` if given, else the members of
    ``class_numbers`` if given, else every particle. It is narrowed by
    ``exclude_junk`` (drop the particles called junk, ``junk_particles``, or without
    that per-particle call the members of ``junk_classes``) and ``min_probability``
    (drop particles with ``probabilities < min_probability``). ``invert``
    complements the final result, so a selection and its inversion partition the
    particles.

    Parameters
    ----------
    labels : array_like of int, shape (n,)
        1-based class number of each particle.
    probabilities : array_like of float, shape (n,), optional
        Class membership probability of each particle; needed for ``min_probability``.
    class_numbers : iterable of int, optional
    particle_indices : array_like of int, shape (m,), optional
        0-based rows; must lie in ``[0, n)``.
    junk_classes : iterable of int
    junk_particles : array_like of bool, shape (n,), optional
        The run's per-particle junk call (``_cmJunk``); it takes precedence over
        ``junk_classes``, since a class can be partly junk.
    exclude_junk : bool
    min_probability : float, optional
    invert : bool

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    lab = np.asarray(labels).astype(np.int64, copy=False)
    n = lab.shape[0]
    if particle_indices is not None:
        idx = np.asarray(particle_indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise ValueError(f"particle indices must lie in [0, {n}); got {idx.min()}..{idx.max()}")
        mask = np.zeros(n, dtype=bool)
        mask[idx] = True
    elif class_numbers is not None:
        mask = np.isin(lab, np.fromiter(class_numbers, dtype=np.int64))
    else:
        mask = np.ones(n, dtype=bool)
    if exclude_junk:
        if junk_particles is not None:
            flagged = np.asarray(junk_particles).astype(bool)
            if flagged.shape != (n,):
                raise ValueError(f"junk_particles must have {n} entries; got {flagged.shape}")
            mask &= ~flagged & (lab > 0)  # class 0: skipped (unreadable) particles
        else:
            mask &= ~np.isin(lab, np.fromiter(junk_classes, dtype=np.int64))
    if min_probability is not None:
        if probabilities is None:
            raise ValueError("min_probability needs the particles' class probabilities")
        prob = np.asarray(probabilities, dtype=np.float64)
        mask &= prob >= min_probability
    return ~mask if invert else mask


def _output_format(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix in (".star", ".cs"):
        return suffix[1:]
    raise ValueError(f"{out}: the output must end with .star (RELION) or .cs (cryoSPARC)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_is_safe(
    out: str | os.PathLike[str], run_dir: str | os.PathLike[str], info: dict[str, Any]
) -> None:
    """Refuse an export that would replace the run's input or write into the run folder.

    ``--overwrite`` only replaces earlier exports: never the file the run was made
    from (``run.json`` ``input.path``), and nothing inside the run folder, whose
    files must stay as the run wrote them.

    Raises
    ------
    OutputRefusedError
        Naming ``out`` and what it would have replaced.
    """
    target, run = Path(out), Path(run_dir)
    given = info.get("input", {}).get("path") if isinstance(info.get("input"), dict) else None
    if isinstance(given, str) and given and _same_file(target, Path(given)):
        raise OutputRefusedError(
            f"{target} is the input of the run in {run} ({given}); export never replaces a "
            "run's input: choose another --out"
        )
    resolved, run_resolved = target.resolve(), run.resolve()
    inside = run_resolved in resolved.parents or resolved == run_resolved
    if not inside and target.exists():
        inside = any(_same_file(target, f) for f in run.iterdir() if f.is_file())
    if inside:
        raise OutputRefusedError(
            f"{target} is inside the run folder {run}; export writes beside the run, never "
            f"into it (its files must stay as the run wrote them): choose e.g. "
            f"--out {run.parent / target.name}"
        )


def _resolve_selection(
    selection: Selection | str | os.PathLike[str] | None, info: dict[str, Any]
) -> Selection | None:
    if selection is None:
        return None
    source = "selection"
    if not isinstance(selection, Selection):
        source = str(selection)
        selection = read_selection(selection)
    check_selection_run(
        selection, run_id=info["run_id"], n_particles=info["n_particles"], source=source
    )
    return selection


def export_selection(
    run_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    selection: Selection | str | os.PathLike[str] | None = None,
    class_numbers: Iterable[int] | None = None,
    exclude_junk: bool = False,
    min_probability: float | None = None,
    invert: bool = False,
    overwrite: bool = False,
) -> ExportResult:
    """Write the selected particles of a run as RELION .star or cryoSPARC .cs.

    Parameters
    ----------
    run_dir : path
        Output folder of ``cryomanifold run``.
    out_path : path
        Ends with ``.star`` (always possible) or ``.cs`` (only when the run's input
        was a cryoSPARC .cs, i.e. the run folder has ``particles.cs``).
    selection : Selection or path to selection.json, optional
        Must carry the run's ``run_id``. Exclusive with ``class_numbers``.
    class_numbers : iterable of int, optional
        Keep the members of these classes.
    exclude_junk : bool
        Drop the particles called junk (``_cmJunk``; for runs made before that column,
        the members of classes flagged as junk in ``classes.csv``).
    min_probability : float, optional
        Drop particles whose class probability is below this value.
    invert : bool
        Write the complement of the selection instead.
    overwrite : bool
        Replace an existing ``out_path`` (an earlier export; never the run's input
        or a file of the run folder).

    Returns
    -------
    ExportResult

    Raises
    ------
    FileExistsError
        If ``out_path`` exists and ``overwrite`` is False.
    OutputRefusedError
        If ``out_path`` is the run's input or inside the run folder (even with
        ``overwrite``: it only replaces earlier exports).
    RunMismatchError
        If ``selection`` was made for another run.
    ValueError
        If the selection names unknown classes, or keeps no particle.
    """
    if selection is not None and class_numbers is not None:
        raise ValueError("give either a selection or class numbers, not both")
    out = Path(out_path)
    file_format = _output_format(out)
    info = read_run_info(run_dir)
    check_output_is_safe(out, run_dir, info)
    check_writable(out, overwrite=overwrite)
    sel = _resolve_selection(selection, info)
    classes = read_classes(run_dir)
    known = set(classes["class_number"].tolist())
    wanted = tuple(class_numbers) if class_numbers is not None else None
    if wanted is None and sel is not None and sel.particle_indices is None:
        wanted = sel.class_numbers
    unknown = sorted(set(wanted or ()) - known)
    if unknown:
        raise ValueError(
            f"class number(s) {unknown} are not in {Path(run_dir) / 'classes.csv'} "
            f"(this run has classes {sorted(known)})"
        )

    probabilities: npt.NDArray[Any] | None
    junk_particles: npt.NDArray[Any] | None
    if file_format == "cs":
        records = read_particles_cs(run_dir)
        labels = records[CS_FIELDS["class"]]
        probabilities = records[CS_FIELDS["probability"]]
        names = records.dtype.names or ()
        junk_particles = records["cm/junk"] if "cm/junk" in names else None
        n_rows = records.shape[0]
        source = Path(run_dir) / "particles.cs"
    else:
        blocks, name = read_particles_star(run_dir)
        table = blocks[name]
        labels = table[CLASS_COLUMN].to_numpy()
        probabilities = (
            table[PROBABILITY_COLUMN].to_numpy() if PROBABILITY_COLUMN in table.columns else None
        )
        junk_particles = table["cmJunk"].to_numpy() if "cmJunk" in table.columns else None
        n_rows = len(table)
        source = Path(run_dir) / "particles.star"
    if n_rows != info["n_particles"]:
        raise ValueError(
            f"{source} has {n_rows} particles but run.json says {info['n_particles']}; "
            "the run folder is inconsistent: rerun 'cryomanifold run'"
        )
    if min_probability is not None and probabilities is None:
        raise ValueError(f"{source} has no class probabilities; drop --min-probability")

    mask = particle_mask(
        labels,
        probabilities=probabilities,
        class_numbers=wanted,
        particle_indices=sel.particle_indices if sel is not None else None,
        junk_classes=classes.loc[classes["junk"], "class_number"].tolist(),
        junk_particles=junk_particles,
        exclude_junk=exclude_junk,
        min_probability=min_probability,
        invert=invert,
    )
    n_written = int(mask.sum())
    if n_written == 0:
        raise ValueError(f"no particle of {source} matches the selection; nothing written")

    if file_format == "cs":
        _write_cs(out, records[mask])
    else:
        _write_star(out, blocks, name, mask, run_dir=Path(run_dir), info=info)
    logger.info("wrote %d of %d particles to %s", n_written, n_rows, out)
    return ExportResult(path=out, file_format=file_format, n_written=n_written, n_total=n_rows)


def _write_star(
    out: Path,
    blocks: dict[str, Any],
    name: str,
    mask: npt.NDArray[np.bool_],
    *,
    run_dir: Path,
    info: dict[str, Any],
) -> None:
    import starfile

    kept = dict(blocks)
    kept[name] = _resolvable_names(
        blocks[name].loc[mask].reset_index(drop=True), out, run_dir, info
    )
    with atomic_path(out) as tmp:
        # float_format=None writes the shortest text that reads back to the same
        # float64, so every value of the kept rows is unchanged.
        starfile.write(kept, tmp, float_format=None)


def _resolvable_names(table: Any, out: Path, run_dir: Path, info: dict[str, Any]) -> Any:
    """``table`` with image names that resolve from the exported file, RELION's way.

    Inside a RELION project the paths are relative to the project folder (RELION
    runs there), elsewhere relative to the file's folder, absolute when they share
    no folder with it. ``k@stack.mrc`` names (cryoSPARC's stacks, which RELION
    refuses) point at ``.mrcs`` links in ``<out stem>_mrcs/``. Stacks that are
    found nowhere keep their names (and a warning says so).
    """
    from cryomanifold.interop.paths import rebase_image_names, relion_base_dir, run_search_dirs

    if "rlnImageName" not in table.columns or len(table) == 0:
        return table
    folder = out.resolve().parent
    rebased = rebase_image_names(
        table["rlnImageName"],
        search_dirs=run_search_dirs(run_dir, (info.get("input") or {}).get("path")),
        base=relion_base_dir(folder),
        links_dir=folder / f"{out.stem}_mrcs",
    )
    if not rebased.changed:
        return table
    logger.info("%s: image paths rewritten to resolve from %s", out, relion_base_dir(folder))
    return table.assign(rlnImageName=rebased.names)


def _write_cs(out: Path, records: npt.NDArray[np.void]) -> None:
    with atomic_path(out) as tmp, tmp.open("wb") as f:
        np.save(f, records)
