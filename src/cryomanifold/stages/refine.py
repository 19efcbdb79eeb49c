"""Stage *refine*: the second, phase-keeping stage (:mod:`cryomanifold.refine`).

Runs after the junk stage, on the map's good region: every usable particle whose
map class is not flagged junk. Its references start as those classes' averages
(averages stage); particles called junk one by one are aligned and classified
but do not shape the averages. Particles of the flagged classes keep their map
class (the map and the per-particle call are what sort junk). Each particle gets a
vector of best-over-pose correlations with the final references, which the outputs
stage writes as ``refined_features.npy`` (``features.npy`` keeps the map's
invariants, which the model, projections and atlases use).

Reads: the stack (once: the prepared, phase-flipped images are cached in
``stages/refine/images_*.npy``, one file per chunk, removed at the end),
``stages/embed.npz``, the averages and the junk call. Writes ``stages/refine.npz``
(final class, probability and pose of each particle, the map class it came from),
``stages/refine/classes.npz`` (averages, half averages, examples, resolution) and
``stages/refine/scores.npy`` (the feature vectors). Classes are numbered by
decreasing size, fine classes and the carried junk classes together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.parallel import TaskRunner
from cryomanifold.stages.averages import AverageSettings, ClassAverages, read_prepared
from cryomanifold.stages.config import RunConfig
from cryomanifold.stages.folder import RunFolder

__all__ = ["RefinedClasses", "load_refined", "run_refine"]

log = logging.getLogger(__name__)

#: Bytes of prepared images per cache file (and per task).
CHUNK_BYTES = 64 * 2**20
#: Members of each map class scored with random phases in the final round.
NULL_PER_CLASS = 64
#: A particle fits the references when its score exceeds the noise control's mean by
#: this many of its standard deviations (one-sided 0.13% for a normal null).
FIT_MARGIN_SIGMA = 3.0


@dataclass(frozen=True)
class RefinedClasses:
    """The stage's result: the run's final classes (K of them)."""

    labels: npt.NDArray[np.int64]  # (n,), -1 for skipped particles
    probabilities: npt.NDArray[np.float32]  # (n,)
    averages: ClassAverages  # the final classes' averages, examples, resolution
    origin: npt.NDArray[np.int64]  # (K,) the map class a carried class is, -1: refined
    no_fit: npt.NDArray[np.bool_]  # (n,) fits no reference better than noise (diagnostic)


@dataclass(frozen=True)
class CacheChunk:
    """Prepared images of some particles in a cache file (an ImageChunk)."""

    path: Path
    ctf: Any  # CTFParams of its rows, or None

    def load(self) -> tuple[npt.NDArray[np.float32], Any]:
        return np.load(self.path), self.ctf


@dataclass(frozen=True)
class _CacheTask:
    stack: Any  # light ParticleStack of the rows
    path: Path


def _write_cache(task: _CacheTask, settings: AverageSettings) -> float:
    """Prepare one chunk's images (crop, phase flip, normalise) into its cache file
    (usable particles only: no NaN or constant image reaches it)."""
    t0 = time.perf_counter()
    images = read_prepared(task.stack, settings)
    with atomic_path(task.path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, images.astype(np.float32))
    return time.perf_counter() - t0


def _chunk_rows(n: int, box: int, threads: int) -> int:
    """Rows per chunk: a few chunks per thread, at most CHUNK_BYTES of images."""
    limit = max(1, CHUNK_BYTES // (4 * box * box))
    return int(np.clip(-(-n // (4 * max(threads, 1))), min(256, limit), limit))


def run_refine(
    folder: RunFolder,
    stack: Any,
    cfg: RunConfig,
    embedded: Any,
    first: ClassAverages,
    called: Any,
    box_out: int,
    apix: float,
    runner: TaskRunner,
) -> tuple[RefinedClasses, dict[str, Any]]:
    """Run the stage; returns the final classes and the stage summary."""
    from cryomanifold.refine import RefineSettings, refine_classes

    t0 = time.perf_counter()
    labels0 = embedded.labels
    usable = np.flatnonzero(labels0 >= 0)
    flagged = np.asarray(called.classes.flags, bool)
    good_class = ~flagged & (np.bincount(labels0[usable], minlength=flagged.size) > 0)
    in_region = np.isin(labels0[usable], np.flatnonzero(good_class))
    contributes = in_region & ~np.asarray(called.junk, bool)[usable]
    null_rows = _null_rows(labels0[usable], good_class, cfg.seed)
    settings = RefineSettings(pixel_size_angstrom=apix, seed=cfg.seed, **dict(cfg.refine_options))
    work = folder.artefact("refine")
    work.mkdir(parents=True, exist_ok=True)
    per = _chunk_rows(usable.size, box_out, runner.threads)
    bounds = [(a, min(a + per, usable.size)) for a in range(0, usable.size, per)]
    cache = [
        _CacheTask(stack.subset(usable[a:b]), work / f"images_{a:010d}.npy") for a, b in bounds
    ]
    todo = [t for t in cache if not t.path.is_file()]
    runner.map(
        _write_cache,
        todo,
        shared=AverageSettings(
            box=cfg.box,
            pixel_size_angstrom=stack.pixel_size_angstrom,
            apix=apix,
            phase_flip=cfg.phase_flip and stack.ctf is not None,
            examples=cfg.examples_per_class,
            batch_size=cfg.batch_size,
            workers=runner.task_threads,
        ),
        desc="refine: images",
        unit="particle",
        sizes=[len(t.stack) for t in todo],
    )
    chunks = [CacheChunk(t.path, t.stack.ctf) for t in cache]
    init = first.averages[np.flatnonzero(good_class)]
    result = refine_classes(
        chunks,
        init,
        settings,
        sizes=[b - a for a, b in bounds],
        contributes=contributes,
        mapper=runner.map,
        null_rows=null_rows,
        workers=runner.task_threads,
    )
    control = _noise_control(result, labels0[usable], null_rows, good_class)
    in_region &= ~control.no_fit_class[labels0[usable]]
    final = _final_classes(
        folder,
        cfg,
        result,
        usable,
        in_region,
        labels0,
        first,
        chunks,
        bounds,
        apix,
        control,
    )
    for t in cache:
        t.path.unlink(missing_ok=True)
    k_fine = int(np.sum(final.origin < 0))
    summary = {
        "n_refined": int(in_region.sum()),
        "n_no_fit": int(final.no_fit.sum()),
        "no_fit_map_classes": [int(c) + 1 for c in np.flatnonzero(control.no_fit_class)],
        "fit_fraction": {
            str(int(c) + 1): round(float(control.fit_fraction[c]), 3)
            for c in np.flatnonzero(good_class)
        },
        "n_contributing": int(contributes.sum()),
        "n_classes": int(final.origin.size),
        "n_fine_classes": k_fine,
        "n_carried_classes": int(final.origin.size - k_fine),
        "n_features": int(result.scores.shape[1]),
        "rounds": result.history,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return final, summary


def _null_rows(
    labels: npt.NDArray[np.int64], good_class: npt.NDArray[np.bool_], seed: int
) -> npt.NDArray[np.intp]:
    """Up to NULL_PER_CLASS random members of each good map class (sorted rows)."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(13,)))
    rows = []
    for c in np.flatnonzero(good_class).tolist():
        members = np.flatnonzero(labels == c)
        rows.append(rng.choice(members, min(members.size, NULL_PER_CLASS), replace=False))
    return np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.intp)


