"""Benchmark: cryomanifold's invariant features vs ASPIRE's rotationally invariant kNN.

Both methods get the same simulated particles (T20S, D7, and Rubisco L8S8, D4; no
junk), Fourier-cropped to 64 px and phase-flipped with
:func:`cryomanifold.preprocess.prepare_images`. Each finds the ``k`` nearest
neighbours of every particle:

* **ASPIRE** (``aspire.classification.RIRClass2D``, defaults: FSPCA with 400
  components, 300 bispectrum components, legacy implementations; Zhao, Shkolnisky &
  Singer 2014) on an ``ArrayImageSource`` of the images. ASPIRE runs offline: in
  its worker every socket connection raises, and its log folder is a temporary one.
* **cryomanifold**: :func:`cryomanifold.features.invariant_features` (tuned
  defaults, with the CTF as the pipeline gives it), then Euclidean kNN in the
  PCA(95 %) space that the UMAP graph is built on (features standardised first only
  when the pipeline's ``RunConfig().standardize`` is set).

Scores (Zhao & Singer): for each neighbour pair, the angle between the true
viewing directions, reflection-aware (a view along ``-v`` is the mirror of the one
along ``v``, and both methods are mirror-invariant) and reduced over the point group
(the group is found from the model itself by superposing its identical chains and
then written exactly as a Dn group in that frame). Reported: the fraction of pairs
within 10 degrees (a neighbour of the other species counts as a miss), the median
angle over same-species pairs, and the fraction of same-species neighbours. Each
method runs in its own subprocess, which reports its wall time (featurisation +
neighbour search, image loading excluded) and its peak resident memory
(``VmHWM``, also given as the increase over the resident size after imports
and loading).

Two conditions: centred particles, and the same particles shifted in-plane,
uniformly in a disk of radius 10 % of the box (applied to the 256 px images as an
exact Fourier shift before cropping).

Usage::

    python benchmarks/vs_aspire.py [--n-per-model 1000] [--k 10] [--overwrite]

Results go to benchmarks/results/vs_aspire.json and .md. Needs ``aspire`` (the
``[bench]`` extra); without it the ASPIRE rows are skipped with a message. ASPIRE's
RIRClass2D needs more images than its 300 bispectrum components (``--n-per-model``
of at least 151).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "models"
MODELS = {
    "3j9i_T20S_proteasome": ("3j9i_T20S_proteasome.pdb.gz", 7),
    "1bxn_rubisco_L8S8_assembly1": ("1bxn_rubisco_L8S8_assembly1.cif.gz", 4),
}
F64 = npt.NDArray[np.float64]
log = logging.getLogger("vs_aspire")


# -- symmetry ------------------------------------------------------------------------
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


# -- data ----------------------------------------------------------------------------
def simulate(work: Path, n_per_model: int, seed: int) -> Path:
    """Simulate the centred stack (256 px, 1 Å/px, no junk, no shifts)."""
    from cryomanifold.simulate import simulate_dataset

    paths = [DATA / f for f, _ in MODELS.values()]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"model {p} not found; this benchmark needs shared/data")
    return simulate_dataset(
        paths,
        n_per_model=n_per_model,
        junk_fraction=0.0,
        out_dir=work / "sim",
        seed=seed,
        overwrite=True,
        shift_sigma_angstrom=0.0,
    )


def disk_shifts(n: int, radius_px: float, rng: np.random.Generator) -> F64:
    """Shifts (dx, dy) in pixels, uniform in a disk of ``radius_px``; (n, 2)."""
    r = radius_px * np.sqrt(rng.uniform(size=n))
    phi = rng.uniform(0, 2 * np.pi, size=n)
    return np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def fourier_shift(images: npt.NDArray[np.float32], shifts_px: F64) -> npt.NDArray[np.float32]:
    """Move each image's content by (dx along columns, dy along rows) pixels (periodic)."""
    import scipy.fft as sfft

    box = images.shape[-1]
    ky = sfft.fftfreq(box)[None, :, None]
    kx = sfft.rfftfreq(box)[None, None, :]
    dx, dy = shifts_px[:, 0, None, None], shifts_px[:, 1, None, None]
    phase = np.exp(-2j * np.pi * (kx * dx + ky * dy))
    spec = sfft.rfft2(images, workers=-1) * phase
    return sfft.irfft2(spec, s=(box, box), workers=-1).astype(np.float32)


