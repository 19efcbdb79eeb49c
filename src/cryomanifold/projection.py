"""Projection: new particles placed into an existing map, without refitting it.

:func:`project` places the particles of INPUT into the map of a finished run
(``RUN/model``) without refitting it: their features are made exactly as the
map's settings say (the images brought to the map's box and pixel size first when
they differ, :mod:`cryomanifold.resample`), then the run's stages place them
into the map, classify them with the map's mixture, flag those outside the map's
support as novel (:mod:`cryomanifold.support`), average each class's members and
write the usual run folder (particles.star with the map's class numbers).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import check_output_dir
from cryomanifold.modelfile import SavedModel, load_model
from cryomanifold.parallel import TaskRunner, limit_threads
from cryomanifold.pipeline import Execution, _check_input_outside
from cryomanifold.resample import GeometryPlan, plan_geometry
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RunFolder, RunFolderError

__all__ = [
    "Placed",
    "ProjectionResult",
    "finish_stages",
    "open_map",
    "place_stages",
    "project",
    "task_runner",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectionResult:
    """What :func:`project` returns besides the files it writes."""

    out_dir: Path
    labels: npt.NDArray[np.int64]  # (n,) 0-based map class; -1 skipped or novel
    nearest: npt.NDArray[np.int64]  # (n,) nearest map class; -1 skipped
    probabilities: npt.NDArray[np.float32]
    embedding: npt.NDArray[np.float32]
    novel: npt.NDArray[np.bool_]
    novelty_score: npt.NDArray[np.float32]
    junk_scores: npt.NDArray[np.float32]
    junk: npt.NDArray[np.bool_]
    n_skipped: int
    geometry: dict[str, Any]
    info: dict[str, Any]


@dataclass(frozen=True)
class Placed:
    """The particles placed into the map (stages up to the averages)."""

    embedded: Any  # EmbedResult: nearest classes
    novel: npt.NDArray[np.bool_]
    score: npt.NDArray[np.float32]
    averages: Any  # stages.averages.ClassAverages of the projected particles


def open_map(onto: str | os.PathLike[str]) -> tuple[SavedModel, Path, dict[str, Any]]:
    """Load the map of a run folder (or a model folder); returns the model, the model
    folder and the run's run.json (empty when there is none)."""
    import json

    path = Path(onto)
    model_dir = path if (path / "model.json").is_file() else path / "model"
    model = load_model(model_dir)
    run_json = model_dir.parent / "run.json"
    info = json.loads(run_json.read_text()) if run_json.is_file() else {}
    return model, model_dir, info


def _versions_warning(model: SavedModel, model_dir: Path) -> dict[str, str]:
    from cryomanifold.stages.outputs import software_versions

    now = software_versions()
    then = dict(model.info.get("versions", {}))
    if then.get("cryomanifold") not in (None, now["cryomanifold"]):
        log.warning(
            "%s was made with cryomanifold %s; this is %s: if the features changed between "
            "them, the particles land in the wrong places",
            model_dir,
            then.get("cryomanifold"),
            now["cryomanifold"],
        )
    return then


def place_stages(
    folder: RunFolder,
    stack: Any,
    cfg: RunConfig,
    model: SavedModel,
    label: str,
    runner: TaskRunner,
    quantile: float,
) -> Placed:
    """Stages features → (map) → embed + novelty → averages of a projection."""
    from cryomanifold.stages import averages, embed, features
    from cryomanifold.stages.project import (
        check_n_features,
        load_novelty,
        run_load_map,
        run_novelty,
    )

    manifold = model.manifold
    if not folder.is_done("features"):
        folder.mark_done("features", features.run_features(folder, stack, cfg, runner))
    check_n_features(int(folder.summary("features")["n_features"]), model.settings, label)
    if not folder.is_done("fit"):
        folder.mark_done("fit", run_load_map(folder, manifold, label, 0.0))
    if not folder.is_done("embed"):
        embedded, summary = embed.run_embed(folder, manifold, runner)
        novelty = run_novelty(folder, manifold, embedded, quantile=quantile, seed=cfg.seed)
        summary["seconds"] += novelty.pop("seconds")
        folder.mark_done("embed", {**summary, **novelty})
    embedded = embed.load_embedding(folder)
    novel, score = load_novelty(folder)
    k = int(manifold.n_classes_)
    box = int(model.settings["box"])
    if not folder.is_done("averages"):
        members = np.where(novel, -1, embedded.labels)
        apix = float(model.settings["pixel_size_angstrom"])
        _, summary = averages.run_averages(
            folder, stack, cfg, members, embedded.probabilities, k, box, apix, runner
        )
        folder.mark_done("averages", summary)
    avg = averages.load_averages(folder, k, box, cfg.examples_per_class)
    return Placed(embedded, novel, score, avg)


