"""A run folder as a cryoSPARC 2D classification: fields and templates that Select 2D takes.

cryoSPARC keeps a 2D classification in two datasets (numpy structured arrays
saved as ``.cs``):

- the particles, with the ``alignments2D`` slot: ``alignments2D/class`` (uint32,
  0-based), ``alignments2D/class_posterior`` (float32, the probability of that
  class) and ``alignments2D/class_ess`` (float32, effective number of classes the
  particle spreads over, 1 = certain), plus the pose and shift of the in-plane
  alignment;
- the class averages, a ``template`` dataset with the ``blob`` slot:
  ``blob/path`` (a ``.mrc`` stack), ``blob/idx`` (0-based image = class index),
  ``blob/shape``, ``blob/psize_A``, ``blob/sign`` and ``blob/res_A`` (the class
  resolution, Å).

Select 2D matches ``alignments2D/class`` against the templates' ``blob/idx``.

:func:`write_cryosparc_classification` adds the class fields to the run's
``particles.cs`` and writes ``templates.cs`` + ``templates.mrc``. What is and is
not written, and why:

- ``alignments2D/class`` = class number - 1. Particles the run skipped (class 0:
  NaN or constant images) get one more class, ``K``, whose template is a blank
  image named "unassigned", so every particle has a valid class.
- ``alignments2D/class_posterior`` = the run's class probability.
- ``alignments2D/class_ess`` = ``1 / (p² + (1 - p)²)`` from that probability ``p``:
  the run keeps only the largest membership, and this is the smallest ESS it
  allows (exact when the rest of the probability lies in one other class).
- No ``alignments2D/pose`` / ``shift``: the map is pose-free and gives no
  per-particle rotation or shift, so writing zeros would claim an alignment that
  was never made. Fields of an earlier 2D classification in the input are kept
  under the prefix ``alignments2D_input/`` so they cannot be mistaken for this one.
- ``blob/res_A`` = classes.csv ``resolution_angstrom`` (per-class FRC) when the
  run has it, else NaN.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold._atomic import atomic_path
from cryomanifold.atlas.runfolder import (
    CS_FIELDS,
    RESOLUTION_COLUMN,
    read_class_images,
    read_classes,
    read_particles_cs,
    read_run_info,
)

__all__ = [
    "CLASS_FIELDS",
    "CryosparcFiles",
    "class_ess",
    "templates_dataset",
    "write_cryosparc_classification",
]

logger = logging.getLogger(__name__)

#: cryoSPARC's 2D class fields that this module writes, with cryoSPARC's dtypes.
CLASS_FIELDS = {
    "alignments2D/class": np.dtype("<u4"),
    "alignments2D/class_posterior": np.dtype("<f4"),
    "alignments2D/class_ess": np.dtype("<f4"),
}
PREVIOUS_PREFIX = "alignments2D_input/"
TEMPLATES_CS = "templates.cs"
TEMPLATES_MRC = "templates.mrc"


@dataclass(frozen=True)
class CryosparcFiles:
    """What :func:`write_cryosparc_classification` wrote.

    Attributes
    ----------
    particles : Path
        ``particles.cs`` with the ``alignments2D`` class fields.
    templates : Path
        ``templates.cs``, one row per class (plus "unassigned" when needed).
    templates_stack : Path
        ``templates.mrc``, the class averages as float32.
    n_templates : int
    """

    particles: Path
    templates: Path
    templates_stack: Path
    n_templates: int


def class_ess(probability: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Effective number of classes ``1 / (p² + (1 - p)²)`` for class probabilities ``p``.

    Parameters
    ----------
    probability : array_like, shape (n,)
        Probability of the assigned class, in [0, 1].

    Returns
    -------
    ndarray of float32, shape (n,)
        1 for ``p = 1``, 2 for ``p = 0.5``.
    """
    p = np.clip(np.asarray(probability, dtype=np.float64), 0.0, 1.0)
    return (1.0 / (p * p + (1.0 - p) * (1.0 - p))).astype(np.float32)


def _uids(seed: str, n: int) -> npt.NDArray[np.uint64]:
    """Reproducible 63-bit ids, one per row (cryoSPARC's ``uid``)."""
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        digest = hashlib.sha256(f"{seed}:{i}".encode()).digest()
        out[i] = int.from_bytes(digest[:8], "little") >> 1
    return out


def templates_dataset(
    n_templates: int,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    resolution_angstrom: npt.ArrayLike,
    sign: float,
    stack_path: str,
    seed: str,
) -> npt.NDArray[np.void]:
    """The class averages as a cryoSPARC ``template`` dataset (``blob`` slot).

    Parameters
    ----------
    n_templates : int
    box_size : int
        Side of the images, pixels.
    pixel_size_angstrom : float
    resolution_angstrom : array_like, shape (n_templates,)
        Per-class resolution, Å (NaN where unknown).
    sign : float
        ``blob/sign``: the contrast of the images, as the particles'.
    stack_path : str
        ``blob/path`` of every row.
    seed : str
        Makes the ``uid`` column reproducible (the run id).

    Returns
    -------
    structured ndarray, shape (n_templates,)
    """
    path = stack_path.encode()
    dtype = np.dtype(
        [
            ("uid", "<u8"),
            ("blob/path", f"S{max(len(path), 1)}"),
            ("blob/idx", "<u4"),
            ("blob/shape", "<u4", (2,)),
            ("blob/psize_A", "<f4"),
            ("blob/sign", "<f4"),
            ("blob/res_A", "<f4"),
        ]
    )
    out = np.zeros(n_templates, dtype=dtype)
    out["uid"] = _uids(seed, n_templates)
    out["blob/path"] = path
    out["blob/idx"] = np.arange(n_templates)
    out["blob/shape"] = box_size
    out["blob/psize_A"] = pixel_size_angstrom
    out["blob/sign"] = sign
    out["blob/res_A"] = np.asarray(resolution_angstrom, dtype=np.float32)
    return out