@dataclass(frozen=True)
class _Control:
    threshold: npt.NDArray[np.float64]  # (K0,) score above which a member fits
    null_sd: npt.NDArray[np.float64]  # (K0,)
    fit_fraction: npt.NDArray[np.float64]  # (K0,) members above the threshold
    no_fit_class: npt.NDArray[np.bool_]  # (K0,) most members fit nothing


def _noise_control(
    result: Any,
    labels: npt.NDArray[np.int64],
    null_rows: npt.NDArray[np.intp],
    good_class: npt.NDArray[np.bool_],
) -> _Control:
    """Per map class: the score that noise with the members' own spectra reaches
    (mean + FIT_MARGIN_SIGMA sd of their phase-randomised copies' best scores), and
    the share of members above it. A class most of whose members stay below holds no
    particle the references recognise (empty ice missed one by one, for example)."""
    k0 = good_class.size
    threshold = np.full(k0, np.inf)
    sd = np.full(k0, np.nan)
    frac = np.zeros(k0)
    null_class = labels[null_rows]
    for c in np.flatnonzero(good_class).tolist():
        null = result.null_scores[null_class == c].astype(np.float64)
        if null.size < 3:
            threshold[c], frac[c] = -np.inf, 1.0
            continue
        sd[c] = max(float(null.std(ddof=1)), 1e-6)
        threshold[c] = float(null.mean()) + FIT_MARGIN_SIGMA * sd[c]
        frac[c] = float(np.mean(result.best_scores[labels == c] > threshold[c]))
    return _Control(threshold, sd, frac, good_class & (frac < 0.5))


