"""Shared fixtures of the simulator tests: small seeded models and the shared data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cryomanifold.simulate.models import AtomicModel, model_from_arrays

DATA_DIR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
MODELS_DIR = DATA_DIR / "models"


def random_cloud(
    n_atoms: int, radius_angstrom: float, seed: int, bfactor: float = 20.0
) -> AtomicModel:
    """Carbon atoms uniform in a ball: a model with a nearly white power spectrum."""
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n_atoms, 3))
    pts *= (radius_angstrom * rng.uniform(size=n_atoms) ** (1 / 3) / np.linalg.norm(pts, axis=1))[
        :, None
    ]
    return model_from_arrays("cloud", pts, ["C"] * n_atoms, np.full(n_atoms, bfactor))


@pytest.fixture(scope="session")
def cloud() -> AtomicModel:
    return random_cloud(6000, 40.0, seed=0)


def shared_model(name: str) -> Path:
    path = MODELS_DIR / name
    if not path.is_file():
        pytest.skip(f"shared model {path} not available")
    return path
