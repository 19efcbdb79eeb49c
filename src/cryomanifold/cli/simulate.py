"""``cryomanifold simulate``: simulate particle images from atomic models.

Usage::

    cryomanifold simulate --model A.cif --model B.pdb --n-per-model 1000 \\
        --junk-fraction 0.2 --out DIR [--box 256] [--pixel-size 1.0] [--dose 20] \\
        [--voltage 300] [--defocus-range 10000 25000] [--seed 0] [--batch-size 32] \\
        [--overwrite]

Writes ``DIR/particles.mrcs`` and a RELION 3.1 ``DIR/particles.star`` with the
per-particle CTF, the true pose and the truth label ``_cmTruthLabel`` (the model's
name, or ``junk:<kind>``). ``--model`` takes a PDB/mmCIF file (optionally
gzipped; the biological assembly is built when the file holds the asymmetric
unit) or a built-in synthetic assembly such as ``builtin:barrel_d7``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold simulate``."""
    from cryomanifold.simulate.builtin import BUILTIN_MODELS

    builtins = ", ".join(f"builtin:{n}" for n in BUILTIN_MODELS)
    parser = argparse.ArgumentParser(
        prog="cryomanifold simulate",
        description="Simulate cryo-EM particle images (with junk and ground truth) from "
        "atomic models; write particles.mrcs and particles.star into --out.",
    )
    parser.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="MODEL",
        help=f"PDB/mmCIF file (.gz allowed) or a built-in model ({builtins}); "
        "repeat for several species",
    )
    parser.add_argument(
        "--n-per-model", type=int, required=True, metavar="N", help="particles per model"
    )
    parser.add_argument(
        "--junk-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="share of junk images in the dataset, in [0, 1) (default 0)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder")
    parser.add_argument(
        "--box", type=int, default=256, metavar="PX", help="box size in pixels (default 256)"
    )
    parser.add_argument(
        "--pixel-size", type=float, default=1.0, metavar="A", help="pixel size in Å (default 1.0)"
    )
    parser.add_argument(
        "--dose", type=float, default=20.0, metavar="E", help="electron dose in e/Å^2 (default 20)"
    )
    parser.add_argument(
        "--voltage",
        type=float,
        default=300.0,
        metavar="KV",
        help="acceleration voltage in kV (default 300)",
    )
    parser.add_argument(
        "--defocus-range",
        type=float,
        nargs=2,
        default=(10000.0, 25000.0),
        metavar=("MIN", "MAX"),
        help="defocus range in Å (default 10000 25000)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=32,
        metavar="N",
        help="images simulated at a time (default 32)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing particles.mrcs / particles.star"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold simulate``; returns the exit status (0 on success, 1 on error)."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    from cryomanifold.simulate.dataset import simulate_dataset

    try:
        star = simulate_dataset(
            args.model,
            n_per_model=args.n_per_model,
            junk_fraction=args.junk_fraction,
            out_dir=args.out,
            box_size=args.box,
            pixel_size_angstrom=args.pixel_size,
            dose_e_per_angstrom2=args.dose,
            voltage_kv=args.voltage,
            defocus_range_angstrom=tuple(args.defocus_range),
            seed=args.seed,
            batch_size=args.batch_size,
            overwrite=args.overwrite,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cryomanifold simulate: error: {exc}", file=sys.stderr)
        return 1
    log.info("done: %s", star)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
