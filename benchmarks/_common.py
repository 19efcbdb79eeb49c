"""Helpers shared by the benchmark scripts: machine info, result files, symmetry frames,
the outputs of a run."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path, check_writable

RESULTS = Path(__file__).resolve().parent / "results"
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def machine_info() -> dict[str, Any]:
    """CPU count, platform and library versions, for the result files."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }
    for pkg in ("cryomanifold", "numpy", "scipy", "scikit-learn", "umap-learn", "numba"):
        try:
            info[pkg] = version(pkg)
        except PackageNotFoundError:
            info[pkg] = "unknown"
    info.update(_git_state())
    try:
        with open("/proc/loadavg") as fh:
            info["loadavg_at_start"] = fh.read().split()[:3]
    except OSError:
        pass
    return info


def _git_state() -> dict[str, Any]:
    """Commit of the source tree and the files under src/ that differ from it."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown"}
    return {"git_commit": head, "git_modified_src": [d[3:] for d in dirty if d.strip()]}


def write_results(
    name: str, data: dict[str, Any], markdown: str, *, overwrite: bool, out_dir: Path = RESULTS
) -> tuple[Path, Path]:
    """Write ``out_dir/name.json`` and ``out_dir/name.md`` atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = (out_dir / f"{name}.json", out_dir / f"{name}.md")
    for p in paths:
        check_writable(p, overwrite=overwrite)
    with atomic_path(paths[0]) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    with atomic_path(paths[1]) as tmp:
        tmp.write_text(markdown)
    return paths


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if v != v else f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _symmetry_misfit(
    coords: npt.NDArray[np.float64], tree: Any, rotation: npt.NDArray[np.float64]
) -> float:
    dist, _ = tree.query(coords @ rotation.T)
    return float(np.median(dist))


