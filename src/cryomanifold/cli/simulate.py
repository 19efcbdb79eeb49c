"""``cryomanifold simulate``: simulate particle images from atomic models.

Usage::

    cryomanifold simulate --model A.cif --model B.pdb --n-per-model 1000 \\
        --junk-fraction 0.2 --out DIR [--preset {paper,realistic}] [--box 256] \\
        [--pixel-size 1.0] [--dose 20] [--voltage 300] [--defocus-range 10000 25000] \\
        [--seed 0] [--batch-size 32] [--overwrite] [imaging options]

Writes ``DIR/particles.mrcs`` and a RELION 3.1 ``DIR/particles.star`` with the
per-particle CTF, the true pose and the truth label ``_cmTruthLabel`` (the model's
name, or ``junk:<kind>``). ``--model`` takes a PDB/mmCIF file (optionally
gzipped; the biological assembly is built when the file holds the asymmetric
unit) or a built-in synthetic assembly such as ``builtin:barrel_d7``.

``--preset paper`` (the default) is the paper's imaging; ``--preset realistic``
adds the physics of real data (protein contrast reduced by the displaced ice,
uniform shifts up to ±8 Å, particle B-factors of 50-150 Å^2 that the metadata do
not record, ice thickness and slope, neighbouring particles). The imaging options
override the preset; see docs/simulate.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

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
    _add_imaging_options(parser)
    return parser


def _add_imaging_options(parser: argparse.ArgumentParser) -> None:
    from cryomanifold.simulate.config import PRESETS, SHIFT_DISTRIBUTIONS
    from cryomanifold.simulate.detector import DETECTORS

    real = PRESETS["realistic"]
    group = parser.add_argument_group(
        "imaging options", "each defaults to the preset's value (paper / realistic)"
    )
    group.add_argument(
        "--preset",
        choices=tuple(PRESETS),
        default="paper",
        help="imaging preset (default paper)",
    )
    group.add_argument(
        "--protein-contrast",
        type=float,
        metavar="F",
        help="low-resolution contrast of protein in ice as a fraction of its vacuum contrast "
        f"(paper: neutral-atom ice, 0.42; realistic: {real['protein_contrast']})",
    )
    group.add_argument(
        "--shift-distribution",
        choices=SHIFT_DISTRIBUTIONS,
        help="particle shifts: gaussian (--shift-sigma, redrawn beyond --shift-max) or uniform "
        "in ±--shift-max on each axis (paper: gaussian; realistic: uniform)",
    )
    group.add_argument(
        "--shift-sigma", type=float, metavar="A", help="Gaussian shift sigma, Å (default 3)"
    )
    group.add_argument(
        "--shift-max",
        type=float,
        metavar="A",
        help=f"largest shift per axis, Å (paper: none; realistic: {real['shift_max_angstrom']:g})",
    )
    group.add_argument(
        "--bfactor",
        type=float,
        nargs="+",
        metavar="B",
        help="envelope B-factor in Å^2, or MIN MAX to draw one per particle "
        "(paper: 50; realistic: 50 150)",
    )
    group.add_argument(
        "--record-bfactor",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the B-factor as rlnCtfBfactor (paper: yes; realistic: no, as real "
        "metadata do not know it)",
    )
    group.add_argument(
        "--ice-thickness",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        help="mean ice thickness of each micrograph, Å; attenuates the zero-loss beam "
        "(paper: none; realistic: 250 600)",
    )
    group.add_argument(
        "--ice-slope",
        type=float,
        metavar="S",
        help="largest ice-thickness gradient across the box, Å per Å "
        f"(paper: 0; realistic: {real['ice_slope_max']:g})",
    )
    group.add_argument(
        "--neighbors",
        type=float,
        metavar="N",
        help="mean number of neighbouring particles partly inside each box "
        f"(paper: 0; realistic: {real['neighbors_per_particle']:g})",
    )
    group.add_argument(
        "--detector",
        choices=("none", *DETECTORS),
        help="detector MTF and noise transfer (default none: ideal counting)",
    )


#: CLI option -> SimulationConfig field
_OPTION_FIELDS = {
    "protein_contrast": "protein_contrast",
    "shift_distribution": "shift_distribution",
    "shift_sigma": "shift_sigma_angstrom",
    "shift_max": "shift_max_angstrom",
    "record_bfactor": "record_bfactor",
    "ice_thickness": "ice_thickness_angstrom",
    "ice_slope": "ice_slope_max",
    "neighbors": "neighbors_per_particle",
}


def imaging_options(args: argparse.Namespace) -> dict[str, Any]:
    """The SimulationConfig fields given on the command line (the rest: the preset's).

    Raises
    ------
    ValueError
        If ``--bfactor`` has more than two values.
    """
    options: dict[str, Any] = {
        field: getattr(args, name)
        for name, field in _OPTION_FIELDS.items()
        if getattr(args, name) is not None
    }
    if args.bfactor is not None:
        if len(args.bfactor) > 2:
            raise ValueError(f"--bfactor takes one value or MIN MAX; got {args.bfactor}")
        bfac = args.bfactor
        options["envelope_bfactor_angstrom2"] = bfac[0] if len(bfac) == 1 else tuple(bfac)
    if args.detector is not None:
        options["detector"] = None if args.detector == "none" else args.detector
    return options


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
            preset=args.preset,
            **imaging_options(args),
        )
    except (FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"cryomanifold simulate: error: {exc}", file=sys.stderr)
        return 1
    log.info("done: %s", star)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
