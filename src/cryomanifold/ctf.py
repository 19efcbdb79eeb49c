"""The contrast transfer function (CTF) of the electron microscope.

Conventions follow RELION (and cryoSPARC, whose ``df1_A``/``df2_A``/``df_angle_rad``
map onto the same quantities):

* defocus is positive for underfocus, in ångström; ``defocus_u_angstrom`` is the
  defocus along the direction ``defocus_angle_deg`` (degrees, counter-clockwise
  from the x axis), ``defocus_v_angstrom`` along the perpendicular direction;
* the CTF is ``sin(chi)`` with
  ``chi = pi * lambda * df(alpha) * k**2 - pi/2 * Cs * lambda**3 * k**4 + phase_shift
  + arctan(A / sqrt(1 - A**2))``, so that it is positive at low spatial frequency for
  underfocus. This matches RELION's particles, which are stored with protein white.

Frequencies are in 1/Å on the ``numpy.fft`` grid of a square box of ``box_size``
pixels of ``pixel_size_angstrom``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft

__all__ = [
    "CTFParams",
    "ctf_2d",
    "electron_wavelength_angstrom",
    "frequency_grid",
    "phase_flip",
]

FloatArray = npt.NDArray[np.floating]


def electron_wavelength_angstrom(voltage_kv: float | FloatArray) -> FloatArray:
    """Relativistic electron wavelength.

    Parameters
    ----------
    voltage_kv : float or array
        Acceleration voltage in kV.

    Returns
    -------
    ndarray
        Wavelength in Å (0.0197 Å at 300 kV, 0.0251 Å at 200 kV).
    """
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2642598 / np.sqrt(volts * (1.0 + 0.97846e-6 * volts))


@dataclass(frozen=True)
class CTFParams:
    """Per-particle CTF parameters, one entry per particle.

    All fields are 1-D float64 arrays of the same length ``n`` (scalars given at
    construction are broadcast).

    Attributes
    ----------
    defocus_u_angstrom, defocus_v_angstrom : ndarray, shape (n,)
        Defocus along the astigmatism axis and perpendicular to it, Å, underfocus positive.
    defocus_angle_deg : ndarray, shape (n,)
        Astigmatism angle, degrees.
    voltage_kv : ndarray, shape (n,)
        Acceleration voltage, kV.
    cs_mm : ndarray, shape (n,)
        Spherical aberration, mm.
    amplitude_contrast : ndarray, shape (n,)
        Fraction of amplitude contrast (0.07 to 0.1 for ice).
    phase_shift_deg : ndarray, shape (n,)
        Additional phase shift (phase plates), degrees.
    bfactor_angstrom2 : ndarray, shape (n,)
        Envelope B-factor exp(-B k^2 / 4), Å^2; 0 for none.
    """

    defocus_u_angstrom: FloatArray
    defocus_v_angstrom: FloatArray
    defocus_angle_deg: FloatArray
    voltage_kv: FloatArray
    cs_mm: FloatArray
    amplitude_contrast: FloatArray
    phase_shift_deg: FloatArray | float = 0.0
    bfactor_angstrom2: FloatArray | float = 0.0

    def __post_init__(self) -> None:
        arrays = [
            np.atleast_1d(np.asarray(getattr(self, f.name), dtype=np.float64)) for f in fields(self)
        ]
        n = max(a.shape[0] for a in arrays)
        for f, a in zip(fields(self), arrays, strict=True):
            if a.ndim != 1 or a.shape[0] not in (1, n):
                raise ValueError(f"CTFParams.{f.name} has shape {a.shape}; expected (n,) or scalar")
            object.__setattr__(self, f.name, np.broadcast_to(a, (n,)).copy())

    def __len__(self) -> int:
        return int(np.asarray(self.defocus_u_angstrom).shape[0])

    def subset(self, indices: npt.ArrayLike) -> CTFParams:
        """Parameters of the particles at ``indices`` (any numpy index)."""
        return CTFParams(
            **{f.name: np.asarray(getattr(self, f.name))[np.asarray(indices)] for f in fields(self)}
        )


def frequency_grid(
    box_size: int, pixel_size_angstrom: float, *, rfft: bool = False
) -> tuple[FloatArray, FloatArray]:
    """Spatial-frequency grid of a square box in 1/Å.

    Parameters
    ----------
    box_size : int
        Box side in pixels.
    pixel_size_angstrom : float
        Pixel size in Å.
    rfft : bool
        If True, the half grid of ``scipy.fft.rfft2`` (shape ``(L, L // 2 + 1)``),
        otherwise the full ``fft2`` grid (shape ``(L, L)``), both un-shifted.

    Returns
    -------
    kx, ky : ndarray
        Frequencies along x (columns) and y (rows), 1/Å.
    """
    ky1 = sfft.fftfreq(box_size, d=pixel_size_angstrom)
    kx1 = sfft.rfftfreq(box_size, d=pixel_size_angstrom) if rfft else ky1
    ky, kx = np.meshgrid(ky1, kx1, indexing="ij")
    return kx, ky


def ctf_2d(
    params: CTFParams, box_size: int, pixel_size_angstrom: float, *, rfft: bool = True
) -> npt.NDArray[np.float32]:
    """Evaluate the 2-D CTF of each particle on the FFT grid.

    Parameters
    ----------
    params : CTFParams
        Parameters of ``n`` particles.
    box_size : int
        Box side ``L`` in pixels.
    pixel_size_angstrom : float
        Pixel size of the box in Å.
    rfft : bool
        Return the half grid matching ``scipy.fft.rfft2`` (default) or the full grid.

    Returns
    -------
    ndarray, shape (n, L, L // 2 + 1) or (n, L, L), float32
        CTF values in [-1, 1] (times the B-factor envelope), un-shifted FFT layout.
    """
    kx, ky = frequency_grid(box_size, pixel_size_angstrom, rfft=rfft)
    k2 = kx**2 + ky**2
    angle = np.arctan2(ky, kx)
    lam = electron_wavelength_angstrom(params.voltage_kv)[:, None, None]
    du = np.asarray(params.defocus_u_angstrom)[:, None, None]
    dv = np.asarray(params.defocus_v_angstrom)[:, None, None]
    ast = np.deg2rad(np.asarray(params.defocus_angle_deg))[:, None, None]
    defocus = 0.5 * (du + dv) + 0.5 * (du - dv) * np.cos(2.0 * (angle[None] - ast))
    cs = np.asarray(params.cs_mm)[:, None, None] * 1e7
    amp = np.clip(np.asarray(params.amplitude_contrast), 0.0, 0.999)[:, None, None]
    phase = np.deg2rad(np.asarray(params.phase_shift_deg))[:, None, None]
    chi = (
        np.pi * lam * defocus * k2[None]
        - 0.5 * np.pi * cs * lam**3 * k2[None] ** 2
        + phase
        + np.arctan(amp / np.sqrt(1.0 - amp**2))
    )
    ctf = np.sin(chi)
    bfac = np.asarray(params.bfactor_angstrom2)[:, None, None]
    if np.any(bfac != 0):
        ctf = ctf * np.exp(-bfac * k2[None] / 4.0)
    return ctf.astype(np.float32)


def phase_flip(
    images: npt.ArrayLike, params: CTFParams, pixel_size_angstrom: float, *, workers: int = -1
) -> npt.NDArray[np.float32]:
    """Correct the CTF phase by flipping the sign of Fourier components where CTF < 0.

    Phase flipping leaves the amplitude spectrum ``|FFT(g)|`` unchanged, so it does
    not change the invariant features; it makes class averages of particles with
    different defocus add up coherently.

    Parameters
    ----------
    images : array_like, shape (n, L, L)
        Particle images (not modified).
    params : CTFParams
        CTF of each of the ``n`` particles.
    pixel_size_angstrom : float
        Pixel size of ``images`` in Å.
    workers : int
        Threads for scipy.fft (-1: all cores).

    Returns
    -------
    ndarray, shape (n, L, L), float32
        Phase-flipped images.
    """
    imgs = np.asarray(images, dtype=np.float32)
    if imgs.ndim != 3 or imgs.shape[1] != imgs.shape[2]:
        raise ValueError(f"images must have shape (n, L, L); got {imgs.shape}")
    if len(params) != imgs.shape[0]:
        raise ValueError(f"{len(params)} CTF entries for {imgs.shape[0]} images")
    box = imgs.shape[-1]
    sign = np.sign(ctf_2d(params, box, pixel_size_angstrom, rfft=True))
    sign[sign == 0] = 1.0
    spec = sfft.rfft2(imgs, workers=workers)
    spec *= sign
    return sfft.irfft2(spec, s=(box, box), workers=workers).astype(np.float32)
