"""Stage *junk*: the per-particle junk call, and the class table that summarises it.

Reads the per-particle measures of the features stage, each particle's distance from
the map's support (embed stage), the classes and the half-set test of each class
(averages stage). The call is per particle (:func:`cryomanifold.junk_call.call_particles`:
image artefacts, signal presence, mass, distance from the manifold); it uses no class,
no map position and no random number, so it does not move with the seed. A class is
flagged when most of its members are junk, or when it holds no consistent particle;
the class flag is a summary, and the export and the atlas use the per-particle call.

"No consistent particle": the class's two half averages do not agree better than the
noise control (half-set test, :mod:`cryomanifold.halfset`) *and* most of its members
carry no signal of their own (the per-particle signal-presence test, calculated
against each image's own noise spectrum under its CTF). Aligning images to each
other can only make a particle out of nothing when the images hold nothing; a class
of real but faint or mixed views can fall short of the half-set test's 3-sigma line
while its members each show signal, and its average is then a real, if blurry,
average. Such classes are shown, and ``consistent`` in classes.csv still reports the
half-set test itself. Classes with no consistent particle are shown blank.

Writes ``stages/junk.npz``: ``junk`` (n,) bool, ``score`` (n,) float32 in [0, 1],
``reason`` (n,) int8 (an index into the stage summary's ``reasons``; -1 none) and the
class table's arrays.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.halfset import average_detail
from cryomanifold.junk_call import call_particles, robust_z
from cryomanifold.stages.averages import ClassAverages
from cryomanifold.stages.embed import EmbedResult
from cryomanifold.stages.folder import RunFolder

__all__ = ["ClassTable", "JunkResult", "class_table", "load_junk", "run_junk"]

NO_CONSISTENT_PARTICLE = "no_consistent_particle"


@dataclass(frozen=True)
class ClassTable:
    """Per-class summary (arrays of shape (K,)), as written to classes.csv."""

    sizes: npt.NDArray[np.int64]
    flags: npt.NDArray[np.bool_]
    scores: npt.NDArray[np.float32]  # mean junk score of the members
    junk_fraction: npt.NDArray[np.float32]  # members called junk
    reason: list[str]  # "", the members' commonest reason, or "no_consistent_particle"
    resolution_angstrom: npt.NDArray[np.float64]  # half-set FRC 0.143 (NaN: not measured)
    consistent: npt.NDArray[np.bool_]  # the half-set test passed (z >= its line)
    consistency_z: npt.NDArray[np.float64]
    no_particle: npt.NDArray[np.bool_]  # no consistent particle: failed test, no signal
    contrast: npt.NDArray[np.float32]  # median centre-over-edge contrast of the members
    detail: npt.NDArray[np.float32]  # of the average (junk.average_detail)
    mass: npt.NDArray[np.float32]  # median integrated density of the members


@dataclass(frozen=True)
class JunkResult:
    junk: npt.NDArray[np.bool_]  # (n,) the per-particle call
    score: npt.NDArray[np.float32]  # (n,) probability-like score of being junk
    reason: npt.NDArray[np.object_]  # (n,) str, "" when not junk
    classes: ClassTable
    no_signal: npt.NDArray[np.bool_] | None = None  # (n,) own signal test failed


def class_table(
    labels: npt.NDArray[np.int64],
    junk: npt.NDArray[np.bool_],
    score: npt.NDArray[np.float32],
    reason: npt.NDArray[np.object_],
    averages: ClassAverages,
    measures: dict[str, npt.NDArray[Any]],
    pixel_size_angstrom: float,
    no_signal: npt.NDArray[np.bool_] | None = None,
) -> ClassTable:
    """Summarise the per-particle call and the half-set test per class.

    ``no_signal`` (n,) marks the particles whose own signal-presence test failed
    (whatever reason their call gives); see the module docstring.
    """
    k = averages.averages.shape[0]
    sizes = np.bincount(labels[labels >= 0], minlength=k).astype(np.int64)
    frac = np.zeros(k, np.float32)
    mean_score = np.zeros(k, np.float32)
    contrast = np.full(k, np.nan, np.float32)
    mass = np.full(k, np.nan, np.float32)
    reasons = []
    for c in range(k):
        members = labels == c
        if not sizes[c]:
            reasons.append("")
            continue
        frac[c] = junk[members].mean()
        mean_score[c] = score[members].mean()
        contrast[c] = np.median(measures["contrast"][members])
        mass[c] = np.median(measures["mass"][members]) if "mass" in measures else np.nan
        why = [str(r) for r in reason[members & junk]]
        reasons.append(max(set(why), key=why.count) if frac[c] > 0.5 else "")
    silent = np.zeros(k, dtype=bool)
    if no_signal is not None:
        for c in np.flatnonzero(sizes).tolist():
            silent[c] = no_signal[labels == c].mean() > 0.5
    tested = np.isfinite(averages.consistency_z)
    no_particle = tested & ~averages.consistent & silent
    for c in np.flatnonzero(no_particle).tolist():
        reasons[c] = NO_CONSISTENT_PARTICLE
    flags = (frac > 0.5) | no_particle
    detail = average_detail(averages.averages, pixel_size_angstrom=pixel_size_angstrom)
    return ClassTable(
        sizes,
        flags,
        mean_score,
        frac,
        reasons,
        averages.resolution_angstrom,
        averages.consistent,
        averages.consistency_z,
        no_particle,
        contrast,
        detail.astype(np.float32),
        mass,
    )


def _reason_codes(reason: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.int8], list[str]]:
    names = sorted({str(r) for r in reason if r})
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(str(r), -1) for r in reason], dtype=np.int8), names


def run_junk(
    folder: RunFolder,
    measures: dict[str, npt.NDArray[Any]],
    embedded: EmbedResult,
    averages: ClassAverages,
    pixel_size_angstrom: float,
    *,
    class_labels: npt.NDArray[np.int64] | None = None,
) -> tuple[JunkResult, dict[str, Any]]:
    """Run the stage; returns its result and summary.

    ``class_labels`` (default ``embedded.labels``) are the classes the class table
    counts; a projection passes -1 for its novel particles, which are called like
    every other particle but belong to no class.
    """
    t0 = time.perf_counter()
    labels = embedded.labels
    n = labels.size
    good = labels >= 0
    signs: dict[str, npt.ArrayLike] = {
        k: v for k, v in measures.items() if k not in ("bad", "contrast")
    }
    if embedded.neighbour_distance is not None:
        # distance from the main manifold: log mean distance to the nearest reference
        # points in PCA space, as a robust z over the dataset (no seed enters it)
        log_d = np.log(np.maximum(np.nan_to_num(embedded.neighbour_distance, nan=1.0), 1e-30))
        z = np.zeros(n)
        z[good] = robust_z(log_d[good])
        signs["feature_outlier_z"] = z
    call = call_particles(signs)
    junk = call.junk | ~good
    score = np.where(good, call.score, np.float32(1.0)).astype(np.float32)
    reason = np.asarray(call.reason, dtype=object)
    reason[~good] = "unreadable"
    no_signal = (call.signs["no_signal"] > 0.5) & good
    members = labels if class_labels is None else np.asarray(class_labels)
    table = class_table(
        members, junk, score, reason, averages, measures, pixel_size_angstrom, no_signal
    )
    codes, names = _reason_codes(reason)
    with atomic_path(folder.artefact("junk.npz")) as tmp:
        np.savez(
            tmp,
            junk=junk,
            score=score,
            reason=codes,
            no_signal=no_signal,
            **{
                f"class_{f.name}": getattr(table, f.name)
                for f in fields(table)
                if f.name != "reason"
            },
        )
    summary = {
        "reasons": names,
        "class_reasons": list(table.reason),
        "n_junk": int(junk[good].sum()),
        "n_junk_by_reason": {r: int(np.sum(reason[good] == r)) for r in names},
        "n_junk_classes": int(table.flags.sum()),
        "n_no_particle_classes": int(table.no_particle.sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return JunkResult(junk, score, reason, table, no_signal), summary


def load_junk(folder: RunFolder) -> JunkResult:
    """The stage's result from ``stages/junk.npz`` and its summary."""
    summary = folder.summary("junk")
    names = np.asarray([*summary["reasons"], ""], dtype=object)
    with np.load(folder.artefact("junk.npz")) as data:
        table = ClassTable(
            **{f.name: data[f"class_{f.name}"] for f in fields(ClassTable) if f.name != "reason"},
            reason=list(summary["class_reasons"]),
        )
        no_signal = data["no_signal"] if "no_signal" in data.files else None
        return JunkResult(data["junk"], data["score"], names[data["reason"]], table, no_signal)
