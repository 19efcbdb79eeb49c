"""Projection into an existing map: quality, novelty, drift, speed and model size.

Simulates T20S proteasome (3J9I) + rubisco (1BXN L8S8) + p97 hexamer (3CF3) + 20%
junk at 64 px and 3.5 Å/px (300 kV, defocus 1.0-2.5 µm, 20 e-/Å²), then:

* **fitted half**: a random half of the T20S, rubisco and junk particles (no p97)
  goes through ``cryomanifold run`` (the map);
* **projected half**: the other half, plus half of the p97 particles (a species the
  map never saw), goes through ``cryomanifold project --onto`` the map;
* species accuracy (each map class stands for the majority truth label of its
  fitted members; a particle is right when its class stands for its own species)
  and junk F1 of both halves; the fraction of p97 and of known-species particles
  flagged novel;
* drift: the fitted half's own particles projected onto their map (median
  displacement in map units, class agreement), and the leave-one-out placement of
  the map's reference points (``support.placement_drift``);
* speed, in the same run: a fresh ``cryomanifold run`` of the projected half
  against its projection, per particle (end to end, and per stage); and at
  ``--scale-n`` particles (the projected half's features repeated with 1% jitter)
  placing them into a map with a 20 000-point reference (the model below:
  transform, classes, novelty) against fitting a fresh
  map on them (scaling, PCA, UMAP, mixture with K by BIC), the part of a run that
  a projection replaces;
* model size and load time for a map made from 10^5 particles: the model stores
  at most ``reference_size`` = 20 000 reference points whatever the number of
  particles, so a model is built at those shapes (the fitted half's PCA and
  features, its reference resampled to 20 000 points, 50 classes) and saved.

Writes benchmarks/results/atlas_projection.json and .md.

Usage::

    python benchmarks/atlas_projection.py [--n-per-model 1500] [--work DIR] --overwrite
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_DATA, machine_info, md_table, write_results
from cryomanifold import metrics
from cryomanifold.pipeline import RunConfig, run
from cryomanifold.projection import project
from cryomanifold.simulate.dataset import simulate_dataset

log = logging.getLogger("atlas_projection")

KNOWN = {
    "3j9i_T20S_proteasome": "models/3j9i_T20S_proteasome.pdb.gz",
    "1bxn_rubisco_L8S8_assembly1": "models/1bxn_rubisco_L8S8_assembly1.cif.gz",
}
UNSEEN = {"3cf3_p97_hexamer_assembly1": "models/3cf3_p97_hexamer_assembly1.cif.gz"}
GOALS = {
    "accuracy_ratio": 0.95,
    "junk_f1_ratio": 0.95,
    "novel_unseen": 0.80,
    "novel_known_max": 0.05,
    "speedup": 10.0,
    "model_mb_max": 5.0,
    "load_s_max": 1.0,
}


def _simulate(work: Path, n_per_model: int, seed: int) -> Path:
    out = work / f"sim_n{n_per_model}_seed{seed}"
    star = out / "particles.star"
    if star.exists():
        log.info("reusing %s", star)
        return star
    t0 = time.perf_counter()
    simulate_dataset(
        [SHARED_DATA / p for p in (*KNOWN.values(), *UNSEEN.values())],
        n_per_model=n_per_model,
        junk_fraction=0.2,
        out_dir=out,
        box_size=64,
        pixel_size_angstrom=3.5,
        dose_e_per_angstrom2=20.0,
        voltage_kv=300.0,
        defocus_range_angstrom=(10000.0, 25000.0),
        seed=seed,
    )
    log.info("simulated %s in %.0f s", star, time.perf_counter() - t0)
    return star


def _split(star: Path, seed: int) -> tuple[Path, Path]:
    """fitted.star (half of the known species and junk) and projected.star (the other
    half, plus half of the unseen species), beside the stack."""
    blocks = starfile.read(star, always_dict=True)
    parts = blocks["particles"]
    truth = parts["cmTruthLabel"].to_numpy().astype(str)
    rng = np.random.default_rng(seed)
    half = rng.random(len(parts)) < 0.5
    unseen = np.isin(truth, list(UNSEEN))
    paths = []
    for name, rows in (("fitted", half & ~unseen), ("projected", ~half)):
        path = star.with_name(f"{name}.star")
        table = parts.loc[rows].reset_index(drop=True)
        starfile.write({"optics": blocks["optics"], "particles": table}, path, overwrite=True)
        paths.append(path)
    return paths[0], paths[1]


def _truth(folder: Path) -> npt.NDArray[np.str_]:
    parts = starfile.read(folder / "particles.star", always_dict=True)["particles"]
    return parts["cmTruthLabel"].to_numpy().astype(str)


def _collapse(truth: npt.NDArray[np.str_]) -> npt.NDArray[np.str_]:
    return np.where(metrics.is_junk_label(truth), "junk", truth)


def _class_meaning(labels: npt.NDArray[np.int64], truth: npt.NDArray[np.str_], k: int) -> list[str]:
    """The majority truth label (junk kinds as one) of each class's fitted members."""
    tr = _collapse(truth)
    out = []
    for c in range(k):
        members = tr[labels == c]
        if members.size == 0:
            out.append("")
            continue
        names, counts = np.unique(members, return_counts=True)
        out.append(str(names[np.argmax(counts)]))
    return out


