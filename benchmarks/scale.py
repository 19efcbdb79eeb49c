"""Scale: time and memory against the number of particles, fit-sample quality, Dask workers.

Data: T20S proteasome + rubisco + 20% junk simulated at 64 px, 3.5 Å/px, 20 e-/Å²,
300 kV, defocus 1.0-2.5 µm, stored as float16 (as a new user would bring a large
extracted set), with RELION .star metadata and truth labels. The largest simulated
set is the base; smaller sizes are its first N rows. Sizes beyond the base (10^6) are
made from the base by quarter-turns and transposes of its images, with the
astigmatism angle turned to match (new poses of the same particles, the noise turned
with them): enough to measure time and memory, not quality, and reported so.

1. Cost growth: ``cryomanifold run`` in a fresh process for each size, wall time and
   peak resident memory (``/usr/bin/time -v``), the stage timings of run.json, and
   for simulated sizes species ARI and junk F1 (the per-particle ``_cmJunk`` call).
2. Fit sample: at one size, the default ``--fit-sample`` against a full fit and
   smaller samples: species ARI, junk F1 and 10-NN view coherence of the map.
3. Dask: the features stage with a 2-worker LocalCluster against 1 worker, and the
   classes of the 2-worker run against the default threaded run.

Writes benchmarks/results/scale.json and scale.md.

Usage::

    python benchmarks/scale.py --work /tmp/cm_scale [--sizes 10000 100000 300000]
        [--million] [--fit-size 100000] --overwrite
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
import time
from pathlib import Path
from typing import Any

import mrcfile
import numpy as np
import pandas as pd
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, machine_info, md_table, write_results
from cryomanifold import metrics

log = logging.getLogger("scale")

MODELS = ("models/3j9i_T20S_proteasome.pdb.gz", "models/1bxn_rubisco_L8S8_assembly1.cif.gz")
BOX, APIX = 64, 3.5


def simulate_base(work: Path, n_total: int) -> Path:
    """The float16 base set of about ``n_total`` particles (simulated once, reused)."""
    from cryomanifold.simulate.dataset import simulate_dataset

    out = work / f"base_{n_total}"
    star16 = out / "particles16.star"
    if star16.exists():
        return star16
    n_per_model = round(n_total * 0.8 / len(MODELS))
    simulate_dataset(
        [SHARED_DATA / m for m in MODELS],
        n_per_model=n_per_model,
        junk_fraction=0.2,
        out_dir=out,
        box_size=BOX,
        pixel_size_angstrom=APIX,
        dose_e_per_angstrom2=20.0,
        defocus_range_angstrom=(10000.0, 25000.0),
        seed=11,
        batch_size=256,
        overwrite=True,
    )
    _to_float16(out / "particles.mrcs", out / "particles16.mrcs")
    (out / "particles.mrcs").unlink()
    tables = starfile.read(out / "particles.star", always_dict=True)
    tables["particles"]["rlnImageName"] = tables["particles"]["rlnImageName"].str.replace(
        "particles.mrcs", "particles16.mrcs"
    )
    starfile.write(tables, star16, overwrite=True)
    return star16


def _to_float16(src: Path, dst: Path, chunk: int = 20000) -> None:
    with mrcfile.mmap(src, permissive=True) as m:
        n = m.data.shape[0]
        with mrcfile.new_mmap(dst, shape=(n, BOX, BOX), mrc_mode=12, overwrite=True) as out:
            out.set_image_stack()
            out.voxel_size = APIX
            for s in range(0, n, chunk):
                out.data[s : s + chunk] = m.data[s : s + chunk].astype(np.float16)


def subset(base_star: Path, n: int, work: Path) -> Path:
    """The first ``n`` rows of the base (same stack), or a turned copy beyond it."""
    tables = starfile.read(base_star, always_dict=True)
    parts = tables["particles"]
    out = work / f"set_{n}"
    star = out / "particles.star"
    if star.exists():
        return star
    out.mkdir(parents=True, exist_ok=True)
    stack = base_star.parent / "particles16.mrcs"
    if n <= len(parts):
        sub = parts.iloc[:n].copy()
        sub["rlnImageName"] = sub["rlnImageName"].str.replace(
            "particles16.mrcs", os.path.relpath(stack, out)
        )
        starfile.write({"optics": tables["optics"], "particles": sub}, star, overwrite=True)
        return star
    _turned_copy(stack, parts, tables["optics"], n, out)
    return star


def _turned_copy(stack: Path, parts: pd.DataFrame, optics: pd.DataFrame, n: int, out: Path) -> None:
    base = len(parts)
    rows = []
    with (
        mrcfile.mmap(stack, permissive=True) as m,
        mrcfile.new_mmap(
            out / "particles.mrcs", shape=(n, BOX, BOX), mrc_mode=12, overwrite=True
        ) as dst,
    ):
        dst.set_image_stack()
        dst.voxel_size = APIX
        for start in range(0, n, base):
            copy = start // base
            k, flip = copy % 4, (copy // 4) % 2
            stop = min(start + base, n)
            img = np.asarray(m.data[: stop - start])
            img = np.rot90(img, k, axes=(1, 2))
            if flip:
                img = np.swapaxes(img, 1, 2)
            dst.data[start:stop] = img
            block = parts.iloc[: stop - start].copy()
            angle = block["rlnDefocusAngle"].to_numpy() + 90.0 * k
            block["rlnDefocusAngle"] = np.mod(90.0 - angle if flip else angle, 180.0)
            rows.append(block)
    table = pd.concat(rows, ignore_index=True)
    table["rlnImageName"] = [f"{i + 1:07d}@particles.mrcs" for i in range(n)]
    starfile.write({"optics": optics, "particles": table}, out / "particles.star", overwrite=True)


def timed_run(star: Path, out: Path, extra: list[str]) -> dict[str, Any]:
    """``cryomanifold run`` in a fresh process under ``/usr/bin/time -v``."""
    if out.exists():
        shutil.rmtree(out)
    exe = shutil.which("cryomanifold")
    if exe is None:
        raise RuntimeError("the cryomanifold command is not on PATH; pip install -e . first")
    cmd = [exe, "run", str(star), "--out", str(out), "--quiet", "--no-atlas", *extra]
    full = ["/usr/bin/time", "-v", *cmd] if os.path.exists("/usr/bin/time") else cmd
    t0 = time.perf_counter()
    proc = subprocess.run(full, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    cpu = [re.search(rf"{k} time \(seconds\): ([\d.]+)", proc.stderr) for k in ("User", "System")]
    cpu_s = sum(float(m.group(1)) for m in cpu if m) if all(cpu) else None
    info = json.loads((out / "run.json").read_text())
    return {
        "n_particles": info["n_particles"],
        "n_fit": info.get("n_fit"),
        "n_classes": info["n_classes"],
        "wall_s": round(wall, 1),
        # the cores the run got on average: 2 on a quiet 2-core machine
        "cpu_s": None if cpu_s is None else round(cpu_s, 1),
        "cores_used": None if cpu_s is None else round(cpu_s / wall, 2),
        "load_before": _loadavg(),
        "peak_rss_mib": round(int(peak.group(1)) / 1024, 1) if peak else None,
        "timings_s": info["timings_s"],
        "args": extra,
    }


def _loadavg() -> float | None:
    try:
        with open("/proc/loadavg") as fh:
            return float(fh.read().split()[0])
    except OSError:  # pragma: no cover - not Linux
        return None


def quality(star: Path, out: Path, *, views: bool = False) -> dict[str, Any]:
    """Species ARI and junk F1 of a finished run against the simulation's truth."""
    truth = starfile.read(star, always_dict=True)["particles"]
    got = starfile.read(out / "particles.star", always_dict=True)["particles"]
    labels = got["rlnClassNumber"].to_numpy() - 1
    names = truth["cmTruthLabel"].to_numpy().astype(str)
    junk_call = got["cmJunk"].to_numpy().astype(bool)
    pr = metrics.junk_precision_recall(junk_call, names)
    res: dict[str, Any] = {
        "species_ari": round(float(metrics.species_ari(labels, names)), 3),
        "junk_precision": round(float(pr.precision), 3),
        "junk_recall": round(float(pr.recall), 3),
        "junk_f1": round(float(pr.f1), 3),
    }
    if views:
        res["view_coherence"] = _views(truth, np.load(out / "embedding.npy"))
    return res