def _axis_rotation(axis: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    from scipy.spatial.transform import Rotation

    return np.asarray(Rotation.from_rotvec(axis / np.linalg.norm(axis) * angle).as_matrix())


def _fibonacci_hemisphere(n: int) -> npt.NDArray[np.float64]:
    """About ``n`` roughly uniform unit vectors with z >= 0."""
    i = np.arange(2 * n) + 0.5
    z = 1.0 - i / n
    phi = np.pi * (1.0 + 5**0.5) * i
    r = np.sqrt(np.clip(1.0 - z**2, 0.0, None))
    v = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    return v[v[:, 2] >= 0]


def _best_axis(
    sample: npt.NDArray[np.float64],
    tree: Any,
    angle: float,
    candidates: npt.NDArray[np.float64],
) -> tuple[npt.NDArray[np.float64], float]:
    """The candidate axis whose rotation by ``angle`` best maps the atoms onto themselves,
    refined on a finer local grid."""
    scores = [_symmetry_misfit(sample, tree, _axis_rotation(a, angle)) for a in candidates]
    best = candidates[int(np.argmin(scores))]
    for step in (np.deg2rad(1.0), np.deg2rad(0.25)):
        u = np.cross(best, [1.0, 0.0, 0.0] if abs(best[0]) < 0.9 else [0.0, 1.0, 0.0])
        u /= np.linalg.norm(u)
        w = np.cross(best, u)
        grid = [best + step * (i * u + j * w) for i in range(-4, 5) for j in range(-4, 5)]
        grid = [g / np.linalg.norm(g) for g in grid]
        scores = [_symmetry_misfit(sample, tree, _axis_rotation(a, angle)) for a in grid]
        best = grid[int(np.argmin(scores))]
    return best, float(min(scores))


def _cubic_frame(
    sample: npt.NDArray[np.float64], tree: Any, group: str
) -> tuple[npt.NDArray[np.float64], float]:
    """Frame of T (two-fold axes) or O (four-fold axes) along x, y, z."""
    angle = np.pi / 2 if group.upper() == "O" else np.pi
    z, mz = _best_axis(sample, tree, angle, _fibonacci_hemisphere(1500))
    x0 = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x0 /= np.linalg.norm(x0)
    y0 = np.cross(z, x0)
    phis = np.deg2rad(np.arange(0.0, 90.0, 0.25))
    scores = [
        _symmetry_misfit(sample, tree, _axis_rotation(np.cos(p) * x0 + np.sin(p) * y0, angle))
        for p in phis
    ]
    phi = phis[int(np.argmin(scores))]
    x = np.cos(phi) * x0 + np.sin(phi) * y0
    return np.stack([x, np.cross(z, x), z], axis=1), max(mz, float(min(scores)))


def symmetry_frame(
    coords_angstrom: npt.ArrayLike, group: str, *, n_sample: int = 3000, seed: int = 0
) -> tuple[npt.NDArray[np.float64], float]:
    """Find the frame of a Cn, Dn, T or O model's symmetry axes.

    The n-fold axis is the principal axis of inertia with the most distinct
    moment; for Dn the two-fold axis is found by scanning the perpendicular
    directions for the rotation that best maps the atoms onto themselves. For T and
    O (isotropic inertia) a two-fold (T) or four-fold (O) axis is found by scanning
    directions over a hemisphere, then a second one perpendicular to it.

    Parameters
    ----------
    coords_angstrom : array_like, shape (N, 3)
    group : str
        ``"Cn"``, ``"Dn"``, ``"T"`` or ``"O"``.

    Returns
    -------
    frame : ndarray, shape (3, 3)
        Columns: the model-frame directions of the standard x (a two-fold axis for
        Dn), y and z (the n-fold axis; for T and O the axes of
        :func:`cryomanifold.metrics.symmetry_group`); ``frame @ G @ frame.T`` is the group in the
        model frame.
    misfit_angstrom : float
        Median distance of symmetry-mapped atoms to the nearest atom (worst over
        the generators): small (about 1 Å or less) if the symmetry is right.
    """
    from scipy.spatial import cKDTree

    xyz = np.asarray(coords_angstrom, dtype=np.float64)
    xyz = xyz - xyz.mean(axis=0)
    rng = np.random.default_rng(seed)
    sample = xyz[rng.choice(len(xyz), min(n_sample, len(xyz)), replace=False)]
    tree = cKDTree(xyz)
    if group.upper() in ("T", "O"):
        return _cubic_frame(sample, tree, group)
    evals, evecs = np.linalg.eigh(np.cov(xyz.T))
    gaps = [
        abs(evals[i] - evals[(i + 1) % 3]) + abs(evals[i] - evals[(i + 2) % 3]) for i in range(3)
    ]
    z = evecs[:, int(np.argmax(gaps))]
    n = int(group[1:])
    misfit = _symmetry_misfit(sample, tree, _axis_rotation(z, 2 * np.pi / n)) if n > 1 else 0.0
    x0 = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x0 /= np.linalg.norm(x0)
    y0 = np.cross(z, x0)
    x = x0
    if group[0].upper() == "D":
        phis = np.deg2rad(np.arange(0.0, 180.0 / n, 0.25))
        scores = []
        for phi in phis:
            axis = np.cos(phi) * x0 + np.sin(phi) * y0
            scores.append(_symmetry_misfit(sample, tree, _axis_rotation(axis, np.pi)))
        best = int(np.argmin(scores))
        x = np.cos(phis[best]) * x0 + np.sin(phis[best]) * y0
        misfit = max(misfit, scores[best])
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1), misfit


