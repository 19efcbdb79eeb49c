"""Small seeded synthetic junk for the junk-call tests: particles, stripes, shards, noise."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from cryomanifold.preprocess import fourier_crop, normalize
from synthetic import RING, project_blobs

BOX = 64
APIX = 4.0


def particles(n: int, rng: np.random.Generator, *, box: int = BOX, snr: float = 1.0) -> np.ndarray:
    """Blob-ring projections in white noise; ``snr`` is the signal/noise standard deviation ratio
    over the particle's pixels, normalised like RELION (background mean 0, spread 1)."""
    rots = Rotation.random(n, random_state=int(rng.integers(1 << 31)))
    scale = box / 64
    clean = project_blobs(RING * scale, rots, box, sigma=4.0 * scale)
    clean *= snr / clean[:, box // 4 : 3 * box // 4, box // 4 : 3 * box // 4].std()
    return normalize(clean + rng.standard_normal(clean.shape).astype(np.float32))


def noise(n: int, rng: np.random.Generator, *, box: int = BOX) -> np.ndarray:
    """White noise boxes: no particle."""
    return normalize(rng.standard_normal((n, box, box)).astype(np.float32))


def edge_stripes(n: int, rng: np.random.Generator, *, width_px: int = 6) -> np.ndarray:
    """Particles in boxes that stick out of the micrograph by ``width_px`` (at 64 px).

    Made at 4x the box and Fourier-cropped, like RELION's rescaled extraction: the
    padding repeats the micrograph's last row (or column) across the overhang.
    """
    big = particles(n, rng, box=4 * BOX)
    w = 4 * width_px
    for i in range(n):
        edge = i % 4
        img = big[i] if edge < 2 else big[i].T
        if edge % 2 == 0:
            img[:w] = img[w]
        else:
            img[-w:] = img[-w - 1]
    return normalize(fourier_crop(big, BOX))


def shards(
    n: int, rng: np.random.Generator, *, snr: float = 0.5, amplitude: float = 10.0
) -> np.ndarray:
    """Particles with a small, very dense elongated object (an ice shard) beside them;
    ``amplitude`` is its peak in noise standard deviations."""
    out = particles(n, rng, snr=snr)
    yy, xx = np.mgrid[:BOX, :BOX] - BOX // 2
    for i in range(n):
        cy, cx = rng.uniform(-14, 14, 2)
        theta = rng.uniform(0, np.pi)
        u = (xx - cx) * np.cos(theta) + (yy - cy) * np.sin(theta)
        v = -(xx - cx) * np.sin(theta) + (yy - cy) * np.cos(theta)
        out[i] += amplitude * np.exp(-(u**2) / (2 * 2.5**2) - v**2 / (2 * 0.7**2)).astype(
            np.float32
        )
    return out
