"""Benchmark: cryomanifold's nearest neighbours vs ASPIRE's rotationally invariant kNN.

Both methods get the same simulated particles (T20S, D7, and Rubisco L8S8, D4; no
junk), with two imaging presets of ``cryomanifold simulate``: ``paper`` (the old
simulator) and ``realistic`` (protein contrast 0.3 of vacuum, particle B-factors,
ice, neighbours in the box; its own ±8 Å shifts off, so that "centred" is centred).
Each method finds the ``k`` nearest neighbours of every particle:

* **aspire** (``aspire.classification.RIRClass2D``, defaults: FSPCA with 400
  components, 300 bispectrum components, legacy implementations; Zhao, Shkolnisky &
  Singer 2014) on an ``ArrayImageSource`` of the images Fourier-cropped to 64 px and
  phase-flipped with :func:`cryomanifold.preprocess.prepare_images`. ASPIRE runs
  offline: in its worker every socket connection raises, and its log folder is a
  temporary one. Time: featurisation + neighbours (cropping excluded).
* **cryomanifold**: the whole run with the second stage on, ``cryomanifold run
  --refine``, i.e. ``cryomanifold.pipeline.run(star, out, RunConfig(box=64,
  refine=True))`` on the 256 px stack (the invariant map, then the phase-keeping
  refine stage), and kNN in its ``refined_features.npy`` (each particle's
  best-over-pose correlations with the final references: the vectors the run's
  classes come from). Time: the whole run (reading, cropping, both stages, the
  averages, the outputs) + kNN. The refine stage's own summary (rounds, classes,
  seconds; ``stages/state.json``) is kept in the results.
* **cryomanifold-map**: the first stage's invariants alone (what ``features.npy``
  holds), :func:`cryomanifold.features.invariant_features` on the same prepared
  64 px images as ASPIRE gets, kNN in PCA(95 %) space (the space the UMAP graph is
  built on): the numbers without the refine stage. Time: featurisation + PCA +
  neighbours. Also scored, untimed: kNN of the refine run's own ``features.npy`` in
  its map's PCA space (the model's scaling, with the run's log-contrast column
  weighted as the run weighs it; ``map_from_run`` in the JSON).

Scores (Zhao & Singer): for each neighbour pair, the angle between the true
viewing directions, reflection-aware (a view along ``-v`` is the mirror of the one
along ``v``, and every method here is mirror-invariant) and reduced over the point
group (the group is found from the model itself by superposing its identical chains
and then written exactly as a Dn group in that frame). Reported: the fraction of
pairs within 10 degrees (a neighbour of the other species counts as a miss), the
median angle over same-species pairs, and the fraction of same-species neighbours.
Each method runs in its own subprocess, which reports its wall time and its peak
resident memory (``VmHWM``, also given as the increase over the resident size after
imports and loading).

Two conditions: centred particles, and the same particles shifted in-plane,
uniformly in a disk of radius 10 % of the box (applied to the 256 px images as an
exact Fourier shift before cropping; the cryomanifold run reads them from a
shifted copy of the stack).

Usage::

    python benchmarks/vs_aspire.py [--n-per-model 1000] [--presets paper realistic]
        [--dose 20] [--k 10] [--overwrite]

With the defaults (2 × 2000 particles) it takes about 12 min on 2 shared cores.
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

from cryomanifold._atomic import check_writable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _dn_symmetry import pair_angles_deg, point_group, viewing_directions
from _vs_aspire_report import METHODS, goals, write_results

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "models"
MODELS = {
    "3j9i_T20S_proteasome": ("3j9i_T20S_proteasome.pdb.gz", 7),
    "1bxn_rubisco_L8S8_assembly1": ("1bxn_rubisco_L8S8_assembly1.cif.gz", 4),
}
F64 = npt.NDArray[np.float64]
log = logging.getLogger("vs_aspire")
PRESETS = ("paper", "realistic")
METHOD_NAMES = tuple(METHODS)


# -- data ----------------------------------------------------------------------------
def simulate(work: Path, n_per_model: int, seed: int, preset: str, dose: float) -> Path:
    """Simulate the centred stack (256 px, 1 Å/px, no junk, no shifts) with a preset of
    ``cryomanifold simulate``."""
    from cryomanifold.simulate import simulate_dataset

    paths = [DATA / f for f, _ in MODELS.values()]
    for p in paths:
        if not p.exists():
            raise FileNotFoundError(f"model {p} not found; this benchmark needs shared/data")
    no_shift = {"shift_sigma_angstrom": 0.0} if preset == "paper" else {"shift_max_angstrom": 0.0}
    return simulate_dataset(
        paths,
        n_per_model=n_per_model,
        junk_fraction=0.0,
        out_dir=work / "sim",
        seed=seed,
        overwrite=True,
        preset=preset,
        dose_e_per_angstrom2=dose,
        **no_shift,
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
    import starfile

    from cryomanifold.io import MrcStackWriter, read_particles
    from cryomanifold.preprocess import prepare_images

    stack = read_particles(star)
    assert stack.ctf is not None and stack.metadata is not None
    n, size = len(stack.metadata), stack.box_size
    shifts = disk_shifts(n, max_shift_fraction * size, np.random.default_rng(seed + 1))
    out = {c: np.empty((n, box, box), np.float32) for c in ("centred", "shifted")}
    apix = stack.pixel_size_angstrom
    # the shifted 256 px stack and its .star, for the cryomanifold run
    tables = starfile.read(star, always_dict=True)
    tables["particles"]["rlnImageName"] = [f"{i + 1:06d}@shifted.mrcs" for i in range(n)]
    starfile.write(tables, work / "shifted.star", overwrite=True)
    with MrcStackWriter(work / "shifted.mrcs", n, size, stack.pixel_size_angstrom) as writer:
        for start in range(0, n, 256):  # batches bound the memory (a 256 px stack is large)
            idx = np.arange(start, min(start + 256, n))
            raw = stack.images(idx)
            moved = fourier_shift(raw, shifts[idx])
            writer.write(moved)
            for cond, imgs in (("centred", raw), ("shifted", moved)):
                out[cond][idx], apix = prepare_images(
                    imgs,
                    box=box,
                    pixel_size_angstrom=stack.pixel_size_angstrom,
                    ctf=stack.ctf.subset(idx),
                )
    (work / "centred.star").symlink_to(Path(star).resolve())
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


def _worker_map(images: npt.NDArray[np.float32], work: Path, k: int) -> npt.NDArray:
    from cryomanifold.ctf import CTFParams
    from cryomanifold.features import invariant_features

    z = np.load(work / "ctf.npz")
    apix = float(z["pixel_size_angstrom"])
    ctf = CTFParams(**{k2: z[k2] for k2 in z.files if k2 != "pixel_size_angstrom"})
    return _pca_knn(invariant_features(images, ctf=ctf, pixel_size_angstrom=apix), k)


def _pca_knn(feats: npt.NDArray, k: int) -> npt.NDArray:
    """kNN (self included) in the PCA(95 %) space the pipeline's UMAP graph starts from
    (standardised first only when the pipeline's ``RunConfig().standardize`` is set)."""
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    from cryomanifold.pipeline import RunConfig

    xs = StandardScaler().fit_transform(feats) if RunConfig().standardize else feats
    xp = PCA(n_components=0.95, svd_solver="full", random_state=0).fit_transform(xs)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xp).kneighbors(xp)
    return np.asarray(idx)


