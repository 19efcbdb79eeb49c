"""Speed of the feature stage against its floor, its invariance and its quality (issue 10.5).

Simulates T20S proteasome + rubisco + 20% junk twice (default 600 per species,
1,500 particles each): 64 px at 3.5 Å/px stored as **float16** (with CTF), and
128 px at 1.75 Å/px stored as float32. On each stack, read in batches of 1,024
through ``read_particles(...).batches``-style reads (from the page cache), it times:

* the **floor**: the read plus one ``rfft2`` of each batch at the stack's box;
* the **whole feature stage** (64 px float16): read -> ``bad_images`` ->
  ``prepare_images`` -> ``invariant_features`` with the CTF -> the junk measures
  (``junk_signs.particle_measures``: edge stripes, signal presence under the CTF,
  density statistics, mass, the contrast feature), all of which run per batch in the
  pipeline's features stage; and the same without the junk measures ("features");
* the **core** (128 px float32): read -> ``prepare_images`` (Fourier crop to 64 px)
  -> ``invariant_features`` without CTF;

in three layouts: one thread (``workers=1``, one BLAS thread), one task with
``workers=2``, and two tasks in a thread pool with ``workers=1`` each (each task
reads its half of the stack through its own ``ParticleStack``, as Dask tasks
will), the latter with and without limiting BLAS to one thread (threadpoolctl).
Each timing is the fastest of ``--repeats`` runs, interleaved. Ratios are to the
floor measured in the same layout.

Then, single-threaded, a per-step breakdown; an alternative floor (read plus the
zero-padded FFT that the features need); the rotation-invariance error (analytic
particles rotated exactly, and noisy simulated particles rotated by cubic
interpolation, as ``metrics.invariance_error``); and the quality of the features
for several ``pad_factor`` values on the simulated 64 px set: 10-NN species/junk
accuracy (PCA 95%) and the share of each particle's 10 nearest neighbours within
10° of its view (per species, features as the pipeline feeds them to the PCA).

``--baseline REF`` also times the steps and the single-threaded layouts (one BLAS
thread) with the package as of git ``REF`` (a ``git archive`` of ``src/``, in a
subprocess) for a before/after table.

Writes benchmarks/results/features_speed.json and .md.

Usage::

    python benchmarks/features_speed.py [--n-per-model 1200] [--repeats 5]
        [--baseline REF] [--work DIR] --overwrite
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import inspect
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.fft as sfft
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, machine_info, md_table, write_results
from cryomanifold import metrics
from cryomanifold.features import invariant_features
from cryomanifold.io import read_particles
from cryomanifold.preprocess import bad_images, prepare_images

log = logging.getLogger("features_speed")

MODELS = {
    "3j9i_T20S_proteasome": ("models/3j9i_T20S_proteasome.pdb.gz", "D7"),
    "1bxn_rubisco_L8S8_assembly1": ("models/1bxn_rubisco_L8S8_assembly1.cif.gz", "D4"),
}
BATCH = 1024
BOX = 64
GOALS = {"whole_over_floor": 3.0, "core_over_floor": 2.0}
PAD_FACTORS = (2.0, 1.5, 1.25, 1.0)
BATCH_SIZES = (32, 64, 128, 256, 1024)  # invariant_features' internal batch
Stage = Callable[[Any, npt.NDArray[np.int64], int], None]


# --------------------------------------------------------------------------- data


def _simulate(work: Path, box: int, pixel: float, n_per_model: int, seed: int) -> Path:
    from cryomanifold.simulate.dataset import simulate_dataset

    out = work / f"sim{box}_n{n_per_model}_seed{seed}"
    star = out / "particles.star"
    if not star.exists():
        t0 = time.perf_counter()
        simulate_dataset(
            [SHARED_DATA / p for p, _ in MODELS.values()],
            n_per_model=n_per_model,
            junk_fraction=0.2,
            out_dir=out,
            box_size=box,
            pixel_size_angstrom=pixel,
            seed=seed,
            batch_size=256,
            overwrite=True,
        )
        log.info("simulated %s in %.0f s", star, time.perf_counter() - t0)
    return star


def _float16_copy(star: Path) -> Path:
    """The same particles stored as float16 (``particles16.mrcs`` / ``.star``)."""
    import mrcfile
    import starfile

    out = star.with_name("particles16.star")
    if out.exists():
        return out
    with mrcfile.open(star.with_name("particles.mrcs"), permissive=True) as m:
        data, voxel = m.data.astype(np.float16), float(m.voxel_size.x)
    with mrcfile.new(star.with_name("particles16.mrcs"), overwrite=True) as m:
        m.set_data(data)
        m.voxel_size = voxel
    tables = starfile.read(star, always_dict=True)
    names = tables["particles"]["rlnImageName"].str.replace("particles.mrcs", "particles16.mrcs")
    tables["particles"]["rlnImageName"] = names
    starfile.write(tables, out, overwrite=True)
    return out


# --------------------------------------------------------------------------- stages


def _kwargs(func: Callable[..., Any], **options: Any) -> dict[str, Any]:
    """The options ``func`` accepts (older versions of the package lack some)."""
    params = inspect.signature(func).parameters
    return {k: v for k, v in options.items() if k in params}


def _batches(rows: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    return [rows[i : i + BATCH] for i in range(0, rows.size, BATCH)]


def floor(stack: Any, rows: npt.NDArray[np.int64], workers: int) -> None:
    """Read + one rfft2 per batch at the stack's box."""
    for idx in _batches(rows):
        sfft.rfft2(stack.images(idx), workers=workers)


