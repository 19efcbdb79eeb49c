"""The order of the stages, and resuming them.

A run is a sequence of stages (:mod:`cryomanifold.stages`), each reading and writing
named artefacts in the run folder::

    read → features → fit → embed → averages → junk → refine → outputs (run.json last)

:func:`run` chains them; with ``resume=True`` it continues an interrupted run from
the last finished chunk or stage, and gives the same classes as an uninterrupted
run with the same seed. :func:`recluster` reuses a finished run's features and map
with another number of classes. The heavy stages run as Dask tasks
(:class:`cryomanifold.parallel.TaskRunner`): in-process threads by default, or a
local or remote cluster. The output contract is in ``docs/architecture.md``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import check_output_dir, link_or_copy
from cryomanifold.parallel import limit_threads
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RUN_OUTPUTS, RunFolder, RunFolderError

__all__ = [
    "OUTPUT_FILES",
    "Execution",
    "RunConfig",
    "RunFolderError",
    "RunResult",
    "recluster",
    "run",
]

log = logging.getLogger(__name__)

#: Files that ``run`` always writes into the output folder (the output contract).
OUTPUT_FILES = (
    "particles.star",
    "class_averages.mrcs",
    "class_examples.mrcs",
    "classes.csv",
    "features.npy",
    "embedding.npy",
    "map.png",
    "run.json",
)


@dataclass(frozen=True)
class RunResult:
    """What :func:`run` returns besides the files it writes."""

    out_dir: Path
    labels: npt.NDArray[np.int64]  # (n,) 0-based, -1 for skipped particles
    probabilities: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32]
    junk_scores: npt.NDArray[np.float32]
    class_averages: npt.NDArray[np.float32]
    class_junk: npt.NDArray[np.bool_]
    n_skipped: int
    timings_s: dict[str, float]
    junk: npt.NDArray[np.bool_] | None = None  # (n,) the per-particle junk call


@dataclass(frozen=True)
class Execution:
    """Where the heavy stages run (changes nothing in the results)."""

    threads: int | None = None
    workers: int | None = None
    scheduler: str | None = None


def cropped_geometry(box_size: int, pixel_size_angstrom: float, box: int) -> tuple[int, float]:
    """Box and pixel size after :func:`cryomanifold.preprocess.prepare_images`."""
    if box_size > box:
        return box, pixel_size_angstrom * box_size / box
    return box_size - box_size % 2, pixel_size_angstrom


def _check_input_outside(input_path: Path, out: Path) -> None:
    """Refuse a run whose outputs would replace its own input."""
    src = input_path.resolve()
    for name in RUN_OUTPUTS:
        target = (out / name).resolve()
        if src == target or target in src.parents:
            raise RunFolderError(
                f"the input {input_path} is inside the output folder {out} where the run "
                f"writes {name}; choose another --out"
            )


def run(
    input_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: RunConfig | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    datadir: str | os.PathLike[str] | None = None,
    pixel_size_angstrom: float | None = None,
    execution: Execution | None = None,
) -> RunResult:
    """Classify a particle stack and write the output contract into ``out_dir``.

    Parameters
    ----------
    input_path : path
        RELION .star, cryoSPARC .cs, or a bare .mrcs/.mrc stack.
    out_dir : path
        Output folder; must not exist or be empty unless ``overwrite`` or ``resume``.
    config : RunConfig, optional
    overwrite : bool
        Remove the files of an earlier run in ``out_dir`` (other files stay) and start
        afresh.
    resume : bool
        Continue an interrupted run in ``out_dir`` (same input and options).
    datadir : path, optional
        Folder to look in first for the stack files the metadata names (see
        :func:`cryomanifold.io.read_particles`).
    pixel_size_angstrom : float, optional
        Use this pixel size instead of the one in the metadata or MRC header.
    execution : Execution, optional
        Threads, or a Dask cluster, for the heavy stages.

    Returns
    -------
    RunResult

    Raises
    ------
    RunFolderError
        If the folder is in use by another run, or ``resume`` finds no compatible run.
    FileExistsError
        If ``out_dir`` holds files and neither ``overwrite`` nor ``resume`` is set.
    """
    from cryomanifold.io import read_particles

    cfg = config or RunConfig()
    out = Path(out_dir)
    source = Path(input_path)
    if resume and overwrite:
        raise ValueError("give either resume (continue the run) or overwrite (start afresh)")
    if not resume:
        check_output_dir(out, overwrite=overwrite)
    _check_input_outside(source, out)
    t_start = time.perf_counter()
    stack = read_particles(source, datadir=datadir, pixel_size_angstrom=pixel_size_angstrom)
    folder = RunFolder(out)
    try:
        with folder.locked():  # creates the folder, only once the input is readable
            if resume:
                done = folder.resume(source, cfg)
                log.info("resuming %s: done %s", out, ", ".join(done) or "nothing yet")
            else:
                folder.clear()
                folder.start(source, cfg)
            folder.output("run.json").unlink(missing_ok=True)  # incomplete until written
            execution = execution or Execution()
            with limit_threads(execution.threads):
                return _run_stages(folder, stack, source, cfg, execution, t_start)
    finally:
        stack.close()


#: What each stage's one-line log summary reports (keys of its summary).
_REPORT = {
    "features": ("n_particles", "n_skipped", "n_features", "chunks"),
    "fit": ("n_fit", "n_pca_components", "n_classes", "n_reference"),
    "embed": ("n_transformed", "n_classes"),
    "averages": ("n_classes", "n_consistent"),
    "junk": ("n_junk", "n_junk_classes", "n_no_particle_classes"),
    "refine": ("n_refined", "n_fine_classes", "n_carried_classes", "n_no_fit"),
}


def _finish(folder: RunFolder, stage: str, summary: dict[str, Any]) -> None:
    """Record a finished stage and log its one-line summary."""
    folder.mark_done(stage, summary)
    facts = ", ".join(
        f"{k.removeprefix('n_').replace('_', ' ')} {summary[k]}"
        for k in _REPORT.get(stage, ())
        if k in summary
    )
    log.info("stage %s done in %.1f s: %s", stage, summary.get("seconds", 0.0), facts)


def _run_stages(
    folder: RunFolder,
    stack: Any,
    source: Path,
    cfg: RunConfig,
    execution: Execution,
    t_start: float,
) -> RunResult:
    from cryomanifold.modelfile import load_model
    from cryomanifold.parallel import TaskRunner
    from cryomanifold.stages import averages, embed, features, fit, junk, refine
    from cryomanifold.stages.classes import final_classes

    n = len(stack)
    if n < 3:
        raise ValueError(f"{source}: {n} particles; at least 3 are needed")
    log.info(
        "%s: %d particles, %d px, %.3f Å/px", source, n, stack.box_size, stack.pixel_size_angstrom
    )
    if cfg.phase_flip and stack.ctf is None:
        log.warning("%s has no CTF parameters: class averages are not phase-flipped", source)
    box_out, apix = cropped_geometry(stack.box_size, stack.pixel_size_angstrom, cfg.box)
    with TaskRunner(
        threads=execution.threads,
        workers=execution.workers,
        scheduler=execution.scheduler,
        progress=cfg.progress,
    ) as runner:
        if not folder.is_done("features"):
            _finish(folder, "features", features.run_features(folder, stack, cfg, runner))
        feat = folder.summary("features")
        if n - feat["n_skipped"] < 3:
            raise ValueError(f"{source}: only {n - feat['n_skipped']} usable particles")
        measures = features.load_measures(folder)
        if not folder.is_done("fit"):
            stack_info = {
                "box": box_out,
                "pixel_size_angstrom": apix,
                "n_features": feat["n_features"],
                "has_ctf": stack.ctf is not None,
            }
            info = {"input": str(source.resolve()), "versions": _versions()}
            _, summary = fit.run_fit(folder, cfg, stack_info, info)
            _finish(folder, "fit", summary)
        # the map as saved: resumed and uninterrupted runs use identical arrays
        manifold = load_model(folder.model_dir).manifold
        if not folder.is_done("embed"):
            _, summary = embed.run_embed(folder, manifold, runner)
            _finish(folder, "embed", summary)
        embedded = embed.load_embedding(folder)
        k = manifold.n_classes_
        if not folder.is_done("averages"):
            _, summary = averages.run_averages(
                folder,
                stack,
                cfg,
                embedded.labels,
                embedded.probabilities,
                k,
                box_out,
                apix,
                runner,
            )
            _finish(folder, "averages", summary)
        avg = averages.load_averages(folder, k, box_out, cfg.examples_per_class)
        if not folder.is_done("junk"):
            _, summary = junk.run_junk(folder, measures, embedded, avg, apix)
            _finish(folder, "junk", summary)
        called = junk.load_junk(folder)
        if not folder.is_done("refine"):
            summary = {"skipped": True, "seconds": 0.0}
            if cfg.refine:
                _, summary = refine.run_refine(
                    folder, stack, cfg, embedded, avg, called, box_out, apix, runner
                )
            _finish(folder, "refine", summary)
        refined = refine.load_refined(folder) if cfg.refine else None
        final = final_classes(folder, embedded, called, avg, refined, measures, apix)
        execution_info = runner.describe()
    return _write_outputs(
        folder, stack, source, cfg, manifold, embedded, final, apix, execution_info, t_start
    )


def _versions() -> dict[str, str]:
    from cryomanifold.stages.outputs import software_versions

    return software_versions()


def _write_outputs(
    folder: RunFolder,
    stack: Any,
    source: Path,
    cfg: RunConfig,
    manifold: Any,
    embedded: Any,
    final: Any,
    apix: float,
    execution_info: dict[str, Any],
    t_start: float,
) -> RunResult:
    from cryomanifold.stages.outputs import run_outputs

    info, shown = run_outputs(
        folder, stack, source, cfg, manifold, embedded, final, apix, execution_info, t_start
    )
    return RunResult(
        folder.path,
        final.labels,
        final.probabilities,
        embedded.embedding,
        final.called.score,
        shown,
        final.table.flags,
        int(info["n_skipped"]),
        info["timings_s"],
        final.called.junk,
    )


def recluster(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_classes: int,
    *,
    overwrite: bool = False,
    execution: Execution | None = None,
    datadir: str | os.PathLike[str] | None = None,
) -> RunResult:
    """Classify a finished run's map into ``n_classes`` classes, in a new folder.

    The features, the PCA and the UMAP map of ``run_dir`` are reused (nothing is
    recomputed before the mixture); a new Gaussian mixture with ``n_classes``
    components is fitted on the run's fit sample, then the averages, the junk call
    and the outputs are made as in :func:`run`.
    """
    from cryomanifold.io import read_particles
    from cryomanifold.modelfile import load_model, save_model
    from cryomanifold.stages.embed import load_embedding
    from cryomanifold.stages.fit import refit_mixture

    src = RunFolder(run_dir)
    if not src.output("run.json").is_file():
        raise RunFolderError(
            f"{src.path} is not a finished run (no run.json); finish it with --resume"
        )
    src_state = src.read_state()
    cfg = RunConfig(**{**src_state["config"], "n_classes": int(n_classes)})
    source = Path(src_state["input"])
    out = Path(out_dir)
    check_output_dir(out, overwrite=overwrite)
    t_start = time.perf_counter()
    stack = read_particles(source, datadir=datadir)
    folder = RunFolder(out)
    try:
        with folder.locked():
            folder.clear()
            folder.start(source, cfg)
            folder.set("chunks", src_state.get("chunks"))
            folder.set("reclustered_from", str(src.path.resolve()))
            link_or_copy(src.output("features.npy"), folder.output("features.npy"))
            for name in ("particles.npz", "fit.npz"):
                link_or_copy(src.artefact(name), folder.artefact(name))
            folder.mark_done("features", src.summary("features"))
            model = load_model(src.model_dir)
            embedded = load_embedding(src)
            manifold, summary = refit_mixture(model.manifold, folder, embedded, cfg)
            save_model(folder.model_dir, manifold, settings=model.settings, info=model.info)
            folder.mark_done("fit", summary)
            folder.mark_done("embed", {"reused_map": True, "seconds": 0.0})
            execution = execution or Execution()
            with limit_threads(execution.threads):
                return _run_stages(folder, stack, source, cfg, execution, t_start)
    finally:
        stack.close()