def _map_space_knn(run_dir: Path, k: int) -> npt.NDArray:
    """kNN (self included) of a run's ``features.npy`` in its map's own PCA space (the
    model's feature scaling, the contrast column weighted as the run weighs it)."""
    from sklearn.neighbors import NearestNeighbors

    from cryomanifold.modelfile import load_model

    manifold = load_model(run_dir / "model").manifold
    xp = manifold.pca_coordinates(np.load(run_dir / "features.npy"))
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(xp).kneighbors(xp)
    return np.asarray(idx)


def _worker_run(work: Path, cond: str, k: int, box: int) -> tuple[npt.NDArray, dict[str, Any]]:
    """The whole run with the refine stage on the 256 px stack; kNN in
    ``refined_features.npy``. Also returns the stage times and the refine summary."""
    from sklearn.neighbors import NearestNeighbors

    from cryomanifold.pipeline import RunConfig, run

    out = work / f"run_{cond}"
    result = run(
        work / f"{cond}.star",
        out,
        RunConfig(box=box, refine=True, progress=False, atlas=False),
        overwrite=True,
    )
    feats = np.load(out / "refined_features.npy")
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(feats).kneighbors(feats)
    state = json.loads((out / "stages" / "state.json").read_text())
    refine = state["stages"]["refine"]
    run_info = json.loads((out / "run.json").read_text())
    extra = {
        "timings_s": dict(result.timings_s),
        "refine": refine,
        "n_classes": run_info.get("n_classes"),
        "n_map_classes": run_info.get("n_map_classes"),
    }
    return np.asarray(idx), extra


def _worker_aspire(images: npt.NDArray[np.float32], work: Path, k: int) -> npt.NDArray:
    from aspire.classification import RIRClass2D
    from aspire.source import ArrayImageSource

    apix = float(np.load(work / "ctf.npz")["pixel_size_angstrom"])
    src = ArrayImageSource(images, pixel_size=apix)
    classes, _, _ = RIRClass2D(src, n_nbor=k, seed=0).classify()
    return np.asarray(classes)


