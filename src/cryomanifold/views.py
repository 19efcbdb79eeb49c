"""Viewing directions under point-group symmetry, and how coherent classes are in view.

:func:`viewing_directions` turns RELION's rot/tilt into unit vectors,
:func:`symmetry_group` gives a point group's rotations, :func:`mean_viewing_direction`
averages a class's directions under its group, and :func:`view_coherence_deg` scores
whether classes (or feature-space neighbours) share a viewing direction (Zhao &
Singer's score). Used by :mod:`cryomanifold.metrics` and the benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "ViewCoherence",
    "mean_viewing_direction",
    "symmetry_group",
    "view_coherence_deg",
    "viewing_directions",
]


def viewing_directions(rot_deg: npt.ArrayLike, tilt_deg: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Projection directions, in the model frame, of RELION Euler angles.

    The image of pose ``A = Rz(psi) Ry(tilt) Rz(rot)`` is the projection of the
    model along ``A^T e_z = (sin tilt cos rot, sin tilt sin rot, cos tilt)``; psi is
    an in-plane rotation and does not change it.

    Parameters
    ----------
    rot_deg, tilt_deg : array_like, shape (n,)
        ``rlnAngleRot`` and ``rlnAngleTilt``, degrees.

    Returns
    -------
    ndarray, shape (n, 3), float64
        Unit vectors.
    """
    rot = np.deg2rad(np.asarray(rot_deg, dtype=np.float64).ravel())
    tilt = np.deg2rad(np.asarray(tilt_deg, dtype=np.float64).ravel())
    if rot.shape != tilt.shape:
        raise ValueError(f"rot_deg and tilt_deg differ in length: {rot.size} != {tilt.size}")
    st = np.sin(tilt)
    return np.stack([st * np.cos(rot), st * np.sin(rot), np.cos(tilt)], axis=1)


def _group_closure(generators: Sequence[npt.NDArray[np.float64]]) -> npt.NDArray[np.float64]:
    """All products of the generators (a finite rotation group), identity first."""
    elements = [np.eye(3)]
    frontier = [np.eye(3)]
    while frontier:
        new = []
        for a in frontier:
            for g in generators:
                b = g @ a
                if not any(np.abs(b - e).max() < 1e-9 for e in elements):
                    elements.append(b)
                    new.append(b)
        frontier = new
    return np.asarray(elements)


def _axis_angle(axis: Sequence[float], angle: float) -> npt.NDArray[np.float64]:
    u = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def symmetry_group(name: str) -> npt.NDArray[np.float64]:
    """Rotation matrices of a point group in its standard frame.

    ``Cn``: rotations by ``2 pi k / n`` about z. ``Dn``: those plus the two-fold
    rotations about the n axes in the xy plane at angles ``pi k / n`` from x.
    ``T`` (12 rotations): two-fold axes along x, y and z, three-fold axes along the
    cube diagonals. ``O`` (24): four-fold axes along x, y and z. For a model whose
    symmetry axes are elsewhere, conjugate: ``R @ G @ R.T``.

    Parameters
    ----------
    name : str
        ``"C1"``, ``"C7"``, ``"D4"``, ``"T"``, ``"O"``, ... (case-insensitive).

    Returns
    -------
    ndarray, shape (G, 3, 3), float64
        ``G = n`` for Cn, ``2 n`` for Dn, 12 for T, 24 for O; the identity first.
    """
    upper = name.upper()
    if upper in ("T", "O"):
        three = _axis_angle([1.0, 1.0, 1.0], 2 * np.pi / 3)
        other = (
            _axis_angle([0.0, 0.0, 1.0], np.pi)
            if upper == "T"
            else _axis_angle([0.0, 0.0, 1.0], np.pi / 2)
        )
        return _group_closure([three, other])
    kind, order = upper[:1], name[1:]
    if kind not in ("C", "D") or not order.isdigit() or int(order) < 1:
        raise ValueError(
            f"unknown point group {name!r}; expected Cn, Dn, T or O, e.g. 'C1', 'D7' or 'O'"
        )
    n = int(order)
    a = 2 * np.pi * np.arange(n) / n
    c, s = np.cos(a), np.sin(a)
    z, o = np.zeros(n), np.ones(n)
    cyc = np.stack([c, -s, z, s, c, z, z, z, o], axis=1).reshape(n, 3, 3)
    if kind == "C":
        return cyc
    flip = np.diag([1.0, -1.0, -1.0])  # two-fold about x
    return np.concatenate([cyc, cyc @ flip])


