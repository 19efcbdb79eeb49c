"""Throughput: featurisation rate against an I/O + FFT floor, end-to-end runs, start-up cost.

1. Featurisation: writes float32 ``.mrcs`` stacks (default 20,000 images of 64 and
   of 128 px: noise plus a few Gaussian blobs) with mrcfile, then times, on the
   same stack read through ``read_particles(...).batches()``:

   * the **floor**: the memory-mapped read plus one batched ``rfft2`` per batch;
   * ``invariant_features`` (defaults) on the images as they are;
   * the pipeline's featurisation (``prepare_images`` to the 64 px box, then
     ``invariant_features``).

   Each is timed twice and the faster is kept (the stack is then in the page
   cache for all of them: this measures compute, not disk).
2. End to end: ``cryomanifold run`` in a fresh process on 10,000 simulated
   particles (T20S + rubisco + 20% junk, 128 px at 2 Å/px, 20 e/Å²), with wall
   time and peak resident memory from ``/usr/bin/time -v`` and the stage
   timings from run.json; ``--large`` adds 100,000 particles.
3. Start-up: a 300-particle ``cryomanifold run`` in a fresh process, first with an
   empty ``NUMBA_CACHE_DIR`` (umap's numba functions are compiled), then again
   with that cache warm.

Writes benchmarks/results/throughput.json and .md.

Usage::

    python benchmarks/throughput.py [--n-images 20000] [--large] [--work DIR] --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft as sfft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, machine_info, md_table, write_results
from cryomanifold.features import invariant_features
from cryomanifold.io import read_particles
from cryomanifold.preprocess import prepare_images

log = logging.getLogger("throughput")

MODELS = ("models/3j9i_T20S_proteasome.pdb.gz", "models/1bxn_rubisco_L8S8_assembly1.cif.gz")
BATCH = 1024


def write_blob_stack(path: Path, n: int, box: int, *, seed: int = 0, chunk: int = 2000) -> None:
    """Write ``n`` float32 images of Gaussian noise plus 4 random Gaussian blobs each."""
    import mrcfile

    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[:box, :box] - box / 2).astype(np.float32)
    tmp = path.with_suffix(".tmp.mrcs")
    with mrcfile.new_mmap(tmp, shape=(n, box, box), mrc_mode=2, overwrite=True) as mrc:
        mrc.voxel_size = 128.0 / box * 2.0
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            imgs = rng.standard_normal((m, box, box), dtype=np.float32)
            for _ in range(4):
                c = rng.uniform(-box / 6, box / 6, (m, 2, 1, 1)).astype(np.float32)
                w = rng.uniform(box / 32, box / 10, (m, 1, 1)).astype(np.float32)
                imgs += 2.0 * np.exp(-((yy - c[:, 0]) ** 2 + (xx - c[:, 1]) ** 2) / (2 * w**2))
            mrc.data[start : start + m] = imgs
    tmp.replace(path)


def _time_pass(path: Path, work: Callable[[np.ndarray], object], repeats: int = 2) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        with read_particles(path) as stack:
            for _, imgs in stack.batches(BATCH):
                work(imgs)
        best = min(best, time.perf_counter() - t0)
    return best


def _pipeline_features(images: np.ndarray, *, pixel_size_angstrom: float) -> np.ndarray:
    prepared, _ = prepare_images(images, box=64, pixel_size_angstrom=pixel_size_angstrom)
    return invariant_features(prepared)


def featurisation(work_dir: Path, n: int, boxes: list[int]) -> list[dict[str, Any]]:
    out = []
    for box in boxes:
        path = work_dir / f"blobs_{n}_{box}px.mrcs"
        if not path.exists():
            t0 = time.perf_counter()
            write_blob_stack(path, n, box)
            log.info("wrote %s in %.0f s", path, time.perf_counter() - t0)
        apix = 2.0 * 128 / box
        floor = _time_pass(path, lambda x: sfft.rfft2(x, workers=-1))
        feats = _time_pass(path, lambda x: invariant_features(x))
        pipe = _time_pass(path, partial(_pipeline_features, pixel_size_angstrom=apix))
        row = {
            "box": box,
            "n_images": n,
            "floor_particles_per_s": n / floor,
            "features_particles_per_s": n / feats,
            "features_time_over_floor": feats / floor,
            "pipeline_features_particles_per_s": n / pipe,
            "pipeline_features_time_over_floor": pipe / floor,
        }
        log.info("%s", row)
        out.append(row)
    return out


def _simulate(out: Path, n_per_model: int) -> Path:
    from cryomanifold.simulate.dataset import simulate_dataset

    star = out / "particles.star"
    if not star.exists():
        simulate_dataset(
            [SHARED_DATA / m for m in MODELS],
            n_per_model=n_per_model,
            junk_fraction=0.2,
            out_dir=out,
            box_size=128,
            pixel_size_angstrom=2.0,
            seed=1,
        )
    return star


def timed_run(star: Path, out: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``cryomanifold run`` in a fresh process under ``/usr/bin/time -v``."""
    if out.exists():
        shutil.rmtree(out)
    exe = shutil.which("cryomanifold")
    if exe is None:
        raise RuntimeError("the cryomanifold command is not on PATH; pip install -e . first")
    cmd = [exe, "run", str(star), "--out", str(out), "--quiet"]
    use_time = os.path.exists("/usr/bin/time")
    full = ["/usr/bin/time", "-v", *cmd] if use_time else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    info = json.loads((out / "run.json").read_text())
    return {
        "n_particles": info["n_particles"],
        "n_classes": info["n_classes"],
        "wall_s": round(wall, 2),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "timings_s": info["timings_s"],
    }


