"""Classification quality on the paper's Fig. 1 setting, and on real beta-galactosidase.

Simulates T20S proteasome (3J9I, D7) + rubisco (1BXN L8S8, D4) + 20% junk with the
paper's imaging parameters (256 px, 1 Å/px, 300 kV, defocus 1.0-2.5 µm) at 20 and
10 e-/Å², runs the pipeline with its defaults and with the paper's exact features
(``PAPER_SETTINGS``, no CTF correction of the features) and scores each run:

* species ARI / NMI of class-majority labels, per-species purity and recall;
* junk precision / recall / F1 (recall per junk kind);
* view coherence (reflection- and symmetry-aware angle between true viewing
  directions) within classes and among the 10 nearest neighbours in feature space,
  with the fraction expected by chance (neighbours drawn at random);
* class-average resolution: FRC (0.5) of each particle class average against the
  CTF-free true projection of its dominant view, aligned to it;
* wall time.

Then runs the defaults on the real beta-galactosidase particles (no truth): class
sizes, junk fraction, junk classes and their reasons, and the map.

Writes benchmarks/results/quality.json, quality.md and betagal_map.png.

Usage::

    python benchmarks/quality.py [--n-per-model 1500] [--doses 20 10] [--work DIR] --overwrite
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import starfile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED_DATA, machine_info, md_table, symmetry_frame, write_results
from cryomanifold import metrics
from cryomanifold.averaging import align_to_reference
from cryomanifold.features import PAPER_SETTINGS
from cryomanifold.pipeline import RunConfig, run
from cryomanifold.preprocess import fourier_crop, soft_circular_mask
from cryomanifold.simulate import load_model, make_projector, relion_euler_to_matrix
from cryomanifold.simulate.dataset import simulate_dataset

log = logging.getLogger("quality")

MODELS = {
    "3j9i_T20S_proteasome": ("models/3j9i_T20S_proteasome.pdb.gz", "D7"),
    "1bxn_rubisco_L8S8_assembly1": ("models/1bxn_rubisco_L8S8_assembly1.cif.gz", "D4"),
}
BETAGAL = "real_particles/betagal_empiar10204_dev/Extract/job009/particles_ctf_fixed.star"
GOALS = {"species_ari": 0.9, "junk_f1": 0.9}
K_NEIGHBORS = 10


def _simulate(work: Path, dose: float, n_per_model: int, seed: int) -> Path:
    out = work / f"sim_n{n_per_model}_dose{dose:g}_seed{seed}"
    star = out / "particles.star"
    if star.exists():
        log.info("reusing %s", star)
        return star
    t0 = time.perf_counter()
    simulate_dataset(
        [SHARED_DATA / p for p, _ in MODELS.values()],
        n_per_model=n_per_model,
        junk_fraction=0.2,
        out_dir=out,
        box_size=256,
        pixel_size_angstrom=1.0,
        dose_e_per_angstrom2=dose,
        voltage_kv=300.0,
        defocus_range_angstrom=(10000.0, 25000.0),
        seed=seed,
    )
    log.info("simulated %s in %.0f s", star, time.perf_counter() - t0)
    return star


def _dominant_member(dirs: npt.NDArray[np.float64], group: npt.NDArray[np.float64]) -> int:
    """Index of the member with the most others within 10 degrees (reduced angles)."""
    m = len(dirs)
    i, j = np.triu_indices(m, k=1)
    close = metrics._pair_angles_deg(dirs[i], dirs[j], group) < 10.0
    counts = np.bincount(i[close], minlength=m) + np.bincount(j[close], minlength=m)
    return int(np.argmax(counts))


def _class_resolutions(
    result: Any,
    truth: npt.NDArray[np.str_],
    angles: npt.NDArray[np.float64],
    groups: dict[str, npt.NDArray[np.float64]],
    projectors: dict[str, Any],
    pixel_size_angstrom: float,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """FRC-0.5 resolution of each particle class average against its dominant view."""
    labels = result.labels
    averages = result.class_averages
    box = averages.shape[-1]
    mask = soft_circular_mask(box, 0.4 * box, 0.08 * box)
    out = []
    for c in range(len(averages)):
        members = np.flatnonzero(labels == c)
        if members.size < 5:
            continue
        names, counts = np.unique(truth[members], return_counts=True)
        major = str(names[np.argmax(counts)])
        if major not in projectors:
            continue
        own = members[truth[members] == major]
        if own.size > 300:
            own = rng.choice(own, 300, replace=False)
        dirs = metrics.viewing_directions(angles[own, 0], angles[own, 1])
        pick = own[_dominant_member(dirs, groups[major])]
        rot = relion_euler_to_matrix([angles[pick, 0], angles[pick, 1], 0.0])
        proj = projectors[major].project(rot)
        proj = fourier_crop(proj, box) if proj.shape[-1] > box else proj
        candidates = np.concatenate([proj, proj[:, :, ::-1]])  # the view and its mirror
        ali = align_to_reference(candidates, averages[c])
        best = int(np.argmax(ali.scores))
        res = metrics.frc_resolution_angstrom(
            ali.aligned[best] * mask, averages[c] * mask, pixel_size_angstrom
        )
        out.append(
            {
                "class": c + 1,
                "species": major,
                "size": int(members.size),
                "purity": float(counts.max() / members.size),
                "junk_flag": bool(result.class_junk[c]),
                "frc05_resolution_angstrom": res,
                "alignment_score": float(ali.scores[best]),
            }
        )
    return out


def _view_scores(
    labels: npt.NDArray[np.int64],
    features: npt.NDArray[np.float32],
    truth: npt.NDArray[np.str_],
    angles: npt.NDArray[np.float64],
    groups: dict[str, npt.NDArray[np.float64]],
    rng: np.random.Generator,
) -> dict[str, Any]:
    from sklearn.neighbors import NearestNeighbors
    from sklearn.preprocessing import StandardScaler

    from cryomanifold.pipeline import RunConfig

    # neighbours in the space the manifold starts from: the invariant features (the
    # last column of features.npy is the contrast feature), scaled as the pipeline does
    cfg = RunConfig()
    features = features[labels >= 0]
    if cfg.contrast_weight > 0:
        features = features[:, :-1]
    if cfg.standardize:
        features = StandardScaler().fit_transform(features)
    labels, truth, angles = labels[labels >= 0], truth[labels >= 0], angles[labels >= 0]
    out: dict[str, Any] = {}
    for name, group in groups.items():
        idx = np.flatnonzero(truth == name)
        dirs = metrics.viewing_directions(angles[idx, 0], angles[idx, 1])
        per_class = metrics.view_coherence_deg(dirs, labels[idx], symmetry=group)
        nn = NearestNeighbors(n_neighbors=K_NEIGHBORS + 1).fit(features[idx])
        nb = nn.kneighbors(return_distance=False)
        knn = metrics.view_coherence_deg(dirs, neighbors=nb, symmetry=group)
        chance = metrics.view_coherence_deg(
            dirs, neighbors=rng.integers(0, idx.size, nb.shape), symmetry=group
        )
        out[name] = {
            "per_class_fraction_within_10deg": per_class.fraction_within_10deg,
            "per_class_median_deg": per_class.median_deg,
            "knn_fraction_within_10deg": knn.fraction_within_10deg,
            "knn_median_deg": knn.median_deg,
            "chance_fraction_within_10deg": chance.fraction_within_10deg,
            "chance_median_deg": chance.median_deg,
        }
    return out


def _score_run(
    star: Path,
    out_dir: Path,
    config: RunConfig,
    groups: dict[str, npt.NDArray[np.float64]],
    projectors: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = run(star, out_dir, config, overwrite=True)
    wall = time.perf_counter() - t0
    table = starfile.read(star, always_dict=True)["particles"]
    truth = table["cmTruthLabel"].to_numpy().astype(str)
    angles = table[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(np.float64)
    labels = result.labels
    flagged = (labels < 0) | result.class_junk[np.maximum(labels, 0)]
    junk = metrics.junk_precision_recall(flagged, truth)
    # species separation among the particles that were kept (junk separation is
    # scored by the junk metrics)
    pr = metrics.species_purity_recall(labels, truth)
    import json

    info = json.loads((out_dir / "run.json").read_text())
    features = np.load(out_dir / "features.npy")
    rng = np.random.default_rng(seed)
    classes = _class_resolutions(
        result, truth, angles, groups, projectors, float(info["pixel_size_angstrom"]), rng
    )
    particle_classes = [c for c in classes if not c["junk_flag"]]
    res = [c["frc05_resolution_angstrom"] for c in particle_classes]
    return {
        "n_particles": int(labels.size),
        "n_classes": int(result.class_averages.shape[0]),
        "n_junk_classes": int(result.class_junk.sum()),
        "species_ari": metrics.species_ari(labels, truth),
        "species_nmi": metrics.species_nmi(labels, truth),
        "purity_recall": {k: {"purity": p, "recall": r} for k, (p, r) in pr.items()},
        "junk_precision": junk.precision,
        "junk_recall": junk.recall,
        "junk_f1": junk.f1,
        "junk_recall_by_kind": junk.recall_by_kind,
        "view_coherence": _view_scores(labels, features, truth, angles, groups, rng),
        "class_frc05_median_angstrom": float(np.median(res)) if res else float("nan"),
        "class_frc05_best_angstrom": float(np.min(res)) if res else float("nan"),
        "class_resolutions": classes,
        "pixel_size_angstrom": float(info["pixel_size_angstrom"]),
        "wall_s": round(wall, 1),
        "timings_s": result.timings_s,
    }


def _betagal(work: Path, overwrite: bool) -> dict[str, Any] | None:
    star = SHARED_DATA / BETAGAL
    if not star.exists():
        log.warning("%s is absent: skipping the beta-galactosidase run", star)
        return None
    out = work / "betagal_defaults"
    t0 = time.perf_counter()
    result = run(star, out, RunConfig(progress=False, atlas=False), overwrite=True)
    wall = time.perf_counter() - t0
    classes = pd.read_csv(out / "classes.csv")
    n = int(result.labels.size)
    junk_rows = classes[classes["junk"] == 1]
    dest = RESULTS / "betagal_map.png"
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest} exists; pass --overwrite")
    shutil.copyfile(out / "map.png", dest)
    return {
        "input": BETAGAL,
        "n_particles": n,
        "n_classes": len(classes),
        "class_sizes": classes["size"].tolist(),
        "junk_fraction": float(junk_rows["size"].sum() / n),
        "junk_classes": [
            {
                "class": int(r["class_number"]),
                "size": int(r["size"]),
                "reason": str(r["junk_reason"]),
            }
            for r in junk_rows.to_dict("records")
        ],
        "wall_s": round(wall, 1),
        "timings_s": result.timings_s,
        "map": "betagal_map.png",
    }


def _markdown(data: dict[str, Any]) -> str:
    lines = [
        "# Classification quality (benchmarks/quality.py)\n",
        f"T20S (D7) + rubisco (D4) + 20% junk, {data['n_per_model']} particles per species, "
        "256 px at 1 Å/px, 300 kV, defocus 1.0-2.5 µm; pipeline box 64 px. "
        "`defaults` is `RunConfig()`, `paper` is the paper's exact features "
        "(`feature_options=PAPER_SETTINGS, ctf_features=False`). "
        f"Goals: species ARI >= {GOALS['species_ari']}, junk F1 >= {GOALS['junk_f1']}.\n",
    ]
    rows = []
    for key, r in data["runs"].items():
        missed = [g for g, v in GOALS.items() if not r[g] >= v]
        rows.append(
            [
                key,
                r["n_classes"],
                r["species_ari"],
                r["species_nmi"],
                r["junk_precision"],
                r["junk_recall"],
                r["junk_f1"],
                r["class_frc05_median_angstrom"],
                r["wall_s"],
                "met" if not missed else "NOT met: " + ", ".join(missed),
            ]
        )
    lines.append(
        md_table(
            [
                "dose / features",
                "classes",
                "species ARI",
                "NMI",
                "junk P",
                "junk R",
                "junk F1",
                "class FRC-0.5 median (Å)",
                "wall (s)",
                "goals",
            ],
            rows,
        )
    )
    lines.append("\nPer species: purity / recall of class-majority labels.\n")
    species = sorted({s for r in data["runs"].values() for s in r["purity_recall"]})
    rows = [
        [key]
        + [
            f"{r['purity_recall'][s]['purity']:.3f} / {r['purity_recall'][s]['recall']:.3f}"
            for s in species
        ]
        for key, r in data["runs"].items()
    ]
    lines.append(md_table(["dose / features", *species], rows))
    lines.append("\nJunk recall per kind (precision is only defined overall).\n")
    kinds = sorted({k for r in data["runs"].values() for k in r["junk_recall_by_kind"]})
    rows = [
        [key] + [r["junk_recall_by_kind"].get(k, float("nan")) for k in kinds]
        for key, r in data["runs"].items()
    ]
    lines.append(md_table(["dose / features", *kinds], rows))
    lines.append(
        "\nView coherence: fraction of pairs whose true viewing directions are within 10° "
        "(reflection- and symmetry-reduced), and the median angle; pairs within a class, "
        f"and each particle with its {K_NEIGHBORS} nearest neighbours in the pipeline's "
        "feature space (the manifold's input; neighbours within the species); chance: "
        "random neighbours.\n"
    )
    rows = []
    for key, r in data["runs"].items():
        for s, v in r["view_coherence"].items():
            rows.append(
                [key, s]
                + [
                    f"{v[f'{w}_fraction_within_10deg']:.3f} / {v[f'{w}_median_deg']:.1f}°"
                    for w in ("per_class", "knn", "chance")
                ]
            )
    lines.append(md_table(["dose / features", "species", "per class", "kNN", "chance"], rows))
    b = data.get("betagal")
    if b:
        lines.append(
            f"\n## Real β-galactosidase (EMPIAR-10204 subset, `{b['input']}`)\n\n"
            f"{b['n_particles']} particles, {b['n_classes']} classes, sizes {b['class_sizes']}; "
            f"junk fraction {b['junk_fraction']:.3f}; wall {b['wall_s']} s. No ground truth.\n"
        )
        rows = [[j["class"], j["size"], j["reason"]] for j in b["junk_classes"]]
        lines.append(
            md_table(["junk class", "size", "reason"], rows) if rows else "No junk classes.\n"
        )
        lines.append("\n![beta-gal map](betagal_map.png)\n")
    lines.append(
        f"\nMachine: {data['machine']['cpu_count']} CPUs, {data['machine']['platform']}; "
        f"total benchmark time {data['total_s']} s. Source: commit "
        f"{data['machine']['git_commit'][:10]}, modified: "
        f"{', '.join(data['machine'].get('git_modified_src', [])) or 'none'}.\n"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-per-model", type=int, default=1500)
    p.add_argument("--doses", type=float, nargs="+", default=[20.0, 10.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/cryomanifold_bench/quality"))
    p.add_argument("--no-betagal", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace earlier result files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    t_start = time.perf_counter()
    machine = machine_info()
    args.work.mkdir(parents=True, exist_ok=True)
    groups, projectors = {}, {}
    frames = {}
    for name, (path, sym) in MODELS.items():
        model = load_model(SHARED_DATA / path)
        if model.name != name:
            raise RuntimeError(f"model {path} is named {model.name!r}, expected {name!r}")
        frame, misfit = symmetry_frame(model.coords_angstrom, sym)
        groups[name] = frame @ metrics.symmetry_group(sym) @ frame.T
        frames[name] = {"group": sym, "frame": frame, "misfit_angstrom": misfit}
        projectors[name] = make_projector(model, box_size=256, pixel_size_angstrom=1.0)
    configs = {
        "defaults": RunConfig(progress=False, atlas=False, seed=args.seed),
        "paper": RunConfig(
            progress=False,
            atlas=False,
            seed=args.seed,
            feature_options=dict(PAPER_SETTINGS),
            ctf_features=False,
        ),
    }
    runs = {}
    for dose in args.doses:
        star = _simulate(args.work, dose, args.n_per_model, args.seed)
        for cname, cfg in configs.items():
            key = f"{dose:g} e/Å² {cname}"
            log.info("running %s", key)
            runs[key] = _score_run(
                star, args.work / f"run_dose{dose:g}_{cname}", cfg, groups, projectors, args.seed
            )
            log.info(
                "%s: ARI %.3f, junk F1 %.3f", key, runs[key]["species_ari"], runs[key]["junk_f1"]
            )
    betagal = None if args.no_betagal else _betagal(args.work, args.overwrite)
    data = {
        "n_per_model": args.n_per_model,
        "doses": args.doses,
        "seed": args.seed,
        "symmetry_frames": frames,
        "runs": runs,
        "betagal": betagal,
        "goals": GOALS,
        "machine": machine,
        "total_s": round(time.perf_counter() - t_start, 1),
    }
    paths = write_results("quality", data, _markdown(data), overwrite=args.overwrite)
    log.info("wrote %s", ", ".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
