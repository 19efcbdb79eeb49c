"""``cryomanifold project``: place new particles into an existing map, without refitting.

Usage::

    cryomanifold project new_particles.star --onto cm_run --out cm_new

The particles are featurised exactly as the map's run featurised its own (when
their box or pixel size differs, they are cropped to the map's pixel size and
box first, and the log and run.json say how), embedded and classified with the
map's model, and flagged "novel" where the map has nothing like them. --out
receives the usual run folder: particles.star with the map's class numbers
(0 for novel particles) plus _cmNovel, _cmNoveltyScore and _cmNearestClass,
class averages of the projected particles, map.png and atlas.html, where the
map is drawn in grey under the new particles.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from cryomanifold.cli._common import (
    HelpFormatter,
    add_average_options,
    add_datadir_option,
    add_execution_options,
    apply_thread_limit,
    execution_from_args,
)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold project``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold project",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("input", type=Path, help="new particles: .star, .cs or .mrcs")
    p.add_argument(
        "--onto",
        type=Path,
        required=True,
        metavar="RUN",
        help="output folder of 'cryomanifold run' whose map is used (or its model/ folder)",
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--novelty-quantile",
        type=float,
        default=0.95,
        metavar="Q",
        help="a particle is novel when its distance ratio is above this quantile of the "
        "ratio among the map's own particles (higher: fewer flagged)",
    )
    add_average_options(p)
    p.add_argument("--no-atlas", action="store_true", help="do not write atlas.html")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="remove the files of an earlier run in --out and start afresh (other files stay)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_datadir_option(p)
    add_execution_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold project`` with ``argv``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from cryomanifold.modelfile import ModelFileError
    from cryomanifold.pipeline import RunFolderError
    from cryomanifold.projection import project

    try:
        apply_thread_limit(args.threads)
        result = project(
            args.input,
            args.onto,
            args.out,
            overwrite=args.overwrite,
            datadir=args.datadir,
            execution=execution_from_args(args),
            quantile=args.novelty_quantile,
            seed=args.seed,
            batch_size=args.batch_size,
            max_members=args.max_members,
            atlas=not args.no_atlas,
            progress=not args.quiet,
        )
    except (OSError, ValueError, RunFolderError, ModelFileError) as exc:
        print(f"cryomanifold project: error: {exc}", file=sys.stderr)
        return 1
    info = result.info
    n_good = info["n_particles"] - info["n_skipped"]
    print(
        f"{info['n_particles']} particles projected onto {args.onto}: "
        f"{info['n_novel']} novel ({100 * info['novel_fraction']:.1f}% of {n_good}), "
        f"{info['n_junk_particles']} junk, {info['n_skipped']} skipped in "
        f"{info['timings_s']['total']:.1f} s; results in {result.out_dir}"
    )
    return 0
