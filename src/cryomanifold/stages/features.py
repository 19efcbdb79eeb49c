"""Stage *features*: stream the stack in chunks, write features and per-particle measures.

Reads: the particle stack (as light per-chunk slices that open their files inside
the task). Writes: ``stages/features/chunk_*.npz`` (one per chunk, atomically, so an
interrupted run resumes from the last finished chunk), then assembles
``features.npy`` (contract) and ``stages/particles.npz`` (per-particle measures:
``bad``, ``contrast`` and the junk measures of
:func:`cryomanifold.junk_signs.particle_measures`) and removes the chunk files.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.parallel import TaskRunner
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RunFolder

__all__ = ["FeatureSettings", "featurize_chunk", "plan_chunks", "run_features"]

log = logging.getLogger(__name__)

#: Bytes of float32 images read per chunk (each task holds about one chunk).
CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class FeatureSettings:
    """What a feature task needs besides its stack slice (small, picklable)."""

    box: int
    pixel_size_angstrom: float
    ctf_features: bool
    feature_options: dict[str, Any] = field(default_factory=dict)
    particle_diameter_angstrom: float | None = None
    contrast_column: bool = True
    batch_size: int = 1024
    workers: int = -1


@dataclass(frozen=True)
class FeatureTask:
    """One chunk: rows ``[start, stop)`` of the stack and where its results go."""

    start: int
    stop: int
    stack: Any  # a light ParticleStack (ParticleStack.subset)
    path: Path


def plan_chunks(n: int, box_size: int, batch_size: int) -> list[tuple[int, int]]:
    """Rows ``[start, stop)`` of each chunk: about :data:`CHUNK_BYTES` of float32 images
    (a whole number of batches when a batch fits; else one smaller batch), so that a
    task's memory stays bounded whatever the box."""
    per = max(1, CHUNK_BYTES // max(1, 4 * box_size * box_size))
    if per >= batch_size:
        per = (per // batch_size) * batch_size
    return [(s, min(s + per, n)) for s in range(0, n, per)]


def featurize_chunk(task: FeatureTask, settings: FeatureSettings) -> dict[str, float]:
    """Featurise one chunk and write its ``.npz``; returns ``{"n": ..., "seconds": ...}``.

    Runs inside a Dask task: it reads its own images (no memory map travels).
    """
    from cryomanifold.features import invariant_features
    from cryomanifold.junk_signs import particle_measures
    from cryomanifold.preprocess import bad_images, prepare_images

    t0 = time.perf_counter()
    stack = task.stack
    n = len(stack)
    feats: list[npt.NDArray[np.float32]] = []
    measures: dict[str, npt.NDArray[np.float32]] = {}
    bad = np.zeros(n, dtype=bool)
    radius = None
    for idx, imgs in stack.batches(settings.batch_size):
        b = bad_images(imgs)
        bad[idx] = b
        if b.any():  # NaN/inf or constant: features of a blank image, skipped later
            imgs[b] = 0.0
        prepared, apix = prepare_images(
            imgs,
            box=settings.box,
            pixel_size_angstrom=settings.pixel_size_angstrom,
            workers=settings.workers,
        )
        if settings.particle_diameter_angstrom is not None:
            radius = 0.5 * settings.particle_diameter_angstrom / apix
        ctf = stack.ctf.subset(idx) if stack.ctf is not None else None
        # junk measures and the contrast feature from one spectrum: edge stripes on the
        # uncropped images (exact copies there), signal presence under each CTF
        signs = particle_measures(
            prepared,
            pixel_size_angstrom=apix,
            radius_px=radius,
            ctf=ctf,
            raw=imgs if imgs.shape[-1] != prepared.shape[-1] else None,
            workers=settings.workers,
        )
        for key, values in signs.items():
            measures.setdefault(key, np.zeros(n, np.float32))[idx] = values
        feats.append(
            invariant_features(
                prepared,
                ctf=ctf if settings.ctf_features else None,
                pixel_size_angstrom=apix,
                workers=settings.workers,
                **settings.feature_options,
            )
        )
    features = np.concatenate(feats).astype(np.float32)
    if settings.contrast_column:
        log_c = np.log(np.maximum(measures["contrast"], 1e-3)).astype(np.float32)
        features = np.hstack([features, log_c[:, None]])
    with atomic_path(task.path) as tmp:
        np.savez(tmp, features=features, bad=bad, **measures)  # type: ignore[arg-type]
    return {"n": float(n), "seconds": time.perf_counter() - t0}


def _chunk_path(folder: RunFolder, start: int) -> Path:
    return folder.artefact("features", f"chunk_{start:010d}.npz")


def run_features(
    folder: RunFolder, stack: Any, cfg: RunConfig, runner: TaskRunner
) -> dict[str, Any]:
    """Run the stage (only the chunks not yet written) and assemble its outputs.

    Returns
    -------
    dict
        The stage summary for the state record: particles, skipped, features, box
        and pixel size after cropping, chunks, seconds.
    """
    n = len(stack)
    chunks = folder.state.get("chunks")
    if chunks is None:
        chunks = plan_chunks(n, stack.box_size, cfg.batch_size)
        folder.set("chunks", chunks)
    folder.artefact("features").mkdir(parents=True, exist_ok=True)
    todo = [(a, b) for a, b in chunks if not _chunk_path(folder, a).is_file()]
    if len(todo) < len(chunks):
        log.info("features: %d of %d chunks already done", len(chunks) - len(todo), len(chunks))
    settings = FeatureSettings(
        box=cfg.box,
        pixel_size_angstrom=stack.pixel_size_angstrom,
        ctf_features=cfg.ctf_features,
        # JSON (a saved model, a resumed run) turns tuples such as the band into lists
        feature_options={
            k: tuple(v) if isinstance(v, list) else v for k, v in cfg.feature_options.items()
        },
        particle_diameter_angstrom=cfg.particle_diameter_angstrom,
        contrast_column=cfg.contrast_weight > 0,
        batch_size=cfg.batch_size,
        workers=runner.task_threads,
    )
    tasks = [
        FeatureTask(a, b, stack.subset(np.arange(a, b)), _chunk_path(folder, a)) for a, b in todo
    ]
    t0 = time.perf_counter()
    runner.map(
        featurize_chunk,
        tasks,
        shared=settings,
        desc="features",
        unit="particle",
        sizes=[b - a for a, b in todo],
    )
    summary = _assemble(folder, chunks, n)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    return summary


def _assemble(folder: RunFolder, chunks: list[tuple[int, int]], n: int) -> dict[str, Any]:
    """Concatenate the chunk files into features.npy and stages/particles.npz."""
    with np.load(_chunk_path(folder, chunks[0][0])) as first:
        d = first["features"].shape[1]
        names = [k for k in first.files if k != "features"]
        measures = {name: np.zeros(n, first[name].dtype) for name in names}
    # sequential writes, not a memory map: a full disk is then an OSError, not a SIGBUS
    with atomic_path(folder.output("features.npy")) as tmp, open(tmp, "wb") as fh:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False}
        np.lib.format.write_array_header_1_0(fh, {**header, "shape": (n, d)})
        for a, b in chunks:
            with np.load(_chunk_path(folder, a)) as part:
                fh.write(np.ascontiguousarray(part["features"], dtype="<f4").tobytes())
                for name in names:
                    measures[name][a:b] = part[name]
    with atomic_path(folder.artefact("particles.npz")) as tmp:
        np.savez(tmp, **measures)  # type: ignore[arg-type]
    for a, _ in chunks:
        _chunk_path(folder, a).unlink(missing_ok=True)
    n_bad = int(measures["bad"].sum())
    if n_bad:
        log.warning(
            "skipped %d of %d particles with NaN/inf or constant images (class 0 in "
            "particles.star)",
            n_bad,
            n,
        )
    return {"n_particles": n, "n_skipped": n_bad, "n_features": d, "chunks": len(chunks)}


def load_measures(folder: RunFolder) -> dict[str, npt.NDArray[Any]]:
    """The per-particle measures written by the stage."""
    with np.load(folder.artefact("particles.npz")) as data:
        return {k: data[k] for k in data.files}
