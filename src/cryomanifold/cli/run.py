"""``cryomanifold run``: classify a particle stack and write the map.

Usage::

    cryomanifold run particles.star --out cm_run [--box 64] [--classes K] [--seed 0]
    cryomanifold run particles.star --out cm_run --resume      # continue an interrupted run

INPUT is a RELION .star (3.0 or 3.1+), a cryoSPARC .cs, or a bare .mrcs stack.
The output folder receives particles.star (every input row plus the class,
probability, UMAP coordinates and junk call), class_averages.mrcs, classes.csv,
features.npy, embedding.npy, map.png, atlas.html, the fitted model (model/) and
run.json, written last. With --refine, a second stage (multi-reference alignment
from the map's classes, in its good region) makes finer classes with sharper
averages; they are the run's classes, and refined_features.npy holds the vectors
they come from.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryomanifold.cli._common import (
    HelpFormatter,
    add_average_options,
    add_datadir_option,
    add_execution_options,
    apply_thread_limit,
    execution_from_args,
)

if TYPE_CHECKING:
    from cryomanifold.pipeline import RunResult

__all__ = ["build_parser", "main", "summary_line"]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else ("es" if word.endswith("s") else "s"))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold run``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold run",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", type=Path, help="particles: .star, .cs or .mrcs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--box", type=int, default=64, help="box side after Fourier cropping, pixels")
    p.add_argument(
        "--classes",
        type=int,
        default=None,
        metavar="K",
        help="number of classes to make (default: chosen by BIC)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--fit-sample",
        type=int,
        default=50_000,
        metavar="N",
        help="fit the map on at most N particles (a seeded sample) and place the others "
        "into it; 0 fits on all",
    )
    add_average_options(p)
    p.add_argument(
        "--pixel-size",
        type=float,
        default=None,
        metavar="ANGSTROM",
        help="pixel size of the input images in Å, instead of the metadata's or MRC header's",
    )
    p.add_argument(
        "--particle-diameter",
        type=float,
        default=None,
        metavar="ANGSTROM",
        help="expected particle diameter in Å (for the junk measures)",
    )
    p.add_argument("--n-max", type=int, default=None, help="highest Zernike order of the features")
    p.add_argument(
        "--no-phase-flip", action="store_true", help="do not phase-flip the class averages"
    )
    p.add_argument(
        "--refine",
        action="store_true",
        help="second stage: align the map's good particles to its class averages and "
        "classify them into finer classes (views) with sharper averages; slower",
    )
    p.add_argument(
        "--max-refined-classes",
        type=int,
        default=None,
        metavar="K",
        help="with --refine: most classes the second stage may make (default 200; bounds its "
        "cost per particle)",
    )
    p.add_argument("--no-atlas", action="store_true", help="do not write atlas.html")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the files of an earlier run in --out and start afresh (other files stay)",
    )
    mode.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run in --out (same input and options)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_datadir_option(p)
    add_execution_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold run`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_refined_classes is not None and not args.refine:
        parser.error("--max-refined-classes needs --refine")
    from cryomanifold.pipeline import RunConfig, run

    feature_options = {} if args.n_max is None else {"n_max": args.n_max}
    refine_options = (
        {} if args.max_refined_classes is None else {"max_classes": args.max_refined_classes}
    )
    apply_thread_limit(args.threads)
    cfg = RunConfig(
        box=args.box,
        n_classes=args.classes,
        seed=args.seed,
        batch_size=args.batch_size,
        fit_sample=args.fit_sample or None,
        max_members=args.max_members,
        particle_diameter_angstrom=args.particle_diameter,
        phase_flip=not args.no_phase_flip,
        atlas=not args.no_atlas,
        progress=not args.quiet,
        feature_options=feature_options,
        refine=args.refine,
        refine_options=refine_options,
    )
    result = run(
        args.input,
        args.out,
        cfg,
        overwrite=args.overwrite,
        resume=args.resume,
        datadir=args.datadir,
        pixel_size_angstrom=args.pixel_size,
        execution=execution_from_args(args),
    )
    print(summary_line(result))
    return 0


def summary_line(result: RunResult) -> str:
    """One line for the terminal: particles, classes, junk, time, folder."""
    import numpy as np

    labels, class_junk = result.labels, result.class_junk
    junk = result.junk if result.junk is not None else class_junk[labels]
    n_junk = int(np.sum(junk[labels >= 0]))
    return (
        f"{len(labels)} particles -> {_count(len(class_junk), 'class')} "
        f"({_count(int(class_junk.sum()), 'junk class')}; {n_junk} junk particles; "
        f"{result.n_skipped} skipped) in {result.timings_s['total']:.1f} s; "
        f"results in {result.out_dir}"
    )