def worker(method: str, cond: str, work: Path, k: int, box: int) -> None:
    """Run one method on one condition; write neighbours and timings to ``work``."""
    if method == "aspire":
        _block_network()
        os.chdir(tempfile.mkdtemp(dir=work))  # ASPIRE writes logs/ under the cwd
        import aspire  # noqa: F401  (import cost outside the timing)
    else:
        import sklearn.decomposition  # noqa: F401

        import cryomanifold.features
        import cryomanifold.pipeline  # noqa: F401
    images = np.load(work / f"{cond}.npy") if method != "cryomanifold" else None
    base = _proc_status_mb("VmRSS")
    t0 = time.perf_counter()
    extra: dict[str, Any] = {}
    if method == "cryomanifold":
        idx, extra = _worker_run(work, cond, k, box)
    else:
        assert images is not None
        fn = _worker_aspire if method == "aspire" else _worker_map
        idx = fn(images, work, k)
    seconds = time.perf_counter() - t0
    peak = _proc_status_mb("VmHWM")
    np.save(work / f"nbrs_{method}_{cond}.npy", idx)
    if method == "cryomanifold":  # outside the timing: kNN in the run's own map space
        np.save(work / f"nbrs_map_from_run_{cond}.npy", _map_space_knn(work / f"run_{cond}", k))
    (work / f"time_{method}_{cond}.json").write_text(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak,
                "base_rss_mb": base,
                "network_attempts": len(_NETWORK_ATTEMPTS),
                **extra,
            }
        )
    )


def run_worker(method: str, cond: str, work: Path, k: int, box: int) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--worker", method, cond, "--work", str(work)]
    cmd += ["--k", str(k), "--box", str(box)]
    log.info("running %s on %s particles", method, cond)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode:
        log.error("%s/%s failed:\n%s", method, cond, res.stderr[-4000:])
        return None
    out: dict[str, Any] = json.loads((work / f"time_{method}_{cond}.json").read_text())
    out["neighbours"] = np.load(work / f"nbrs_{method}_{cond}.npy")
    from_run = work / f"nbrs_map_from_run_{cond}.npy"
    if method == "cryomanifold" and from_run.is_file():
        out["map_from_run_neighbours"] = np.load(from_run)
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


def score_result(
    res: dict[str, Any], truth: dict[str, Any], groups: dict[str, F64], k: int
) -> dict[str, Any]:
    """A worker's result with its neighbours replaced by their scores."""
    res = dict(res)
    out = score(drop_self(res.pop("neighbours"), k), truth, groups)
    if "map_from_run_neighbours" in res:
        check = score(drop_self(res.pop("map_from_run_neighbours"), k), truth, groups)
        keys = ("frac_within_10deg", "median_angle_deg", "same_species_frac")
        out["map_from_run"] = {key: check[key] for key in keys}
    return {**out, **res}


# -- report --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-per-model", type=int, default=1000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--box", type=int, default=64)
    ap.add_argument("--max-shift-fraction", type=float, default=0.1)
    ap.add_argument("--presets", nargs="+", choices=("paper", "realistic"), default=list(PRESETS))
    ap.add_argument("--dose", type=float, default=20.0, help="e/Å² (default 20)")
    ap.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "vs_aspire")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker", nargs=2, metavar=("METHOD", "COND"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.worker:
        worker(args.worker[0], args.worker[1], args.work, args.k, args.box)
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
    load_start = os.getloadavg()[0]
    rows: list[dict[str, Any]] = []
    chance: dict[str, Any] = {}
    truth: dict[str, Any] = {}
    for preset in args.presets:
        with tempfile.TemporaryDirectory(prefix=f"vs_aspire_{preset}_") as tmpdir:
            work = Path(tmpdir)
            t0 = time.perf_counter()
            star = simulate(work, args.n_per_model, args.seed, preset, args.dose)
            log.info("simulated %s in %.0f s", preset, time.perf_counter() - t0)
            truth = prepare_conditions(
                star, work, box=args.box, max_shift_fraction=args.max_shift_fraction, seed=args.seed
            )
            for cond in ("centred", "shifted"):
                for method in args.methods:
                    row: dict[str, Any] = {"preset": preset, "method": method, "condition": cond}
                    res = (
                        run_worker(method, cond, work, args.k, args.box)
                        if (method != "aspire" or has_aspire)
                        else None
                    )
                    if res is None:
                        row["skipped"] = "not installed" if not has_aspire else "failed (see log)"
                    else:
                        row.update(score_result(res, truth, groups, args.k))
                        log.info("%s", {k: v for k, v in row.items() if k != "per_species"})
                    rows.append(row)
        rng = np.random.default_rng(args.seed + 2)
        random_nbrs = rng.integers(0, truth["n"], size=(truth["n"], args.k))
        chance[preset] = score(random_nbrs, truth, groups)
    # importlib.metadata, not ``import aspire``: the import writes logs/ under the cwd
    version = importlib.metadata.version("aspire") if has_aspire else "n/a"
    results = {
        "meta": {
            "n_per_model": args.n_per_model,
            "n_particles": truth["n"],
            "models": list(MODELS),
            "presets": args.presets,
            "dose": args.dose,
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
            "load_average": [load_start, os.getloadavg()[0]],
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
