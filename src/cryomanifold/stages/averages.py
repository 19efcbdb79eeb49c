"""Stage *averages*: half-set averages per class, one Dask task per class.

Reads the stack (each task reads its class's members itself) and
``stages/embed.npz``. Each class uses its ``max_members`` most probable members,
phase-flipped when the metadata has a CTF, split into two random halves that are
aligned and averaged independently (:func:`cryomanifold.halfset.half_set_average`):
the FRC of the halves gives the class's resolution (FRC 0.143) and, against a noise
control, whether the class holds a consistent particle at all. Writes
``stages/averages/class_*.npz`` per class (so an interrupted run resumes class by
class): the average, the half averages, the FRC curves, the resolution, the
consistency test and the first ``examples_per_class`` members (most probable first)
for the atlas.
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

__all__ = [
    "AverageSettings",
    "ClassAverages",
    "average_class",
    "load_averages",
    "read_prepared",
    "run_averages",
    "select_members",
]


@dataclass(frozen=True)
class ClassAverages:
    """The stage's result, per class (K classes, box L)."""

    averages: npt.NDArray[np.float32]  # (K, L, L)
    examples: npt.NDArray[np.float32]  # (K * examples_per_class, L, L)
    resolution_angstrom: npt.NDArray[np.float64]  # (K,), FRC 0.143; NaN if not measured
    consistent: npt.NDArray[np.bool_]  # (K,), halves agree better than the noise control
    consistency_z: npt.NDArray[np.float64]  # (K,), NaN if not measured


@dataclass(frozen=True)
class AverageSettings:
    box: int
    pixel_size_angstrom: float  # of the input images
    apix: float  # after cropping
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


def read_prepared(stack: Any, settings: AverageSettings) -> npt.NDArray[np.float32]:
    """The stack's images cropped, phase-flipped (``settings.phase_flip``) and
    normalised, (n, box, box), read batch by batch."""
    from cryomanifold.preprocess import prepare_images

    parts = []
    for idx, imgs in stack.batches(settings.batch_size):
        ctf = stack.ctf.subset(idx) if settings.phase_flip and stack.ctf is not None else None
        prepared, _ = prepare_images(
            imgs,
            box=settings.box,
            pixel_size_angstrom=settings.pixel_size_angstrom,
            ctf=ctf,
            workers=settings.workers,
        )
        parts.append(prepared)
    return np.concatenate(parts)


def average_class(task: AverageTask, settings: AverageSettings) -> float:
    """Half-set average of one class's members; writes its ``.npz``; returns seconds."""
    from cryomanifold.averaging import reference_free_average
    from cryomanifold.halfset import half_set_average

    t0 = time.perf_counter()
    images = read_prepared(task.stack, settings)
    rng = np.random.default_rng(task.seed)
    extra: dict[str, Any] = {}
    if images.shape[0] >= 4:
        hs = half_set_average(
            images, pixel_size_angstrom=settings.apix, random_state=rng, workers=settings.workers
        )
        average = hs.average
        extra = {
            "half_a": hs.half_a,
            "half_b": hs.half_b,
            "frequencies": hs.frequencies,
            "frc": hs.frc,
            "frc_control": hs.frc_control,
        }
        resolution, consistent, z = hs.resolution_angstrom, hs.consistent, hs.consistency_z
    else:  # too few members to split: an average, but no test
        average = reference_free_average(images, random_state=rng, workers=settings.workers).average
        resolution, consistent, z = np.nan, False, np.nan
    with atomic_path(task.path) as tmp:
        np.savez(
            tmp,
            average=average,
            examples=images[: settings.examples],
            resolution_angstrom=np.float64(resolution),
            consistent=np.bool_(consistent),
            consistency_z=np.float64(z),
            **extra,
        )
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
    apix: float,
    runner: TaskRunner,
) -> tuple[ClassAverages, dict[str, Any]]:
    """Run the stage; returns its result and summary."""
    t0 = time.perf_counter()
    members = select_members(labels, probabilities, n_classes, cfg.max_members)
    seeds = np.random.SeedSequence(cfg.seed, spawn_key=(3,)).spawn(n_classes)
    folder.artefact("averages").mkdir(parents=True, exist_ok=True)
    settings = AverageSettings(
        cfg.box,
        stack.pixel_size_angstrom,
        apix,
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
    result = load_averages(folder, n_classes, box_out, cfg.examples_per_class)
    summary = {
        "n_classes": n_classes,
        "n_consistent": int(result.consistent.sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return result, summary


def load_averages(
    folder: RunFolder, n_classes: int, box_out: int, examples_per_class: int
) -> ClassAverages:
    """The stage's result from its per-class files (empty classes: zeros, untested)."""
    e = examples_per_class
    averages = np.zeros((n_classes, box_out, box_out), np.float32)
    examples = np.zeros((n_classes * e, box_out, box_out), np.float32)
    resolution = np.full(n_classes, np.nan)
    consistent = np.zeros(n_classes, dtype=bool)
    z = np.full(n_classes, np.nan)
    for k in range(n_classes):
        path = _class_path(folder, k)
        if path.is_file():
            with np.load(path) as data:
                averages[k] = data["average"]
                examples[k * e : k * e + data["examples"].shape[0]] = data["examples"]
                resolution[k] = float(data["resolution_angstrom"])
                consistent[k] = bool(data["consistent"])
                z[k] = float(data["consistency_z"])
    return ClassAverages(averages, examples, resolution, consistent, z)
