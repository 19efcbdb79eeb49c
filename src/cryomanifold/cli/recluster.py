"""``cryomanifold recluster``: another number of classes on a finished run's map.

Usage::

    cryomanifold recluster cm_run --classes 40 --out cm_run_k40

The features, the PCA and the 2-D map of RUN are reused (nothing before the
Gaussian mixture is recomputed); the new folder gets the full output of a run with
the new classes, averages and junk call.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryomanifold.cli._common import (
    HelpFormatter,
    add_datadir_option,
    add_execution_options,
    apply_thread_limit,
    execution_from_args,
)
from cryomanifold.cli.run import summary_line

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold recluster``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold recluster",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=HelpFormatter,
    )
    p.add_argument("run", type=Path, help="a finished run folder")
    p.add_argument("--classes", type=int, required=True, metavar="K", help="number of classes")
    p.add_argument("--out", type=Path, required=True, help="new output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier run in --out (other files stay)",
    )
    add_datadir_option(p)
    add_execution_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold recluster``; returns the exit code."""
    args = build_parser().parse_args(argv)
    from cryomanifold.pipeline import recluster

    apply_thread_limit(args.threads)
    if args.classes < 1:
        raise ValueError(f"--classes must be >= 1; got {args.classes}")
    result = recluster(
        args.run,
        args.out,
        args.classes,
        overwrite=args.overwrite,
        execution=execution_from_args(args),
        datadir=args.datadir,
    )
    print(summary_line(result))
    return 0
