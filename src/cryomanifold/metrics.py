"""Quality of a classification against ground truth (simulated data).

Classes are a vector quantisation: there are usually many more classes than
species, so species separation is scored after each class is named by the
majority truth label of its members ("class-majority" labels). Junk labels are
truth labels that start with ``junk`` (``junk:ice``, ``junk:carbon_edge``, ...).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

__all__ = [
    "JunkScores",
    "is_junk_label",
    "junk_precision_recall",
    "majority_labels",
    "species_ari",
    "species_nmi",
    "species_purity_recall",
]


def is_junk_label(truth: Sequence[str] | npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """True where a truth label names junk (starts with ``junk``)."""
    return np.char.startswith(np.asarray(truth).astype(str), "junk")


def majority_labels(classes: npt.ArrayLike, truth: npt.ArrayLike) -> npt.NDArray[np.str_]:
    """Name each particle by the most frequent truth label of its class.

    Parameters
    ----------
    classes : array_like, shape (n,)
        Class of each particle (any integers).
    truth : array_like of str, shape (n,)
        True label of each particle.

    Returns
    -------
    ndarray of str, shape (n,)
    """
    cls = np.asarray(classes)
    tr = np.asarray(truth).astype(str)
    out = np.empty(tr.shape, dtype=tr.dtype)
    for c in np.unique(cls):
        sel = cls == c
        names, counts = np.unique(tr[sel], return_counts=True)
        out[sel] = names[np.argmax(counts)]
    return out


def _collapse_junk(labels: npt.ArrayLike) -> npt.NDArray[np.str_]:
    lab = np.asarray(labels).astype(str)
    return np.where(is_junk_label(lab), "junk", lab)


def species_ari(classes: npt.ArrayLike, truth: npt.ArrayLike, *, junk_as_one: bool = True) -> float:
    """Adjusted Rand index between class-majority labels and the truth.

    With ``junk_as_one`` every junk kind counts as one label "junk" (the question
    is whether junk is kept apart from the particles, not which junk it is).
    """
    tr = _collapse_junk(truth) if junk_as_one else np.asarray(truth).astype(str)
    return float(adjusted_rand_score(tr, majority_labels(classes, tr)))


def species_nmi(classes: npt.ArrayLike, truth: npt.ArrayLike, *, junk_as_one: bool = True) -> float:
    """Normalised mutual information between class-majority labels and the truth."""
    tr = _collapse_junk(truth) if junk_as_one else np.asarray(truth).astype(str)
    return float(normalized_mutual_info_score(tr, majority_labels(classes, tr)))


def species_purity_recall(
    classes: npt.ArrayLike, truth: npt.ArrayLike
) -> dict[str, tuple[float, float]]:
    """Per truth label: (purity, recall) of the particles whose class-majority label is it.

    Purity is the fraction of particles assigned to the label that truly have it;
    recall the fraction of the label's particles assigned to it.
    """
    tr = _collapse_junk(truth)
    pred = majority_labels(classes, tr)
    out = {}
    for name in np.unique(tr):
        assigned = pred == name
        true = tr == name
        purity = float((assigned & true).sum() / max(assigned.sum(), 1))
        recall = float((assigned & true).sum() / max(true.sum(), 1))
        out[str(name)] = (purity, recall)
    return out


class JunkScores(NamedTuple):
    """Precision, recall and F1 of a junk flag against the truth."""

    precision: float
    recall: float
    f1: float
    recall_by_kind: dict[str, float]


def junk_precision_recall(flagged: npt.ArrayLike, truth: npt.ArrayLike) -> JunkScores:
    """Score per-particle junk flags against truth labels.

    Parameters
    ----------
    flagged : array_like of bool, shape (n,)
        Particles called junk.
    truth : array_like of str, shape (n,)
        True labels; ``junk:<kind>`` for junk.

    Returns
    -------
    JunkScores
        With the recall of each junk kind separately.
    """
    f = np.asarray(flagged, dtype=bool)
    tr = np.asarray(truth).astype(str)
    junk = is_junk_label(tr)
    tp = float((f & junk).sum())
    precision = tp / max(float(f.sum()), 1.0)
    recall = tp / max(float(junk.sum()), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    by_kind = {str(k): float(f[tr == k].mean()) for k in np.unique(tr[junk])}
    return JunkScores(precision, recall, f1, by_kind)
