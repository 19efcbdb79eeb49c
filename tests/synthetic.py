"""Small seeded synthetic particle datasets for the tests (no files from outside)."""

from __future__ import annotations

import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
from scipy.spatial.transform import Rotation

#: 3-D blob centres (Å-free units: pixels) of two different assemblies.
ROD = np.array([[0, 0, -14], [0, 0, -5], [0, 0, 5], [0, 0, 14], [8, 0, 14], [0, 7, -14]], float)
RING = np.array(
    [[11 * np.cos(a), 11 * np.sin(a), 0] for a in np.linspace(0, 2 * np.pi, 7)[:-1]] + [[0, 0, 0]],
    float,
)


def project_blobs(
    centres: np.ndarray,
    rotations: Rotation,
    box: int,
    *,
    sigma: float = 3.0,
    shifts: np.ndarray | None = None,
) -> np.ndarray:
    """Projections (n, box, box) of Gaussian blobs at ``centres`` rotated by ``rotations``."""
    pos = np.einsum("nij,mj->nmi", rotations.as_matrix(), centres)[..., :2]  # (n, m, 2) x, y
    if shifts is not None:
        pos = pos + shifts[:, None, :]
    c = np.arange(box) - box // 2
    dx = c[None, None, None, :] - pos[:, :, 0, None, None]
    dy = c[None, None, :, None] - pos[:, :, 1, None, None]
    return np.exp(-(dx**2 + dy**2) / (2 * sigma**2)).sum(axis=1).astype(np.float32)


def blob_dataset(
    n_per_species: int = 120, n_junk: int = 80, *, box: int = 64, noise: float = 0.5, seed: int = 0
):
    """Images (n, box, box), truth labels (n,) and clean images of rod, ring and empty junk."""
    rng = np.random.default_rng(seed)
    images, truth, clean = [], [], []
    for name, centres in (("rod", ROD), ("ring", RING)):
        rots = Rotation.random(n_per_species, random_state=rng.integers(1 << 31))
        shifts = rng.uniform(-3, 3, size=(n_per_species, 2))
        img = project_blobs(centres, rots, box, shifts=shifts)
        clean.append(img)
        images.append(img)
        truth += [name] * n_per_species
    images.append(np.zeros((n_junk, box, box), np.float32))
    clean.append(np.zeros((n_junk, box, box), np.float32))
    truth += ["junk:ice"] * n_junk
    stack = np.concatenate(images)
    scale = stack[: 2 * n_per_species].std()
    stack = stack + rng.normal(scale=noise * scale / 0.5, size=stack.shape).astype(np.float32)
    order = rng.permutation(len(truth))
    return stack[order], np.asarray(truth)[order], np.concatenate(clean)[order]


def write_relion(
    folder: Path, images: np.ndarray, truth: np.ndarray, *, pixel_size_angstrom: float = 2.0
) -> Path:
    """Write ``images`` as a RELION 3.1 project (stack + .star with truth labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), mrcfile.new(folder / "particles.mrcs", overwrite=True) as m:
        warnings.simplefilter("ignore", RuntimeWarning)  # tests write NaN images on purpose
        m.set_data(images.astype(np.float32))
        m.voxel_size = pixel_size_angstrom
    n = len(images)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [pixel_size_angstrom],
            "rlnImageSize": [images.shape[-1]],
            "rlnImageDimensionality": [2],
        }
    )
    particles = pd.DataFrame(
        {
            "rlnImageName": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
            "rlnOpticsGroup": 1,
            "cmTruthLabel": truth,
        }
    )
    path = folder / "particles.star"
    starfile.write({"optics": optics, "particles": particles}, path)
    return path
