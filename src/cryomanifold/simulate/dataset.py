"""Simulated datasets: particle stacks with RELION metadata and ground truth.

:func:`simulate_dataset` writes ``particles.mrcs`` and a RELION 3.1
``particles.star`` (optics block; per-particle CTF, true pose and the truth label
``_cmTruthLabel``: the species name or ``junk:<kind>``). The work is split in three
steps that can be used alone:

1. :func:`plan_particles` draws everything per particle (species or junk kind,
   micrograph, CTF, pose, shift) into a table, in the shuffled output order;
2. :func:`render_particles` makes the images of any rows of that table;
3. :func:`star_tables` turns the table into the ``optics`` and ``particles`` blocks.

Reproducibility: the plan comes from ``seed``; the random numbers of particle
``i`` (ice texture, junk, shot noise) come from its own stream
``SeedSequence(seed, spawn_key=(1, i))``. The same seed therefore gives the same
stack whatever the batch size.

Micrographs: consecutive groups of ``particles_per_micrograph`` rows share a fake
micrograph name and its CTF, like the output of RELION's extraction.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold.ctf import CTFParams
from cryomanifold.simulate import junk as junk_mod
from cryomanifold.simulate.models import AtomicModel, resolve_model
from cryomanifold.simulate.noise import (
    ctf_batch,
    draw_ctf,
    intensity_from_potential,
    particle_images_from_counts,
    shot_noise,
)
from cryomanifold.simulate.project import (
    Projector,
    make_projector,
    matrix_to_relion_euler,
    random_rotations,
    relion_euler_to_matrix,
)

__all__ = [
    "SimulationConfig",
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


@dataclass(frozen=True)
class SimulationConfig:
    """Imaging parameters of a simulation (defaults: the paper's T20S simulation).

    Attributes
    ----------
    box_size : int
        Box side in pixels (even).
    pixel_size_angstrom : float
    dose_e_per_angstrom2 : float
        Electron dose, e/Å^2.
    voltage_kv, cs_mm, amplitude_contrast : float
        Microscope: acceleration voltage (kV), spherical aberration (mm), fraction
        of amplitude contrast.
    defocus_range_angstrom : (float, float)
        Mean defocus of each micrograph is uniform in this range, Å (underfocus > 0).
    astigmatism_max_angstrom : float
        DefocusU - DefocusV is uniform in [0, this], Å.
    envelope_bfactor_angstrom2 : float
        CTF envelope ``exp(-B k^2 / 4)``, written as ``rlnCtfBfactor``, Å^2.
    shift_sigma_angstrom : float
        Standard deviation of the in-plane particle shifts (each axis), Å.
    particles_per_micrograph : int
        Rows sharing a fake micrograph and its CTF.
    ice_texture_std_angstrom : (float, float)
        Range of the faint ice-thickness texture on every image, Å.
    implicit_hydrogens, solvent : bool
        Projection options (:func:`cryomanifold.simulate.project.scattering_channels`).
    oversample : int
        Projection grid oversampling (1: none).
    """

    box_size: int = 256
    pixel_size_angstrom: float = 1.0
    dose_e_per_angstrom2: float = 20.0
    voltage_kv: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    defocus_range_angstrom: tuple[float, float] = (10000.0, 25000.0)
    astigmatism_max_angstrom: float = 500.0
    envelope_bfactor_angstrom2: float = 50.0
    shift_sigma_angstrom: float = 3.0
    particles_per_micrograph: int = 100
    ice_texture_std_angstrom: tuple[float, float] = (1.0, 4.0)
    implicit_hydrogens: bool = True
    solvent: bool = True
    oversample: int = 1

    def __post_init__(self) -> None:
        checks = {
            "box_size": self.box_size >= 8 and self.box_size % 2 == 0,
            "pixel_size_angstrom": self.pixel_size_angstrom > 0,
            "dose_e_per_angstrom2": self.dose_e_per_angstrom2 > 0,
            "voltage_kv": self.voltage_kv > 0,
            "cs_mm": self.cs_mm >= 0,
            "amplitude_contrast": 0 <= self.amplitude_contrast < 1,
            "defocus_range_angstrom": 0
            < self.defocus_range_angstrom[0]
            <= self.defocus_range_angstrom[1],
            "astigmatism_max_angstrom": self.astigmatism_max_angstrom >= 0,
            "shift_sigma_angstrom": self.shift_sigma_angstrom >= 0,
            "particles_per_micrograph": self.particles_per_micrograph >= 1,
            "oversample": self.oversample >= 1,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"invalid simulation setting {name}={getattr(self, name)!r}")


def _particle_rngs(seed: int, indices: npt.ArrayLike) -> list[np.random.Generator]:
    return [
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, int(i))))
        for i in np.asarray(indices).reshape(-1)
    ]


def plan_particles(
    model_names: Sequence[str],
    *,
    n_per_model: int,
    junk_fraction: float,
    config: SimulationConfig,
    seed: int = 0,
) -> pd.DataFrame:
    """Draw the per-particle parameters of a dataset, in shuffled output order.

    ``n_per_model`` particles of each species plus
    ``round(n_good * junk_fraction / (1 - junk_fraction))`` junk images (the kinds
    of :data:`cryomanifold.simulate.junk.JUNK_KINDS` in equal shares), so that
    ``junk_fraction`` is the share of junk in the whole dataset.

    Returns
    -------
    pandas.DataFrame
        One row per image, index 0..n-1 (the image's position in the stack), columns
        ``label``, ``kind`` (``"particle"`` or a junk kind), ``species`` (index into
        ``model_names``, -1 for junk), ``micrograph`` (0-based), ``defocus_u``,
        ``defocus_v``, ``defocus_angle``, ``rot``, ``tilt``, ``psi`` (degrees),
        ``origin_x``, ``origin_y`` (RELION origin, Å). Junk rows have zero pose.
    """
    if n_per_model < 0:
        raise ValueError(f"n_per_model must be >= 0; got {n_per_model}")
    if not 0 <= junk_fraction < 1:
        raise ValueError(f"junk_fraction must be in [0, 1); got {junk_fraction}")
    if len(set(model_names)) != len(model_names):
        raise ValueError(f"model names must be distinct; got {list(model_names)}")
    n_good = n_per_model * len(model_names)
    n_junk = round(n_good * junk_fraction / (1.0 - junk_fraction))
    n = n_good + n_junk
    if n == 0:
        raise ValueError("nothing to simulate: give at least one model and n_per_model >= 1")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    species = np.concatenate(
        [np.repeat(np.arange(len(model_names)), n_per_model), np.full(n_junk, -1)]
    ).astype(np.int64)
    kinds = np.array(
        ["particle"] * n_good
        + [junk_mod.JUNK_KINDS[i % len(junk_mod.JUNK_KINDS)] for i in range(n_junk)]
    )
    order = rng.permutation(n)
    species, kinds = species[order], kinds[order]
    labels = np.where(
        species >= 0, np.asarray([*model_names, ""])[species], np.char.add("junk:", kinds)
    )
    micrograph = np.arange(n) // config.particles_per_micrograph
    ctf = draw_ctf(
        int(micrograph[-1]) + 1,
        rng,
        defocus_range_angstrom=config.defocus_range_angstrom,
        astigmatism_max_angstrom=config.astigmatism_max_angstrom,
    )
    euler = matrix_to_relion_euler(random_rotations(n, rng))
    shifts = (
        rng.normal(0.0, config.shift_sigma_angstrom, (n, 2))
        if config.shift_sigma_angstrom
        else np.zeros((n, 2))
    )
    junk = species < 0
    euler[junk] = 0.0
    shifts[junk] = 0.0
    return pd.DataFrame(
        {
            "label": labels,
            "kind": kinds,
            "species": species,
            "micrograph": micrograph,
            "defocus_u": np.asarray(ctf.defocus_u_angstrom)[micrograph],
            "defocus_v": np.asarray(ctf.defocus_v_angstrom)[micrograph],
            "defocus_angle": np.asarray(ctf.defocus_angle_deg)[micrograph],
            "rot": euler[:, 0],
            "tilt": euler[:, 1],
            "psi": euler[:, 2],
            # RELION's origin shifts the image onto the centred projection: minus the shift
            "origin_x": -shifts[:, 0] + 0.0,
            "origin_y": -shifts[:, 1] + 0.0,
        }
    )


def _ctf_params(plan: pd.DataFrame, config: SimulationConfig) -> CTFParams:
    n = len(plan)
    return CTFParams(
        defocus_u_angstrom=plan["defocus_u"].to_numpy(dtype=np.float64),
        defocus_v_angstrom=plan["defocus_v"].to_numpy(dtype=np.float64),
        defocus_angle_deg=plan["defocus_angle"].to_numpy(dtype=np.float64),
        voltage_kv=np.full(n, config.voltage_kv),
        cs_mm=np.full(n, config.cs_mm),
        amplitude_contrast=np.full(n, config.amplitude_contrast),
        bfactor_angstrom2=np.full(n, config.envelope_bfactor_angstrom2),
    )


def render_particles(
    plan: pd.DataFrame,
    projectors: Sequence[Projector],
    config: SimulationConfig,
    *,
    seed: int = 0,
    return_counts: bool = False,
) -> F32:
    """Simulate the images of some rows of a plan.

    Parameters
    ----------
    plan : pandas.DataFrame
        Rows of :func:`plan_particles` (any subset; the index identifies each
        image's random stream).
    projectors : sequence of Projector
        One per species, in the order of the plan's ``species`` numbers.
    config : SimulationConfig
    seed : int
        The seed the plan was drawn with.
    return_counts : bool
        Return the raw electron counts (protein dark, mean ``dose * pixel area``)
        instead of the normalised, contrast-inverted images.

    Returns
    -------
    ndarray, shape (len(plan), L, L), float32
    """
    n, box = len(plan), config.box_size
    rngs = _particle_rngs(seed, plan.index.to_numpy())
    kinds = plan["kind"].to_numpy()
    texture = np.broadcast_to(np.asarray(config.ice_texture_std_angstrom, float), (n, 2)).copy()
    texture[kinds == "ice"] = (10.0, 30.0)
    spec = junk_mod.ice_texture_spectrum(
        rngs,
        box_size=box,
        pixel_size_angstrom=config.pixel_size_angstrom,
        thickness_std_angstrom=texture,
    )
    absorption = np.zeros((n, box, box), dtype=np.float32)
    contrast = np.zeros((n, box, box), dtype=np.float32)
    species = plan["species"].to_numpy()
    rotations = relion_euler_to_matrix(plan[["rot", "tilt", "psi"]].to_numpy())
    shifts = -plan[["origin_x", "origin_y"]].to_numpy()
    for s, projector in enumerate(projectors):
        sel = np.flatnonzero(species == s)
        if sel.size:
            spec[sel] += projector.spectrum(rotations[sel], shifts[sel])
    params = _ctf_params(plan, config)
    junk_mod.add_junk(
        spec,
        contrast,
        absorption,
        kinds=kinds,
        ctf=params,
        rngs=rngs,
        projectors=projectors,
        pixel_size_angstrom=config.pixel_size_angstrom,
        voltage_kv=config.voltage_kv,
    )
    ctf = ctf_batch(params, box, config.pixel_size_angstrom)
    has_junk = bool(np.any(species < 0))
    intensity = intensity_from_potential(
        spec,
        ctf,
        voltage_kv=config.voltage_kv,
        absorption=absorption if has_junk else None,
        extra_contrast=contrast if has_junk else None,
    )
    counts = shot_noise(
        intensity,
        dose_e_per_angstrom2=config.dose_e_per_angstrom2,
        pixel_size_angstrom=config.pixel_size_angstrom,
        rngs=rngs,
    )
    return counts if return_counts else particle_images_from_counts(counts)


def star_tables(
    plan: pd.DataFrame, config: SimulationConfig, *, stack_name: str = STACK_NAME
) -> dict[str, pd.DataFrame]:
    """RELION 3.1 ``optics`` and ``particles`` blocks for a plan.

    Returns
    -------
    dict
        ``{"optics": DataFrame, "particles": DataFrame}`` for ``starfile.write``.
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
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i:0{digits}d}@{stack_name}" for i in range(1, n + 1)],
            "rlnMicrographName": [f"Micrographs/sim_{m + 1:06d}.mrc" for m in plan["micrograph"]],
            "rlnOpticsGroup": np.ones(n, dtype=np.int64),
            "rlnDefocusU": plan["defocus_u"].to_numpy(),
            "rlnDefocusV": plan["defocus_v"].to_numpy(),
            "rlnDefocusAngle": plan["defocus_angle"].to_numpy(),
            "rlnCtfBfactor": np.full(n, config.envelope_bfactor_angstrom2),
            "rlnAngleRot": plan["rot"].to_numpy(),
            "rlnAngleTilt": plan["tilt"].to_numpy(),
            "rlnAnglePsi": plan["psi"].to_numpy(),
            "rlnOriginXAngst": plan["origin_x"].to_numpy(),
            "rlnOriginYAngst": plan["origin_y"].to_numpy(),
            "cmTruthLabel": plan["label"].to_numpy(),
        }
    )
    return {"optics": optics, "particles": particles}