def prepare_conditions(
    star: Path, work: Path, *, box: int, max_shift_fraction: float, seed: int
) -> dict[str, Any]:
    """Write the two prepared 64 px stacks and the CTF to ``work``; return the truth."""
    from cryomanifold.io import read_particles
    from cryomanifold.preprocess import prepare_images

    stack = read_particles(star)
    assert stack.ctf is not None and stack.metadata is not None
    n, size = len(stack.metadata), stack.box_size
    shifts = disk_shifts(n, max_shift_fraction * size, np.random.default_rng(seed + 1))
    out = {c: np.empty((n, box, box), np.float32) for c in ("centred", "shifted")}
    apix = stack.pixel_size_angstrom
    for start in range(0, n, 256):  # batches bound the memory (a 256 px stack is large)
        idx = np.arange(start, min(start + 256, n))
        raw = stack.images(idx)
        for cond, imgs in (("centred", raw), ("shifted", fourier_shift(raw, shifts[idx]))):
            out[cond][idx], apix = prepare_images(
                imgs,
                box=box,
                pixel_size_angstrom=stack.pixel_size_angstrom,
                ctf=stack.ctf.subset(idx),
            )
    for cond, arr in out.items():
        np.save(work / f"{cond}.npy", arr)
    ctf = stack.ctf
    arrays = {k: np.broadcast_to(getattr(ctf, k), (n,)) for k in ctf.__dataclass_fields__}
    np.savez(work / "ctf.npz", pixel_size_angstrom=np.float64(apix), **arrays)  # type: ignore[arg-type]
    md = stack.metadata
    return {
        "species": md["cmTruthLabel"].astype(str).to_numpy(),
        "views": viewing_directions(
            md["rlnAngleRot"].to_numpy(float), md["rlnAngleTilt"].to_numpy(float)
        ),
        "shift_px_max": float(np.hypot(*shifts.T).max()),
        "apix": float(apix),
        "n": n,
        "raw_box": size,
        "raw_apix": stack.pixel_size_angstrom,
    }


