"""A run folder as a RELION 2D classification: what Subset selection opens.

RELION's Select job runs ``relion_display --gui --i <root>_model.star`` (RELION
3.1) or ``--i <root>_optimiser.star`` (RELION 4 and 5), with ``--allow_save
--fn_parts Select/jobNNN/particles.star``. The display then reads:

- ``<root>_optimiser.star``, block ``data_optimiser_general``: ``_rlnModelStarFile``
  names the model file (RELION 4/5);
- ``<root>_model.star``, block ``data_model_classes``: one row per class in class
  order (the row number *is* the class number), ``_rlnReferenceImage`` ``k@stack``
  and, for sorting, any numeric column such as ``_rlnClassDistribution`` or
  ``_rlnEstimatedResolution``; block ``data_model_general`` (read for
  ``_rlnIsHelix``);
- ``<root>_data.star`` beside it (the name is derived from the model or optimiser
  file name): optics and particles with an integer ``_rlnClassNumber``; the
  selected classes' rows are written out unchanged.

:func:`write_relion_classification` writes these three files into a finished run
folder. ``<root>_data.star`` is a relative symbolic link to ``particles.star`` when
its image paths already resolve from the RELION base folder (see
:mod:`cryomanifold.interop.paths`), so nothing large is duplicated; otherwise
(a cryoSPARC or .mrcs input, or a run folder outside the input's project) it is a
copy of ``particles.star`` with the image paths rewritten, and ``.mrc`` stacks
reached through ``.mrcs`` links in ``stacks_mrcs/``. The model references
``class_averages.mrcs`` directly when it is float32 (MRC mode 2), as RELION 3.1
cannot read float16; otherwise a float32 ``<root>_classes.mrcs`` is written.

Not written, on purpose: the per-class spectra, noise model and group tables of a
real ``relion_refine`` model, and ``_rlnAccuracyRotations`` /
``_rlnAccuracyTranslationsAngst``. RELION's automatic class ranker
(``relion_class_ranker``, RELION 4/5) computes its features from those and from
the refinement's own optimiser state; filling them with invented numbers would let
it run but rank classes on made-up inputs, so it is not supported (see
docs/interop.md).
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cryomanifold._atomic import atomic_path
from cryomanifold.atlas.runfolder import (
    CLASS_COLUMN,
    RESOLUTION_COLUMN,
    read_class_images,
    read_classes,
    read_particles_star,
    read_run_info,
)
from cryomanifold.interop.paths import (
    path_for,
    rebase_image_names,
    relion_base_dir,
    run_search_dirs,
)

__all__ = [
    "NO_RESOLUTION",
    "RESOLUTION_COLUMN",
    "RelionFiles",
    "model_tables",
    "write_relion_classification",
]

logger = logging.getLogger(__name__)

#: ``_rlnEstimatedResolution`` of a class without an estimate (RELION's own "none").
NO_RESOLUTION = 999.0
#: Folder (in the run folder) for ``.mrcs`` links to ``.mrc`` stacks.
LINKS_DIR = "stacks_mrcs"
_FLOAT_FORMAT = "%.6g"


@dataclass(frozen=True)
class RelionFiles:
    """What :func:`write_relion_classification` wrote.

    Attributes
    ----------
    optimiser, model, data : Path
        ``<root>_optimiser.star``, ``<root>_model.star``, ``<root>_data.star``.
    project_dir : Path
        The folder RELION must run in: every relative path in these files starts
        there.
    data_is_link : bool
        Whether ``data`` is a link to ``particles.star`` (else a rewritten copy).
    class_stack : Path
        The stack ``_rlnReferenceImage`` points into.
    """

    optimiser: Path
    model: Path
    data: Path
    project_dir: Path
    data_is_link: bool
    class_stack: Path

    def display_command(self) -> str:
        """The command that opens the classes in RELION's Subset selection display."""
        model = path_for(self.model, self.project_dir)
        return (
            f"cd {self.project_dir} && relion_display --gui --i {model} "
            "--allow_save --fn_parts Select/particles.star"
        )