def _quality(
    labels: npt.NDArray[np.int64],
    truth: npt.NDArray[np.str_],
    meaning: list[str],
    junk: npt.NDArray[np.bool_],
) -> dict[str, Any]:
    ok = labels >= 0
    species = ~metrics.is_junk_label(truth) & ok
    pred = np.asarray(meaning, dtype=object)[labels[species]]
    scores = metrics.junk_precision_recall(junk[ok], truth[ok])
    return {
        "n": int(ok.sum()),
        "species_accuracy": float(np.mean(pred == truth[species])),
        "junk_precision": scores.precision,
        "junk_recall": scores.recall,
        "junk_f1": scores.f1,
    }


def _model_at_scale(model_dir: Path, out: Path, n_reference: int, n_classes: int) -> dict[str, Any]:
    """A model at the shapes of a 10^5-particle run (reference capped at n_reference)."""
    from cryomanifold.embedding import UMAPReference
    from cryomanifold.manifold import fit_mixture
    from cryomanifold.modelfile import load_model, save_model

    saved = load_model(model_dir)
    m = saved.manifold
    ref = m.reference_
    rng = np.random.default_rng(0)
    rows = rng.choice(ref.points.shape[0], n_reference, replace=True)
    points = ref.points[rows] + rng.normal(scale=0.05, size=(n_reference, ref.points.shape[1]))
    emb = ref.embedding[rows] + rng.normal(scale=0.05, size=(n_reference, 2))
    m.reference_ = UMAPReference(
        points.astype(np.float32), emb.astype(np.float32), ref.n_neighbors, ref.a, ref.b
    )
    m.gmm_ = fit_mixture(emb, n_classes, 0)
    m.n_classes_ = n_classes
    box = int(saved.settings["box"])
    averages = rng.normal(size=(n_classes, box, box)).astype(np.float32)
    save_model(
        out,
        m,
        settings=saved.settings,
        classes={"size": [1] * n_classes, "junk": [False] * n_classes},
        class_averages=averages,
        class_junk=np.zeros(n_classes, bool),
        info=saved.info,
    )
    size = sum(f.stat().st_size for f in out.iterdir())
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        load_model(out)
        times.append(time.perf_counter() - t0)
    return {
        "n_reference": n_reference,
        "n_classes": n_classes,
        "n_pca_components": int(m.pca_.n_components_),
        "n_features": int(m.shift_.size),
        "bytes": int(size),
        "mb": size / 1e6,
        "load_s_median": float(np.median(times)),
        "load_s_max": float(np.max(times)),
    }