def _junk_measures() -> Callable[..., object] | None:
    """The per-batch junk work of this package version (None if it has none)."""
    try:
        from cryomanifold.junk_signs import particle_measures
    except ImportError:  # an older package: its two low-pass signs
        try:
            from cryomanifold import junk  # type: ignore[attr-defined]
        except ImportError:
            return None

        def old(prepared: Any, apix: float, ctf: Any, raw: Any, workers: int) -> object:
            junk.particle_contrast(prepared, pixel_size_angstrom=apix, workers=workers)
            return junk.particle_mass(prepared, pixel_size_angstrom=apix, workers=workers)

        return old

    def new(prepared: Any, apix: float, ctf: Any, raw: Any, workers: int) -> object:
        kwargs = {"workers": workers} if "workers" in _params(particle_measures) else {}
        return particle_measures(prepared, pixel_size_angstrom=apix, ctf=ctf, raw=raw, **kwargs)

    return new


def _params(func: Callable[..., object]) -> set[str]:
    import inspect

    return set(inspect.signature(func).parameters)


def whole(stack: Any, rows: npt.NDArray[np.int64], workers: int, *, junk: bool = True) -> None:
    """Read -> bad_images -> prepare_images -> invariant_features with the CTF -> the
    junk measures (``junk=False``: without them)."""
    measures = _junk_measures() if junk else None
    for idx in _batches(rows):
        imgs = stack.images(idx)
        bad = bad_images(imgs)
        if bad.any():
            imgs[bad] = 0.0
        prepared, apix = prepare_images(
            imgs,
            box=BOX,
            pixel_size_angstrom=stack.pixel_size_angstrom,
            **_kwargs(prepare_images, workers=workers),
        )
        ctf = stack.ctf.subset(idx)
        invariant_features(prepared, ctf=ctf, pixel_size_angstrom=apix, workers=workers)
        if measures is not None:
            raw = imgs if imgs.shape[-1] != prepared.shape[-1] else None
            measures(prepared, apix, ctf, raw, workers)


def features(stack: Any, rows: npt.NDArray[np.int64], workers: int) -> None:
    """The whole stage without the junk measures."""
    whole(stack, rows, workers, junk=False)


def core(stack: Any, rows: npt.NDArray[np.int64], workers: int) -> None:
    """Read -> prepare_images (crop) -> invariant_features without CTF."""
    for idx in _batches(rows):
        prepared, apix = prepare_images(
            stack.images(idx),
            box=BOX,
            pixel_size_angstrom=stack.pixel_size_angstrom,
            **_kwargs(prepare_images, workers=workers),
        )
        invariant_features(prepared, pixel_size_angstrom=apix, workers=workers)


STAGES: dict[str, Stage] = {"floor": floor, "whole": whole, "features": features, "core": core}