def _class_stack(run: Path, root: str, n_classes: int, pixel_size_angstrom: float) -> Path:
    """``class_averages.mrcs`` if RELION can read it (float32), else a float32 copy."""
    import mrcfile

    from cryomanifold.io import write_mrcs

    path = run / "class_averages.mrcs"
    with mrcfile.open(path, permissive=True, header_only=True) as mrc:
        mode = int(mrc.header.mode)
        n_images = int(mrc.header.nz)
        pixel = float(mrc.voxel_size.x) or pixel_size_angstrom
    if n_images < n_classes:
        raise ValueError(f"{path} has {n_images} images for {n_classes} classes")
    if mode == 2:
        return path
    copy = run / f"{root}_classes.mrcs"
    logger.info("%s is MRC mode %d; RELION reads float32: writing %s", path, mode, copy.name)
    write_mrcs(copy, read_class_images(run)[:n_classes], pixel, overwrite=True)
    return copy


def model_tables(
    classes: pd.DataFrame,
    counts: np.ndarray,
    *,
    stack_name: str,
    box_size: int,
    pixel_size_angstrom: float,
) -> dict[str, Any]:
    """The blocks of ``<root>_model.star``.

    Parameters
    ----------
    classes : DataFrame
        classes.csv, sorted by class number ``1..K`` (see
        :func:`cryomanifold.atlas.runfolder.read_classes`).
    counts : ndarray of int, shape (K,)
        Particles assigned to each class.
    stack_name : str
        The class averages' stack as written in the file (``k@stack_name``).
    box_size : int
        Side of the class averages, pixels.
    pixel_size_angstrom : float
        Pixel size of the class averages, Å.

    Returns
    -------
    dict
        ``model_general`` (dict) and ``model_classes`` (DataFrame) blocks.
    """
    k = len(classes)
    total = counts.sum()
    table = pd.DataFrame(
        {
            "rlnReferenceImage": [f"{c:06d}@{stack_name}" for c in range(1, k + 1)],
            "rlnClassDistribution": counts / total if total else np.zeros(k),
        }
    )
    if RESOLUTION_COLUMN in classes.columns:
        res = pd.to_numeric(classes[RESOLUTION_COLUMN], errors="coerce").to_numpy(float)
        table["rlnEstimatedResolution"] = np.where(np.isfinite(res) & (res > 0), res, NO_RESOLUTION)
    general = {
        "rlnReferenceDimensionality": 2,
        "rlnDataDimensionality": 2,
        "rlnOriginalImageSize": int(box_size),
        "rlnPixelSize": float(pixel_size_angstrom),
        "rlnNrClasses": k,
        "rlnNrBodies": 1,
        "rlnIsHelix": 0,
    }
    return {"model_general": general, "model_classes": table}


def _write_star(path: Path, blocks: dict[str, Any], float_format: str | None) -> None:
    import starfile

    with atomic_path(path) as tmp:
        starfile.write(blocks, tmp, float_format=float_format)


def _link(link: Path, target: Path) -> bool:
    """Point ``link`` at ``target`` (relative); returns False where links are impossible."""
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.symlink(os.path.relpath(target, link.parent), tmp)
    except OSError:
        return False
    os.replace(tmp, link)
    return True


def _write_data(
    run: Path, data: Path, base: Path, input_path: str | None, blocks: dict[str, Any], name: str
) -> bool:
    """Write ``<root>_data.star``; returns whether it is a link to particles.star."""
    table = blocks[name]
    rebased = rebase_image_names(
        table["rlnImageName"],
        search_dirs=run_search_dirs(run, input_path),
        base=base,
        links_dir=run / LINKS_DIR,
    )
    integer = pd.api.types.is_integer_dtype(table[CLASS_COLUMN])
    if not rebased.changed and integer:
        if _link(data, run / "particles.star"):
            return True
        shutil.copyfile(run / "particles.star", data)
        return False
    logger.info(
        "%s: image paths rewritten to resolve from %s%s",
        data,
        base,
        f" ({len(rebased.links)} .mrcs links in {LINKS_DIR}/)" if rebased.links else "",
    )
    out = dict(blocks)
    out[name] = table.assign(
        rlnImageName=rebased.names, **{CLASS_COLUMN: table[CLASS_COLUMN].astype(np.int64)}
    )
    _write_star(data, out, float_format=None)  # shortest text that reads back the same
    return False