def _final_classes(
    folder: RunFolder,
    cfg: RunConfig,
    result: Any,
    usable: npt.NDArray[np.int64],
    in_region: npt.NDArray[np.bool_],
    labels0: npt.NDArray[np.int64],
    first: ClassAverages,
    chunks: list[CacheChunk],
    bounds: list[tuple[int, int]],
    apix: float,
    control: _Control,
) -> RefinedClasses:
    """Number the fine and the carried classes together by size; write the artefacts."""
    from cryomanifold.halfset import half_set_resolution

    n = labels0.size
    k_fine = result.references.shape[0]
    # carried: the map classes left out of the refinement, after the fine ones
    raw = np.where(in_region, result.labels, k_fine + labels0[usable])
    sizes = np.bincount(raw, minlength=k_fine + first.averages.shape[0])
    order = np.flatnonzero(sizes > 0)
    order = order[np.argsort(-sizes[order], kind="stable")]
    new_index = np.full(sizes.size, -1, np.int64)
    new_index[order] = np.arange(order.size)
    labels = np.full(n, -1, np.int64)
    labels[usable] = new_index[raw]
    prob = np.zeros(n, np.float32)
    prob[usable] = np.where(in_region, result.probabilities, 1.0)
    origin = np.where(order >= k_fine, order - k_fine, -1).astype(np.int64)
    # particles of a no-fit class that fit no reference (a diagnostic: the junk call
    # stays the first stage's, which holds on real data; on the labelled real
    # beta-gal set, calling these junk cost 31 good particles for no junk caught)
    mapc = labels0[usable]
    below = control.no_fit_class[mapc] & (result.best_scores <= control.threshold[mapc])
    no_fit = np.zeros(n, bool)
    no_fit[usable] = below
    e = cfg.examples_per_class
    box = result.references.shape[-1]
    averages = np.zeros((order.size, box, box), np.float32)
    examples = np.zeros((order.size * e, box, box), np.float32)
    resolution = np.full(order.size, np.nan)
    consistent = np.zeros(order.size, bool)
    z_class = np.full(order.size, np.nan)
    want: dict[int, list[int]] = {}
    for j, src in enumerate(order.tolist()):
        if src >= k_fine:  # a carried map class: its averages-stage results
            c = src - k_fine
            averages[j] = first.averages[c]
            examples[j * e : (j + 1) * e] = first.examples[c * e : (c + 1) * e]
            resolution[j], consistent[j], z_class[j] = (
                first.resolution_angstrom[c],
                first.consistent[c],
                first.consistency_z[c],
            )
            continue
        averages[j] = result.references[src]
        resolution[j] = half_set_resolution(
            result.half_references[0, src], result.half_references[1, src], apix
        )
        members = np.flatnonzero(in_region & (result.labels == src))
        # consistent: most members fit their reference better than noise does
        fits = result.best_scores[members] > control.threshold[mapc[members]]
        consistent[j] = members.size > 0 and float(np.mean(fits)) > 0.5
        best = members[np.argsort(-result.scores[members, src], kind="stable")[:e]]
        for i, row in enumerate(best.tolist()):
            want.setdefault(row, []).append(j * e + i)
    # examples of the refined classes: their best-scoring members, read from the cache
    for ch, (a, b) in zip(chunks, bounds, strict=True):
        rows = [r for r in want if a <= r < b]
        if rows:
            images = np.load(ch.path, mmap_mode="r")
            for r in rows:
                for slot in want[r]:
                    examples[slot] = images[r - a]
    scores = np.zeros((n, result.scores.shape[1]), np.float32)
    scores[usable] = result.scores
    with atomic_path(folder.artefact("refine", "scores.npy")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, scores)
    fine = np.flatnonzero(order < k_fine)
    with atomic_path(folder.artefact("refine", "classes.npz")) as tmp:
        np.savez(
            tmp,
            average=averages,
            examples=examples,
            resolution_angstrom=resolution,
            consistent=consistent,
            consistency_z=z_class,
            origin=origin,
            half_a=result.half_references[0, order[fine]],
            half_b=result.half_references[1, order[fine]],
        )
    angles = np.full(n, np.nan, np.float32)
    shifts = np.full((n, 2), np.nan, np.float32)
    mirrored = np.zeros(n, bool)
    angles[usable], shifts[usable], mirrored[usable] = (
        result.angles_deg,
        result.shifts_px,
        result.mirrored,
    )
    with atomic_path(folder.artefact("refine.npz")) as tmp:
        np.savez(
            tmp,
            labels=labels,
            probabilities=prob,
            map_labels=labels0,
            angles_deg=angles,
            shifts_px=shifts,
            mirrored=mirrored,
            no_fit=no_fit,
        )
    return RefinedClasses(
        labels,
        prob,
        ClassAverages(averages, examples, resolution, consistent, z_class),
        origin,
        no_fit,
    )