# -- workers (each in its own process) -----------------------------------------------
def _proc_status_mb(field: str) -> float:
    """``VmHWM`` (peak) or ``VmRSS`` (current) of this process, MB.

    Unlike ``getrusage``'s ``ru_maxrss``, which Linux keeps across ``execve`` (so a
    worker would inherit the parent's peak), ``VmHWM`` starts afresh in the worker.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


_NETWORK_ATTEMPTS: list[str] = []


def _block_network() -> None:
    """Make every connection and name lookup raise, and count the attempts."""
    import socket

    def refuse(*args: Any, **kwargs: Any) -> None:
        _NETWORK_ATTEMPTS.append(repr(args)[:200])
        raise OSError("network access is disabled in this benchmark")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]


def _worker_cryomanifold(images: npt.NDArray[np.float32], work: Path, k: int) -> npt.NDArray:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    from cryomanifold.ctf import CTFParams
    from cryomanifold.features import invariant_features
    from cryomanifold.pipeline import RunConfig

    z = np.load(work / "ctf.npz")
    apix = float(z["pixel_size_angstrom"])
    ctf = CTFParams(**{k2: z[k2] for k2 in z.files if k2 != "pixel_size_angstrom"})
    feats = invariant_features(images, ctf=ctf, pixel_size_angstrom=apix)
    # the space the pipeline's manifold starts from (standardised only if it is)
    xs = StandardScaler().fit_transform(feats) if RunConfig().standardize else feats
    xp = PCA(n_components=0.95, svd_solver="full", random_state=0).fit_transform(xs)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xp).kneighbors(xp)
    return np.asarray(idx)


def _worker_aspire(images: npt.NDArray[np.float32], work: Path, k: int) -> npt.NDArray:
    from aspire.classification import RIRClass2D
    from aspire.source import ArrayImageSource

    apix = float(np.load(work / "ctf.npz")["pixel_size_angstrom"])
    src = ArrayImageSource(images, pixel_size=apix)
    classes, _, _ = RIRClass2D(src, n_nbor=k, seed=0).classify()
    return np.asarray(classes)


def worker(method: str, cond: str, work: Path, k: int) -> None:
    """Run one method on one condition; write neighbours and timings to ``work``."""
    if method == "aspire":
        _block_network()
        os.chdir(tempfile.mkdtemp(dir=work))  # ASPIRE writes logs/ under the cwd
        import aspire  # noqa: F401  (import cost outside the timing)
    else:
        import sklearn.decomposition  # noqa: F401

        import cryomanifold.features  # noqa: F401
    images = np.load(work / f"{cond}.npy")
    base = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    fn = _worker_aspire if method == "aspire" else _worker_cryomanifold
    idx = fn(images, work, k)
    seconds = time.perf_counter() - t0
    np.save(work / f"nbrs_{method}_{cond}.npy", idx)
    (work / f"time_{method}_{cond}.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": _proc_status_mb("VmHWM"),
                "base_rss_mb": base,
                "network_attempts": len(_NETWORK_ATTEMPTS),
            }
        )
    )


def run_worker(method: str, cond: str, work: Path, k: int) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--worker", method, cond, "--work", str(work), "--k", str(k)]
    log.info("running %s on %s particles", method, cond)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        log.error("%s/%s failed:\n%s", method, cond, res.stderr[-4000:])
        return None
    out: dict[str, Any] = json.loads((work / f"time_{method}_{cond}.json").read_text())
    out["neighbours"] = np.load(work / f"nbrs_{method}_{cond}.npy")
    return out


# -- scores --------------------------------------------------------------------------
def drop_self(idx: npt.NDArray, k: int) -> npt.NDArray[np.int64]:
    """The first ``k`` neighbours of each row that are not the row itself, (n, k)."""
    is_self = idx == np.arange(idx.shape[0])[:, None]
    order = np.argsort(is_self, axis=1, kind="stable")  # self (if present) goes last
    return np.take_along_axis(idx, order, axis=1)[:, :k].astype(np.int64)


def score(nbrs: npt.NDArray[np.int64], truth: dict[str, Any], groups: dict[str, F64]) -> dict:
    n, k = nbrs.shape
    i = np.repeat(np.arange(n), k)
    j = nbrs.ravel()
    sp = truth["species"]
    same = sp[i] == sp[j]
    ang = np.full(i.size, np.nan)
    for name, g in groups.items():
        sel = same & (sp[i] == name)
        ang[sel] = pair_angles_deg(truth["views"][i[sel]], truth["views"][j[sel]], g)
    within = np.nan_to_num(ang, nan=np.inf) <= 10.0
    per = {
        name: {
            "frac_within_10deg": float(within[sp[i] == name].mean()),
            "median_angle_deg": float(np.median(ang[same & (sp[i] == name)])),
        }
        for name in groups
    }
    return {
        "frac_within_10deg": float(within.mean()),
        "frac_within_10deg_same_species": float(within[same].mean()),
        "median_angle_deg": float(np.median(ang[same])),
        "same_species_frac": float(same.mean()),
        "per_species": per,
    }


# -- report --------------------------------------------------------------------------
def write_results(results: dict[str, Any], json_path: Path, md_path: Path, cmd: str) -> None:
    with atomic_path(json_path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")
    m = results["meta"]
    lines = [
        "# cryomanifold vs ASPIRE RIRClass2D: nearest-neighbour view coherence",
        "",
        f"Reproduce: `{cmd}`",
        "",
        f"{m['n_particles']} simulated particles ({m['n_per_model']} each of "
        + ", ".join(m["models"])
        + f"; no junk), {m['raw_box']} px at {m['raw_apix']} Å/px, cropped to "
        f"{m['box']} px ({m['apix']:.2f} Å/px) and phase-flipped; k = {m['k']} "
        f"neighbours. Shifted: uniform in a disk of radius {m['max_shift_fraction']:.0%} "
        f"of the box (largest {m['shift_px_max']:.1f} px of {m['raw_box']}). "
        f"ASPIRE {m['aspire_version']} RIRClass2D defaults. {m['cpu']}.",
        "",
        "Within 10°: share of all neighbour pairs whose reflection- and "
        "symmetry-reduced viewing directions are within 10° (other-species neighbours "
        "count as misses). Median: over same-species pairs. Time: featurisation + "
        "neighbour search. Peak RSS: worker process high-water mark, VmHWM (increase over imports "
        "and loaded images in brackets).",
        "",
        "| method | condition | within 10° | median angle ° | same species | time s | "
        "peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['method']} | {row['condition']} | skipped: {row['skipped']} |")
            continue
        lines.append(
            f"| {row['method']} | {row['condition']} | {row['frac_within_10deg']:.3f} | "
            f"{row['median_angle_deg']:.1f} | {row['same_species_frac']:.3f} | "
            f"{row['seconds']:.1f} | {row['peak_rss_mb']:.0f} "
            f"(+{row['peak_rss_mb'] - row['base_rss_mb']:.0f}) |"
        )
    ch = results["chance"]
    lines.append(
        f"| random neighbours (chance) | either | {ch['frac_within_10deg']:.3f} | "
        f"{ch['median_angle_deg']:.1f} | {ch['same_species_frac']:.3f} | | |"
    )
    names = list(m["models"])
    lines += [
        "",
        "Per species (within 10° / median angle °):",
        "",
        "| method | condition | " + " | ".join(names) + " |",
        "|---|---|" + "---:|" * len(names),
    ]
    for row in [r for r in results["rows"] if not r.get("skipped")] + [
        {"method": "random (chance)", "condition": "either", **ch}
    ]:
        cells = [
            f"{row['per_species'][nm]['frac_within_10deg']:.3f} / "
            f"{row['per_species'][nm]['median_angle_deg']:.1f}"
            for nm in names
        ]
        lines.append(f"| {row['method']} | {row['condition']} | " + " | ".join(cells) + " |")
    attempts = [r["network_attempts"] for r in results["rows"] if "network_attempts" in r]
    if any(r["method"] == "aspire" and not r.get("skipped") for r in results["rows"]):
        lines += [
            "",
            f"Network connections attempted by the ASPIRE workers (all refused): {sum(attempts)}.",
        ]
    lines += ["", "## Goals", ""] + [f"- {g}" for g in results["goals"]] + [""]
    with atomic_path(md_path) as tmp:
        tmp.write_text("\n".join(lines))


def goals(rows: list[dict[str, Any]]) -> list[str]:
    by = {(r["method"], r["condition"]): r for r in rows if not r.get("skipped")}
    need = [(m, c) for m in ("cryomanifold", "aspire") for c in ("centred", "shifted")]
    if not all(key in by for key in need):
        return ["not evaluated: rows missing (ASPIRE not installed or a method failed)"]
    out = []
    for cond, factor in (("centred", 1.0), ("shifted", 1.5)):
        cm, asp = by[("cryomanifold", cond)], by[("aspire", cond)]
        ratio = cm["frac_within_10deg"] / max(asp["frac_within_10deg"], 1e-12)
        ok = ratio >= factor and cm["seconds"] <= asp["seconds"]
        out.append(
            f"{cond}: within-10° ratio cryomanifold/ASPIRE = {ratio:.2f} (goal ≥ {factor}), "
            f"time {cm['seconds']:.1f} s vs {asp['seconds']:.1f} s: " + ("met" if ok else "NOT met")
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-model", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--max-shift-fraction", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_aspire")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "COND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker:
        worker(args.worker[0], args.worker[1], args.work, args.k)
        return 0

    json_path = check_writable(args.out.with_suffix(".json"), overwrite=args.overwrite)
    md_path = check_writable(args.out.with_suffix(".md"), overwrite=args.overwrite)
    has_aspire = importlib.util.find_spec("aspire") is not None
    if not has_aspire:
        log.warning("aspire is not installed (pip install 'cryomanifold[bench]'); skipping it")
    groups = {}
    for name, (fname, fold) in MODELS.items():
        groups[name], err = point_group(DATA / fname, fold)
        log.info("%s: D%d group, superpositions within %.2f° of it", name, fold, err)
        if err > 3.0:
            raise RuntimeError(f"{name}: symmetry fit off by {err:.1f}°")
    with tempfile.TemporaryDirectory(prefix="vs_aspire_") as tmpdir:
        work = Path(tmpdir)
        t0 = time.perf_counter()
        star = simulate(work, args.n_per_model, args.seed)
        log.info("simulated in %.0f s", time.perf_counter() - t0)
        truth = prepare_conditions(
            star, work, box=args.box, max_shift_fraction=args.max_shift_fraction, seed=args.seed
        )
        rows = []
        for cond in ("centred", "shifted"):
            for method in ("cryomanifold", "aspire"):
                row: dict[str, Any] = {"method": method, "condition": cond}
                res = (
                    run_worker(method, cond, work, args.k)
                    if (method != "aspire" or has_aspire)
                    else None
                )
                if res is None:
                    row["skipped"] = "not installed" if not has_aspire else "failed (see log)"
                else:
                    row.update(score(drop_self(res.pop("neighbours"), args.k), truth, groups))
                    row.update(res)
                    log.info("%s", row)
                rows.append(row)
    rng = np.random.default_rng(args.seed + 2)
    chance = score(rng.integers(0, truth["n"], size=(truth["n"], args.k)), truth, groups)
    # importlib.metadata, not ``import aspire``: the import writes logs/ under the cwd
    version = importlib.metadata.version("aspire") if has_aspire else "n/a"
    results = {
        "meta": {
            "n_per_model": args.n_per_model,
            "n_particles": truth["n"],
            "models": list(MODELS),
            "raw_box": truth["raw_box"],
            "raw_apix": truth["raw_apix"],
            "box": args.box,
            "apix": truth["apix"],
            "k": args.k,
            "max_shift_fraction": args.max_shift_fraction,
            "shift_px_max": truth["shift_px_max"],
            "seed": args.seed,
            "aspire_version": version,
            "cpu": f"{os.cpu_count()} CPU cores ({platform.system()} {platform.machine()})",
            "python": platform.python_version(),
        },
        "rows": rows,
        "chance": chance,
        "goals": goals(rows),
    }
    cmd = "python benchmarks/vs_aspire.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:])
    )
    write_results(results, json_path, md_path, cmd.strip())
    log.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
