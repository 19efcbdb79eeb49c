"""Ice thickness: attenuation of the zero-loss beam and its variation across a box.

Electrons that lose energy in the ice (plasmons, ionisation) are removed by an
energy filter, or carry no high-resolution contrast without one; either way the
useful (elastic, zero-loss) beam falls as ``exp(-t / lambda_in)`` with the ice
thickness ``t`` and the inelastic mean free path ``lambda_in`` (about 350 nm for
vitreous ice at 300 kV). Thicker ice therefore means fewer useful electrons and
more shot noise at the same dose, and a thickness that varies across the box (the
ice thins towards the centre of a hole) is a smooth ramp of intensity. Only the
attenuation is modelled here: a constant or linear change of the ice's own phase
shift makes no image contrast. The fine ice texture that does show through the CTF
is :func:`cryomanifold.simulate.junk.ice_texture_spectrum`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["ice_attenuation", "inelastic_mean_free_path_angstrom"]

F32 = npt.NDArray[np.float32]

#: electron rest energy, keV
_ELECTRON_REST_KEV = 510.99895


def _beta2(voltage_kv: float) -> float:
    gamma = 1.0 + voltage_kv / _ELECTRON_REST_KEV
    return 1.0 - 1.0 / gamma**2


def inelastic_mean_free_path_angstrom(at_300kv_angstrom: float, voltage_kv: float) -> float:
    """Inelastic mean free path at ``voltage_kv`` from its 300 kV value.

    The inelastic cross-section falls roughly as ``1 / beta^2`` (Bethe), so the mean
    free path grows as ``beta^2``: 3500 Å at 300 kV is 2800 Å at 200 kV.
    """
    return at_300kv_angstrom * _beta2(voltage_kv) / _beta2(300.0)


def ice_attenuation(
    rngs: Sequence[np.random.Generator],
    *,
    box_size: int,
    pixel_size_angstrom: float,
    mean_thickness_angstrom: npt.ArrayLike,
    slope_max: float,
    mean_free_path_angstrom: float,
) -> F32:
    """Attenuation exponent ``t(r) / lambda_in`` of each box.

    ``t(r) = t0 + s (x cos(phi) + y sin(phi))`` with ``x, y`` in Å from the box
    centre, the slope ``s`` uniform in ``[0, slope_max]`` and the direction ``phi``
    uniform, both from the image's own generator. With ``t0 > 0`` the thickness is
    kept non-negative; with ``t0 = 0`` (mean thickness not modelled) the ramp is a
    variation about the unknown mean, and the exponent may be negative.

    Parameters
    ----------
    rngs : sequence of Generators, length n
    box_size : int
    pixel_size_angstrom : float
    mean_thickness_angstrom : array_like, shape (n,)
        ``t0`` of each image, Å.
    slope_max : float
        Largest thickness gradient, Å per Å.
    mean_free_path_angstrom : float
        ``lambda_in``, Å.

    Returns
    -------
    ndarray, shape (n, L, L), float32
        The exponent: the intensity is multiplied by ``exp(-exponent)``.
    """
    n = len(rngs)
    t0 = np.broadcast_to(np.asarray(mean_thickness_angstrom, dtype=np.float64), (n,))
    c = (np.arange(box_size) - box_size // 2) * pixel_size_angstrom
    out = np.empty((n, box_size, box_size), dtype=np.float32)
    for i, rng in enumerate(rngs):
        slope = rng.uniform(0.0, slope_max) if slope_max > 0 else 0.0
        phi = rng.uniform(0.0, 2 * np.pi)
        ramp = slope * (np.cos(phi) * c[None, :] + np.sin(phi) * c[:, None])
        thickness = np.maximum(t0[i] + ramp, 0.0) if t0[i] > 0 else ramp
        out[i] = thickness / mean_free_path_angstrom
    return out