def _with_class_fields(
    records: npt.NDArray[np.void], values: dict[str, npt.NDArray[np.generic]]
) -> npt.NDArray[np.void]:
    """``records`` with the class fields set; other alignments2D fields renamed."""
    from cryomanifold.io.cryosparc import add_fields

    names = records.dtype.names or ()
    old = [n for n in names if n.startswith("alignments2D/") and n not in CLASS_FIELDS]
    if old:
        logger.info(
            "particles.cs: the input's %d other alignments2D fields are kept as %s*",
            len(old),
            PREVIOUS_PREFIX,
        )
        mapping = {n: PREVIOUS_PREFIX + n.split("/", 1)[1] for n in old}
        records = records.copy()
        records.dtype.names = tuple(mapping.get(n, n) for n in names)
    typed = {k: np.asarray(v).astype(CLASS_FIELDS[k]) for k, v in values.items()}
    return add_fields(records, typed, path=Path("particles.cs"))


def write_cryosparc_classification(
    run_dir: str | os.PathLike[str], *, run_info: dict[str, Any] | None = None
) -> CryosparcFiles:
    """Write the cryoSPARC 2D-classification view of a run whose input was a .cs file.

    Reads ``run.json``, ``particles.cs`` (with the run's ``cm/class`` and
    ``cm/probability``), ``classes.csv`` and ``class_averages.mrcs``; rewrites
    ``particles.cs`` with the ``alignments2D`` class fields and writes
    ``templates.cs`` and ``templates.mrc`` (all atomically).

    Parameters
    ----------
    run_dir : path
        Output folder of ``cryomanifold run`` on a cryoSPARC ``.cs`` input.
    run_info : dict, optional
        The run's ``run.json`` content, when a run writes these files before it.

    Returns
    -------
    CryosparcFiles

    Raises
    ------
    FileNotFoundError
        If the run has no ``particles.cs`` (its input was not a .cs file).
    ValueError
        If the run folder's files disagree; the message names the file.
    """
    from cryomanifold.io import write_mrcs

    run = Path(run_dir)
    info = read_run_info(run) if run_info is None else run_info
    classes = read_classes(run)
    records = read_particles_cs(run)
    k = len(classes)
    labels = np.asarray(records[CS_FIELDS["class"]], dtype=np.int64)
    if labels.size and (labels.min() < 0 or labels.max() > k):
        raise ValueError(
            f"{run / 'particles.cs'}: {CS_FIELDS['class']} has values outside 0..{k} "
            f"(classes.csv has {k} classes)"
        )
    skipped = labels == 0
    n_templates = k + int(skipped.any())
    prob = np.asarray(records[CS_FIELDS["probability"]], dtype=np.float32)
    prob = np.where(skipped, np.float32(0), prob)
    cls = np.where(skipped, k, labels - 1).astype(np.uint32)

    images = read_class_images(run)[:k]
    if images.shape[0] < k:
        raise ValueError(f"{run / 'class_averages.mrcs'} has {images.shape[0]} images for {k}")
    if n_templates > k:
        images = np.concatenate([images, np.zeros((1, *images.shape[1:]), np.float32)])
        logger.info("%d skipped particles get template %d, 'unassigned'", skipped.sum(), k)
    pixel = float(info.get("pixel_size_angstrom") or 1.0)
    res = np.full(n_templates, np.nan)
    if RESOLUTION_COLUMN in classes.columns:
        res[:k] = pd.to_numeric(classes[RESOLUTION_COLUMN], errors="coerce").to_numpy(float)
    names = records.dtype.names or ()
    sign = float(np.median(records["blob/sign"])) if "blob/sign" in names else -1.0
    templates = templates_dataset(
        n_templates,
        box_size=images.shape[-1],
        pixel_size_angstrom=pixel,
        resolution_angstrom=res,
        sign=sign,
        stack_path=TEMPLATES_MRC,
        seed=str(info["run_id"]),
    )
    particles = _with_class_fields(
        records,
        {
            "alignments2D/class": cls,
            "alignments2D/class_posterior": prob,
            "alignments2D/class_ess": np.where(skipped, np.float32(np.nan), class_ess(prob)),
        },
    )

    stack = write_mrcs(run / TEMPLATES_MRC, images, pixel, overwrite=True)
    for name, array in (("particles.cs", particles), (TEMPLATES_CS, templates)):
        with atomic_path(run / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)
    return CryosparcFiles(run / "particles.cs", run / TEMPLATES_CS, stack, n_templates)
