"""Pieces shared by the subcommands: a help formatter, the options several of them
take, and the execution options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

__all__ = [
    "HelpFormatter",
    "add_average_options",
    "add_datadir_option",
    "add_execution_options",
    "apply_thread_limit",
    "execution_from_args",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one worth showing (not None/False/required)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or action.required:
            return text
        return super()._get_help_string(action) or text


def add_datadir_option(p: argparse.ArgumentParser) -> None:
    """``--datadir``: where the particle stacks are when the metadata's paths fail."""
    p.add_argument(
        "--datadir",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="folder holding the particle stacks, if they are not where the .star/.cs says "
        "(relative to its folder or a parent)",
    )


def add_average_options(p: argparse.ArgumentParser) -> None:
    """``--batch-size`` and ``--max-members``: how particles are read and averaged."""
    p.add_argument("--batch-size", type=int, default=1024, help="particles per FFT batch")
    p.add_argument(
        "--max-members",
        type=int,
        default=300,
        help="most probable members per class used for its average",
    )


def add_execution_options(p: argparse.ArgumentParser) -> None:
    """``-j/--threads``, ``--workers``, ``--scheduler``: where the heavy stages run."""
    g = p.add_argument_group("where it runs (results do not depend on it)")
    g.add_argument(
        "-j",
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="cores to use for FFTs, BLAS and numba in this process (as RELION's --j); "
        "default: all available",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="run the heavy stages on a local Dask cluster of N worker processes "
        "(needs the 'distributed' extra)",
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run the heavy stages on an existing Dask cluster, e.g. tcp://host:8786 "
        "(see docs/scale.md for SLURM)",
    )


def apply_thread_limit(threads: int | None) -> None:
    """Cap numba's threads before umap is imported (BLAS and FFT are capped per stage)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1; got {threads}")
        os.environ.setdefault("NUMBA_NUM_THREADS", str(threads))


def execution_from_args(args: argparse.Namespace) -> Any:
    from cryomanifold.pipeline import Execution

    if args.workers is not None and args.scheduler is not None:
        raise ValueError("give either --workers or --scheduler, not both")
    return Execution(threads=args.threads, workers=args.workers, scheduler=args.scheduler)
