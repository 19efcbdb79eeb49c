"""One map for several datasets: fit it on a balanced sample of runs, project every run.

:func:`build_atlas` takes finished run folders with the same feature settings
(refused otherwise, naming the setting), fits one map on the same number of
particles from each run (their features as the runs made them; the scaling and
PCA come from that balanced sample, so no dataset dominates the map), projects
each run into it (:mod:`cryomanifold.projection`: embed, classes, novelty,
class averages, without recomputing the features) and writes the atlas folder::

    ATLAS/model/              the map (model.json + arrays; its class table is
                              judged from all datasets' particles)
    ATLAS/datasets/NAME/      one projection per run: particles.star (the run's
                              input rows + the atlas's classes), classes.csv, ...
    ATLAS/atlas.html          every dataset on one page, coloured by dataset
    ATLAS/map.png             the map coloured by dataset
    ATLAS/atlas.json          the index (names, folders, run ids, row offsets),
                              written last: the mark of a complete atlas

The page's selection.json counts particles across datasets in index order
(dataset 1's rows, then dataset 2's, ...); ``cryomanifold export ATLAS --dataset
NAME`` writes the selected particles of one dataset.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from cryomanifold._atomic import check_output_dir, link_or_copy
from cryomanifold.modelfile import load_model, save_model
from cryomanifold.pipeline import Execution
from cryomanifold.projection import Placed, finish_stages, place_stages, task_runner
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.datasets import AtlasInput
from cryomanifold.stages.folder import RunFolder, RunFolderError

__all__ = ["ATLAS_FORMAT", "ATLAS_INDEX", "build_atlas"]

log = logging.getLogger(__name__)

#: The index of an atlas of datasets (written last: the mark of a complete atlas).
ATLAS_INDEX = "atlas.json"
ATLAS_FORMAT = "cryomanifold-atlas-of-datasets"


def _clear_atlas(out: Path) -> None:
    """Remove what an earlier atlas wrote here (other files stay)."""
    RunFolder(out).clear()
    for name in ("datasets", ATLAS_INDEX):
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)


def _fit_map(
    out: Path,
    inputs: list[AtlasInput],
    rows: list[np.ndarray],
    cfg: RunConfig,
    atlas_id: str,
    names: list[str],
) -> dict[str, Any]:
    from cryomanifold.stages.fit import make_manifold
    from cryomanifold.stages.outputs import software_versions

    t0 = time.perf_counter()
    parts = []
    for item, r in zip(inputs, rows, strict=True):
        features = np.load(item.folder.output("features.npy"), mmap_mode="r")
        parts.append(np.asarray(features[r]))
    x = np.concatenate(parts)
    manifold = make_manifold(cfg, x.shape[1]).fit(x)
    save_model(
        out / "model",
        manifold,
        settings=inputs[0].settings,
        info={"run_id": atlas_id, "atlas_of": names, "versions": software_versions()},
    )
    return {
        "n_fit": int(x.shape[0]),
        "n_fit_per_dataset": [int(r.size) for r in rows],
        "n_pca_components": manifold.pca_.n_components_,
        "n_reference": int(manifold.reference_.points.shape[0]),
        "n_classes": int(manifold.n_classes_),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def _start_dataset(sub: RunFolder, item: AtlasInput, source: Path, cfg: RunConfig) -> None:
    """A projection folder that reuses the run's features (like ``recluster``)."""
    sub.path.mkdir(parents=True, exist_ok=True)
    sub.clear()
    sub.start(source, cfg)
    sub.set("projection", {"features_from": str(item.folder.path.resolve())})
    link_or_copy(item.folder.output("features.npy"), sub.output("features.npy"))
    link_or_copy(item.folder.artefact("particles.npz"), sub.artefact("particles.npz"))
    sub.mark_done("features", dict(item.state["stages"]["features"]))


