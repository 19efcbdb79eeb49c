"""Projected Coulomb potential of atomic models, computed in Fourier space.

Physics. An atom's electron scattering factor is the 5-Gaussian fit
``f(s) = sum_i a_i exp(-b_i s^2)`` (``s = k / 2``, International Tables vol. C
table 4.3.2.2, gemmi's ``c4322``); its B-factor multiplies it by ``exp(-B s^2)``.
The potential is ``V(r) = (h^2 / (2 pi m0 e)) F^-1[f](r)`` with
``h^2 / (2 pi m0 e) = 47.8779 V Å^2``, so the projection of one atom is a sum of 2-D
Gaussians whose integral is ``47.8779 * sum_i a_i`` V Å^3. Hydrogens absent from
the models are added as implicit ("united") atoms, and the water each atom
displaces is subtracted as a Gaussian of the atom's volume (Fraser, MacRae and
Suzuki 1978): the projection is the contrast of the particle against vitreous
ice, which is what an image shows. With neutral-atom scattering factors, protein of
average composition (with its hydrogens, 1.35 g/cm^3) has a mean inner potential of
7.9 V and vitreous ice (0.94 g/cm^3) 4.57 V, so the low-resolution contrast in ice is
0.42 of that in vacuum. ``solvent_scale`` scales the displaced ice's potential, as
needed to reach a lower contrast (:func:`solvent_scale_for_contrast`).

Algorithm. Atoms are rotated, spread onto the pixel grid with bilinear
(cloud-in-cell) weights, one grid per scattering channel (element), Fourier
transformed once per channel (``rfft2``), multiplied by that channel's form factor
(with the channel's mean B-factor) divided by the cloud-in-cell transfer function,
and summed. The cost is linear in the number of atoms plus a few FFTs per image:
about a millisecond per 256 x 256 image for a 46,000-atom model. ``oversample > 1``
spreads onto a finer grid and crops in Fourier space, reducing aliasing.

Conventions (RELION). A pose is the rotation matrix ``A`` of RELION's
``Euler_angles2matrix(rot, tilt, psi)`` (ZYZ, degrees): the image is the
projection along z of the model rotated by ``A`` (atom ``r`` goes to ``A r``).
Image axes: x along columns, y along rows; the box centre is pixel
``(L // 2, L // 2)``. A shift ``(dx, dy)`` Å moves the particle centre to
``(L // 2 + dx / p, L // 2 + dy / p)``; RELION records it as
``rlnOriginXAngst = -dx``, ``rlnOriginYAngst = -dy`` (the origin shifts the image
onto the centred reference projection).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from scipy.spatial.transform import Rotation

from cryomanifold.ctf import frequency_grid
from cryomanifold.simulate.models import AtomicModel, check_fits_box

__all__ = [
    "AVERAGE_PROTEIN_COMPOSITION",
    "POTENTIAL_PER_SCATTERING_FACTOR",
    "WATER_MEAN_INNER_POTENTIAL_VOLTS",
    "Projector",
    "make_projector",
    "matrix_to_relion_euler",
    "protein_mean_inner_potential_volts",
    "random_rotations",
    "relion_euler_to_matrix",
    "scattering_channels",
    "solvent_scale_for_contrast",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
C64 = npt.NDArray[np.complex64]

#: h^2 / (2 pi m0 e) in V Å^2: potential integral (V Å^3) per Å of scattering factor
POTENTIAL_PER_SCATTERING_FACTOR = 47.8779

#: implicit hydrogens per heavy atom (average over protein residues)
_IMPLICIT_HYDROGENS = {"C": 1.2, "N": 1.1, "O": 0.25, "S": 0.5}
#: volume of water displaced by a heavy atom with its hydrogens, Å^3 (about 17.5 Å^3 per
#: heavy atom on average, the partial specific volume of protein); other elements use
#: their van der Waals sphere
_DISPLACED_VOLUME = {"C": 20.0, "N": 14.0, "O": 12.0, "S": 26.0}
#: element fractions of the heavy atoms of an average protein
AVERAGE_PROTEIN_COMPOSITION: dict[str, float] = {"C": 0.63, "N": 0.17, "O": 0.19, "S": 0.01}
#: water molecules per Å^3 in vitreous ice (0.94 g/cm^3)
_WATER_NUMBER_DENSITY = 0.0314
#: images spread per histogram pass (see _spread_bilinear)
_SPREAD_CHUNK = 2
#: B-factor used for atoms whose B is not positive (unrefined models), Å^2
DEFAULT_BFACTOR_ANGSTROM2 = 30.0


def _c4322(symbol: str) -> tuple[F64, F64]:
    import gemmi

    coefs = np.asarray(gemmi.Element(symbol).c4322.get_coefs(), dtype=np.float64)
    return coefs[:5], coefs[5:]


def _water_scattering_density() -> float:
    """Scattering factor at k = 0 per Å^3 of vitreous ice, Å^-2."""
    return _WATER_NUMBER_DENSITY * float(_c4322("O")[0].sum() + 2 * _c4322("H")[0].sum())


#: mean inner potential of vitreous ice from neutral-atom scattering factors, V (4.57)
WATER_MEAN_INNER_POTENTIAL_VOLTS = POTENTIAL_PER_SCATTERING_FACTOR * _water_scattering_density()


def _average_protein_atom(implicit_hydrogens: bool = True) -> tuple[float, float]:
    """Scattering factor at k = 0 (Å) and displaced volume (Å^3) of an average heavy atom."""
    f0 = volume = 0.0
    h0 = float(_c4322("H")[0].sum())
    for el, frac in AVERAGE_PROTEIN_COMPOSITION.items():
        n_h = _IMPLICIT_HYDROGENS[el] if implicit_hydrogens else 0.0
        f0 += frac * (float(_c4322(el)[0].sum()) + n_h * h0)
        volume += frac * _DISPLACED_VOLUME[el]
    return f0, volume


def protein_mean_inner_potential_volts(implicit_hydrogens: bool = True) -> float:
    """Mean inner potential of protein of average composition, V (7.9 with hydrogens).

    Neutral-atom scattering factors of :data:`AVERAGE_PROTEIN_COMPOSITION` (plus the
    implicit hydrogens) over the displaced volume (1.35 g/cm^3).
    """
    f0, volume = _average_protein_atom(implicit_hydrogens)
    return POTENTIAL_PER_SCATTERING_FACTOR * f0 / volume


def solvent_scale_for_contrast(fraction: float, *, implicit_hydrogens: bool = True) -> float:
    """Scale of the displaced ice that gives protein a chosen low-resolution contrast.

    Parameters
    ----------
    fraction : float
        Wanted contrast of average protein against the ice as a fraction of its
        vacuum contrast, ``(V_protein - V_ice) / V_protein``, in (0, 1).
    implicit_hydrogens : bool
        Whether the projector adds implicit hydrogens (as it does by default).

    Returns
    -------
    float
        ``solvent_scale`` for :func:`make_projector`: 1 gives 0.42 (neutral-atom ice,
        4.57 V); 1.22 gives 0.30 (an effective ice potential of 5.6 V).
    """
    if not 0 < fraction < 1:
        raise ValueError(f"the contrast fraction must be in (0, 1); got {fraction}")
    f0, volume = _average_protein_atom(implicit_hydrogens)
    return (1.0 - fraction) * f0 / (_water_scattering_density() * volume)


@dataclass(frozen=True)
class ScatteringChannel:
    """The form factor shared by the atoms of one element in one model.

    ``f(k) = sum_m a[m] exp(-b[m] k^2 / 4) - solvent * exp(-pi v^(2/3) k^2)``, Å,
    with ``k`` in 1/Å; ``b`` already includes the channel's B-factor.
    """

    element: str
    a: F64
    b: F64
    solvent_angstrom: float
    volume_angstrom3: float

    def evaluate(self, k2: F64) -> F64:
        """Form factor (Å) at squared spatial frequencies ``k2`` (1/Å^2)."""
        out = np.zeros_like(k2)
        for a, b in zip(self.a, self.b, strict=True):
            out += a * np.exp(-b * k2 / 4.0)
        if self.solvent_angstrom:
            out -= self.solvent_angstrom * np.exp(-np.pi * self.volume_angstrom3 ** (2 / 3) * k2)
        return out


def scattering_channels(
    model: AtomicModel,
    *,
    implicit_hydrogens: bool = True,
    solvent: bool = True,
    solvent_scale: float = 1.0,
) -> tuple[list[ScatteringChannel], npt.NDArray[np.intp]]:
    """Group the model's atoms by element into scattering channels.

    Parameters
    ----------
    model : AtomicModel
    implicit_hydrogens : bool
        Add the average number of hydrogens bonded to each heavy atom of a protein
        (C 1.2, N 1.1, O 0.25, S 0.5) to its scattering factor.
    solvent : bool
        Subtract the water displaced by each atom (vacuum potential if False).
    solvent_scale : float
        Multiplies the displaced water's potential (1: neutral-atom vitreous ice,
        4.57 V; see :func:`solvent_scale_for_contrast`).

    Returns
    -------
    channels : list of ScatteringChannel
        One per element, with the mean B-factor of its atoms (non-positive B-factors
        count as ``DEFAULT_BFACTOR_ANGSTROM2``).
    channel_of_atom : ndarray, shape (N,), int
        Index into ``channels`` for each atom.
    """
    import gemmi

    names, channel_of_atom = np.unique(model.elements, return_inverse=True)
    bfac = np.where(model.bfactors > 0, model.bfactors, DEFAULT_BFACTOR_ANGSTROM2)
    h_a, h_b = _c4322("H")
    if not solvent_scale > 0:
        raise ValueError(f"solvent_scale must be positive; got {solvent_scale}")
    rho_water = _water_scattering_density() * solvent_scale
    channels = []
    for i, name in enumerate(names):
        el = str(name)
        mean_b = float(bfac[channel_of_atom == i].mean())
        a, b = _c4322(el)
        n_h = _IMPLICIT_HYDROGENS.get(el, 0.0) if implicit_hydrogens else 0.0
        if n_h:
            a, b = np.concatenate([a, n_h * h_a]), np.concatenate([b, h_b])
        volume = _DISPLACED_VOLUME.get(el, 4.0 / 3.0 * np.pi * gemmi.Element(el).vdw_r ** 3)
        channels.append(
            ScatteringChannel(
                el, a, b + mean_b, rho_water * volume if solvent else 0.0, float(volume)
            )
        )
    return channels, np.asarray(channel_of_atom, dtype=np.intp).reshape(-1)


def relion_euler_to_matrix(angles_deg: npt.ArrayLike) -> F64:
    """RELION's ``Euler_angles2matrix``: rotation matrices from (rot, tilt, psi).

    Parameters
    ----------
    angles_deg : array_like, shape (n, 3) or (3,)
        ``rlnAngleRot``, ``rlnAngleTilt``, ``rlnAnglePsi`` in degrees (ZYZ).

    Returns
    -------
    ndarray, shape (n, 3, 3)
        ``A`` such that the particle image is the z-projection of the model rotated
        by ``A``; ``A = Rz(psi) Ry(tilt) Rz(rot)`` with RELION's (passive) axes.
    """
    ang = np.deg2rad(np.atleast_2d(np.asarray(angles_deg, dtype=np.float64)))
    ca, cb, cg = np.cos(ang).T
    sa, sb, sg = np.sin(ang).T
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    rows = [
        cg * cc - sg * sa,
        cg * cs + sg * ca,
        -cg * sb,
        -sg * cc - cg * sa,
        -sg * cs + cg * ca,
        sg * sb,
        sc,
        ss,
        cb,
    ]
    return np.stack(rows, axis=-1).reshape(-1, 3, 3)


def matrix_to_relion_euler(matrices: npt.ArrayLike) -> F64:
    """Inverse of :func:`relion_euler_to_matrix`.

    Returns
    -------
    ndarray, shape (n, 3)
        (rot, tilt, psi) in degrees, rot and psi in (-180, 180], tilt in [0, 180].
        At tilt 0 or 180 (gimbal lock) psi is set to 0 and rot carries the rotation.
    """
    mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Gg]imbal lock.*")
        # A^T = Rz(rot) Ry(tilt) Rz(psi) as active intrinsic rotations
        return np.asarray(Rotation.from_matrix(mats).inv().as_euler("ZYZ", degrees=True))


def random_rotations(n: int, rng: np.random.Generator) -> F64:
    """Rotations drawn uniformly (Haar measure) on SO(3).

    Normalised 4-D Gaussian vectors are uniform unit quaternions.

    Returns
    -------
    ndarray, shape (n, 3, 3)
    """
    quats = rng.standard_normal((n, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    return np.asarray(Rotation.from_quat(quats).as_matrix()).reshape(n, 3, 3)


@dataclass(frozen=True, eq=False)
class Projector:
    """Projects one model on one pixel grid; build it with :func:`make_projector`.

    Attributes
    ----------
    model : AtomicModel
    box_size : int
        Output box side ``L`` in pixels.
    pixel_size_angstrom : float
        Output pixel size, Å.
    oversample : int
        Spreading grid is ``oversample`` times finer than the output grid.
    channels : list of ScatteringChannel
    channel_of_atom : ndarray, shape (N,), int
    filters : ndarray, shape (C, L * oversample, L * oversample // 2 + 1), float32
        Per-channel form factor in V Å / pixel-area units, divided by the
        cloud-in-cell transfer function, on the spreading grid.
    """

    model: AtomicModel
    box_size: int
    pixel_size_angstrom: float
    oversample: int
    channels: list[ScatteringChannel]
    channel_of_atom: npt.NDArray[np.intp]
    filters: F32

    def spectrum(
        self,
        rotations: npt.ArrayLike,
        shifts_angstrom: npt.ArrayLike | None = None,
        *,
        workers: int = -1,
    ) -> C64:
        """Fourier transform of the projected potential of each pose.

        Parameters
        ----------
        rotations : array_like, shape (n, 3, 3)
            Pose matrices (see the module docstring).
        shifts_angstrom : array_like, shape (n, 2), optional
            Particle-centre shifts (x, y) in Å from the box centre (default 0).
        workers : int
            Threads for scipy.fft.

        Returns
        -------
        ndarray, shape (n, L, L // 2 + 1), complex64
            ``rfft2`` of the projected potential in V Å sampled at pixel centres.
        """
        rot = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
        n = rot.shape[0]
        shifts = (
            np.zeros((n, 2))
            if shifts_angstrom is None
            else np.asarray(shifts_angstrom, dtype=np.float64).reshape(n, 2)
        )
        box, s = self.box_size, self.oversample
        fine, pix = box * s, self.pixel_size_angstrom / s
        coords = self.model.coords_angstrom
        # (n, 2, N): x and y of the rotated atoms, in pixels of the spreading grid
        xy = np.matmul(rot[:, :2, :] / pix, coords.T)
        xy += (fine // 2 + shifts / pix)[:, :, None]
        n_chan = len(self.channels)
        grids = _spread_bilinear(xy[:, 0], xy[:, 1], self.channel_of_atom, n_chan, fine)
        spec = sfft.rfft2(grids, workers=workers)
        out = spec[:, 0] * self.filters[0]
        for c in range(1, n_chan):
            out += spec[:, c] * self.filters[c]
        if s > 1:
            half = box // 2
            out = np.concatenate(
                [out[:, :half, : half + 1], out[:, fine - half :, : half + 1]], axis=1
            ) / np.float32(s * s)
        return np.ascontiguousarray(out, dtype=np.complex64)

    def project(
        self,
        rotations: npt.ArrayLike,
        shifts_angstrom: npt.ArrayLike | None = None,
        *,
        workers: int = -1,
    ) -> F32:
        """Projected potential images.

        Returns
        -------
        ndarray, shape (n, L, L), float32
            Projected potential in V Å (contrast against ice when ``solvent``).
        """
        spec = self.spectrum(rotations, shifts_angstrom, workers=workers)
        box = self.box_size
        return sfft.irfft2(spec, s=(box, box), workers=workers).astype(np.float32, copy=False)


def _spread_bilinear(
    x: F64, y: F64, channel_of_atom: npt.NDArray[np.intp], n_channels: int, box: int
) -> F32:
    """Cloud-in-cell deposit of unit weights at (x, y) pixels, one grid per channel.

    Atoms outside ``[0, box - 1)`` are dropped (no wrap-around).

    Parameters
    ----------
    x, y : ndarray, shape (n, N)
        Atom positions in pixels (x: column, y: row).
    channel_of_atom : ndarray, shape (N,), int
    n_channels : int
    box : int

    Returns
    -------
    ndarray, shape (n, n_channels, box, box), float32
    """
    n = x.shape[0]
    out = np.empty((n, n_channels, box, box), dtype=np.float32)
    plane = channel_of_atom[None, :] * (box * box)
    size_per_image = n_channels * box * box
    # cache blocking: a couple of images at a time keeps the index, weight and
    # histogram arrays in cache (5-10x faster than one pass over the whole batch);
    # each corner is a separate histogram, added with the corner's index offset
    for start in range(0, n, _SPREAD_CHUNK):
        xs, ys = x[start : start + _SPREAD_CHUNK], y[start : start + _SPREAD_CHUNK]
        m = xs.shape[0]
        valid = (xs >= 0) & (xs < box - 1) & (ys >= 0) & (ys < box - 1)
        ix = xs.astype(np.intp)  # truncation is the floor for valid (non-negative) x
        iy = ys.astype(np.intp)
        fx, fy = xs - ix, ys - iy
        base = iy * box + ix + plane + (np.arange(m, dtype=np.intp) * size_per_image)[:, None]
        if not valid.all():
            base[~valid] = 0
            fx, fy = np.where(valid, fx, 0.0), np.where(valid, fy, 0.0)
            gx = valid - fx
        else:
            gx = 1.0 - fx
        gy = 1.0 - fy
        flat, size = base.ravel(), m * size_per_image
        acc = np.bincount(flat, (gx * gy).ravel(), minlength=size)
        acc[1:] += np.bincount(flat, (fx * gy).ravel(), minlength=size)[:-1]
        acc[box:] += np.bincount(flat, (gx * fy).ravel(), minlength=size)[:-box]
        acc[box + 1 :] += np.bincount(flat, (fx * fy).ravel(), minlength=size)[: -box - 1]
        out[start : start + m] = acc.reshape(m, n_channels, box, box)
    return out


def make_projector(
    model: AtomicModel,
    *,
    box_size: int,
    pixel_size_angstrom: float,
    implicit_hydrogens: bool = True,
    solvent: bool = True,
    solvent_scale: float = 1.0,
    oversample: int = 1,
    check_size: bool = True,
) -> Projector:
    """Prepare the projection of ``model`` onto a ``box_size`` grid.

    Parameters
    ----------
    model : AtomicModel
    box_size : int
        Box side ``L`` in pixels (even).
    pixel_size_angstrom : float
        Pixel size, Å.
    implicit_hydrogens, solvent : bool
        See :func:`scattering_channels`.
    solvent_scale : float
        See :func:`scattering_channels`.
    oversample : int
        Spread atoms on a grid this many times finer (1: none). 2 removes most
        aliasing of sharp (low B-factor) atoms at 4 times the FFT cost.
    check_size : bool
        Raise if the model does not fit in the box (:func:`check_fits_box`).

    Raises
    ------
    ValueError
        If the box is not a positive even size, the pixel size is not positive, or
        the model does not fit in the box.
    """
    if box_size < 8 or box_size % 2:
        raise ValueError(f"box_size must be an even number of pixels >= 8; got {box_size}")
    if not pixel_size_angstrom > 0:
        raise ValueError(f"pixel_size_angstrom must be positive; got {pixel_size_angstrom}")
    if oversample < 1:
        raise ValueError(f"oversample must be >= 1; got {oversample}")
    if check_size:
        check_fits_box(model, box_size, pixel_size_angstrom)
    channels, channel_of_atom = scattering_channels(
        model, implicit_hydrogens=implicit_hydrogens, solvent=solvent, solvent_scale=solvent_scale
    )
    fine, pix = box_size * oversample, pixel_size_angstrom / oversample
    kx, ky = frequency_grid(fine, pix, rfft=True)
    k2 = kx**2 + ky**2
    cic = (np.sinc(kx * pix) * np.sinc(ky * pix)) ** 2
    scale = POTENTIAL_PER_SCATTERING_FACTOR / pix**2 / cic
    filters = np.stack([ch.evaluate(k2) * scale for ch in channels]).astype(np.float32)
    return Projector(
        model=model,
        box_size=box_size,
        pixel_size_angstrom=pixel_size_angstrom,
        oversample=oversample,
        channels=channels,
        channel_of_atom=channel_of_atom,
        filters=filters,
    )
