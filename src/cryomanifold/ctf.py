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
    "CTFEvaluator",
    "CTFParams",
    "ctf_2d",
    "ctf_at",
    "ctf_sign",
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

    def unique(self) -> tuple[CTFParams, npt.NDArray[np.intp]]:
        """The distinct parameter sets and, per particle, the index of its set.

        Returns
        -------
        unique : CTFParams
            ``u`` distinct entries (for example one per micrograph).
        inverse : ndarray of intp, shape (n,)
            ``self`` equals ``unique.subset(inverse)``.
        """
        table = np.stack([np.asarray(getattr(self, f.name)) for f in fields(self)], axis=1)
        _, first, inverse = np.unique(table, axis=0, return_index=True, return_inverse=True)
        return self.subset(first), inverse.reshape(-1)

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


class CTFEvaluator:
    """The CTF at fixed spatial frequencies, for any number of parameter sets.

    ``chi`` is linear in five per-particle coefficients times five per-frequency
    terms (``k**2``, ``k**2 cos 2a``, ``k**2 sin 2a``, ``k**4`` and 1, with ``a``
    the frequency's angle), so the phases of ``n`` particles come from one small
    matrix product and the CTF from one float32 ``sin``. The terms are computed
    once, here. The phase is rounded to float32: absolute error about
    ``2e-7 * |chi|`` (below 2e-4 up to ``chi = 1000`` rad, i.e. 4 µm defocus at
    0.8 Å/pixel).

    Parameters
    ----------
    kx, ky : array_like, broadcastable to one shape
        Spatial frequencies along x (columns) and y (rows), 1/Å.

    Attributes
    ----------
    shape : tuple of int
        The frequencies' shape.
    size : int
        Their number.
    """

    def __init__(self, kx: npt.ArrayLike, ky: npt.ArrayLike) -> None:
        kx64 = np.asarray(kx, dtype=np.float64)
        ky64 = np.asarray(ky, dtype=np.float64)
        self.shape = np.broadcast_shapes(kx64.shape, ky64.shape)
        self.size = int(np.prod(self.shape))
        kx64, ky64 = (np.broadcast_to(a, self.shape).ravel() for a in (kx64, ky64))
        k2 = kx64**2 + ky64**2
        self._k2 = k2.astype(np.float32)
        two_a = 2.0 * np.arctan2(ky64, kx64)
        terms = [k2, k2 * np.cos(two_a), k2 * np.sin(two_a), k2**2, np.ones_like(k2)]
        self._terms = np.stack(terms).astype(np.float32)

    def __call__(
        self, params: CTFParams, *, frequencies_first: bool = False
    ) -> npt.NDArray[np.float32]:
        """``sin(chi)`` times the B-factor envelope, float32, in [-1, 1].

        Shape (n, *shape), or (*shape, n) with ``frequencies_first``.
        """
        lam = electron_wavelength_angstrom(params.voltage_kv)
        du = np.asarray(params.defocus_u_angstrom)
        dv = np.asarray(params.defocus_v_angstrom)
        ast = 2.0 * np.deg2rad(np.asarray(params.defocus_angle_deg))
        amp = np.clip(np.asarray(params.amplitude_contrast), 0.0, 0.999)
        coeffs = np.stack(
            [
                np.pi * lam * 0.5 * (du + dv),
                np.pi * lam * 0.5 * (du - dv) * np.cos(ast),
                np.pi * lam * 0.5 * (du - dv) * np.sin(ast),
                -0.5 * np.pi * np.asarray(params.cs_mm) * 1e7 * lam**3,
                np.deg2rad(np.asarray(params.phase_shift_deg))
                + np.arctan(amp / np.sqrt(1.0 - amp**2)),
            ],
            axis=1,
        )
        if frequencies_first:
            out = self._terms.T @ coeffs.T.astype(np.float32)
        else:
            out = coeffs.astype(np.float32) @ self._terms
        np.sin(out, out=out)
        bfac = np.asarray(params.bfactor_angstrom2)
        if np.any(bfac != 0):
            # the envelope exp(-B k^2 / 4), once per distinct B-factor
            distinct, which = np.unique(bfac, return_inverse=True)
            if distinct.size == bfac.size:
                distinct, which = bfac, np.arange(bfac.size)
            quarter = (-0.25 * distinct).astype(np.float32)
            if frequencies_first:
                envelope = np.exp(np.multiply.outer(self._k2, quarter))
                out *= envelope if distinct is bfac or distinct.size == 1 else envelope[:, which]
            else:
                envelope = np.exp(np.multiply.outer(quarter, self._k2))
                out *= envelope if distinct is bfac or distinct.size == 1 else envelope[which]
        if frequencies_first:
            return out.reshape(*self.shape, len(params))
        return out.reshape(len(params), *self.shape)


def ctf_at(params: CTFParams, kx: npt.ArrayLike, ky: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Evaluate the CTF of each particle at given spatial frequencies.

    ``CTFEvaluator(kx, ky)(params)``; build a :class:`CTFEvaluator` once to evaluate
    many batches at the same frequencies.

    Parameters
    ----------
    params : CTFParams
        Parameters of ``n`` particles (see :meth:`CTFParams.unique` to evaluate
        shared CTFs once).
    kx, ky : array_like, broadcastable to one shape
        Spatial frequencies along x (columns) and y (rows), 1/Å.

    Returns
    -------
    ndarray, shape (n, *shape), float32
        ``sin(chi)`` times the B-factor envelope, in [-1, 1].
    """
    return CTFEvaluator(kx, ky)(params)


def ctf_2d(
    params: CTFParams, box_size: int, pixel_size_angstrom: float, *, rfft: bool = True
) -> npt.NDArray[np.float32]:
    """Evaluate the 2-D CTF of each particle on the FFT grid.

    Particles with identical parameters (one micrograph) are evaluated once.

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
    unique, inverse = params.unique()
    if len(unique) == len(params):
        return ctf_at(params, kx, ky)
    return ctf_at(unique, kx, ky)[inverse]


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
    spec = sfft.rfft2(imgs, workers=workers)
    spec *= ctf_sign(params, box, pixel_size_angstrom)
    return np.asarray(
        sfft.irfft2(spec, s=(box, box), workers=workers, overwrite_x=True), dtype=np.float32
    )


def ctf_sign(
    params: CTFParams, box_size: int, pixel_size_angstrom: float
) -> npt.NDArray[np.float32]:
    """The sign of each particle's CTF on the ``rfft2`` half grid (+1 where it is 0).

    Multiplying a particle's half spectrum by it phase-flips the particle.

    Parameters
    ----------
    params : CTFParams
        Parameters of ``n`` particles.
    box_size : int
    pixel_size_angstrom : float

    Returns
    -------
    ndarray, shape (n, L, L // 2 + 1), float32, values +1 or -1
    """
    sign = np.sign(ctf_2d(params, box_size, pixel_size_angstrom, rfft=True))
    sign[sign == 0] = 1.0
    return sign
