"""Dihedral point groups found from an atomic model, and reflection- and
symmetry-reduced angles between viewing directions (benchmarks/vs_aspire.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]


def dn_rotations(n: int) -> F64:
    """The 2n rotations of the dihedral group Dn: n-fold axis z, a 2-fold axis x.

    Returns
    -------
    ndarray, shape (2n, 3, 3)
    """
    t = 2 * np.pi * np.arange(n) / n
    c, s = np.cos(t), np.sin(t)
    z, o = np.zeros(n), np.ones(n)
    cyc = np.stack([c, -s, z, s, c, z, z, z, o], axis=-1).reshape(n, 3, 3)
    flip = np.diag([1.0, -1.0, -1.0])  # 180 degrees about x
    return np.concatenate([cyc, cyc @ flip])


def _rotation_axis_angle(r: F64) -> tuple[F64, float]:
    angle = float(np.arccos(np.clip((np.trace(r) - 1) / 2, -1, 1)))
    if angle > np.pi - 0.1:  # near 2-fold: axis from the symmetric part
        _, v = np.linalg.eigh(r + np.eye(3))
        return v[:, -1], angle
    axis = np.array([r[2, 1] - r[1, 2], r[0, 2] - r[2, 0], r[1, 0] - r[0, 1]])
    return axis / np.linalg.norm(axis), angle


def _kabsch(a: F64, b: F64) -> F64:
    """Rotation R minimising |R a_i - b_i| over rows (both centred here)."""
    a0, b0 = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(b0.T @ a0)
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def point_group(path: Path, n: int) -> tuple[F64, float]:
    """Dn rotations of the model at ``path``, in the model's frame.

    The largest set of chains with the same sequence is superposed (Cα, shared
    residue numbers) onto its first chain; the axis of the smallest rotation is the
    n-fold axis, a 2-fold perpendicular to it fixes the frame, and the group is
    :func:`dn_rotations` in that frame.

    Returns
    -------
    group : ndarray, shape (2n, 3, 3)
    max_error_deg : float
        Largest angle between a measured superposition and its nearest group element.
    """
    import gemmi

    st = gemmi.read_structure(str(path))
    chains: dict[str, dict[tuple[int | None, str], F64]] = {}
    seqs: dict[str, str] = {}
    for ch in st[0]:
        ca = {
            (r.seqid.num, r.seqid.icode): np.array(r["CA"][0].pos.tolist())
            for r in ch
            if r.find_atom("CA", "*") is not None
        }
        if len(ca) > 50:
            chains[ch.name] = ca
            seqs[ch.name] = gemmi.one_letter_code([r.name for r in ch])
    by_seq: dict[str, list[str]] = {}
    for name, seq in seqs.items():
        by_seq.setdefault(seq, []).append(name)
    names = max(by_seq.values(), key=len)
    ref = chains[names[0]]
    rots = []
    for name in names:
        keys = sorted(set(ref) & set(chains[name]))
        rots.append(
            _kabsch(np.array([ref[k] for k in keys]), np.array([chains[name][k] for k in keys]))
        )
    axes_angles = [_rotation_axis_angle(r) for r in rots]
    target = 2 * np.pi / n
    axis = min(axes_angles, key=lambda aa: abs(aa[1] - target))[0]
    twofold = [a for a, ang in axes_angles if ang > np.pi - 0.1 and abs(a @ axis) < 0.1]
    if not twofold:
        raise RuntimeError(f"{path}: no 2-fold axis perpendicular to the {n}-fold one")
    x = twofold[0] - (twofold[0] @ axis) * axis
    x /= np.linalg.norm(x)
    frame = np.stack([x, np.cross(axis, x), axis], axis=1)  # columns: new x, y, z
    group = frame @ dn_rotations(n) @ frame.T
    err = [
        min(_rotation_axis_angle(g.T @ r)[1] for g in group) for r in rots
    ]  # residual rotation angle
    return group, float(np.rad2deg(max(err)))


def viewing_directions(rot_deg: F64, tilt_deg: F64) -> F64:
    """Projection direction in the model frame (third row of RELION's A), (n, 3)."""
    r, t = np.deg2rad(rot_deg), np.deg2rad(tilt_deg)
    return np.stack([np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], axis=1)


def pair_angles_deg(v: F64, w: F64, group: F64) -> F64:
    """min over g in group and ±: angle(v_i, g w_i), degrees; v, w (m, 3)."""
    gw = np.einsum("gab,mb->mga", group, w)
    cos = np.abs(np.einsum("ma,mga->mg", v, gw)).max(axis=1)
    return np.rad2deg(np.arccos(np.clip(cos, -1.0, 1.0)))
