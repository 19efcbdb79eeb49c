"""Classification quality across dose, with realistic and with the paper's imaging.

Simulates five species available offline: T20S proteasome (3J9I, D7), rubisco
(1BXN L8S8, D4), p97 hexamer (3CF3, C6), apoferritin (6Z6U, O) and the 30S
ribosomal subunit (4V4R, C1), plus 20% junk, 256 px at 1.25 Å/px (a 320 Å box,
which the 30S needs), 300 kV, defocus 1.0-2.5 µm, at each dose (default 10, 20,
30 and 40 e-/Å²) with each imaging preset of ``cryomanifold simulate``:
``realistic`` (protein contrast 0.3 of vacuum, shifts up to ±8 Å, particle
B-factors 50-150 Å², ice thickness and slope, neighbours in the box) and ``paper``
(the easy reference). Each stack is classified with the public pipeline API,
``cryomanifold.pipeline.run(star, out, RunConfig(box=80, ...))`` (4 Å/px, so 8 Å
is Nyquist), and scored from the files the run writes (particles.star,
classes.csv, features.npy, class_averages.mrcs):

* species ARI / NMI of class-majority labels, per-species purity and recall;
* junk precision / recall / F1 (per-particle ``_cmJunk`` when the run writes it,
  else the class's junk flag), recall per junk kind;
* view coherence: the share of each particle's 10 nearest neighbours in
  features.npy that are of its species and within 10° of its view (reflection- and
  symmetry-reduced; other species count as misses), the share of same-species
  neighbours, pairs within classes, and chance (random same-species neighbours);
* class-average resolution: FRC of each particle class average against the
  CTF-free true projection at the class's symmetry-aware mean view (the projector
  of the stack's preset, Fourier-cropped like the run, the view and its mirror
  aligned to the average), at 0.5 and 0.143; the median over classes;
* wall time.

Then runs the defaults on the real beta-galactosidase particles (no truth).

Writes benchmarks/results/quality.json, quality.md, quality_snr.png and
betagal_map.png (``--name`` changes the stem ``quality``). The T20S + rubisco pair
at the earlier benchmark's settings (``quality_pair.*``, for continuity with the
numbers before the sweep)::

    python benchmarks/quality.py --species 3j9i 1bxn --doses 20 --box 256 --pixel-size 1.0 \\
        --run-box 64 --n-per-model 1500 --no-betagal --name quality_pair --overwrite

Simulated stacks are kept in ``--work`` and reused when their settings match.

Usage::

    python benchmarks/quality.py --overwrite   # ~20 min of CPU (56 min wall when shared)
    python benchmarks/quality.py --n-per-model 2000 --doses 5 10 20 40 60 --overwrite
    python benchmarks/quality.py --species 3j9i 1bxn --presets realistic --overwrite
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS,
    SHARED_DATA,
    RunOutputs,
    machine_info,
    read_run_outputs,
    symmetry_frame,
    write_results,
)
from _quality_report import GOAL_MIN_DOSE, GOALS, markdown, plot
from cryomanifold import metrics
from cryomanifold.alignment import align_to_reference
from cryomanifold.pipeline import RunConfig, run
from cryomanifold.preprocess import fourier_crop, soft_circular_mask
from cryomanifold.simulate import (
    SimulationConfig,
    load_model,
    make_projectors,
    relion_euler_to_matrix,
    simulate_dataset,
)

log = logging.getLogger("quality")

#: short name -> (model file under shared/data, point group)
MODELS = {
    "3j9i": ("models/3j9i_T20S_proteasome.pdb.gz", "D7"),
    "1bxn": ("models/1bxn_rubisco_L8S8_assembly1.cif.gz", "D4"),
    "3cf3": ("models/3cf3_p97_hexamer_assembly1.cif.gz", "C6"),
    "6z6u": ("models/6z6u_human_apoferritin_24mer.pdb.gz", "O"),
    "4v4r": ("models/4v4r_30S_ribosomal_subunit.pdb.gz", "C1"),
}
BETAGAL = "real_particles/betagal_empiar10204_dev/Extract/job009/particles_ctf_fixed.star"
K_NEIGHBORS = 10
#: FRC thresholds of the class-average resolution, by result key
FRC_THRESHOLDS = {"frc05": 0.5, "frc0143": 0.143}
MAX_CLASS_MEMBERS = 300


def _simulate(work: Path, preset: str, dose: float, args: argparse.Namespace) -> Path:
    """The stack of one preset and dose, reused from ``work`` if its settings match."""
    settings = {
        "species": args.species,
        "n_per_model": args.n_per_model,
        "junk_fraction": args.junk_fraction,
        "seed": args.seed,
        "preset": preset,
        "config": dataclasses.asdict(_sim_config(preset, dose, args)),
    }
    out = work / f"sim_{preset}_{'-'.join(args.species)}_n{args.n_per_model}_dose{dose:g}"
    star, record = out / "particles.star", out / "settings.json"
    same = record.exists() and json.loads(record.read_text()) == json.loads(json.dumps(settings))
    if star.exists() and same:
        log.info("reusing %s", star)
        return star
    t0 = time.perf_counter()
    cfg = settings["config"]
    simulate_dataset(
        [SHARED_DATA / MODELS[s][0] for s in args.species],
        n_per_model=args.n_per_model,
        junk_fraction=args.junk_fraction,
        out_dir=out,
        seed=args.seed,
        overwrite=True,
        preset=preset,
        **{k: cfg[k] for k in ("box_size", "pixel_size_angstrom", "dose_e_per_angstrom2")},
    )
    record.write_text(json.dumps(settings, indent=1))
    log.info("simulated %s in %.0f s", star, time.perf_counter() - t0)
    return star


def _sim_config(preset: str, dose: float, args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig.preset(
        preset,
        box_size=args.box,
        pixel_size_angstrom=args.pixel_size,
        dose_e_per_angstrom2=dose,
    )


# ---------------------------------------------------------------- scores


def _class_resolutions(
    out: RunOutputs,
    truth: npt.NDArray[np.str_],
    angles: npt.NDArray[np.float64],
    groups: dict[str, npt.NDArray[np.float64]],
    projectors: dict[str, Any],
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """FRC resolution of each particle class average against its mean true view."""
    averages = out.class_averages
    box = averages.shape[-1]
    mask = soft_circular_mask(box, 0.4 * box, 0.08 * box)
    rows = []
    for c in range(len(averages)):
        members = np.flatnonzero(out.labels == c)
        if members.size < 5 or out.class_junk[c]:
            continue
        names, counts = np.unique(truth[members], return_counts=True)
        major = str(names[np.argmax(counts)])
        if major not in projectors:
            continue
        own = members[truth[members] == major]
        if own.size > MAX_CLASS_MEMBERS:
            own = rng.choice(own, MAX_CLASS_MEMBERS, replace=False)
        dirs = metrics.viewing_directions(angles[own, 0], angles[own, 1])
        mean = metrics.mean_viewing_direction(dirs, groups[major])
        spread = metrics.view_coherence_deg(
            np.vstack([mean, dirs]),
            neighbors=np.zeros((own.size + 1, 1), dtype=np.intp),
            symmetry=groups[major],
        )
        rot, tilt = np.degrees(np.arctan2(mean[1], mean[0])), np.degrees(np.arccos(mean[2]))
        proj = projectors[major].project(relion_euler_to_matrix([rot, tilt, 0.0]))
        proj = fourier_crop(proj, box) if proj.shape[-1] > box else proj
        candidates = np.concatenate([proj, proj[:, :, ::-1]])  # the view and its mirror
        ali = align_to_reference(candidates, averages[c])
        best = int(np.argmax(ali.scores))
        res = {
            f"{key}_resolution_angstrom": metrics.frc_resolution_angstrom(
                ali.aligned[best] * mask, averages[c] * mask, out.pixel_size_angstrom, t
            )
            for key, t in FRC_THRESHOLDS.items()
        }
        rows.append(
            {
                "class": c + 1,
                "species": major,
                "size": int(members.size),
                "purity": float(counts.max() / members.size),
                "view_spread_median_deg": spread.median_deg,
                **res,
                "alignment_score": float(ali.scores[best]),
            }
        )
    return rows


def _view_scores(
    out: RunOutputs,
    truth: npt.NDArray[np.str_],
    angles: npt.NDArray[np.float64],
    groups: dict[str, npt.NDArray[np.float64]],
    rng: np.random.Generator,
) -> dict[str, Any]:
    """10-NN in features.npy and within-class view coherence, per species and overall."""
    from sklearn.neighbors import NearestNeighbors

    kept = np.flatnonzero(out.labels >= 0)
    feats, tr, ang = out.features[kept], truth[kept], angles[kept]
    nb = NearestNeighbors(n_neighbors=K_NEIGHBORS + 1).fit(feats).kneighbors(return_distance=False)
    nb = nb[:, 1:]  # drop the particle itself
    per: dict[str, Any] = {}
    hits = total = 0
    for name, group in groups.items():
        idx = np.flatnonzero(tr == name)
        if idx.size < 2:
            continue
        local = np.full(len(tr), -1, dtype=np.intp)
        local[idx] = np.arange(idx.size)
        same = local[nb[idx]]  # neighbours as indices into idx, -1 for other labels
        own_row = np.broadcast_to(np.arange(idx.size)[:, None], same.shape)
        dirs = metrics.viewing_directions(ang[idx, 0], ang[idx, 1])
        # other-species neighbours become the row itself, which view_coherence_deg skips
        vc = metrics.view_coherence_deg(
            dirs, neighbors=np.where(same >= 0, same, own_row), symmetry=group
        )
        within = vc.fraction_within_10deg * vc.n_pairs if vc.n_pairs else 0.0
        chance = metrics.view_coherence_deg(
            dirs, neighbors=rng.integers(0, idx.size, (idx.size, K_NEIGHBORS)), symmetry=group
        )
        per_class = metrics.view_coherence_deg(dirs, out.labels[kept][idx], symmetry=group)
        per[name] = {
            "knn_within_10deg": float(within / same.size),
            "knn_same_species": float(np.mean(same >= 0)),
            "knn_median_deg_same_species": vc.median_deg,
            "chance_within_10deg": chance.fraction_within_10deg,
            "per_class_within_10deg": per_class.fraction_within_10deg,
            "per_class_median_deg": per_class.median_deg,
        }
        hits, total = hits + within, total + same.size
    return {"knn_within_10deg": float(hits / max(total, 1)), "species": per}


def _score_run(
    star: Path,
    out_dir: Path,
    config: RunConfig,
    groups: dict[str, npt.NDArray[np.float64]],
    projectors: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """Run the pipeline and score its classes; with the refine stage, the first
    stage (the map) of the same run is scored too (``"map"``)."""
    t0 = time.perf_counter()
    run(star, out_dir, config, overwrite=True)
    wall = time.perf_counter() - t0
    scores = _score_outputs(read_run_outputs(out_dir), groups, projectors, seed)
    scores["wall_s"] = round(wall, 1)
    if config.refine:
        scores["map"] = _score_outputs(read_run_outputs(out_dir, "map"), groups, projectors, seed)
        scores["map"]["wall_s"] = round(wall - scores["timings_s"].get("refine", 0.0), 1)
    return scores


def _score_outputs(
    out: RunOutputs,
    groups: dict[str, npt.NDArray[np.float64]],
    projectors: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    truth = out.particles["cmTruthLabel"].to_numpy().astype(str)
    angles = out.particles[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
    junk = metrics.junk_precision_recall(out.junk, truth)
    pr = metrics.species_purity_recall(out.labels, truth)
    rng = np.random.default_rng(seed)
    classes = _class_resolutions(out, truth, angles, groups, projectors, rng)
    summary = {
        f"class_{key}_median_angstrom": float(
            np.median([c[f"{key}_resolution_angstrom"] for c in classes])
        )
        if classes
        else float("nan")
        for key in FRC_THRESHOLDS
    }
    return {
        "n_particles": int(out.labels.size),
        "n_classes": int(out.class_averages.shape[0]),
        "n_junk_classes": int(out.class_junk.sum()),
        "species_ari": metrics.species_ari(out.labels, truth),
        "species_nmi": metrics.species_nmi(out.labels, truth),
        "purity_recall": {k: {"purity": p, "recall": r} for k, (p, r) in pr.items()},
        "junk_source": "_cmJunk" if "cmJunk" in out.particles else "classes.csv junk flag",
        "junk_precision": junk.precision,
        "junk_recall": junk.recall,
        "junk_f1": junk.f1,
        "junk_recall_by_kind": junk.recall_by_kind,
        "view_coherence": _view_scores(out, truth, angles, groups, rng),
        **summary,
        "class_frc05_best_angstrom": min(
            (c["frc05_resolution_angstrom"] for c in classes), default=float("nan")
        ),
        "class_resolutions": classes,
        "pixel_size_angstrom": out.pixel_size_angstrom,
        "timings_s": out.info.get("timings_s", {}),
    }


def _betagal(work: Path, results: Path, overwrite: bool) -> dict[str, Any] | None:
    star = SHARED_DATA / BETAGAL
    if not star.exists():
        log.warning("%s is absent: skipping the beta-galactosidase run", star)
        return None
    out_dir = work / "betagal_defaults"
    t0 = time.perf_counter()
    run(star, out_dir, RunConfig(progress=False, atlas=False), overwrite=True)
    wall = time.perf_counter() - t0
    out = read_run_outputs(out_dir)
    classes = pd.read_csv(out_dir / "classes.csv")
    junk_rows = classes[classes["junk"] == 1]
    dest = results / "betagal_map.png"
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass --overwrite")
    shutil.copyfile(out_dir / "map.png", dest)
    return {
        "input": BETAGAL,
        "n_particles": int(out.labels.size),
        "n_classes": len(classes),
        "class_sizes": classes["size"].tolist(),
        "junk_fraction": float(out.junk.mean()),
        "junk_classes": [
            {
                "class": int(r["class_number"]),
                "size": int(r["size"]),
                "reason": str(r["junk_reason"]),
            }
            for r in junk_rows.to_dict("records")
        ],
        "wall_s": round(wall, 1),
        "timings_s": out.info.get("timings_s", {}),
        "map": "betagal_map.png",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--species", nargs="+", choices=tuple(MODELS), default=list(MODELS))
    p.add_argument(
        "--presets", nargs="+", choices=("realistic", "paper"), default=["realistic", "paper"]
    )
    p.add_argument("--doses", type=float, nargs="+", default=[10.0, 20.0, 30.0, 40.0])
    p.add_argument("--n-per-model", type=int, default=800)
    p.add_argument("--junk-fraction", type=float, default=0.2)
    p.add_argument("--box", type=int, default=256, help="simulated box, px (default 256)")
    p.add_argument("--pixel-size", type=float, default=1.25, help="Å/px (default 1.25)")
    p.add_argument("--run-box", type=int, default=80, help="RunConfig.box (default 80)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/quality"))
    p.add_argument("--no-betagal", action="store_true")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder of the result files")
    p.add_argument("--name", default="quality", help="stem of the result files (default quality)")
    p.add_argument(
        "--refine",
        action="store_true",
        help="run the second stage too (RunConfig(refine=True)); both stages are scored",
    )
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite NAME.md and NAME_snr.png from NAME.json and exit",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.report_only:
        data = json.loads((args.results / f"{args.name}.json").read_text())
        plot(data, args.results / f"{args.name}_snr.png")
        md = markdown(data, f"{args.name}_snr.png")
        write_results(args.name, data, md, overwrite=True, out_dir=args.results)
        return 0
    t_start = time.perf_counter()
    machine = machine_info()
    args.work.mkdir(parents=True, exist_ok=True)
    names, groups, frames, models = {}, {}, {}, {}
    for key in args.species:
        path, sym = MODELS[key]
        model = load_model(SHARED_DATA / path)
        frame, misfit = symmetry_frame(model.coords_angstrom, sym)
        names[key], models[model.name] = model.name, model
        groups[model.name] = frame @ metrics.symmetry_group(sym) @ frame.T
        frames[model.name] = {"group": sym, "frame": frame, "misfit_angstrom": misfit}
    cfg = RunConfig(
        box=args.run_box, progress=False, atlas=False, seed=args.seed, refine=args.refine
    )
    runs: dict[str, Any] = {}
    sim_s, n_reused = 0.0, 0
    for preset in args.presets:
        sim_cfg = _sim_config(preset, args.doses[0], args)
        projectors = dict(zip(models, make_projectors(list(models.values()), sim_cfg), strict=True))
        for dose in args.doses:
            t0 = time.perf_counter()
            star = _simulate(args.work, preset, dose, args)
            took = time.perf_counter() - t0
            sim_s += took
            n_reused += took < 5.0
            key = f"{preset} {dose:g} e/Å²"
            log.info("running %s", key)
            out_dir = args.work / f"run_{preset}_dose{dose:g}"
            runs[key] = {
                "preset": preset,
                "dose": dose,
                **_score_run(star, out_dir, cfg, groups, projectors, args.seed),
            }
            r = runs[key]
            log.info(
                "%s: ARI %.3f, junk F1 %.3f, 10-NN %.3f, FRC-0.5 %.1f Å",
                key,
                r["species_ari"],
                r["junk_f1"],
                r["view_coherence"]["knn_within_10deg"],
                r["class_frc05_median_angstrom"],
            )
    betagal = None if args.no_betagal else _betagal(args.work, args.results, args.overwrite)
    run_pixel = args.box * args.pixel_size / min(args.run_box, args.box)
    data = {
        "species": names,
        "n_per_model": args.n_per_model,
        "junk_fraction": args.junk_fraction,
        "doses": args.doses,
        "presets": args.presets,
        "box": args.box,
        "pixel_size": args.pixel_size,
        "run_box": args.run_box,
        "run_pixel_size": run_pixel,
        "seed": args.seed,
        "refine": args.refine,
        "symmetry_frames": frames,
        "runs": runs,
        "betagal": betagal,
        "goals": GOALS,
        "goal_min_dose": GOAL_MIN_DOSE,
        "machine": machine,
        "simulation_s": round(sim_s, 1),
        "n_reused": int(n_reused),
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    png = args.results / f"{args.name}_snr.png"
    if png.exists() and not args.overwrite:
        raise FileExistsError(f"{png} exists; pass --overwrite")
    args.results.mkdir(parents=True, exist_ok=True)
    plot(data, png)
    paths = write_results(
        args.name, data, markdown(data, png.name), overwrite=args.overwrite, out_dir=args.results
    )
    log.info("wrote %s, %s", ", ".join(map(str, paths)), png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
