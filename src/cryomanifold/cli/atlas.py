"""``cryomanifold atlas``: the interactive atlas.html of a run, or an atlas of several runs.

Usage::

    cryomanifold atlas RUN_DIR [--out atlas.html] [--overwrite]
    cryomanifold atlas RUN1 RUN2 ... --out ATLAS_DIR [--names a,b,...] [--classes K]

With one run, (re)writes its atlas.html: one self-contained file (its JavaScript
and data embedded) that opens offline in a browser: a WebGL map of the embedding
coloured by class, junk score, class probability, defocus or micrograph, a
gallery of class averages with member particles, and box/lasso/class selection
that downloads selection.json for 'cryomanifold export'. Given an atlas folder,
rewrites that atlas's page.

With several runs (folders of 'cryomanifold run' with the same feature
settings), fits one map on the same number of particles from each, projects
every run into it and writes ATLAS_DIR: model/, datasets/NAME/ (each run's
particles in the common map, ready for 'cryomanifold export ATLAS_DIR --dataset
NAME'), atlas.html (all datasets, colour by dataset), map.png and atlas.json.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryomanifold.cli._common import add_execution_options, apply_thread_limit
from cryomanifold.cli._errors import run_command

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold atlas``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold atlas",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[2:]),
    )
    p.add_argument(
        "run_dirs",
        type=Path,
        nargs="+",
        metavar="RUN_DIR",
        help="output folder(s) of 'cryomanifold run' (several: build an atlas of datasets)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="one run: the output file (default RUN_DIR/atlas.html); several runs: the "
        "atlas folder (required)",
    )
    p.add_argument(
        "--max-image-box",
        type=int,
        default=64,
        metavar="PIXELS",
        help="largest side of the images shown; larger ones are Fourier-cropped",
    )
    p.add_argument(
        "--compress",
        action="store_true",
        help="deflate the embedded data (a few %% smaller; needs a browser "
        "with DecompressionStream)",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing atlas.html / atlas folder"
    )
    g = p.add_argument_group("atlas of several runs")
    g.add_argument(
        "--names", default=None, metavar="A,B,...", help="dataset names (default: folder names)"
    )
    g.add_argument("--classes", type=int, default=None, metavar="K", help="classes of the map")
    g.add_argument("--seed", type=int, default=0, help="random seed")
    g.add_argument(
        "--fit-sample",
        type=int,
        default=100_000,
        metavar="N",
        help="fit the map on at most N particles, the same number from each run "
        "(at most the smallest run's)",
    )
    g.add_argument("--datadir", type=Path, default=None, metavar="FOLDER", help="stack folder")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    add_execution_options(p)
    return p


def _build(args: argparse.Namespace) -> int:
    from cryomanifold.atlas_of_datasets import build_atlas
    from cryomanifold.cli._common import execution_from_args

    apply_thread_limit(args.threads)
    names = None if args.names is None else [n.strip() for n in args.names.split(",")]
    index = build_atlas(
        args.run_dirs,
        args.out,
        names=names,
        n_classes=args.classes,
        seed=args.seed,
        fit_sample=args.fit_sample,
        overwrite=args.overwrite,
        datadir=args.datadir,
        execution=execution_from_args(args),
        progress=not args.quiet,
    )
    parts = ", ".join(
        f"{d['name']} {d['n_particles']} ({d['n_novel']} novel)" for d in index["datasets"]
    )
    print(
        f"atlas of {len(index['datasets'])} datasets, {index['n_classes']} classes: {parts}; "
        f"results in {args.out}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold atlas`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(args.run_dirs) > 1 and args.out is None:
        parser.error("with several runs, give the atlas folder with --out")
    log_argv = None if argv is None else ["atlas", *argv]
    return run_command("atlas", lambda: _atlas(args), argv=log_argv)


def _atlas(args: argparse.Namespace) -> int:
    from cryomanifold.atlas import write_atlas_html
    from cryomanifold.atlas.datasets import is_atlas_of_datasets, write_datasets_atlas_html

    if len(args.run_dirs) > 1:
        return _build(args)
    run_dir = args.run_dirs[0]
    writer = write_datasets_atlas_html if is_atlas_of_datasets(run_dir) else write_atlas_html
    # write_atlas_html logs "wrote PATH (n particles, size)" (INFO).
    writer(
        run_dir,
        args.out,
        overwrite=args.overwrite,
        max_image_box=args.max_image_box,
        compress=args.compress,
    )
    return 0