def _views(truth: pd.DataFrame, embedding: np.ndarray) -> dict[str, float]:
    """Share of 10 nearest neighbours in the map within 10° of the same view (symmetry-aware)."""
    from sklearn.neighbors import NearestNeighbors

    from _common import symmetry_frame
    from cryomanifold.simulate import load_model

    names = truth["cmTruthLabel"].to_numpy().astype(str)
    out = {}
    for path, group in zip(MODELS, ("D7", "D4"), strict=True):
        model = load_model(SHARED_DATA / path)
        frame, _ = symmetry_frame(model.coords_angstrom, group)
        sym = frame @ metrics.symmetry_group(group) @ frame.T
        idx = np.flatnonzero(names == model.name)[:20000]
        angles = truth[["rlnAngleRot", "rlnAngleTilt"]].to_numpy()[idx]
        dirs = metrics.viewing_directions(angles[:, 0], angles[:, 1])
        nb = NearestNeighbors(n_neighbors=11).fit(embedding[idx]).kneighbors(return_distance=False)
        score = metrics.view_coherence_deg(dirs, neighbors=nb, symmetry=sym)
        out[model.name] = round(float(score.fraction_within_10deg), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, required=True, help="folder for datasets and runs")
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 300_000])
    p.add_argument("--million", action="store_true", help="also 10^6 (a turned copy; time only)")
    p.add_argument("--fit-size", type=int, default=100_000, help="size of the fit-sample study")
    p.add_argument("--fit-samples", type=int, nargs="+", default=[0, 20_000])
    p.add_argument("--dask-size", type=int, default=50_000, help="size of the worker study")
    p.add_argument("--no-fit-study", action="store_true", help="skip the fit-sample study")
    p.add_argument("--no-dask", action="store_true", help="skip the Dask worker study")
    p.add_argument("--name", default="scale", help="stem of the result files (default scale)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--report-only", action="store_true", help="rewrite scale.md from scale.json")
    args = p.parse_args(argv)
    if args.report_only:
        from _common import RESULTS

        data = json.loads((RESULTS / f"{args.name}.json").read_text())
        write_results(args.name, data, _markdown(data), overwrite=True)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    base = simulate_base(args.work, max(args.sizes))
    n_base = len(starfile.read(base, always_dict=True)["particles"])
    results: dict[str, Any] = {"machine": machine_info(), "base_particles": n_base}

    growth = []
    sizes = list(args.sizes) + ([1_000_000] if args.million else [])
    for n in sizes:
        star = subset(base, n, args.work)
        out = args.work / f"run_{n}"
        row = timed_run(star, out, [])
        if n <= n_base:
            row["quality"] = quality(star, out, views=n == args.fit_size)
        shutil.rmtree(out / "stages", ignore_errors=True)
        growth.append(row)
        log.info("%d particles: %s", n, row)
    results["growth"] = growth

    study = []
    for fs in [] if args.no_fit_study else args.fit_samples:
        star = subset(base, args.fit_size, args.work)
        out = args.work / f"fit_{fs}"
        row = timed_run(star, out, ["--fit-sample", str(fs)])
        row["fit_sample"] = fs or "all"
        row["quality"] = quality(star, out, views=True)
        study.append(row)
        log.info("fit sample %s: %s", fs, row)
    results["fit_sample"] = study
    if not args.no_dask:
        results["dask"] = _dask_study(subset(base, args.dask_size, args.work), args.work)
    write_results(args.name, results, _markdown(results), overwrite=args.overwrite)
    return 0