def startup(work_dir: Path) -> dict[str, Any]:
    star = _simulate(work_dir / "sim_300", 120)
    cache = Path(tempfile.mkdtemp(prefix="numba_cache_", dir=work_dir))
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache))
    cold = timed_run(star, work_dir / "run_300_cold", env)
    warm = timed_run(star, work_dir / "run_300_warm", env)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import cryomanifold"], check=True)
    imp = time.perf_counter() - t0
    shutil.rmtree(cache, ignore_errors=True)
    return {"cold_numba_cache": cold, "warm_numba_cache": warm, "python_import_s": round(imp, 2)}


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Throughput (benchmarks/throughput.py)\n",
        f"Machine: {data['machine']['cpu_count']} CPUs ({data['machine']['processor']}), "
        f"load average at start {data['machine'].get('loadavg_at_start')}; source commit "
        f"{data['machine']['git_commit'][:10]}, modified: "
        f"{', '.join(data['machine'].get('git_modified_src', [])) or 'none'}; shared with "
        "other jobs, so timings are indicative. Stacks are read through "
        "`read_particles(...).batches(1024)` from the page cache.\n",
        "## Featurisation\n",
        "Floor: memory-mapped read + one batched `rfft2` of the same images. "
        "`features`: `invariant_features` (defaults) on the images as read; `pipeline`: "
        "`prepare_images` (Fourier crop to 64 px, normalise) + `invariant_features`.\n",
    ]
    rows = [
        [
            f"{r['box']} px",
            r["n_images"],
            round(r["floor_particles_per_s"]),
            round(r["features_particles_per_s"]),
            r["features_time_over_floor"],
            round(r["pipeline_features_particles_per_s"]),
            r["pipeline_features_time_over_floor"],
        ]
        for r in data["featurisation"]
    ]
    lines.append(
        md_table(
            [
                "stack",
                "images",
                "floor (particles/s)",
                "features (particles/s)",
                "features time / floor",
                "pipeline features (particles/s)",
                "pipeline time / floor",
            ],
            rows,
        )
    )
    lines.append("\n## End to end (`cryomanifold run`, fresh process)\n")
    stages = ["features", "fit", "embed", "averages", "junk", "outputs", "total"]
    rows = []
    for name, r in data["end_to_end"].items():
        t = r["timings_s"]
        rows.append(
            [name, r["n_particles"], r["n_classes"], r["wall_s"], r["peak_rss_mib"]]
            + [t.get(s, float("nan")) for s in stages]
        )
    lines.append(
        md_table(
            [
                "run",
                "particles",
                "classes",
                "wall (s)",
                "peak RSS (MiB)",
                *[f"{s} (s)" for s in stages],
            ],
            rows,
        )
    )
    lines.append(
        "\nWall time includes Python start-up and imports and writing atlas.html; `total` "
        "is the pipeline's own clock from run.json, which stops before the atlas is "
        "written. Peak RSS counts the pages of the memory-mapped stack that were read. "
        "`cold numba cache`: an empty "
        "`NUMBA_CACHE_DIR`, so umap's numba functions are compiled; `warm`: the same "
        f"run again. `python -c 'import cryomanifold'`: {data['startup']['python_import_s']} s.\n"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-images", type=int, default=20000)
    p.add_argument("--boxes", type=int, nargs="+", default=[64, 128])
    p.add_argument("--large", action="store_true", help="also run 100,000 particles end to end")
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/throughput"))
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    machine = machine_info()
    feat = featurisation(args.work, args.n_images, args.boxes)
    start = startup(args.work)
    e2e: dict[str, Any] = {
        "300 (cold numba cache)": start["cold_numba_cache"],
        "300 (warm numba cache)": start["warm_numba_cache"],
    }
    sizes = [10_000] + ([100_000] if args.large else [])
    for n in sizes:
        star = _simulate(args.work / f"sim_{n}", int(n * 0.4))
        log.info("running %d particles end to end", n)
        e2e[f"{n}"] = timed_run(star, args.work / f"run_{n}")
        log.info("%s", e2e[f"{n}"])
    data = {
        "featurisation": feat,
        "end_to_end": e2e,
        "startup": start,
        "machine": machine,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    paths = write_results("throughput", data, _markdown(data), overwrite=args.overwrite)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
