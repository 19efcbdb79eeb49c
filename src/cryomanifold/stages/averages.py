"""Stage *averages*: an aligned average per class, one Dask task per class.

Reads the stack (each task reads its class's members itself) and
``stages/embed.npz``. Each class uses its ``max_members`` most probable members,
phase-flipped when the metadata has a CTF. Writes ``stages/averages/class_*.npz``
per class (so an interrupted run resumes class by class): the average and the
first ``examples_per_class`` members (most probable first) for the atlas.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.parallel import TaskRunner
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RunFolder

__all__ = ["AverageSettings", "average_class", "run_averages", "select_members"]


@dataclass(frozen=True)
class AverageSettings:
    box: int
    pixel_size_angstrom: float
    phase_flip: bool
    examples: int
    batch_size: int
    workers: int


@dataclass(frozen=True)
class AverageTask:
    label: int
    stack: Any  # light ParticleStack of the members, most probable first
    seed: np.random.SeedSequence
    path: Path


def select_members(
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    n_classes: int,
    limit: int,
) -> list[npt.NDArray[np.int64]]:
    """Rows of the ``limit`` most probable members of each class, most probable first."""
    out = []
    for k in range(n_classes):
        idx = np.flatnonzero(labels == k)
        out.append(idx[np.argsort(-probabilities[idx], kind="stable")[:limit]])
    return out


def _read_prepared(stack: Any, settings: AverageSettings) -> npt.NDArray[np.float32]:
    from cryomanifold.preprocess import prepare_images

    parts = []
    for idx, imgs in stack.batches(settings.batch_size):
        ctf = stack.ctf.subset(idx) if settings.phase_flip and stack.ctf is not None else None
        prepared, _ = prepare_images(
            imgs, box=settings.box, pixel_size_angstrom=settings.pixel_size_angstrom, ctf=ctf
        )
        parts.append(prepared)
    return np.concatenate(parts)


def average_class(task: AverageTask, settings: AverageSettings) -> float:
    """Align and average one class's members; writes its ``.npz``; returns seconds."""
    from cryomanifold.averaging import reference_free_average

    t0 = time.perf_counter()
    images = _read_prepared(task.stack, settings)
    result = reference_free_average(
        images, random_state=np.random.default_rng(task.seed), workers=settings.workers
    )
    with atomic_path(task.path) as tmp:
        np.savez(tmp, average=result.average, examples=images[: settings.examples])
    return time.perf_counter() - t0


def _class_path(folder: RunFolder, k: int) -> Path:
    return folder.artefact("averages", f"class_{k + 1:04d}.npz")


def run_averages(
    folder: RunFolder,
    stack: Any,
    cfg: RunConfig,
    labels: npt.NDArray[np.int64],
    probabilities: npt.NDArray[np.float32],
    n_classes: int,
    box_out: int,
    runner: TaskRunner,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], dict[str, Any]]:
    """Run the stage; returns the averages (K, L, L), the examples (K * e, L, L) and the
    summary."""
    t0 = time.perf_counter()
    members = select_members(labels, probabilities, n_classes, cfg.max_members)
    seeds = np.random.SeedSequence(cfg.seed, spawn_key=(3,)).spawn(n_classes)
    folder.artefact("averages").mkdir(parents=True, exist_ok=True)
    settings = AverageSettings(
        cfg.box,
        stack.pixel_size_angstrom,
        cfg.phase_flip and stack.ctf is not None,
        cfg.examples_per_class,
        cfg.batch_size,
        runner.task_threads,
    )
    todo = [
        AverageTask(k, stack.subset(members[k]), seeds[k], _class_path(folder, k))
        for k in range(n_classes)
        if members[k].size and not _class_path(folder, k).is_file()
    ]
    runner.map(
        average_class,
        todo,
        shared=settings,
        desc="class averages",
        unit="particle",
        sizes=[len(t.stack) for t in todo],
    )
    averages, examples = load_averages(folder, n_classes, box_out, cfg.examples_per_class)
    summary = {"n_classes": n_classes, "seconds": round(time.perf_counter() - t0, 3)}
    return averages, examples, summary


def load_averages(
    folder: RunFolder, n_classes: int, box_out: int, examples_per_class: int
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Averages and examples from the per-class files of a finished stage."""
    e = examples_per_class
    averages = np.zeros((n_classes, box_out, box_out), np.float32)
    examples = np.zeros((n_classes * e, box_out, box_out), np.float32)
    for k in range(n_classes):
        path = _class_path(folder, k)
        if path.is_file():
            with np.load(path) as data:
                averages[k] = data["average"]
                examples[k * e : k * e + data["examples"].shape[0]] = data["examples"]
    return averages, examples
