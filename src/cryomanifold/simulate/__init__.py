"""Simulated cryo-EM particle images from atomic models, with ground truth.

Atomic models (PDB/mmCIF via gemmi, or built-in synthetic assemblies) are
projected in Fourier space with electron scattering factors, imaged through the
CTF with Poisson shot noise, normalised like RELION's extraction (protein white)
and mixed with labelled junk. :func:`simulate_dataset` writes ``particles.mrcs``
and a RELION 3.1 ``particles.star`` whose ``_cmTruthLabel`` column holds the truth.
Two presets (:class:`SimulationConfig`, ``SimulationConfig.preset``): ``paper`` (the
paper's imaging) and ``realistic`` (solvent-reduced contrast, larger shifts,
particle B-factors, ice thickness and slope, neighbours in the box).

Modules: :mod:`~cryomanifold.simulate.models` (AtomicModel, load_model),
:mod:`~cryomanifold.simulate.builtin` (builtin_model),
:mod:`~cryomanifold.simulate.resolve` (model specifications),
:mod:`~cryomanifold.simulate.project` (Projector, pose conventions),
:mod:`~cryomanifold.simulate.config` (SimulationConfig, presets),
:mod:`~cryomanifold.simulate.plan` (per-particle parameters, random streams),
:mod:`~cryomanifold.simulate.render` (images of plan rows),
:mod:`~cryomanifold.simulate.noise` (image formation),
:mod:`~cryomanifold.simulate.ice` (ice thickness),
:mod:`~cryomanifold.simulate.neighbors` (neighbouring particles),
:mod:`~cryomanifold.simulate.detector` (detector MTF and DQE),
:mod:`~cryomanifold.simulate.junk` (junk kinds),
:mod:`~cryomanifold.simulate.dataset` (stacks, STAR files).
"""

from cryomanifold.simulate.builtin import BUILTIN_MODELS, builtin_model
from cryomanifold.simulate.config import PRESETS, SimulationConfig
from cryomanifold.simulate.dataset import (
    make_projectors,
    simulate_dataset,
    simulate_particles,
    star_tables,
)
from cryomanifold.simulate.detector import DETECTORS
from cryomanifold.simulate.junk import JUNK_KINDS
from cryomanifold.simulate.models import AtomicModel, check_fits_box, load_model
from cryomanifold.simulate.noise import interaction_constant, simulate_counts
from cryomanifold.simulate.plan import plan_particles
from cryomanifold.simulate.project import (
    Projector,
    make_projector,
    matrix_to_relion_euler,
    random_rotations,
    relion_euler_to_matrix,
)
from cryomanifold.simulate.render import render_particles
from cryomanifold.simulate.resolve import resolve_model

__all__ = [
    "BUILTIN_MODELS",
    "DETECTORS",
    "JUNK_KINDS",
    "PRESETS",
    "AtomicModel",
    "Projector",
    "SimulationConfig",
    "builtin_model",
    "check_fits_box",
    "interaction_constant",
    "load_model",
    "make_projector",
    "make_projectors",
    "matrix_to_relion_euler",
    "plan_particles",
    "random_rotations",
    "relion_euler_to_matrix",
    "render_particles",
    "resolve_model",
    "simulate_counts",
    "simulate_dataset",
    "simulate_particles",
    "star_tables",
]