class Layout:
    """How a stage runs over a stack: ``tasks`` threads, each with its own stack."""

    def __init__(self, name: str, tasks: int, workers: int, blas_threads: int | None) -> None:
        self.name, self.tasks, self.workers, self.blas = name, tasks, workers, blas_threads

    def run(self, stage: Stage, stacks: Sequence[Any]) -> tuple[float, float]:
        """Wall and CPU seconds of one pass over the whole stack."""
        n = len(stacks[0])
        chunks = np.array_split(np.arange(n, dtype=np.int64), self.tasks)
        with threadpool_limits(self.blas, user_api="blas"):
            t0, c0 = time.perf_counter(), time.process_time()
            if self.tasks == 1:
                stage(stacks[0], chunks[0], self.workers)
            else:
                with ThreadPoolExecutor(self.tasks) as pool:
                    jobs = [
                        pool.submit(stage, stacks[i], chunks[i], self.workers)
                        for i in range(self.tasks)
                    ]
                    for job in jobs:
                        job.result()
            return time.perf_counter() - t0, time.process_time() - c0


LAYOUTS = (
    Layout("1 thread (workers=1, 1 BLAS thread)", 1, 1, 1),
    Layout("1 task, workers=2, 1 BLAS thread", 1, 2, 1),
    Layout("1 task, workers=2, BLAS unlimited", 1, 2, None),
    Layout("2 tasks x workers=1, 1 BLAS thread", 2, 1, 1),
    Layout("2 tasks x workers=1, BLAS unlimited", 2, 1, None),
)


def time_layouts(
    star64: Path, star128: Path, repeats: int, layouts: Sequence[Layout] = LAYOUTS
) -> list[dict[str, Any]]:
    """Fastest of ``repeats`` interleaved runs of each stage in each layout, us/particle."""
    stacks = {
        64: [read_particles(star64) for _ in range(2)],
        128: [read_particles(star128) for _ in range(2)],
    }
    plan = [("floor", 64), ("whole", 64), ("features", 64), ("floor", 128), ("core", 128)]
    out = []
    for layout in layouts:
        best: dict[tuple[str, int], tuple[float, float]] = {}
        for stage, box in plan:  # warm up: page cache, caches, thread pools
            layout.run(STAGES[stage], stacks[box])
        for _ in range(repeats):
            for stage, box in plan:
                wall_s, cpu_s = layout.run(STAGES[stage], stacks[box])
                if (stage, box) not in best or wall_s < best[(stage, box)][0]:
                    best[(stage, box)] = (wall_s, cpu_s)
        n = {box: len(s[0]) for box, s in stacks.items()}
        us = {f"{s}_{b}": 1e6 * best[(s, b)][0] / n[b] for s, b in plan}
        cpu = {f"{s}_{b}": 1e6 * best[(s, b)][1] / n[b] for s, b in plan}
        out.append(
            {
                "layout": layout.name,
                "us_per_particle": us,
                "cpu_us_per_particle": cpu,
                "whole_over_floor": us["whole_64"] / us["floor_64"],
                "features_over_floor": us["features_64"] / us["floor_64"],
                "core_over_floor": us["core_128"] / us["floor_128"],
            }
        )
        log.info("%s: %s", layout.name, {k: round(v, 1) for k, v in us.items()})
    for stack_list in stacks.values():
        for s in stack_list:
            s.close()
    return out


# --------------------------------------------------------------------------- steps


def _best(func: Callable[[], object], n: int, repeats: int) -> float:
    """Fastest of ``repeats`` runs, us per particle (one thread: CPU time is
    used, which other jobs on a shared machine disturb less than wall time)."""
    func()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        func()
        best = min(best, time.process_time() - t0)
    return 1e6 * best / n


