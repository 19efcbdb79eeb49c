"""``cryomanifold demo``: simulate a small mixed dataset and classify it.

Usage::

    cryomanifold demo --out demo_run [--n-per-model 700] [--junk-fraction 0.2] [--seed 0]

Simulates particles of the three built-in synthetic assemblies (a D7 barrel, a
D5 ring of dimers and an asymmetric L-shaped particle; no files needed) plus
ice, contamination, carbon edges and aggregates, with the paper's imaging
parameters (300 kV, 20 e-/Å², defocus 1.0-2.5 µm) at 2 Å/px in 128-px boxes;
then runs the whole pipeline and writes ``report.md`` with how well the species
and the junk were separated, measured against the simulated truth.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy.typing as npt

from cryomanifold.cli._errors import run_command

__all__ = ["build_parser", "main", "write_report"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold demo``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold demo",
        description="Simulate a small mixed dataset (three built-in assemblies plus junk) "
        "and classify it; report.md scores the classes against the simulated truth.",
    )
    p.add_argument(
        "--out", type=Path, default=Path("demo_run"), help="output folder (default: demo_run)"
    )
    p.add_argument(
        "--n-per-model", type=int, default=700, metavar="N", help="particles per assembly (700)"
    )
    p.add_argument(
        "--junk-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="share of junk images (0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (0)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def write_report(
    run_dir: Path,
    truth: npt.ArrayLike,
    labels: npt.ArrayLike,
    junk_classes: npt.ArrayLike,
    timings: dict[str, float],
) -> Path:
    """Write ``report.md`` and ``report.json`` scoring a run against the truth."""
    import numpy as np

    from cryomanifold._atomic import atomic_path
    from cryomanifold.metrics import (
        junk_precision_recall,
        species_ari,
        species_nmi,
        species_purity_recall,
    )

    lab = np.asarray(labels)
    tr = np.asarray(truth).astype(str)
    flagged = np.asarray(junk_classes, dtype=bool)[lab]
    junk = junk_precision_recall(flagged, tr)
    purity = species_purity_recall(lab, tr)
    report = {
        "n_particles": int(lab.size),
        "n_classes": int(np.asarray(junk_classes).size),
        "species_ari": species_ari(lab, tr),
        "species_nmi": species_nmi(lab, tr),
        "purity_recall": purity,
        "junk_precision": junk.precision,
        "junk_recall": junk.recall,
        "junk_f1": junk.f1,
        "junk_recall_by_kind": junk.recall_by_kind,
        "timings_s": timings,
    }
    lines = [
        "# cryomanifold demo report",
        "",
        f"{report['n_particles']} simulated particles, {report['n_classes']} classes. Each class "
        "is named by the majority truth label of its members (all junk kinds count as one).",
        "",
        "| measure | value |",
        "|---|---|",
        f"| species ARI (classes vs truth) | {report['species_ari']:.3f} |",
        f"| species NMI | {report['species_nmi']:.3f} |",
        f"| junk precision | {junk.precision:.3f} |",
        f"| junk recall | {junk.recall:.3f} |",
        f"| junk F1 | {junk.f1:.3f} |",
        "",
        "| truth label | purity | recall |",
        "|---|---|---|",
        *[f"| {k} | {p:.3f} | {r:.3f} |" for k, (p, r) in purity.items()],
        "",
        "| junk kind | flagged as junk |",
        "|---|---|",
        *[f"| {k} | {v:.3f} |" for k, v in junk.recall_by_kind.items()],
        "",
        "Timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()),
        "",
        "See map.png (the map with class averages) and atlas.html (interactive).",
        "",
    ]
    with atomic_path(run_dir / "report.json") as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    with atomic_path(run_dir / "report.md") as tmp:
        tmp.write_text("\n".join(lines))
    return run_dir / "report.md"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold demo``; returns the exit code."""
    args = build_parser().parse_args(argv)
    return run_command(
        "demo",
        lambda: _demo(args),
        out_dir=args.out,
        argv=None if argv is None else ["demo", *argv],
    )


def _demo(args: argparse.Namespace) -> int:
    from cryomanifold._atomic import check_output_dir
    from cryomanifold.pipeline import RunConfig, run
    from cryomanifold.simulate import BUILTIN_MODELS, simulate_dataset

    out: Path = args.out
    sim_dir = out / "simulated"
    check_output_dir(out, overwrite=args.overwrite)
    t0 = time.perf_counter()
    star = simulate_dataset(
        [f"builtin:{name}" for name in BUILTIN_MODELS],
        n_per_model=args.n_per_model,
        junk_fraction=args.junk_fraction,
        out_dir=sim_dir,
        box_size=128,
        pixel_size_angstrom=2.0,
        seed=args.seed,
        overwrite=True,
    )
    t_sim = time.perf_counter() - t0
    result = run(star, out, RunConfig(seed=args.seed, progress=not args.quiet), overwrite=True)
    import starfile

    truth = starfile.read(star, always_dict=True)["particles"]["cmTruthLabel"].to_numpy()
    timings = {"simulate": round(t_sim, 2), **result.timings_s}
    report = write_report(out, truth, result.labels, result.class_junk, timings)
    data = json.loads((out / "report.json").read_text())
    print(
        f"demo: {len(truth)} particles -> {len(result.class_junk)} classes; species ARI "
        f"{data['species_ari']:.2f}, junk F1 {data['junk_f1']:.2f}. See {report} and "
        f"{out / 'map.png'}"
    )
    return 0
