"""``cryomanifold atlas``: write the interactive atlas.html of an existing run.

Usage::

    cryomanifold atlas RUN_DIR [--out atlas.html] [--overwrite]

The page is one self-contained file (its JavaScript and data embedded) that opens
offline in a browser: a WebGL map of the embedding coloured by class, junk score,
class probability, defocus or micrograph, a gallery of class averages with member
particles, and box/lasso/class selection that downloads selection.json for
'cryomanifold export'.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from cryomanifold.cli._errors import run_command

__all__ = ["build_parser", "main"]

DESCRIPTION = (
    "Write the interactive atlas.html of an existing run: one self-contained page that "
    "opens offline in a browser, to explore the map, compare classes and download the "
    "selection for 'cryomanifold export'."
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold atlas``."""
    p = argparse.ArgumentParser(prog="cryomanifold atlas", description=DESCRIPTION)
    p.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="output folder of 'cryomanifold run'"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="output file (default: RUN_DIR/atlas.html)"
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing atlas.html")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold atlas`` with ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    args = build_parser().parse_args(argv)
    log_argv = None if argv is None else ["atlas", *argv]
    return run_command("atlas", lambda: _atlas(args), argv=log_argv)


def _atlas(args: argparse.Namespace) -> int:
    from cryomanifold.atlas import write_atlas_html

    # write_atlas_html logs "wrote PATH (n particles, size)" (INFO).
    write_atlas_html(
        args.run_dir,
        args.out,
        overwrite=args.overwrite,
        max_image_box=args.max_image_box,
        compress=args.compress,
    )
    return 0