def mean_viewing_direction(
    directions: npt.ArrayLike, symmetry: npt.ArrayLike | None = None
) -> npt.NDArray[np.float64]:
    """Mean of viewing directions that are equivalent under mirror and symmetry.

    A direction ``v`` stands for ``+-g v`` for every rotation ``g`` of the point
    group (see :func:`view_coherence_deg`). The reference is the member with the
    smallest sum of reduced angles to the others (at most 500 members are
    compared); every member is replaced by its equivalent closest to the
    reference, and the normalised mean of those is returned.

    Parameters
    ----------
    directions : array_like, shape (n, 3)
        Unit viewing directions (:func:`viewing_directions`).
    symmetry : array_like, shape (G, 3, 3), optional
        Rotations of the point group in the model frame.

    Returns
    -------
    ndarray, shape (3,)
        Unit vector, in the reference's hemisphere.
    """
    v = np.asarray(directions, dtype=np.float64).reshape(-1, 3)
    if v.shape[0] == 0:
        raise ValueError("no directions to average")
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    group = np.eye(3)[None] if symmetry is None else np.asarray(symmetry, dtype=np.float64)
    sample = v[np.linspace(0, len(v) - 1, min(len(v), 500)).astype(np.intp)]
    # (G, m, 3) equivalents of the sample; reduced |cos| of every pair
    eq = np.einsum("gij,mj->gmi", group, sample)
    cos = np.abs(np.einsum("ai,gbi->gab", sample, eq)).max(axis=0)
    angles = np.degrees(np.arccos(np.clip(cos, 0.0, 1.0)))
    ref = sample[int(np.argmin(angles.sum(axis=1)))]
    all_eq = np.einsum("gij,nj->gni", group, v)  # (G, n, 3)
    dots = np.einsum("i,gni->gn", ref, all_eq)
    best = np.abs(dots).argmax(axis=0)
    rows = np.arange(len(v))
    chosen = all_eq[best, rows] * np.sign(dots[best, rows])[:, None]
    mean = chosen.mean(axis=0)
    norm = np.linalg.norm(mean)
    return ref if norm == 0 else mean / norm


def _pair_angles_deg(
    a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], group: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """Reflection- and symmetry-reduced angles between row pairs of ``a`` and ``b``."""
    gb = np.einsum("gij,mj->gmi", group, b)  # (G, m, 3)
    cos = np.abs(np.einsum("mi,gmi->gm", a, gb)).max(axis=0)
    return np.asarray(np.degrees(np.arccos(np.clip(cos, 0.0, 1.0))))


class ViewCoherence(NamedTuple):
    """How similar the viewing directions of grouped or neighbouring particles are.

    Attributes
    ----------
    fraction_within_10deg : float
        Fraction of the compared pairs closer than ``threshold_deg`` (10 by default).
    median_deg : float
        Median angle of the compared pairs, degrees.
    n_pairs : int
        Number of pairs compared.
    angles_deg : ndarray, shape (n_pairs,)
        The angles themselves.
    """

    fraction_within_10deg: float
    median_deg: float
    n_pairs: int
    angles_deg: npt.NDArray[np.float64]


