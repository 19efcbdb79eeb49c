"""Detector response: an analytic MTF, noise transfer and zero-frequency DQE.

A counting direct detector localises each electron with some error, which blurs
the signal (the MTF), detects a fraction ``DQE(0)`` of the electrons, and shapes
the noise power spectrum (NPS) by the way events are assigned to pixels. The
detective quantum efficiency is then ``DQE(f) = DQE(0) MTF(f)^2 / NPS(f)``.

Both transfer functions are analytic:

* ``MTF(f) = sinc(f_x) sinc(f_y) exp(-a |f|^2)`` (``f`` in cycles per pixel, 0.5 at
  Nyquist): the pixel aperture times a Gaussian for the event-localisation error,
  with ``a`` set by the MTF at Nyquist along an axis;
* ``NPS(f) = exp(-2 b |f|^2)``, with ``b`` set by the NPS at Nyquist (1 at f = 0).

Images are formed as: the intensity is filtered by ``MTF / sqrt(NPS)``, Poisson
counts are drawn at ``DQE(0) x dose``, and the counts are filtered by
``sqrt(NPS)``; the result has the signal transfer ``MTF`` and the noise spectrum
``NPS``.

The two models are approximations of published curves at 300 kV, not
measurements: ``k3`` (Gatan K3-like counting, MTF 0.60 and NPS 0.80 at Nyquist,
DQE(0) 0.85, so DQE(Nyquist) about 0.38) and ``falcon4`` (Falcon 4-like, MTF 0.50,
NPS 0.60, DQE(0) 0.90, DQE(Nyquist) about 0.38).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

from cryomanifold.simulate.noise import shot_noise

__all__ = ["DETECTORS", "Detector", "detect", "transfer_functions"]

F32 = npt.NDArray[np.float32]


class Detector(NamedTuple):
    """Analytic detector model: DQE at zero frequency, MTF and NPS at Nyquist (axis)."""

    dqe0: float
    mtf_nyquist: float
    nps_nyquist: float


#: the detector models accepted by ``SimulationConfig.detector``
DETECTORS: dict[str, Detector] = {
    "k3": Detector(dqe0=0.85, mtf_nyquist=0.60, nps_nyquist=0.80),
    "falcon4": Detector(dqe0=0.90, mtf_nyquist=0.50, nps_nyquist=0.60),
}


def transfer_functions(name: str, box_size: int) -> tuple[F32, F32]:
    """MTF and noise amplitude transfer ``sqrt(NPS)`` on the rfft2 grid.

    Parameters
    ----------
    name : str
        A key of :data:`DETECTORS`.
    box_size : int

    Returns
    -------
    mtf, noise : ndarray, shape (L, L // 2 + 1), float32
        Both 1 at zero frequency.
    """
    det = DETECTORS[name]
    fy = sfft.fftfreq(box_size)[:, None]
    fx = sfft.rfftfreq(box_size)[None, :]
    f2 = fx**2 + fy**2
    a = -4.0 * np.log(det.mtf_nyquist / np.sinc(0.5))
    b = -2.0 * np.log(det.nps_nyquist)
    mtf = np.sinc(fx) * np.sinc(fy) * np.exp(-a * f2)
    noise = np.exp(-b * f2)
    return mtf.astype(np.float32), noise.astype(np.float32)


def detect(
    intensity: npt.ArrayLike,
    *,
    detector: str,
    dose_e_per_angstrom2: float,
    pixel_size_angstrom: float,
    rngs: Sequence[np.random.Generator],
    workers: int = -1,
) -> F32:
    """Detected images: blurred signal, ``DQE(0)`` of the electrons, shaped noise.

    Parameters
    ----------
    intensity : array_like, shape (n, L, L)
        Relative intensity at the detector (1 = the incident beam).
    detector : str
        A key of :data:`DETECTORS`.
    dose_e_per_angstrom2, pixel_size_angstrom : float
    rngs : sequence of Generators, length n
        One stream per image.
    workers : int

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Gain-normalised counts: mean ``dose * pixel_area * intensity``.
    """
    img = np.asarray(intensity, dtype=np.float32)
    box = img.shape[-1]
    mtf, noise = transfer_functions(detector, box)
    dqe0 = DETECTORS[detector].dqe0
    blurred = sfft.irfft2(sfft.rfft2(img, workers=workers) * (mtf / noise), s=(box, box))
    np.maximum(blurred, 0.0, out=blurred)
    counts = shot_noise(
        blurred,
        dose_e_per_angstrom2=dose_e_per_angstrom2 * dqe0,
        pixel_size_angstrom=pixel_size_angstrom,
        rngs=rngs,
    )
    shaped = sfft.irfft2(sfft.rfft2(counts, workers=workers) * noise, s=(box, box))
    return (shaped / np.float32(dqe0)).astype(np.float32)
