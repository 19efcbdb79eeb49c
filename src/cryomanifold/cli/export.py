"""``cryomanifold export``: write a selection of a run as RELION .star or cryoSPARC .cs.

Usage::

    cryomanifold export RUN_DIR (--selection selection.json | --classes 3,5,8 | --exclude-junk)
                        [--min-probability P] [--invert] --out particles_selected.star
                        [--overwrite]
    cryomanifold export ATLAS_DIR --dataset NAME (--selection selection.json | ...) --out x.star

The written file has the selected rows of RUN_DIR/particles.star exactly as they
are there (original columns and optics block included, row order kept), so RELION
and cryoSPARC import it directly. Write a .cs instead when the run's input was a
cryoSPARC .cs. selection.json comes from the "Download selection" button of the
run's atlas.html and is refused for any other run. --out must lie outside RUN_DIR
and must not be the run's input: --overwrite only replaces earlier exports. For an atlas of several
datasets, --dataset NAME exports that dataset's particles (a selection made on
the atlas page keeps the ones that belong to NAME).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryomanifold.cli._errors import run_command

__all__ = ["build_parser", "main"]


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must lie between 0 and 1; got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold export``."""
    p = argparse.ArgumentParser(prog="cryomanifold export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="output folder of 'cryomanifold run'"
    )
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--selection",
        type=Path,
        metavar="JSON",
        help="selection.json downloaded from the run's atlas.html",
    )
    which.add_argument("--classes", metavar="LIST", help="class numbers to keep, e.g. 3,5,8 or 3-6")
    p.add_argument(
        "--exclude-junk",
        action="store_true",
        help="drop the particles called junk (particles.star column _cmJunk)",
    )
    p.add_argument(
        "--min-probability",
        type=_probability,
        default=None,
        metavar="P",
        help="drop particles whose class probability is below P",
    )
    p.add_argument(
        "--invert", action="store_true", help="write the particles the selection would not write"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output file, .star (RELION) or .cs (cryoSPARC input runs only); outside "
        "RUN_DIR, and never the run's input",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out")
    p.add_argument(
        "--dataset",
        metavar="NAME",
        default=None,
        help="RUN_DIR is an atlas of several datasets ('cryomanifold atlas RUN1 RUN2 ... "
        "--out ATLAS'): export the particles of this dataset",
    )
    return p


def _dataset(args: argparse.Namespace) -> tuple[Path, Any]:
    """The run folder and selection to export from (one dataset of an atlas, or RUN_DIR)."""
    from cryomanifold.atlas.datasets import (
        dataset_folder,
        dataset_selection,
        is_atlas_of_datasets,
        read_atlas_index,
    )
    from cryomanifold.atlas.selection import read_selection

    if not is_atlas_of_datasets(args.run_dir):
        if args.dataset is not None:
            raise ValueError(f"{args.run_dir} is not an atlas of datasets; drop --dataset")
        return args.run_dir, args.selection
    if args.dataset is None:
        names = ", ".join(d["name"] for d in read_atlas_index(args.run_dir)["datasets"])
        raise ValueError(
            f"{args.run_dir} is an atlas of several datasets; say which to export with "
            f"--dataset NAME (one of: {names})"
        )
    folder, _ = dataset_folder(args.run_dir, args.dataset)
    if args.selection is None:
        return folder, None
    sel = read_selection(args.selection)
    return folder, dataset_selection(args.run_dir, sel, args.dataset, source=str(args.selection))


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold export`` on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (
        args.selection is None
        and args.classes is None
        and not args.exclude_junk
        and args.min_probability is None
    ):
        parser.error(
            "say what to export: --selection, --classes, --exclude-junk or --min-probability"
        )
    log_argv = None if argv is None else ["export", *argv]
    return run_command("export", lambda: _export(args), argv=log_argv)


def _export(args: argparse.Namespace) -> int:
    from cryomanifold.export import export_selection, parse_class_list

    classes = parse_class_list(args.classes) if args.classes is not None else None
    run_dir, selection = _dataset(args)
    result = export_selection(
        run_dir,
        args.out,
        selection=selection,
        class_numbers=classes,
        exclude_junk=args.exclude_junk,
        min_probability=args.min_probability,
        invert=args.invert,
        overwrite=args.overwrite,
    )
    # export_selection logs "wrote N of M particles to OUT" (INFO).
    return 0 if result.n_written else 1