def _steps(star: Path, repeats: int) -> dict[str, Any]:
    """Single-threaded cost of each step on one stack, us per particle."""
    try:  # the spectrum module is new in this version
        from cryomanifold.spectrum import padded_half_spectrum, spectrum_settings
    except ImportError:  # pragma: no cover - older package
        padded_half_spectrum = spectrum_settings = None  # type: ignore[assignment]

    prep = _kwargs(prepare_images, workers=1)
    stack = read_particles(star)
    n, apix = len(stack), stack.pixel_size_angstrom
    rows = _batches(np.arange(n, dtype=np.int64))
    raw = [stack.images(idx) for idx in rows]
    prepared = [prepare_images(x, box=BOX, pixel_size_angstrom=apix, **prep) for x in raw]
    ctfs = [stack.ctf.subset(idx) if stack.ctf is not None else None for idx in rows]
    # the same CTFs with a different defocus for every particle (per-particle CTF refinement)
    jitter = np.random.default_rng(0).normal(0.0, 50.0, n)
    own = [
        dataclasses.replace(
            c,
            defocus_u_angstrom=c.defocus_u_angstrom + jitter[idx],
            defocus_v_angstrom=c.defocus_v_angstrom + jitter[idx],
        )
        for c, idx in zip(ctfs, rows, strict=True)
        if c is not None
    ]

    def features(with_ctf: bool, **options: Any) -> None:
        for (p, a), c in zip(prepared, ctfs, strict=True):
            ctf = c if with_ctf else None
            invariant_features(p, ctf=ctf, pixel_size_angstrom=a, workers=1, **options)

    measures = _junk_measures()

    def junk_signs() -> None:
        if measures is None:
            return
        for (p, a), c, x in zip(prepared, ctfs, raw, strict=True):
            measures(p, a, c, x if x.shape[-1] != p.shape[-1] else None, 1)

    steps: dict[str, Callable[[], object]] = {
        "read": lambda: [stack.images(idx) for idx in rows],
        "rfft2 at the input box": lambda: [sfft.rfft2(x, workers=1) for x in raw],
        "bad_images": lambda: [bad_images(x) for x in raw],
        "prepare_images": lambda: [
            prepare_images(x, box=BOX, pixel_size_angstrom=apix, **prep) for x in raw
        ],
        "invariant_features (no CTF)": lambda: features(False),
        "invariant_features (CTF)": lambda: features(True),
        "invariant_features (CTF, pad_factor=2)": lambda: features(True, pad_factor=2.0),
        "invariant_features (CTF, each particle its own)": lambda: [
            invariant_features(p, ctf=c, pixel_size_angstrom=a, workers=1)
            for (p, a), c in zip(prepared, own, strict=True)
        ],
        "junk measures (junk_signs.particle_measures)": junk_signs,
    }
    if spectrum_settings is not None:
        spec = spectrum_settings(BOX)
        sub = 64  # invariant_features' default internal batch

        def padded() -> None:
            for p, _ in prepared:
                for i in range(0, len(p), sub):
                    padded_half_spectrum(p[i : i + sub], spec, 1)

        steps["  of which mask + zero-padded FFT"] = padded

    def features_in_batches_of(size: int) -> Callable[[], None]:
        def run() -> None:
            for (p, a), c in zip(prepared, ctfs, strict=True):
                invariant_features(p, ctf=c, pixel_size_angstrom=a, workers=1, batch_size=size)

        return run

    with threadpool_limits(1, user_api="blas"):
        costs = {name: _best(f, n, repeats) for name, f in steps.items()}
        internal = {size: _best(features_in_batches_of(size), n, repeats) for size in BATCH_SIZES}
    costs["floor (read + rfft2)"] = costs["read"] + costs["rfft2 at the input box"]
    stack.close()
    log.info("steps %s: %s", star, {k: round(v, 1) for k, v in costs.items()})
    return {
        "n": n,
        "pixel_size_angstrom": prepared[0][1],
        "us_per_particle": costs,
        "features_ctf_us_by_internal_batch": internal,
    }


def time_steps(star64: Path, star128: Path, repeats: int) -> dict[str, Any]:
    """Single-threaded cost of each step, us per particle, with the floor of each stack."""
    return {"64px": _steps(star64, repeats), "128px": _steps(star128, repeats)}


# --------------------------------------------------------------------------- quality


def _rotated_views(n_views: int = 4, seed: int = 0) -> tuple[Any, Any]:
    """Noise-free, CTF-free projections of each model at ``n_views`` random views, and
    the same views turned in plane (psi) by 17, 45, 133 and 250 degrees: the rotation is
    applied to the atoms, so the images carry no interpolation error of their own."""
    from cryomanifold.simulate import load_model, make_projector, relion_euler_to_matrix

    rng = np.random.default_rng(seed)
    psi = np.array([17.0, 45.0, 133.0, 250.0])
    base, turned = [], []
    for path, _ in MODELS.values():
        projector = make_projector(
            load_model(SHARED_DATA / path), box_size=BOX, pixel_size_angstrom=3.5, oversample=2
        )
        for _ in range(n_views):
            rot, tilt = rng.uniform(0, 360), np.degrees(np.arccos(rng.uniform(-1, 1)))
            base.append(projector.project(relion_euler_to_matrix([rot, tilt, 0.0]))[0])
            angles = np.stack([np.full(psi.size, rot), np.full(psi.size, tilt), psi], axis=1)
            turned.append(projector.project(relion_euler_to_matrix(angles)))
    return np.stack(base), np.concatenate(turned)