def view_coherence_deg(
    directions: npt.ArrayLike,
    groups: npt.ArrayLike | None = None,
    *,
    neighbors: npt.ArrayLike | None = None,
    symmetry: npt.ArrayLike | None = None,
    threshold_deg: float = 10.0,
    max_pairs_per_group: int = 2000,
    random_state: int = 0,
) -> ViewCoherence:
    """Angles between the viewing directions of particles that should look alike.

    The angle between directions ``v`` and ``w`` is ``min(angle(v, w), angle(v, -w))``
    (a projection along ``-v`` is the mirror image of the one along ``v``, which
    mirror-invariant features cannot tell apart), further minimised over
    ``angle(v, g w)`` for the rotations ``g`` of the particle's point group. Give
    either ``groups`` (pairs within each group, e.g. a class; at most
    ``max_pairs_per_group`` random pairs per group) or ``neighbors`` (each particle
    against each of its neighbours, e.g. its k nearest neighbours in feature space:
    Zhao & Singer's score). Uniformly random directions give a fraction of about
    ``1 - cos(10 deg) = 0.015`` without symmetry.

    Parameters
    ----------
    directions : array_like, shape (n, 3)
        Unit viewing directions (:func:`viewing_directions`).
    groups : array_like, shape (n,), optional
        Group of each particle (any hashable labels).
    neighbors : array_like of int, shape (n, k), optional
        Indices of each particle's neighbours (an index equal to the row's own is
        skipped).
    symmetry : array_like, shape (G, 3, 3), optional
        Rotations of the point group in the model frame (:func:`symmetry_group`).
    threshold_deg : float
        Angle below which a pair counts as coherent.
    max_pairs_per_group : int
        Pairs drawn per group (all pairs if fewer).
    random_state : int

    Returns
    -------
    ViewCoherence

    Raises
    ------
    ValueError
        If not exactly one of ``groups`` and ``neighbors`` is given, or on
        mismatched shapes.
    """
    v = np.asarray(directions, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != 3:
        raise ValueError(f"directions must have shape (n, 3); got {v.shape}")
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    n = v.shape[0]
    if (groups is None) == (neighbors is None):
        raise ValueError("give exactly one of groups and neighbors")
    group = np.eye(3)[None] if symmetry is None else np.asarray(symmetry, dtype=np.float64)
    if group.ndim != 3 or group.shape[1:] != (3, 3):
        raise ValueError(f"symmetry must have shape (G, 3, 3); got {group.shape}")
    if neighbors is not None:
        nb = np.asarray(neighbors, dtype=np.intp)
        if nb.ndim != 2 or nb.shape[0] != n:
            raise ValueError(f"neighbors must have shape ({n}, k); got {nb.shape}")
        rows = np.repeat(np.arange(n), nb.shape[1])
        cols = nb.ravel()
        keep = rows != cols
        i, j = rows[keep], cols[keep]
    else:
        g = np.asarray(groups)
        if g.shape != (n,):
            raise ValueError(f"groups must have shape ({n},); got {g.shape}")
        rng = np.random.default_rng(random_state)
        ii, jj = [], []
        for label in np.unique(g):
            members = np.flatnonzero(g == label)
            m = members.size
            if m < 2:
                continue
            if m * (m - 1) // 2 <= max_pairs_per_group:
                a, b = np.triu_indices(m, k=1)
            else:
                a = rng.integers(0, m, max_pairs_per_group)
                b = (a + rng.integers(1, m, max_pairs_per_group)) % m  # b != a
            ii.append(members[a])
            jj.append(members[b])
        i = np.concatenate(ii) if ii else np.zeros(0, np.intp)
        j = np.concatenate(jj) if jj else np.zeros(0, np.intp)
    angles = _pair_angles_deg(v[i], v[j], group)
    if angles.size == 0:
        return ViewCoherence(float("nan"), float("nan"), 0, angles)
    return ViewCoherence(
        float(np.mean(angles < threshold_deg)), float(np.median(angles)), int(angles.size), angles
    )