def _class_table(
    subs: list[RunFolder], placed: list[Placed], apix: float
) -> tuple[dict[str, Any], np.ndarray]:
    """Each dataset's per-particle junk call (its junk stage), then the map's class table."""
    from cryomanifold.stages.datasets import atlas_class_table
    from cryomanifold.stages.features import load_measures
    from cryomanifold.stages.junk import load_junk, run_junk

    calls = []
    for sub, p in zip(subs, placed, strict=True):
        if not sub.is_done("junk"):
            members = np.where(p.novel, -1, p.embedded.labels)
            _, summary = run_junk(
                sub, load_measures(sub), p.embedded, p.averages, apix, class_labels=members
            )
            sub.mark_done("junk", summary)
        calls.append(load_junk(sub))
    labels = [np.where(p.novel, -1, p.embedded.labels) for p in placed]
    classes, avg, _ = atlas_class_table(calls, labels, [p.averages for p in placed])
    return classes, avg


def build_atlas(
    run_dirs: list[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    names: list[str] | None = None,
    n_classes: int | None = None,
    seed: int = 0,
    fit_sample: int = 100_000,
    overwrite: bool = False,
    datadir: str | os.PathLike[str] | None = None,
    execution: Execution | None = None,
    quantile: float = 0.95,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit one map on several runs and project each run into it (an atlas of datasets).

    Parameters
    ----------
    run_dirs : list of path
        Finished run folders (at least two) with the same feature settings.
    out_dir : path
        The atlas folder.
    names : list of str, optional
        Dataset names (default: the run folders' names).
    n_classes : int, optional
        Classes of the map (default: chosen by BIC).
    seed : int
    fit_sample : int
        The map is fitted on at most this many particles, the same number from each
        run (at most the smallest run's).
    overwrite : bool
    datadir : path, optional
        Where the runs' stacks are, if not where their metadata says.
    execution : Execution, optional
    quantile : float
        Null quantile of the novelty test.
    progress : bool

    Returns
    -------
    dict
        The atlas index (also written as ``atlas.json``).

    Raises
    ------
    ValueError
        If fewer than two runs are given, or their feature settings differ (the
        message names the setting).
    RunFolderError
        If a folder is not a finished run, or ``out_dir`` is one of them.
    """
    from cryomanifold.io import read_particles
    from cryomanifold.stages.datasets import (
        balanced_rows,
        check_same_settings,
        dataset_names,
        read_atlas_input,
    )
    from cryomanifold.stages.outputs import software_versions, write_json
    from cryomanifold.stages.project import projection_config

    if len(run_dirs) < 2:
        raise ValueError("an atlas of datasets needs at least two runs")
    inputs = [read_atlas_input(r) for r in run_dirs]
    check_same_settings(inputs)
    names = dataset_names([i.folder.path for i in inputs], names)
    out = Path(out_dir)
    for item in inputs:
        if out.resolve() == item.folder.path.resolve():
            raise RunFolderError(f"{out} is one of the runs; choose another --out")
    check_output_dir(out, overwrite=overwrite)
    t_start = time.perf_counter()
    execution = execution or Execution()
    atlas_id = uuid.uuid4().hex
    folder = RunFolder(out)
    stacks: list[Any] = []
    try:
        with folder.locked():
            _clear_atlas(out)
            base = {**inputs[0].state["config"], "n_classes": n_classes, "seed": seed}
            cfg = RunConfig(**{**base, "fit_sample": None, "progress": progress})
            rows = balanced_rows(inputs, fit_sample, seed)
            fit_summary = _fit_map(out, inputs, rows, cfg, atlas_id, names)
            model_dir = out / "model"
            model = load_model(model_dir)
            subs = [RunFolder(out / "datasets" / name) for name in names]
            placed: list[Placed] = []
            with task_runner(execution, progress) as runner:
                for item, sub in zip(inputs, subs, strict=True):
                    source = Path(item.state["input"])
                    stack = read_particles(source, datadir=datadir)
                    stacks.append(stack)
                    sub_cfg = projection_config(
                        model.settings,
                        has_ctf=stack.ctf is not None,
                        source=str(source),
                        model=str(model_dir),
                        seed=seed,
                        progress=progress,
                        batch_size=cfg.batch_size,
                        max_members=cfg.max_members,
                        examples_per_class=cfg.examples_per_class,
                    )
                    with sub.locked():
                        _start_dataset(sub, item, source, sub_cfg)
                        placed.append(
                            place_stages(
                                sub, stack, sub_cfg, model, str(model_dir), runner, quantile
                            )
                        )
                execution_info = runner.describe()
            apix = float(model.settings["pixel_size_angstrom"])
            classes, avg = _class_table(subs, placed, apix)
            save_model(
                model_dir,
                model.manifold,
                settings=model.settings,
                classes=classes,
                class_averages=avg,
                class_junk=np.asarray(classes["junk"], bool),
                info=model.info,
            )
            model = load_model(model_dir)
            datasets: list[dict[str, Any]] = []
            offset = 0
            for name, item, sub, stack, p in zip(names, inputs, subs, stacks, placed, strict=True):
                with sub.locked():
                    result = finish_stages(
                        sub,
                        stack,
                        Path(item.state["input"]),
                        RunConfig(**sub.state["config"]),
                        model,
                        model_dir,
                        {"run_id": atlas_id},
                        p,
                        {"native": True, "features_from": str(item.folder.path.resolve())},
                        execution_info,
                        time.perf_counter(),
                    )
                n = len(stack)
                datasets.append(
                    {
                        "name": name,
                        "folder": f"datasets/{name}",
                        "source_run": str(item.folder.path.resolve()),
                        "source_run_id": item.run_info.get("run_id"),
                        "run_id": result.info["run_id"],
                        "n_particles": n,
                        "offset": offset,
                        "n_fit": int(fit_summary["n_fit_per_dataset"][len(datasets)]),
                        "n_novel": int(result.novel.sum()),
                    }
                )
                offset += n
            index = {
                "format": ATLAS_FORMAT,
                "version": 1,
                "run_id": atlas_id,
                "n_particles": offset,
                "n_classes": int(model.manifold.n_classes_),
                "datasets": datasets,
                "fit": fit_summary,
                "parameters": cfg.as_dict(),
                "versions": software_versions(),
            }
            _write_views(out, index)
            index["timings_s"] = {"total": round(time.perf_counter() - t_start, 3)}
            write_json(out / ATLAS_INDEX, index)  # last: the mark of a complete atlas
            log.info("wrote the atlas of %d datasets to %s", len(names), out)
            return index
    finally:
        for stack in stacks:
            stack.close()


def _write_views(out: Path, index: dict[str, Any]) -> None:
    """atlas.html and map.png of the whole atlas."""
    from cryomanifold.atlas.datasets import write_datasets_atlas_html
    from cryomanifold.plot import plot_map

    write_datasets_atlas_html(out, index=index, overwrite=True)
    model = load_model(out / "model")
    emb, codes = [], []
    for i, ds in enumerate(index["datasets"]):
        e = np.load(out / ds["folder"] / "embedding.npy")
        ok = np.isfinite(e).all(axis=1)
        emb.append(e[ok])
        codes.append(np.full(int(ok.sum()), i))
    all_emb = np.concatenate(emb)
    assert model.class_averages is not None
    plot_map(
        all_emb,
        np.zeros(all_emb.shape[0], np.int64),
        model.class_averages,
        out / "map.png",
        centroids=model.manifold.class_centroids(),
        junk=model.class_junk,
        title=f"atlas of {len(index['datasets'])} datasets: {index['n_particles']} particles, "
        f"{index['n_classes']} classes",
        groups=(np.concatenate(codes), [ds["name"] for ds in index["datasets"]]),
    )
