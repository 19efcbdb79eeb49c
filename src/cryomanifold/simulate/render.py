"""Images of the rows of a plan: projection, junk, neighbours, ice, CTF, detection.

The image of row ``i`` is made from its plan row and its own random streams
(:func:`cryomanifold.simulate.plan.particle_rngs`), so any subset of rows, in any
batch, gives the same images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pandas as pd

from cryomanifold.ctf import CTFParams
from cryomanifold.simulate import junk as junk_mod
from cryomanifold.simulate.config import SimulationConfig
from cryomanifold.simulate.detector import detect
from cryomanifold.simulate.ice import ice_attenuation, inelastic_mean_free_path_angstrom
from cryomanifold.simulate.neighbors import neighbor_contrast
from cryomanifold.simulate.noise import (
    ctf_batch,
    intensity_from_potential,
    particle_images_from_counts,
    shot_noise,
)
from cryomanifold.simulate.plan import particle_rngs
from cryomanifold.simulate.project import Projector, relion_euler_to_matrix

__all__ = ["ctf_params", "render_particles"]

F32 = npt.NDArray[np.float32]


def ctf_params(plan: pd.DataFrame, config: SimulationConfig) -> CTFParams:
    """The CTFs (with each row's envelope B-factor) of the rows of a plan."""
    n = len(plan)
    bfactor = (
        plan["bfactor"].to_numpy(dtype=np.float64)
        if "bfactor" in plan
        else np.full(n, config.bfactor_range[0])
    )
    return CTFParams(
        defocus_u_angstrom=plan["defocus_u"].to_numpy(dtype=np.float64),
        defocus_v_angstrom=plan["defocus_v"].to_numpy(dtype=np.float64),
        defocus_angle_deg=plan["defocus_angle"].to_numpy(dtype=np.float64),
        voltage_kv=np.full(n, config.voltage_kv),
        cs_mm=np.full(n, config.cs_mm),
        amplitude_contrast=np.full(n, config.amplitude_contrast),
        bfactor_angstrom2=bfactor,
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
        Rows of :func:`cryomanifold.simulate.plan.plan_particles` (any subset; the
        index identifies each image's random streams).
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
    n, box, pix = len(plan), config.box_size, config.pixel_size_angstrom
    index = plan.index.to_numpy()
    rngs = particle_rngs(seed, index)
    kinds = plan["kind"].to_numpy()
    texture = np.broadcast_to(np.asarray(config.ice_texture_std_angstrom, float), (n, 2)).copy()
    texture[kinds == "ice"] = (10.0, 30.0)
    spec = junk_mod.ice_texture_spectrum(
        rngs, box_size=box, pixel_size_angstrom=pix, thickness_std_angstrom=texture
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
    params = ctf_params(plan, config)
    junk_mod.add_junk(
        spec,
        contrast,
        absorption,
        kinds=kinds,
        ctf=params,
        rngs=rngs,
        projectors=projectors,
        pixel_size_angstrom=pix,
        voltage_kv=config.voltage_kv,
    )
    use_contrast = use_absorption = bool(np.any(species < 0))
    if config.neighbors_per_particle > 0 and projectors:
        radii = np.array([p.model.radius_angstrom for p in projectors] + [0.0])
        rows, extra = neighbor_contrast(
            particle_rngs(seed, index, "neighbors"),
            center_radii_angstrom=radii[species],  # species -1 (junk) takes the 0 at the end
            projectors=projectors,
            ctf=params,
            mean_count=config.neighbors_per_particle,
            voltage_kv=config.voltage_kv,
        )
        contrast[rows] += extra
        use_contrast = use_contrast or rows.size > 0
    if config.ice_thickness_angstrom is not None or config.ice_slope_max > 0:
        absorption += ice_attenuation(
            particle_rngs(seed, index, "ice"),
            box_size=box,
            pixel_size_angstrom=pix,
            mean_thickness_angstrom=plan["ice_thickness"].to_numpy(dtype=np.float64)
            if "ice_thickness" in plan
            else 0.0,
            slope_max=config.ice_slope_max,
            mean_free_path_angstrom=inelastic_mean_free_path_angstrom(
                config.inelastic_mean_free_path_angstrom, config.voltage_kv
            ),
        )
        use_absorption = True
    intensity = intensity_from_potential(
        spec,
        ctf_batch(params, box, pix),
        voltage_kv=config.voltage_kv,
        absorption=absorption if use_absorption else None,
        extra_contrast=contrast if use_contrast else None,
    )
    if config.detector is None:
        counts = shot_noise(
            intensity,
            dose_e_per_angstrom2=config.dose_e_per_angstrom2,
            pixel_size_angstrom=pix,
            rngs=rngs,
        )
    else:
        counts = detect(
            intensity,
            detector=config.detector,
            dose_e_per_angstrom2=config.dose_e_per_angstrom2,
            pixel_size_angstrom=pix,
            rngs=rngs,
        )
    return counts if return_counts else particle_images_from_counts(counts)