def _placement_at_scale(
    model_dir: Path, projected_dir: Path, n: int, cfg: RunConfig
) -> dict[str, Any]:
    """Placing n particles into a map (transform, classes, novelty) against fitting a
    fresh map on them (scaling, PCA, UMAP, mixture with K by BIC): the part of a run
    that a projection replaces; features and class averages are the same work in both.

    The map is the one at the shapes of a 10^5-particle run (a 20 000-point
    reference); the n feature vectors are the projected half's, repeated with 1%
    jitter (only the times are used).
    """
    from cryomanifold.modelfile import load_model
    from cryomanifold.stages.fit import make_manifold
    from cryomanifold.support import novelty_scores

    base = np.load(projected_dir / "features.npy")
    rng = np.random.default_rng(0)
    x = base[rng.integers(0, base.shape[0], n)]
    x = (x + 0.01 * x.std(axis=0) * rng.normal(size=x.shape)).astype(np.float32)
    manifold = load_model(model_dir).manifold
    t0 = time.perf_counter()
    labels = manifold.predict(x)
    novelty_scores(
        manifold.pca_coordinates(x),
        manifold.reference_.points,
        labels=labels,
        reference_labels=manifold.gmm_.predict(manifold.reference_.embedding),
    )
    t_place = time.perf_counter() - t0
    t0 = time.perf_counter()
    make_manifold(cfg, x.shape[1]).fit(x)
    t_fit = time.perf_counter() - t0
    return {"n": n, "place_s": t_place, "fresh_fit_s": t_fit, "speedup": t_fit / t_place}


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir()) / 1e6


def _per_particle(info: dict[str, Any], keys: tuple[str, ...]) -> float:
    good = info["n_particles"] - info["n_skipped"]
    return sum(float(info["timings_s"].get(k, 0.0)) for k in keys) / max(good, 1)


def measure(work: Path, n_per_model: int, seed: int, scale_n: int) -> dict[str, Any]:
    star = _simulate(work, n_per_model, seed)
    fitted_star, projected_star = _split(star, seed)
    cfg = RunConfig(seed=seed, progress=False)
    runs = work / f"runs_n{n_per_model}_seed{seed}"
    fitted_dir, proj_dir = runs / "fitted", runs / "projected"
    fresh_dir, own_dir = runs / "projected_fresh", runs / "fitted_projected"

    t0 = time.perf_counter()
    fitted = run(fitted_star, fitted_dir, cfg, overwrite=True)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    projected = project(projected_star, fitted_dir, proj_dir, overwrite=True, progress=False)
    t_proj = time.perf_counter() - t0
    t0 = time.perf_counter()
    run(projected_star, fresh_dir, cfg, overwrite=True)
    t_fresh = time.perf_counter() - t0
    own = project(fitted_star, fitted_dir, own_dir, overwrite=True, progress=False)

    k = int(fitted.class_averages.shape[0])
    truth_fit, truth_proj = _truth(fitted_dir), _truth(proj_dir)
    meaning = _class_meaning(fitted.labels, truth_fit, k)
    unseen = np.isin(truth_proj, list(UNSEEN))
    known = ~unseen & ~metrics.is_junk_label(truth_proj)
    q_fit = _quality(fitted.labels, truth_fit, meaning, fitted.junk)
    q_proj = _quality(
        projected.nearest[~unseen], truth_proj[~unseen], meaning, projected.junk[~unseen]
    )
    q_proj_all = _quality(projected.nearest, truth_proj, meaning, projected.junk)
    junk_proj = metrics.is_junk_label(truth_proj)
    novelty = {
        "unseen_flagged": float(projected.novel[unseen].mean()),
        "known_flagged": float(projected.novel[known].mean()),
        "junk_flagged": float(projected.novel[junk_proj].mean()),
        "per_label": {
            str(t): float(projected.novel[truth_proj == t].mean()) for t in np.unique(truth_proj)
        },
        "n_unseen": int(unseen.sum()),
        "n_known": int(known.sum()),
        "test": projected.info["projection"]["novelty"],
    }

    fit_emb = np.load(fitted_dir / "embedding.npy")
    from cryomanifold.modelfile import load_model
    from cryomanifold.support import position_drift

    manifold = load_model(fitted_dir / "model").manifold
    drift = {
        "own_particles": position_drift(manifold, own.embedding, fit_emb),
        "own_features_identical": (own_dir / "features.npy").read_bytes()
        == (fitted_dir / "features.npy").read_bytes(),
        "own_novel_fraction": float(own.novel.mean()),
        "leave_one_out": projected.info["projection"]["drift"],
    }

    info_proj = json.loads((proj_dir / "run.json").read_text())
    info_fresh = json.loads((fresh_dir / "run.json").read_text())
    place_fresh = ("fit", "embed")
    place_proj = ("embed",)  # transform + novelty (no fit)
    speed = {
        "n_particles": info_proj["n_particles"],
        "wall_s": {"fresh_run": t_fresh, "projection": t_proj, "fitted_run": t_fit},
        "stages_fresh_s": info_fresh["timings_s"],
        "stages_projection_s": info_proj["timings_s"],
        "end_to_end_speedup": t_fresh / t_proj,
        "placement_speedup": _per_particle(info_fresh, place_fresh)
        / _per_particle(info_proj, place_proj),
        "features_and_placement_speedup": _per_particle(info_fresh, ("features", *place_fresh))
        / _per_particle(info_proj, ("features", *place_proj)),
    }
    model = {
        "fitted_half_mb": _dir_mb(fitted_dir / "model"),
        "at_1e5_particles": _model_at_scale(fitted_dir / "model", runs / "model_1e5", 20000, 50),
    }
    speed["at_scale"] = _placement_at_scale(runs / "model_1e5", proj_dir, scale_n, cfg)
    return {
        "n_per_model": n_per_model,
        "seed": seed,
        "n_fitted": len(truth_fit),
        "n_projected": len(truth_proj),
        "n_classes": k,
        "fitted": q_fit,
        "projected": q_proj,
        "projected_including_unseen": q_proj_all,
        "ratios": {
            "species_accuracy": q_proj["species_accuracy"] / max(q_fit["species_accuracy"], 1e-12),
            "junk_f1": q_proj["junk_f1"] / max(q_fit["junk_f1"], 1e-12),
        },
        "novelty": novelty,
        "drift": drift,
        "speed": speed,
        "model": model,
    }


