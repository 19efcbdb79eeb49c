"""``cryomanifold relion-external``: cryomanifold as a RELION External job.

Usage (RELION writes this command line itself)::

    cryomanifold relion-external --o External/job012/ --in_parts Extract/job009/particles.star
                                 --j 4 [--classes K] [--box 64] [--seed 0]
                                 [--particle_diameter ANGSTROM]

In RELION's GUI choose the job type External, set "External executable" to
"cryomanifold relion-external" and "Input particles" to a particles.star; any of
the options above go on the Params tab as label (without the dashes) and value,
e.g. label "classes", value "20". The job runs 'cryomanifold run' into the job
folder, writes run_it000_optimiser.star, run_it000_model.star and
run_it000_data.star there so that a Subset selection job opens the classes, lists
them in RELION_OUTPUT_NODES.star and ends with RELION_JOB_EXIT_SUCCESS (or
RELION_JOB_EXIT_FAILURE, with the reason in run.err).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["build_parser", "main"]

log = logging.getLogger("cryomanifold")

#: Inputs an External job may pass that cryomanifold cannot use.
_OTHER_INPUTS = ("--in_movies", "--in_mics", "--in_coords", "--in_3dref", "--in_mask")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cryomanifold relion-external``."""
    p = argparse.ArgumentParser(
        prog="cryomanifold relion-external",
        description="Run cryomanifold as a RELION External job (RELION 3.1, 4 and 5).",
        epilog="In RELION's GUI: job type External; External executable: cryomanifold "
        "relion-external; Input particles: a particles.star. Options go on the Params tab "
        "as a label without the dashes and a value, e.g. classes = 20. Then chain a Subset "
        "selection job on the run_it000_optimiser.star (RELION 4/5) or "
        "run_it000_model.star (RELION 3.1) that this job lists as its outputs.",
        allow_abbrev=False,
    )
    p.add_argument(
        "--o",
        type=Path,
        required=True,
        metavar="JOB_DIR",
        help="the job's output folder, e.g. External/job012/ (RELION passes it)",
    )
    p.add_argument(
        "--in_parts",
        type=Path,
        metavar="STAR",
        help="the particles to classify (RELION's 'Input particles')",
    )
    p.add_argument(
        "--j", type=int, default=1, metavar="THREADS", help="threads to use (RELION passes it)"
    )
    p.add_argument(
        "--classes", type=int, default=None, metavar="K", help="number of classes; default: by BIC"
    )
    p.add_argument("--box", type=int, default=64, help="box side after Fourier cropping, pixels")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument(
        "--particle_diameter",
        "--particle-diameter",
        type=float,
        default=None,
        metavar="ANGSTROM",
        help="expected particle diameter in Å (for the junk score)",
    )
    p.add_argument(
        "--root", default="run_it000", help="file name root of the RELION files (run_it000)"
    )
    p.add_argument("--pipeline_control", default=None, help=argparse.SUPPRESS)
    for name in _OTHER_INPUTS:
        p.add_argument(name, default=None, help=argparse.SUPPRESS)
    return p


@contextlib.contextmanager
def _limit_threads(n: int) -> Iterator[None]:
    """Cap the threads of BLAS/OpenMP (threadpoolctl) and numba at ``n`` while running."""
    n = max(1, n)
    if "numpy" not in sys.modules:  # a fresh process: libraries read these when loaded
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n):
        try:
            import numba

            before = numba.get_num_threads()
            numba.set_num_threads(min(n, int(numba.config.NUMBA_NUM_THREADS)))  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - umap-learn brings numba
            yield
            return
        try:
            yield
        finally:
            numba.set_num_threads(before)


def _check(args: argparse.Namespace, unknown: list[str]) -> None:
    if unknown:
        raise ValueError(
            f"unknown argument(s) {' '.join(unknown)}; see 'cryomanifold relion-external --help' "
            "for the Params labels cryomanifold understands"
        )
    others = [n for n in _OTHER_INPUTS if getattr(args, n.lstrip("-")) is not None]
    if others:
        raise ValueError(
            f"cryomanifold classifies particles; clear {', '.join(others)} in the job's I/O tab"
        )
    if args.in_parts is None:
        raise ValueError("no --in_parts: set 'Input particles' on the job's I/O tab")
    if args.j < 1:
        raise ValueError(f"--j must be at least 1; got {args.j}")


def _log_to_stdout() -> None:
    """RELION shows stdout (run.out) as the job's log and stderr (run.err) as errors."""
    root = logging.getLogger()
    for handler in root.handlers:
        if type(handler) is logging.StreamHandler and handler.stream is sys.stderr:
            handler.setStream(sys.stdout)
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``cryomanifold relion-external`` on ``argv``; return the exit code."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    job_dir: Path = args.o
    _log_to_stdout()
    from cryomanifold.interop.relion_job import clear_exit_status, mark_exit_status

    job_dir.mkdir(parents=True, exist_ok=True)
    clear_exit_status(job_dir)
    try:
        _check(args, unknown)
        _run_job(args, job_dir)
    except Exception as exc:
        if not isinstance(exc, OSError | ValueError):
            traceback.print_exc()
        print(f"cryomanifold relion-external: error: {exc}", file=sys.stderr)
        mark_exit_status(job_dir, success=False)
        return 1
    mark_exit_status(job_dir, success=True)
    return 0


def _run_job(args: argparse.Namespace, job_dir: Path) -> None:
    """Classify ``--in_parts`` into ``job_dir`` and write the RELION files and nodes."""
    from cryomanifold.interop.paths import path_for
    from cryomanifold.interop.relion import write_relion_classification
    from cryomanifold.interop.relion_job import write_output_nodes
    from cryomanifold.pipeline import RunConfig, run

    project = Path.cwd()
    cfg = RunConfig(
        box=args.box,
        n_classes=args.classes,
        seed=args.seed,
        particle_diameter_angstrom=args.particle_diameter,
        progress=False,
    )
    with _limit_threads(args.j):
        # the job folder holds RELION's own files (job.star, run.out, ...): the
        # run replaces only its own
        result = run(args.in_parts, job_dir, cfg, overwrite=True)
    files = write_relion_classification(job_dir, root=args.root, project_dir=project)
    nodes = write_output_nodes(
        job_dir,
        [(files.data, "particles"), (files.optimiser, "optimiser"), (files.model, "model")],
        project_dir=project,
    )
    log.info(
        "%d particles -> %d classes (%d junk). Subset selection: select classes from %s "
        "(RELION 4/5) or %s (RELION 3.1); wrote %s",
        len(result.labels),
        len(result.class_junk),
        int(result.class_junk.sum()),
        path_for(files.optimiser, project),
        path_for(files.model, project),
        nodes.name,
    )