def finish_stages(
    folder: RunFolder,
    stack: Any,
    source: Path,
    cfg: RunConfig,
    model: SavedModel,
    model_dir: Path,
    onto_info: dict[str, Any],
    placed: Placed,
    geometry: dict[str, Any],
    execution_info: dict[str, Any],
    t_start: float,
) -> ProjectionResult:
    """Stages junk → outputs of a projection; run.json last."""
    from cryomanifold.stages.features import load_measures
    from cryomanifold.stages.junk import load_junk, run_junk
    from cryomanifold.stages.outputs import software_versions, write_json
    from cryomanifold.stages.project import write_projection_outputs
    from cryomanifold.support import placement_drift

    t0 = time.perf_counter()
    manifold = model.manifold
    emb = placed.embedded
    apix = float(model.settings["pixel_size_angstrom"])
    # the same per-particle call as a run, over the projected particles' own measures
    if not folder.is_done("junk"):
        members = np.where(placed.novel, -1, emb.labels)
        _, summary = run_junk(
            folder, load_measures(folder), emb, placed.averages, apix, class_labels=members
        )
        folder.mark_done("junk", summary)
    called = load_junk(folder)
    good = emb.labels >= 0
    n_good, n_novel = int(good.sum()), int(placed.novel.sum())
    title = (
        f"{source.name} projected onto {model_dir.parent.name}: {n_good} particles, {n_novel} novel"
    )
    labels = write_projection_outputs(
        folder.path,
        stack,
        manifold,
        emb,
        placed.novel,
        placed.score,
        called,
        placed.averages,
        apix,
        title,
    )
    feat = folder.summary("features")
    timings = {s: folder.summary(s)["seconds"] for s in ("features", "embed", "averages", "junk")}
    timings["outputs"] = round(time.perf_counter() - t0, 3)
    embed_summary = folder.summary("embed")
    run_id = uuid.uuid4().hex
    info: dict[str, Any] = {
        "run_id": run_id,
        "kind": "projection",
        "input": {"path": str(source.resolve()), "kind": stack.kind},
        "n_particles": len(stack),
        "n_skipped": int(feat["n_skipped"]),
        "n_classes": int(manifold.n_classes_),
        "n_junk_classes": int(called.classes.flags.sum()),
        "n_junk_particles": int(called.junk[good].sum()),
        "n_novel": n_novel,
        "novel_fraction": round(n_novel / max(n_good, 1), 5),
        "box_size": int(model.settings["box"]),
        "pixel_size_angstrom": apix,
        "input_box_size": getattr(stack, "box_size", None),
        "input_pixel_size_angstrom": getattr(stack, "pixel_size_angstrom", None),
        "examples_per_class": cfg.examples_per_class,
        "n_features": int(feat["n_features"]),
        "projection": {
            "onto": str(model_dir.resolve()),
            "onto_run_id": onto_info.get("run_id") or model.info.get("run_id"),
            "onto_input": model.info.get("input"),
            "geometry": geometry,
            "novelty": embed_summary.get("novelty", {}),
            "drift": placement_drift(manifold, random_state=cfg.seed),
        },
        "parameters": cfg.as_dict(),
        "execution": execution_info,
        "versions": software_versions(),
        "map_versions": _versions_warning(model, model_dir),
        "timings_s": timings,
    }
    if cfg.atlas:
        from cryomanifold.atlas import write_atlas_html

        t_atlas = time.perf_counter()
        write_atlas_html(folder.path, overwrite=True, run_info=info)
        timings["atlas"] = round(time.perf_counter() - t_atlas, 3)
    folder.mark_done("outputs", {"seconds": timings["outputs"]})
    timings["total"] = round(time.perf_counter() - t_start, 3)
    write_json(folder.output("run.json"), info)  # last: the mark of a complete run
    return ProjectionResult(
        folder.path,
        labels,
        emb.labels,
        np.where(labels >= 0, emb.probabilities, np.float32(0)).astype(np.float32),
        emb.embedding,
        placed.novel,
        placed.score,
        called.score,
        called.junk,
        int(feat["n_skipped"]),
        geometry,
        info,
    )