def _goals(r: dict[str, Any]) -> dict[str, bool]:
    at_scale = r["model"]["at_1e5_particles"]
    return {
        "species accuracy ratio >= 0.95": r["ratios"]["species_accuracy"]
        >= GOALS["accuracy_ratio"],
        "junk F1 ratio >= 0.95": r["ratios"]["junk_f1"] >= GOALS["junk_f1_ratio"],
        "unseen species novel >= 80%": r["novelty"]["unseen_flagged"] >= GOALS["novel_unseen"],
        "known species novel < 5%": r["novelty"]["known_flagged"] < GOALS["novel_known_max"],
        "placement >= 10x faster per particle (at scale)": (
            r["speed"]["at_scale"]["speedup"] >= GOALS["speedup"]
        ),
        "end to end >= 10x faster": r["speed"]["end_to_end_speedup"] >= GOALS["speedup"],
        "model <= 5 MB at 1e5 particles": at_scale["mb"] <= GOALS["model_mb_max"],
        "model loads < 1 s": at_scale["load_s_max"] < GOALS["load_s_max"],
    }


def _markdown(data: dict[str, Any]) -> str:
    r = data["result"]
    s, n, d = r["speed"], r["novelty"], r["drift"]
    lines = [
        "# Projection into an existing map (benchmarks/atlas_projection.py)",
        "",
        f"T20S + rubisco + 20% junk, 64 px at 3.5 Å/px, {r['n_per_model']} per species; map "
        f"fitted on {r['n_fitted']} particles ({r['n_classes']} classes), {r['n_projected']} "
        f"projected (with {n['n_unseen']} p97, unseen by the map). Seed {r['seed']}.",
        "",
        md_table(
            ["half", "particles", "species accuracy", "junk precision", "junk recall", "junk F1"],
            [
                [
                    h,
                    r[k]["n"],
                    r[k]["species_accuracy"],
                    r[k]["junk_precision"],
                    r[k]["junk_recall"],
                    r[k]["junk_f1"],
                ]
                for h, k in (
                    ("fitted", "fitted"),
                    ("projected (known + junk)", "projected"),
                    ("projected (with p97)", "projected_including_unseen"),
                )
            ],
        ),
        f"Ratios projected / fitted: species accuracy {r['ratios']['species_accuracy']:.3f}, "
        f"junk F1 {r['ratios']['junk_f1']:.3f}.",
        "",
        f"Novel: {100 * n['unseen_flagged']:.1f}% of p97 particles, "
        f"{100 * n['known_flagged']:.1f}% of T20S and rubisco, "
        f"{100 * n['junk_flagged']:.1f}% of junk (ratio test: k {n['test'].get('k')}, "
        f"quantile {n['test'].get('quantile')}, threshold {n['test'].get('threshold', 0):.3f}).",
        "",
        f"Drift: the fitted half projected onto its own map: median displacement "
        f"{d['own_particles']['median_displacement']:.3g} map units, class agreement "
        f"{d['own_particles']['class_agreement']:.3f} (features bit-identical: "
        f"{d['own_features_identical']}). Leave-one-out placement of the map's reference: "
        f"median {d['leave_one_out']['median_displacement']:.3g} (map extent "
        f"{d['leave_one_out']['map_extent']:.3g}), class agreement "
        f"{d['leave_one_out']['class_agreement']:.3f}.",
        "",
        f"Speed on {s['n_particles']} particles: fresh run {s['wall_s']['fresh_run']:.1f} s, "
        f"projection {s['wall_s']['projection']:.1f} s "
        f"(end to end {s['end_to_end_speedup']:.1f}x); "
        f"placing into the map (fit + embed against transform + novelty) "
        f"{s['placement_speedup']:.1f}x per particle; with the features "
        f"{s['features_and_placement_speedup']:.1f}x. At {s['at_scale']['n']} particles, "
        f"placing them into a map with a 20 000-point reference took "
        f"{s['at_scale']['place_s']:.1f} s and fitting a fresh map on them "
        f"{s['at_scale']['fresh_fit_s']:.1f} s ({s['at_scale']['speedup']:.1f}x).",
        "",
        "A projection featurises its particles and averages its classes as a run does; "
        "only the fit is saved, so end to end it cannot be 10x faster than a run. Placing "
        "particles costs an exact k-nearest-neighbour search against the map's reference "
        "(up to 20 000 points) for the transform, and two more against subsets of up to "
        "2000 points for the novelty test: per particle about 10x cheaper than fitting a "
        "map on a few thousand particles, but only 2-3x cheaper at 20 000, where UMAP's "
        "approximate neighbours win.",
        "",
    ]
    m = r["model"]["at_1e5_particles"]
    lines += [
        f"Model: {r['model']['fitted_half_mb']:.2f} MB for the fitted half; at 10^5 particles "
        f"(reference capped at {m['n_reference']} points, {m['n_classes']} classes, "
        f"{m['n_pca_components']} PCA components) {m['mb']:.2f} MB, loads in "
        f"{m['load_s_median'] * 1000:.0f} ms (max {m['load_s_max'] * 1000:.0f} ms of 5).",
        "",
        "| goal | met |",
        "|---|---|",
    ]
    lines += [f"| {g} | {'yes' if ok else 'no'} |" for g, ok in data["goals"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-model", type=int, default=1500, help="particles per species")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale-n",
        type=int,
        default=20000,
        help="particles for the placement-versus-fit speed at scale",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/atlas_projection"))
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.perf_counter()
    result = measure(args.work, args.n_per_model, args.seed, args.scale_n)
    data = {
        "machine": machine_info(),
        "goals": {},
        "result": result,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    data["goals"] = _goals(result)
    paths = write_results("atlas_projection", data, _markdown(data), overwrite=args.overwrite)
    print(_markdown(data))
    print("wrote", *paths)
    return 0


if __name__ == "__main__":
    sys.exit(main())
