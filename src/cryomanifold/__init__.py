"""cryomanifold: pose-free 2D classification of cryo-EM particles.

Translation- and rotation-invariant features (Zernike moments of the inverse
Fourier transform of the amplitude spectrum) are embedded with PCA and UMAP and
clustered with a Gaussian mixture; each cluster gets an aligned class average.

Importing the package is quiet and fast: heavy dependencies (umap, matplotlib,
gemmi) are imported by the modules that need them, when they need them.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cryomanifold")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