def task_runner(execution: Execution, progress: bool) -> TaskRunner:
    return TaskRunner(
        threads=execution.threads,
        workers=execution.workers,
        scheduler=execution.scheduler,
        progress=progress,
    )


def project(
    input_path: str | os.PathLike[str],
    onto: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    datadir: str | os.PathLike[str] | None = None,
    execution: Execution | None = None,
    quantile: float = 0.95,
    **options: Any,
) -> ProjectionResult:
    """Place new particles into the map of a finished run and write a run folder.

    Parameters
    ----------
    input_path : path
        RELION .star, cryoSPARC .cs or a bare .mrcs stack.
    onto : path
        The run folder whose map is used (or its ``model/`` folder).
    out_dir : path
        Output folder; must not exist or be empty unless ``overwrite``.
    overwrite : bool
    datadir : path, optional
        Where the stacks are, if not where the metadata says.
    execution : Execution, optional
    quantile : float
        Null quantile of the novelty test (:func:`cryomanifold.support.novelty_scores`).
    **options
        :class:`~cryomanifold.pipeline.RunConfig` fields that do not change the
        features: ``seed``, ``batch_size``, ``max_members``, ``examples_per_class``,
        ``atlas``, ``progress``.

    Returns
    -------
    ProjectionResult

    Raises
    ------
    ModelFileError
        If ``onto`` holds no valid map.
    ProjectionError, GeometryError
        If the particles cannot be featurised as the map's settings say (the
        message names the setting).
    FileExistsError, RunFolderError
        As for :func:`cryomanifold.pipeline.run`.
    """
    from cryomanifold.io import read_particles
    from cryomanifold.stages.project import ResampledStack, projection_config

    source, out = Path(input_path), Path(out_dir)
    model, model_dir, onto_info = open_map(onto)
    if out.resolve() in (model_dir.resolve(), model_dir.parent.resolve()):
        raise RunFolderError(f"{out} is the map's own run folder; choose another --out")
    check_output_dir(out, overwrite=overwrite)
    _check_input_outside(source, out)
    t_start = time.perf_counter()
    stack = read_particles(source, datadir=datadir)
    try:
        cfg = projection_config(
            model.settings,
            has_ctf=stack.ctf is not None,
            source=str(source),
            model=str(model_dir),
            **options,
        )
        plan = plan_geometry(
            stack.box_size,
            stack.pixel_size_angstrom,
            int(model.settings["box"]),
            float(model.settings["pixel_size_angstrom"]),
        )
        _log_geometry(plan)
        work = stack if plan.native else ResampledStack(stack, plan, seed=cfg.seed)
        execution = execution or Execution()
        folder = RunFolder(out)
        with folder.locked():
            folder.clear()
            folder.start(source, cfg)
            folder.set("projection", {"onto": str(model_dir.resolve()), "geometry": plan.as_dict()})
            with limit_threads(execution.threads), task_runner(execution, cfg.progress) as runner:
                placed = place_stages(folder, work, cfg, model, str(model_dir), runner, quantile)
                execution_info = runner.describe()
            return finish_stages(
                folder,
                stack,
                source,
                cfg,
                model,
                model_dir,
                onto_info,
                placed,
                plan.as_dict(),
                execution_info,
                t_start,
            )
    finally:
        stack.close()


def _log_geometry(plan: GeometryPlan) -> None:
    if plan.native:
        log.info("geometry: %s", plan.describe())
    else:
        log.warning("geometry: %s", plan.describe())
