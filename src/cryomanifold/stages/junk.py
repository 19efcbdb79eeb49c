"""Stage *junk*: the per-particle junk call, its score and reason, and class flags.

Reads the per-particle measures of the features stage, the classes and the class
averages. Writes ``stages/junk.npz``: ``junk`` (n,) bool, ``score`` (n,) float32 in
[0, 1], ``reason`` (n,) int8 (an index into the stage summary's ``reasons``; -1 for
none), and the class table in the stage summary.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cryomanifold._atomic import atomic_path
from cryomanifold.junk import JunkAssessment, assess_classes, particle_junk_scores
from cryomanifold.manifold import ParticleManifold
from cryomanifold.stages.embed import EmbedResult
from cryomanifold.stages.folder import RunFolder

__all__ = ["JunkResult", "load_junk", "run_junk"]


@dataclass(frozen=True)
class JunkResult:
    junk: npt.NDArray[np.bool_]  # (n,) per-particle call
    score: npt.NDArray[np.float32]  # (n,) probability-like score of being junk
    reason: npt.NDArray[np.object_]  # (n,) str, "" when not junk
    classes: JunkAssessment  # per class


def _reason_codes(reason: npt.NDArray[np.object_]) -> tuple[npt.NDArray[np.int8], list[str]]:
    names = sorted({str(r) for r in reason if r})
    lookup = {name: i for i, name in enumerate(names)}
    return np.array([lookup.get(str(r), -1) for r in reason], dtype=np.int8), names


def run_junk(
    folder: RunFolder,
    measures: dict[str, npt.NDArray[Any]],
    embedded: EmbedResult,
    manifold: ParticleManifold,
    averages: npt.NDArray[np.float32],
    pixel_size_angstrom: float,
) -> tuple[JunkResult, dict[str, Any]]:
    """Run the stage; returns its result and summary."""
    t0 = time.perf_counter()
    labels = embedded.labels
    n = labels.size
    good = np.flatnonzero(labels >= 0)
    classes = assess_classes(
        measures["contrast"],
        labels,
        averages,
        pixel_size_angstrom=pixel_size_angstrom,
        mass=measures["mass"],
    )
    score = np.ones(n, dtype=np.float32)
    for start in range(0, good.size, 200_000):
        rows = good[start : start + 200_000]
        membership = manifold.gmm_.predict_proba(embedded.embedding[rows])
        score[rows] = particle_junk_scores(membership, classes.scores)
    junk = np.ones(n, dtype=bool)
    junk[good] = classes.flags[labels[good]]
    reason = np.full(n, "", dtype=object)
    reason[labels < 0] = "unreadable"
    reason[good] = np.asarray(classes.reason, dtype=object)[labels[good]]
    codes, names = _reason_codes(reason)
    with atomic_path(folder.artefact("junk.npz")) as tmp:
        np.savez(
            tmp,
            junk=junk,
            score=score,
            reason=codes,
            class_scores=classes.scores,
            class_flags=classes.flags,
            class_contrast=classes.contrast,
            class_detail=classes.detail,
            class_mass=classes.mass,
        )
    summary = {
        "reasons": names,
        "class_reasons": list(classes.reason),
        "n_junk": int(junk.sum()),
        "n_junk_classes": int(classes.flags.sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return JunkResult(junk, score, reason, classes), summary


def load_junk(folder: RunFolder) -> JunkResult:
    """The stage's result from ``stages/junk.npz`` and its summary."""
    summary = folder.summary("junk")
    names = np.asarray(summary["reasons"] + [""], dtype=object)
    with np.load(folder.artefact("junk.npz")) as data:
        classes = JunkAssessment(
            data["class_scores"],
            data["class_flags"],
            data["class_contrast"],
            data["class_detail"],
            list(summary["class_reasons"]),
            data["class_mass"],
        )
        return JunkResult(data["junk"], data["score"], names[data["reason"]], classes)