@dataclass(frozen=True)
class RunOutputs:
    """What a benchmark reads back from a run folder (the output contract).

    Attributes
    ----------
    labels : ndarray, shape (n,), int
        0-based class of each particle (``rlnClassNumber - 1``), -1 if skipped.
    junk : ndarray, shape (n,), bool
        Particles called junk: the per-particle ``_cmJunk`` column when the run
        writes one, else the junk flag of the particle's class in classes.csv
        (skipped particles count as junk).
    junk_score : ndarray, shape (n,), float
        ``_cmJunkScore``.
    class_junk : ndarray, shape (K,), bool
        The ``junk`` column of classes.csv.
    features : ndarray, shape (n, d), float32
        features.npy.
    class_averages : ndarray, shape (K, L, L), float32
    pixel_size_angstrom : float
        Of the class averages.
    particles : pandas.DataFrame
        The run's particles.star (every input column plus the run's).
    info : dict
        run.json.
    """

    labels: npt.NDArray[np.int64]
    junk: npt.NDArray[np.bool_]
    junk_score: npt.NDArray[np.float64]
    class_junk: npt.NDArray[np.bool_]
    features: npt.NDArray[np.float32]
    class_averages: npt.NDArray[np.float32]
    pixel_size_angstrom: float
    particles: Any
    info: dict[str, Any]


def read_run_outputs(out_dir: Path, stage: str = "final") -> RunOutputs:
    """Read particles.star, classes.csv, features.npy, class_averages.mrcs and run.json.

    ``stage="final"``: the run's classes; with the refine stage, its features are
    refined_features.npy (the vectors the classes come from). ``stage="map"``: the
    first stage of the same run (the map's classes, per-particle junk call, class
    averages and invariants, from the run's stage artefacts).
    """
    import mrcfile
    import pandas as pd
    import starfile

    if stage == "map":
        return _read_map_stage(out_dir)

    particles = starfile.read(out_dir / "particles.star", always_dict=True)["particles"]
    labels = particles["rlnClassNumber"].to_numpy(np.int64) - 1
    classes = pd.read_csv(out_dir / "classes.csv")
    class_junk = np.zeros(int(classes["class_number"].max()), dtype=bool)
    class_junk[classes["class_number"].to_numpy() - 1] = classes["junk"].to_numpy() == 1
    if "cmJunk" in particles:
        junk = particles["cmJunk"].to_numpy() == 1
    else:
        junk = (labels < 0) | class_junk[np.maximum(labels, 0)]
    with mrcfile.open(out_dir / "class_averages.mrcs", permissive=True) as mrc:
        averages = np.asarray(mrc.data, dtype=np.float32).reshape(-1, *mrc.data.shape[-2:])
        pixel = float(mrc.voxel_size.x)
    info = json.loads((out_dir / "run.json").read_text())
    return RunOutputs(
        labels=labels,
        junk=junk,
        junk_score=particles["cmJunkScore"].to_numpy(np.float64),
        class_junk=class_junk,
        features=np.load(
            out_dir / "refined_features.npy"
            if (out_dir / "refined_features.npy").is_file()
            else out_dir / "features.npy"
        ),
        class_averages=averages,
        pixel_size_angstrom=float(info.get("pixel_size_angstrom", pixel)),
        particles=particles,
        info=info,
    )


def _read_map_stage(out_dir: Path) -> RunOutputs:
    """The first stage's results of a run (see :func:`read_run_outputs`)."""
    import starfile

    from cryomanifold.stages.averages import load_averages
    from cryomanifold.stages.embed import load_embedding
    from cryomanifold.stages.folder import RunFolder
    from cryomanifold.stages.junk import load_junk

    folder = RunFolder(out_dir)
    folder.read_state()
    info = json.loads((out_dir / "run.json").read_text())
    particles = starfile.read(out_dir / "particles.star", always_dict=True)["particles"]
    embedded = load_embedding(folder)
    called = load_junk(folder)
    k = int(called.classes.flags.size)
    averages = load_averages(
        folder, k, int(info["box_size"]), int(info["examples_per_class"])
    ).averages
    return RunOutputs(
        labels=embedded.labels,
        junk=np.asarray(called.junk, bool),
        junk_score=np.asarray(called.score, np.float64),
        class_junk=np.asarray(called.classes.flags, bool),
        features=np.load(out_dir / "features.npy"),
        class_averages=averages,
        pixel_size_angstrom=float(info["pixel_size_angstrom"]),
        particles=particles,
        info=info,
    )
