"""The plan of a dataset: everything drawn per particle, before any image is made.

:func:`plan_particles` draws each image's species or junk kind, micrograph, CTF,
pose, shift, envelope B-factor and ice thickness into a table, in the shuffled
output order. Its random numbers come from ``SeedSequence(seed, spawn_key=(0,))``
(and ``(2,)`` for the B-factors and ice thicknesses of the realistic options, so
that the ``paper`` plan does not change when they are off).

Each image also has its own random streams for what is drawn while it is made
(:func:`particle_rngs`): ``(1, i)`` for the ice texture, the junk and the shot noise,
``(3, i)`` for the ice slope and ``(4, i)`` for the neighbours, so that an image
does not depend on the batch it is simulated in, nor on which other options are on.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold.simulate import junk as junk_mod
from cryomanifold.simulate.config import SimulationConfig
from cryomanifold.simulate.noise import draw_ctf
from cryomanifold.simulate.project import matrix_to_relion_euler, random_rotations

__all__ = ["STREAMS", "check_counts", "particle_rngs", "plan_particles"]

#: spawn-key prefix of each per-image random stream
STREAMS = {"image": 1, "ice": 3, "neighbors": 4}


def particle_rngs(
    seed: int, indices: npt.ArrayLike, stream: str = "image"
) -> list[np.random.Generator]:
    """One generator per image: ``SeedSequence(seed, spawn_key=(STREAMS[stream], i))``."""
    key = STREAMS[stream]
    return [
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(key, int(i))))
        for i in np.asarray(indices).reshape(-1)
    ]


def _draw_shifts(
    n: int, rng: np.random.Generator, config: SimulationConfig
) -> npt.NDArray[np.float64]:
    """In-plane shifts (x, y), Å, following ``config.shift_distribution``."""
    bound = config.shift_max_angstrom
    if config.shift_distribution == "uniform":
        assert bound is not None  # checked by SimulationConfig
        return rng.uniform(-bound, bound, (n, 2))
    sigma = config.shift_sigma_angstrom
    if not sigma:
        return np.zeros((n, 2))
    shifts = rng.normal(0.0, sigma, (n, 2))
    if bound is not None:
        out = np.abs(shifts) > bound
        while out.any():  # redraw beyond the bound: a truncated Gaussian
            shifts[out] = rng.normal(0.0, sigma, int(out.sum()))
            out = np.abs(shifts) > bound
    return shifts


def check_counts(n_models: int, n_per_model: int, junk_fraction: float) -> None:
    """Refuse counts that give no dataset (cheap: call before loading models).

    Raises
    ------
    ValueError
        If ``n_per_model`` is negative, ``junk_fraction`` is not in [0, 1), or there
        would be nothing to simulate.
    """
    if isinstance(n_per_model, bool) or not isinstance(n_per_model, int | np.integer):
        raise ValueError(f"n_per_model must be a whole number; got {n_per_model!r}")
    if n_per_model < 0:
        raise ValueError(f"n_per_model must be >= 0; got {n_per_model}")
    if not 0 <= junk_fraction < 1:
        raise ValueError(f"junk_fraction must be in [0, 1); got {junk_fraction}")
    if n_models < 1 or n_per_model < 1:
        raise ValueError("nothing to simulate: give at least one model and n_per_model >= 1")


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
        ``origin_x``, ``origin_y`` (RELION origin, Å), ``bfactor`` (envelope, Å^2)
        and ``ice_thickness`` (mean of the micrograph, Å; 0 when not modelled).
        Junk rows have zero pose.
    """
    check_counts(len(model_names), n_per_model, junk_fraction)
    if len(set(model_names)) != len(model_names):
        raise ValueError(f"model names must be distinct; got {list(model_names)}")
    n_good = n_per_model * len(model_names)
    n_junk = round(n_good * junk_fraction / (1.0 - junk_fraction))
    n = n_good + n_junk
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
    n_micrographs = int(micrograph[-1]) + 1
    ctf = draw_ctf(
        n_micrographs,
        rng,
        defocus_range_angstrom=config.defocus_range_angstrom,
        astigmatism_max_angstrom=config.astigmatism_max_angstrom,
    )
    euler = matrix_to_relion_euler(random_rotations(n, rng))
    shifts = _draw_shifts(n, rng, config)
    junk = species < 0
    euler[junk] = 0.0
    shifts[junk] = 0.0
    extra = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(2,)))
    thickness = np.zeros(n_micrographs)
    if config.ice_thickness_angstrom is not None:
        thickness = extra.uniform(*config.ice_thickness_angstrom, n_micrographs)
    b_lo, b_hi = config.bfactor_range
    bfactor = extra.uniform(b_lo, b_hi, n) if b_hi > b_lo else np.full(n, b_lo)
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
            "bfactor": bfactor,
            "ice_thickness": thickness[micrograph],
        }
    )
