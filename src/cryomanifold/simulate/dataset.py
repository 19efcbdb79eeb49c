"""Simulated datasets: particle stacks with RELION metadata and ground truth.

:func:`simulate_dataset` writes ``particles.mrcs`` and a RELION 3.1
``particles.star`` (optics block; per-particle CTF, true pose and the truth label
``_cmTruthLabel``: the species name or ``junk:<kind>``). The work is split in three
steps that can be used alone:

1. :func:`~cryomanifold.simulate.plan.plan_particles` draws everything per particle
   (species or junk kind, micrograph, CTF, pose, shift, B-factor, ice thickness)
   into a table, in the shuffled output order;
2. :func:`~cryomanifold.simulate.render.render_particles` makes the images of any
   rows of that table;
3. :func:`star_tables` turns the table into the ``optics`` and ``particles`` blocks.

Reproducibility: the plan comes from ``seed``; the random numbers of particle
``i`` come from its own streams (:func:`cryomanifold.simulate.plan.particle_rngs`).
The same seed therefore gives the same stack whatever the batch size.

Micrographs: consecutive groups of ``particles_per_micrograph`` rows share a fake
micrograph name and its CTF, like the output of RELION's extraction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold.simulate.config import SimulationConfig
from cryomanifold.simulate.models import AtomicModel
from cryomanifold.simulate.plan import check_counts, plan_particles
from cryomanifold.simulate.project import Projector, make_projector, solvent_scale_for_contrast
from cryomanifold.simulate.render import render_particles
from cryomanifold.simulate.resolve import check_model_spec, resolve_model

__all__ = [
    "SimulationConfig",
    "make_projectors",
    "plan_particles",
    "render_particles",
    "simulate_dataset",
    "simulate_particles",
    "star_tables",
]

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
ModelSpec = str | os.PathLike[str] | AtomicModel

STACK_NAME = "particles.mrcs"
STAR_NAME = "particles.star"


def star_tables(
    plan: pd.DataFrame, config: SimulationConfig, *, stack_name: str = STACK_NAME
) -> dict[str, pd.DataFrame]:
    """RELION 3.1 ``optics`` and ``particles`` blocks for a plan.

    Returns
    -------
    dict
        ``{"optics": DataFrame, "particles": DataFrame}`` for ``starfile.write``;
        ``rlnCtfBfactor`` only when ``config.record_bfactor``.
    """
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [config.voltage_kv],
            "rlnSphericalAberration": [config.cs_mm],
            "rlnAmplitudeContrast": [config.amplitude_contrast],
            "rlnImagePixelSize": [config.pixel_size_angstrom],
            "rlnImageSize": [config.box_size],
            "rlnImageDimensionality": [2],
        }
    )
    n = len(plan)
    digits = max(6, len(str(n)))
    bfactor = (
        plan["bfactor"].to_numpy() if "bfactor" in plan else np.full(n, config.bfactor_range[0])
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:0{digits}d}@{stack_name}" for i in range(1, n + 1)],
            "rlnMicrographName": [f"Micrographs/sim_{m + 1:06d}.mrc" for m in plan["micrograph"]],
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnDefocusU": plan["defocus_u"].to_numpy(),
            "rlnDefocusV": plan["defocus_v"].to_numpy(),
            "rlnDefocusAngle": plan["defocus_angle"].to_numpy(),
            "rlnCtfBfactor": bfactor,
            "rlnAngleRot": plan["rot"].to_numpy(),
            "rlnAngleTilt": plan["tilt"].to_numpy(),
            "rlnAnglePsi": plan["psi"].to_numpy(),
            "rlnOriginXAngst": plan["origin_x"].to_numpy(),
            "rlnOriginYAngst": plan["origin_y"].to_numpy(),
            "cmTruthLabel": plan["label"].to_numpy(),
        }
    )
    if not config.record_bfactor:  # real metadata do not know the particle's B-factor
        particles = particles.drop(columns="rlnCtfBfactor")
    return {"optics": optics, "particles": particles}


def _as_list(models: Sequence[ModelSpec] | ModelSpec) -> list[ModelSpec]:
    if isinstance(models, str | os.PathLike | AtomicModel):
        return [models]
    return list(models)


def make_projectors(models: Sequence[AtomicModel], config: SimulationConfig) -> list[Projector]:
    """One projector per model with the config's grid and solvent settings.

    Raises
    ------
    ValueError
        If a model does not fit in the box.
    """
    scale = (
        1.0
        if config.protein_contrast is None
        else solvent_scale_for_contrast(
            config.protein_contrast, implicit_hydrogens=config.implicit_hydrogens
        )
    )
    return [
        make_projector(
            m,
            box_size=config.box_size,
            pixel_size_angstrom=config.pixel_size_angstrom,
            implicit_hydrogens=config.implicit_hydrogens,
            solvent=config.solvent,
            solvent_scale=scale,
            oversample=config.oversample,
        )
        for m in models
    ]


def _prepare(
    models: Sequence[ModelSpec], config: SimulationConfig
) -> tuple[list[AtomicModel], list[Projector]]:
    resolved = [resolve_model(m) for m in _as_list(models)]
    if not resolved:
        raise ValueError("give at least one model (a .pdb/.cif file or builtin:NAME)")
    return resolved, make_projectors(resolved, config)


def simulate_particles(
    models: Sequence[ModelSpec],
    *,
    n_per_model: int,
    junk_fraction: float = 0.0,
    config: SimulationConfig | None = None,
    seed: int = 0,
) -> tuple[F32, dict[str, pd.DataFrame]]:
    """Simulate a small dataset in memory.

    Parameters
    ----------
    models : sequence of AtomicModel, path or ``"builtin:NAME"``
    n_per_model : int
    junk_fraction : float
        Share of junk images in the result, in [0, 1).
    config : SimulationConfig, optional
    seed : int

    Returns
    -------
    images : ndarray, shape (n, L, L), float32
        Normalised, protein-white images in plan order.
    tables : dict
        :func:`star_tables` of the dataset (the stack name is ``particles.mrcs``).
    """
    config = config or SimulationConfig()
    check_counts(len(_as_list(models)), n_per_model, junk_fraction)
    resolved, projectors = _prepare(models, config)
    plan = plan_particles(
        [m.name for m in resolved],
        n_per_model=n_per_model,
        junk_fraction=junk_fraction,
        config=config,
        seed=seed,
    )
    return render_particles(plan, projectors, config, seed=seed), star_tables(plan, config)


def simulate_dataset(
    models: Sequence[ModelSpec],
    *,
    n_per_model: int,
    junk_fraction: float,
    out_dir: str | os.PathLike[str],
    box_size: int = 256,
    pixel_size_angstrom: float = 1.0,
    dose_e_per_angstrom2: float = 20.0,
    voltage_kv: float = 300.0,
    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0),
    seed: int = 0,
    batch_size: int = 32,
    overwrite: bool = False,
    preset: str = "paper",
    **options: Any,
) -> Path:
    """Simulate particles of the given models plus junk and write them to ``out_dir``.

    Writes ``out_dir/particles.mrcs`` (float32 stack, pixel size in the header) and
    ``out_dir/particles.star`` (RELION 3.1, see :func:`star_tables`). The stack is
    filled batch by batch through a memory map, so memory use does not grow with
    the number of particles; both files are written to temporary names and
    renamed at the end.

    Parameters
    ----------
    models : sequence of AtomicModel, path or ``"builtin:NAME"``
    n_per_model : int
        Particles per species.
    junk_fraction : float
        Share of junk in the dataset, in [0, 1).
    out_dir : path-like
    box_size, pixel_size_angstrom, dose_e_per_angstrom2, voltage_kv,
    defocus_range_angstrom
        Imaging parameters (see :class:`SimulationConfig`).
    seed : int
        The stack and table depend only on the seed and the parameters (not on
        ``batch_size``).
    batch_size : int
        Images simulated at a time.
    overwrite : bool
        Replace existing output files.
    preset : {"paper", "realistic"}
        Starting point of the imaging (:meth:`SimulationConfig.preset`); the
        arguments above and ``options`` override it.
    **options
        Other :class:`SimulationConfig` fields (``cs_mm``, ``shift_max_angstrom``, ...).

    Returns
    -------
    Path
        The written ``particles.star``.

    Raises
    ------
    FileExistsError
        If an output exists and ``overwrite`` is False.
    ValueError
        For invalid settings or models (unreadable, empty, too large for the box).
    """
    import starfile
    from tqdm.auto import tqdm

    from cryomanifold._atomic import atomic_path, check_writable
    from cryomanifold.io import MrcStackWriter

    # cheap checks first: settings, counts and the output files, then the models
    config = SimulationConfig.preset(
        preset,
        box_size=box_size,
        pixel_size_angstrom=pixel_size_angstrom,
        dose_e_per_angstrom2=dose_e_per_angstrom2,
        voltage_kv=voltage_kv,
        defocus_range_angstrom=tuple(defocus_range_angstrom),
        **options,
    )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    check_counts(len(_as_list(models)), n_per_model, junk_fraction)
    for spec in _as_list(models):
        check_model_spec(spec)
    out = Path(out_dir)
    stack_path = check_writable(out / STACK_NAME, overwrite=overwrite)
    star_path = check_writable(out / STAR_NAME, overwrite=overwrite)
    resolved, projectors = _prepare(models, config)
    plan = plan_particles(
        [m.name for m in resolved],
        n_per_model=n_per_model,
        junk_fraction=junk_fraction,
        config=config,
        seed=seed,
    )
    n, box = len(plan), config.box_size
    log.info(
        "simulating %d images (%d species, %d junk) of %d px at %g Å/px into %s",
        n,
        len(resolved),
        int((plan["species"] < 0).sum()),
        box,
        config.pixel_size_angstrom,
        out,
    )
    out.mkdir(parents=True, exist_ok=True)
    # batched plain writes into a preallocated file: a full disk is an error naming the
    # file and the space needed, never a SIGBUS of a memory map
    with (
        MrcStackWriter(stack_path, n, box, config.pixel_size_angstrom, overwrite=overwrite) as mrc,
        tqdm(total=n, disable=None, unit="img", desc="simulate") as bar,
    ):
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            mrc.write(render_particles(plan.iloc[start:stop], projectors, config, seed=seed))
            bar.update(stop - start)
    with atomic_path(star_path) as tmp:
        starfile.write(star_tables(plan, config), tmp)
    log.info("wrote %s and %s", stack_path, star_path)
    return star_path
