"""``cryomanifold run``: classify a particle stack and write the map.

Usage::

    cryomanifold run particles.star --out cm_run [--box 64] [--classes K] [--seed 0]

INPUT is a RELION .star (3.0 or 3.1+), a cryoSPARC .cs, or a bare .mrcs stack.
The output folder receives particles.star (every input row plus the class,
probability, UMAP coordinates and junk score), class_averages.mrcs, classes.csv,
features.npy, embedding.npy, map.png, atlas.html and run.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

log = logging.getLogger("cryomanifold")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold run``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("input", type=Path, help="particles: .star, .cs or .mrcs")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--box", type=int, default=64, help="box side after Fourier cropping, pixels")
    p.add_argument(
        "--classes", type=int, default=None, help="number of classes (default: chosen by BIC)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--batch-size", type=int, default=1024, help="particles per batch")
    p.add_argument(
        "--max-members",
        type=int,
        default=300,
        help="most probable members per class used for its average",
    )
    p.add_argument(
        "--particle-diameter",
        type=float,
        default=None,
        metavar="ANGSTROM",
        help="expected particle diameter in Å (for the junk score)",
    )
    p.add_argument("--n-max", type=int, default=None, help="highest Zernike order of the features")
    p.add_argument(
        "--no-phase-flip", action="store_true", help="do not phase-flip the class averages"
    )
    p.add_argument("--no-atlas", action="store_true", help="do not write atlas.html")
    p.add_argument(
        "--datadir",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="folder holding the particle stacks, if they are not where the .star/.cs says "
        "(relative to its folder or a parent)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace the files of an earlier run in --out"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold run`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    from cryomanifold.pipeline import RunConfig, run

    feature_options = {} if args.n_max is None else {"n_max": args.n_max}
    try:
        cfg = RunConfig(
            box=args.box,
            n_classes=args.classes,
            seed=args.seed,
            batch_size=args.batch_size,
            max_members=args.max_members,
            particle_diameter_angstrom=args.particle_diameter,
            phase_flip=not args.no_phase_flip,
            atlas=not args.no_atlas,
            progress=not args.quiet,
            feature_options=feature_options,
        )
        result = run(args.input, args.out, cfg, overwrite=args.overwrite, datadir=args.datadir)
    except (OSError, ValueError) as exc:
        print(f"cryomanifold run: error: {exc}", file=sys.stderr)
        return 1
    n = len(result.labels)
    n_junk = int(result.class_junk.sum())
    junk_particles = int(
        sum(
            (result.labels == k).sum()
            for k in range(len(result.class_junk))
            if result.class_junk[k]
        )
    )
    print(
        f"{n} particles -> {len(result.class_junk)} classes ({n_junk} junk classes, "
        f"{junk_particles} junk particles, {result.n_skipped} skipped) in "
        f"{result.timings_s['total']:.1f} s; results in {result.out_dir}"
    )
    return 0