def _dask_study(star: Path, work: Path) -> dict[str, Any]:
    """The same run on the threaded scheduler, one and two LocalCluster workers."""
    dask_rows = {}
    for name, extra in (
        ("threads", []),
        ("1 worker", ["--workers", "1"]),
        ("2 workers", ["--workers", "2"]),
    ):
        out = work / f"dask_{name.replace(' ', '_')}"
        dask_rows[name] = timed_run(star, out, extra)
        dask_rows[name]["labels"] = starfile.read(out / "particles.star", always_dict=True)[
            "particles"
        ]["rlnClassNumber"].to_numpy()
    same = bool(np.array_equal(dask_rows["threads"]["labels"], dask_rows["2 workers"]["labels"]))
    for row in dask_rows.values():
        del row["labels"]
    f1 = dask_rows["1 worker"]["timings_s"]["features"]
    f2 = dask_rows["2 workers"]["timings_s"]["features"]
    return {
        "runs": dask_rows,
        "features_speedup_2_over_1_worker": round(f1 / f2, 2),
        "two_workers_same_classes_as_threads": same,
    }


def _markdown(r: dict[str, Any]) -> str:
    lines = ["# Scale (benchmarks/scale.py)", "", "## Time and memory against N", ""]
    rows = []
    for g in r["growth"]:
        t = g["timings_s"]
        q = g.get("quality", {})
        rows.append(
            [
                g["n_particles"],
                g["n_fit"],
                g["wall_s"],
                g.get("cores_used", "n/a"),
                g["peak_rss_mib"],
                t.get("features"),
                t.get("fit"),
                t.get("embed"),
                t.get("averages"),
                t.get("outputs"),
                q.get("species_ari", "n/a (turned copy)"),
                q.get("junk_f1", "n/a"),
            ]
        )
    lines.append(
        md_table(
            [
                "N",
                "fit on",
                "wall s",
                "cores used",
                "peak MiB",
                "features",
                "fit",
                "embed",
                "averages",
                "outputs",
                "ARI",
                "junk F1",
            ],
            rows,
        )
    )
    m = r["machine"]
    lines += [
        "",
        f"Source: commit {m['git_commit'][:10]}, modified: "
        f"{', '.join(m.get('git_modified_src', [])) or 'none'}; {m['cpu_count']} CPUs, shared.",
    ]
    if r["fit_sample"]:
        lines += ["", "## Fit sample (same data)", ""]
        lines.append(
            md_table(
                ["fit sample", "wall s", "ARI", "junk F1", "views T20S", "views rubisco"],
                [
                    [
                        s["fit_sample"],
                        s["wall_s"],
                        s["quality"]["species_ari"],
                        s["quality"]["junk_f1"],
                        *s["quality"]["view_coherence"].values(),
                    ]
                    for s in r["fit_sample"]
                ],
            )
        )
    if "dask" not in r:
        return "\n".join(lines) + "\n"
    d = r["dask"]
    lines += [
        "",
        "## Dask",
        "",
        "features stage, 2-worker LocalCluster over 1 worker: "
        f"{d['features_speedup_2_over_1_worker']}x; 2-worker classes identical to the "
        f"threaded run: {d['two_workers_same_classes_as_threads']}",
        "",
    ]
    lines.append(
        md_table(
            ["scheduler", "wall s", "features s", "peak MiB (driver)"],
            [
                [k, v["wall_s"], v["timings_s"]["features"], v["peak_rss_mib"]]
                for k, v in d["runs"].items()
            ],
        )
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