def load_refined(folder: RunFolder) -> RefinedClasses:
    """The stage's result from its artefacts."""
    with np.load(folder.artefact("refine.npz")) as data:
        labels, prob = data["labels"], data["probabilities"]
        no_fit = data["no_fit"]
    with np.load(folder.artefact("refine", "classes.npz")) as data:
        avg = ClassAverages(
            data["average"],
            data["examples"],
            data["resolution_angstrom"],
            data["consistent"],
            data["consistency_z"],
        )
        origin = data["origin"]
    return RefinedClasses(labels, prob, avg, origin, no_fit)


def scores_path(folder: RunFolder) -> Path:
    """Where the stage writes the feature vectors (n, K)."""
    return folder.artefact("refine", "scores.npy")


def final_class_table(
    refined: RefinedClasses,
    called: Any,
    measures: dict[str, npt.NDArray[Any]],
    pixel_size_angstrom: float,
) -> Any:
    """The class table (:class:`cryomanifold.stages.junk.ClassTable`) of the final
    classes: refined classes summarise their members' per-particle call; a carried
    map class keeps the map's verdict."""
    from dataclasses import replace

    from cryomanifold.stages.junk import class_table

    table = class_table(
        refined.labels,
        called.junk,
        called.score,
        called.reason,
        refined.averages,
        measures,
        pixel_size_angstrom,
        called.no_signal,
    )
    carried = np.flatnonzero(refined.origin >= 0)
    first = called.classes
    flags, no_particle = table.flags.copy(), table.no_particle.copy()
    reason = list(table.reason)
    for j in carried.tolist():
        c = int(refined.origin[j])
        flags[j], no_particle[j], reason[j] = first.flags[c], first.no_particle[c], first.reason[c]
    return replace(table, flags=flags, no_particle=no_particle, reason=reason)