def write_relion_classification(
    run_dir: str | os.PathLike[str],
    *,
    root: str = "run_it000",
    project_dir: str | os.PathLike[str] | None = None,
    run_info: dict[str, Any] | None = None,
) -> RelionFiles:
    """Write the RELION Class2D view of a finished run folder.

    Reads ``run.json``, ``particles.star``, ``classes.csv`` and
    ``class_averages.mrcs`` and writes ``<root>_optimiser.star``,
    ``<root>_model.star`` and ``<root>_data.star`` beside them (atomically;
    earlier ones are replaced).

    Parameters
    ----------
    run_dir : path
        Output folder of ``cryomanifold run``.
    root : str
        File name root; RELION's Class2D uses ``run_itNNN``.
    project_dir : path, optional
        The RELION project folder that RELION runs in (the External job passes
        the current folder). Default: the nearest folder at or above ``run_dir``
        with a ``default_pipeline.star``, else ``run_dir`` itself.
    run_info : dict, optional
        The run's ``run.json`` content, when a run writes these files before it.

    Returns
    -------
    RelionFiles

    Raises
    ------
    FileNotFoundError, ValueError
        If the run folder lacks a file or its files disagree; the message names it.
    """
    run = Path(run_dir)
    info = read_run_info(run) if run_info is None else run_info
    classes = read_classes(run)
    k = len(classes)
    numbers = classes["class_number"].to_numpy()
    if not np.array_equal(numbers, np.arange(1, k + 1)):
        raise ValueError(
            f"{run / 'classes.csv'}: class numbers {numbers.tolist()} are not 1..{k}; RELION "
            "numbers classes by their row in the model file"
        )
    blocks, name = read_particles_star(run, require_columns=(CLASS_COLUMN, "rlnImageName"))
    labels = pd.to_numeric(blocks[name][CLASS_COLUMN], errors="coerce").to_numpy()
    if not np.all(np.isfinite(labels) & (labels == np.round(labels))):
        raise ValueError(f"{run / 'particles.star'}: {CLASS_COLUMN} is not an integer column")
    counts = np.bincount(np.clip(labels.astype(np.int64), 0, k + 1), minlength=k + 2)[1 : k + 1]

    base = relion_base_dir(run, project_dir)
    pixel = float(info.get("pixel_size_angstrom") or 1.0)
    stack = _class_stack(run, root, k, pixel)
    tables = model_tables(
        classes,
        counts,
        stack_name=path_for(stack, base),
        box_size=int(info.get("box_size") or read_class_images(run)[0].shape[-1]),
        pixel_size_angstrom=pixel,
    )
    model = run / f"{root}_model.star"
    optimiser = run / f"{root}_optimiser.star"
    data = run / f"{root}_data.star"
    input_path = (info.get("input") or {}).get("path")
    is_link = _write_data(run, data, base, input_path, blocks, name)
    _write_star(model, tables, _FLOAT_FORMAT)
    general = {
        "rlnOutputRootName": path_for(run / root, base),
        "rlnModelStarFile": path_for(model, base),
    }
    if input_path and Path(input_path).suffix == ".star":
        general["rlnExperimentalDataStarFile"] = path_for(input_path, base)
    _write_star(optimiser, {"optimiser_general": general}, _FLOAT_FORMAT)
    files = RelionFiles(optimiser, model, data, base, is_link, stack)
    logger.info("RELION Subset selection: %s", files.display_command())
    return files