def invariance(star64: Path, n_noisy: int = 300) -> list[dict[str, Any]]:
    """Rotation-invariance error of the default features for each pad factor."""
    base, turned = _rotated_views()
    per_view = len(turned) // len(base)
    stack = read_particles(star64)
    imgs, _ = prepare_images(
        stack.images(np.arange(min(n_noisy, len(stack)))),
        box=BOX,
        pixel_size_angstrom=stack.pixel_size_angstrom,
    )
    stack.close()
    out = []
    for pad in PAD_FACTORS:
        f0 = np.repeat(invariant_features(base, pad_factor=pad), per_view, axis=0)
        f1 = invariant_features(turned, pad_factor=pad)
        rel = np.linalg.norm(f1 - f0, axis=1) / np.linalg.norm(f0, axis=1)
        noisy = metrics.invariance_error(
            functools.partial(invariant_features, pad_factor=pad),
            imgs,
            rng=np.random.default_rng(1),
        )
        out.append(
            {
                "pad_factor": pad,
                "analytic_rotation_median": float(np.median(rel)),
                "analytic_rotation_max": float(rel.max()),
                "noisy_rotation_over_between": noisy.rotation / noisy.between_particles,
                "noisy_shift_over_between": noisy.shift / noisy.between_particles,
            }
        )
    return out


def quality(star64: Path, pad_factors: Sequence[float | None]) -> list[dict[str, Any]]:
    """10-NN species/junk accuracy and view coherence of the features per pad factor
    (None: the package's default)."""
    import starfile
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    from _common import symmetry_frame
    from cryomanifold.simulate import load_model

    groups = {}
    for name, (path, sym) in MODELS.items():
        frame, _ = symmetry_frame(load_model(SHARED_DATA / path).coords_angstrom, sym)
        groups[name] = frame @ metrics.symmetry_group(sym) @ frame.T
    table = starfile.read(star64, always_dict=True)["particles"]
    truth = table["cmTruthLabel"].to_numpy().astype(str)
    angles = table[["rlnAngleRot", "rlnAngleTilt"]].to_numpy(np.float64)
    label = np.where(metrics.is_junk_label(truth), "junk", truth)
    stack = read_particles(star64)
    imgs, apix = prepare_images(
        stack.images(np.arange(len(stack))), box=BOX, pixel_size_angstrom=stack.pixel_size_angstrom
    )
    out = []
    for pad in pad_factors:
        options: dict[str, Any] = {} if pad is None else {"pad_factor": pad}
        feats = invariant_features(imgs, ctf=stack.ctf, pixel_size_angstrom=apix, **options)
        z = PCA(0.95, random_state=0).fit_transform(feats)
        nb = NearestNeighbors(n_neighbors=11).fit(z).kneighbors(return_distance=False)[:, 1:]
        row: dict[str, Any] = {
            "pad_factor": "default" if pad is None else pad,
            "knn10_species_junk_accuracy": float(np.mean(label[nb] == label[:, None])),
        }
        for name, group in groups.items():
            idx = np.flatnonzero(truth == name)
            dirs = metrics.viewing_directions(angles[idx, 0], angles[idx, 1])
            nbs = NearestNeighbors(n_neighbors=11).fit(feats[idx]).kneighbors(return_distance=False)
            coherence = metrics.view_coherence_deg(dirs, neighbors=nbs, symmetry=group)
            row[f"knn10_within_10deg_{name}"] = coherence.fraction_within_10deg
        out.append(row)
    stack.close()
    return out


# --------------------------------------------------------------------------- baseline