def _prepare(
    models: Sequence[ModelSpec], config: SimulationConfig
) -> tuple[list[AtomicModel], list[Projector]]:
    if isinstance(models, str | os.PathLike | AtomicModel):
        models = [models]
    resolved = [resolve_model(m) for m in models]
    if not resolved:
        raise ValueError("give at least one model (a .pdb/.cif file or builtin:NAME)")
    projectors = [
        make_projector(
            m,
            box_size=config.box_size,
            pixel_size_angstrom=config.pixel_size_angstrom,
            implicit_hydrogens=config.implicit_hydrogens,
            solvent=config.solvent,
            oversample=config.oversample,
        )
        for m in resolved
    ]
    return resolved, projectors


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
    **options
        Other :class:`SimulationConfig` fields (``cs_mm``, ``amplitude_contrast``, ...).

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
    import mrcfile
    import starfile
    from tqdm.auto import tqdm

    from cryomanifold._atomic import atomic_path, check_writable

    unknown = set(options) - {f.name for f in fields(SimulationConfig)}
    if unknown:
        raise TypeError(f"unknown simulation option(s): {', '.join(sorted(unknown))}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    config = SimulationConfig(
        box_size=box_size,
        pixel_size_angstrom=pixel_size_angstrom,
        dose_e_per_angstrom2=dose_e_per_angstrom2,
        voltage_kv=voltage_kv,
        defocus_range_angstrom=tuple(defocus_range_angstrom),  # type: ignore[arg-type]
        **options,
    )
    resolved, projectors = _prepare(models, config)
    out = Path(out_dir)
    stack_path = check_writable(out / STACK_NAME, overwrite=overwrite)
    star_path = check_writable(out / STAR_NAME, overwrite=overwrite)
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
    lo, hi, total, total_sq = np.inf, -np.inf, 0.0, 0.0
    with (
        atomic_path(stack_path) as tmp,
        mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc,
        tqdm(total=n, disable=None, unit="img", desc="simulate") as bar,
    ):
        mrc.set_image_stack()
        mrc.voxel_size = config.pixel_size_angstrom
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            images = render_particles(plan.iloc[start:stop], projectors, config, seed=seed)
            mrc.data[start:stop] = images
            lo, hi = min(lo, float(images.min())), max(hi, float(images.max()))
            total += float(images.sum(dtype=np.float64))
            total_sq += float(np.square(images, dtype=np.float64).sum())
            bar.update(stop - start)
        count = n * box * box
        mean = total / count
        mrc.header.dmin, mrc.header.dmax, mrc.header.dmean = lo, hi, mean
        mrc.header.rms = np.sqrt(max(total_sq / count - mean**2, 0.0))
    with atomic_path(star_path) as tmp:
        starfile.write(star_tables(plan, config), tmp)
    log.info("wrote %s and %s", stack_path, star_path)
    return star_path