@contextlib.contextmanager
def package_at(ref: str) -> Iterator[tuple[dict[str, str], Path]]:
    """An environment whose PYTHONPATH holds the package as of git ``ref`` (a ``git
    archive`` of ``src/`` in a temporary folder), and that folder."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(
            ["git", "archive", ref, "src/cryomanifold"], cwd=root, capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield {**os.environ, "PYTHONPATH": str(Path(tmp) / "src")}, Path(tmp)


def run_baseline(ref: str, star64: Path, star128: Path, repeats: int) -> dict[str, Any]:
    """Steps and layouts timed with the package as of git ``ref``, in a subprocess."""
    with package_at(ref) as (env, tmp):
        result = tmp / "baseline.json"
        cmd = [sys.executable, __file__, "--_baseline-out", str(result), "--repeats", str(repeats)]
        cmd += ["--_stars", str(star64), str(star128)]
        subprocess.run(cmd, env=env, check=True)
        data: dict[str, Any] = json.loads(result.read_text())
    data["ref"] = ref
    return data


# --------------------------------------------------------------------------- report


def _markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    lines = [
        "# Feature-stage speed (benchmarks/features_speed.py)",
        "",
        f"Machine: {m['cpu_count']} CPUs ({m['processor']}), load average at start "
        f"{m.get('loadavg_at_start')}; source commit {str(m.get('git_commit'))[:10]}, "
        f"modified: {', '.join(m.get('git_modified_src') or []) or 'none'}. Shared with other "
        "jobs: every time is the fastest of several interleaved runs, and the ratios (to the "
        f"floor measured in the same layout) are what to read. Batches of {BATCH} as the "
        "pipeline reads them; 64 px float16 stack with CTF, 128 px float32 stack.",
        "",
        "## Whole stage and core against the floor",
        "",
        f"Goals: whole stage <= {GOALS['whole_over_floor']}x its floor, core <= "
        f"{GOALS['core_over_floor']}x. us = microseconds per particle (wall). The whole stage "
        "includes the per-particle junk measures (issue 8's edge stripes, signal presence "
        "under the CTF, density statistics, mass and the contrast feature); 'features' is "
        "the same without them.",
        "",
    ]
    rows = []
    for r in data["layouts"]:
        us = r["us_per_particle"]
        rows.append(
            [
                r["layout"],
                us["floor_64"],
                us["whole_64"],
                r["whole_over_floor"],
                r.get("features_over_floor", float("nan")),
                us["floor_128"],
                us["core_128"],
                r["core_over_floor"],
                r["cpu_us_per_particle"]["whole_64"] / us["whole_64"],
            ]
        )
    headers = [
        "layout",
        "floor 64 f16 (us)",
        "whole (us)",
        "whole / floor",
        "features / floor",
        "floor 128 f32 (us)",
        "core (us)",
        "core / floor",
        "CPU / wall (whole)",
    ]
    lines += [
        md_table(headers, rows),
        "CPU / wall: the cores the stage got on average (2 at most here); below 1 means other "
        "jobs held the machine and a layout's parallel speed-up cannot show.",
        "",
    ]
    if "baseline" in data:
        base = data["baseline"]
        lines += [f"Before (git {base['ref']}), same stacks, same machine, same run:", ""]
        rows = [
            [
                r["layout"],
                r["us_per_particle"]["whole_64"],
                r["whole_over_floor"],
                r["us_per_particle"]["core_128"],
                r["core_over_floor"],
            ]
            for r in base["layouts"]
        ]
        lines += [
            md_table(["layout", "whole (us)", "whole / floor", "core (us)", "core / floor"], rows)
        ]
    lines += [
        "## Steps, one thread",
        "",
        "Thread CPU time per particle of each step over the same batches (workers=1, one BLAS "
        "thread), and as a multiple of the floor (read + rfft2 at the input box).",
        "",
    ]
    steps = data["steps"]
    base_steps = data.get("baseline", {}).get("steps", {})
    for box in ("64px", "128px"):
        costs = steps[box]["us_per_particle"]
        flo = costs["floor (read + rfft2)"]
        headers = ["step", "us", "x floor"]
        old = base_steps.get(box, {}).get("us_per_particle", {})
        if old:
            headers += ["before (us)", "before x floor"]
        rows = []
        for name, v in costs.items():
            row: list[Any] = [name, v, v / flo]
            if old:
                ov = old.get(name, float("nan"))
                row += [ov, ov / old["floor (read + rfft2)"]]
            rows.append(row)
        lines += [f"### {box} ({'float16, with CTF' if box == '64px' else 'float32'})", ""]
        lines += [md_table(headers, rows)]
    rows = [
        [box, *steps[box]["features_ctf_us_by_internal_batch"].values()]
        for box in ("64px", "128px")
    ]
    lines += [
        "invariant_features (CTF) against its internal `batch_size` (the caller's batches "
        f"are {BATCH}), us per particle:",
        "",
        md_table(["stack", *[str(b) for b in BATCH_SIZES]], rows),
    ]
    s64 = steps["64px"]["us_per_particle"]
    s128 = steps["128px"]["us_per_particle"]
    start = s64["read"] + s64["bad_images"] + s64["prepare_images"]
    measures = s64.get("junk measures (junk_signs.particle_measures)", 0.0)
    whole = start + s64["invariant_features (CTF)"] + measures
    own = (
        start + s64.get("invariant_features (CTF, each particle its own)", float("nan")) + measures
    )
    core = s128["read"] + s128["prepare_images"] + s128["invariant_features (no CTF)"]
    lines += [
        "Sums of the steps (CPU time, steadier than wall time on a shared machine): whole "
        f"stage {whole:.1f} us = {whole / s64['floor (read + rfft2)']:.2f}x its floor "
        f"({own / s64['floor (read + rfft2)']:.2f}x when every particle has its own CTF); "
        f"core {core:.1f} us = {core / s128['floor (read + rfft2)']:.2f}x its floor.",
        "",
    ]
    if "  of which mask + zero-padded FFT" in s64:
        alt = s64["read"] + s64["  of which mask + zero-padded FFT"]
        lines += [
            "Alternative floor, 64 px: read + the masked, zero-padded FFT the features need "
            f"(default `pad_factor`): {alt:.1f} us; the whole stage is {whole / alt:.2f}x that.",
            "",
        ]
    lines += [
        "## Rotation invariance (default features)",
        "",
        "Exact rotation: noise-free projections of T20S and rubisco (4 random views each, "
        "64 px at 3.5 Å/px) and the same views turned in plane by 17, 45, 133 and 250° (the "
        "atoms are rotated, not the image): relative change of the feature vector. Noisy: "
        "`metrics.invariance_error` on 300 simulated particles (cubic-spline rotation; shifts "
        "up to L/8), as a fraction of the median distance between particles.",
        "",
    ]
    rows = [
        [
            r["pad_factor"],
            r["analytic_rotation_median"],
            r["analytic_rotation_max"],
            r["noisy_rotation_over_between"],
            r["noisy_shift_over_between"],
        ]
        for r in data["invariance"]
    ]
    lines += [
        md_table(
            ["pad_factor", "exact rotation: median", "max", "noisy rotation", "noisy shift"],
            rows,
        )
    ]
    lines += [
        "## Quality against pad_factor (simulated 64 px set, features with CTF)",
        "",
    ]
    names = list(MODELS)
    runs = [("this version", r) for r in data["quality"]]
    if "baseline" in data:
        runs += [(f"git {data['baseline']['ref']}", r) for r in data["baseline"]["quality"]]
    rows = [
        [who, r["pad_factor"], r["knn10_species_junk_accuracy"]]
        + [r[f"knn10_within_10deg_{n}"] for n in names]
        for who, r in runs
    ]
    lines += [
        md_table(
            ["code", "pad_factor", "10-NN species/junk accuracy"]
            + [f"10-NN within 10° ({n.split('_')[1]})" for n in names],
            rows,
        )
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-model", type=int, default=600)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--baseline", help="git ref to time as well (before/after)")
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/features_speed"))
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    p.add_argument("--_baseline-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--_stars", type=Path, nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args._baseline_out:  # the subprocess of run_baseline
        star64, star128 = args._stars
        layouts = [lay for lay in LAYOUTS if lay.blas == 1 and lay.workers == 1]
        before = {
            "layouts": time_layouts(star64, star128, args.repeats, layouts),
            "steps": time_steps(star64, star128, args.repeats),
            "quality": quality(star64, [None]),
        }
        args._baseline_out.write_text(json.dumps(before))
        return 0
    t_start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    star64 = _float16_copy(_simulate(args.work, 64, 3.5, args.n_per_model, args.seed))
    star128 = _simulate(args.work, 128, 1.75, args.n_per_model, args.seed)
    data: dict[str, Any] = {"machine": machine_info(), "batch": BATCH, "goals": GOALS}
    data["layouts"] = time_layouts(star64, star128, args.repeats)
    data["steps"] = time_steps(star64, star128, args.repeats)
    if args.baseline:
        data["baseline"] = run_baseline(args.baseline, star64, star128, args.repeats)
    data["invariance"] = invariance(star64)
    data["quality"] = quality(star64, PAD_FACTORS[:-1])
    data["wall_s"] = round(time.perf_counter() - t_start, 1)
    paths = write_results("features_speed", data, _markdown(data), overwrite=args.overwrite)
    log.info("wrote %s and %s in %.0f s", *paths, data["wall_s"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
