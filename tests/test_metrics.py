"""Metrics against ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from cryomanifold.metrics import (
    junk_precision_recall,
    majority_labels,
    species_ari,
    species_purity_recall,
)

TRUTH = np.array(["a"] * 6 + ["b"] * 4 + ["junk:ice"] * 2 + ["junk:carbon_edge"] * 2)


def test_overclustering_is_not_penalised():
    # six pure classes for three groups: species separation is perfect
    classes = np.array([0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 5, 5, 5, 5])
    assert species_ari(classes, TRUTH) == pytest.approx(1.0)
    assert majority_labels(classes, TRUTH)[0] == "a"


def test_mixed_classes_lower_the_score():
    classes = np.array([0, 0, 0, 1, 1, 1, 0, 0, 1, 1, 2, 2, 2, 2])
    assert species_ari(classes, TRUTH) < 0.6
    pr = species_purity_recall(classes, TRUTH)
    assert pr["junk"] == (1.0, 1.0)
    assert pr["a"][0] < 1.0


def test_junk_precision_recall_by_kind():
    flagged = np.zeros(14, bool)
    flagged[[9, 10, 11]] = True  # one false positive, both ice, no carbon
    s = junk_precision_recall(flagged, TRUTH)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == pytest.approx(0.5)
    assert s.recall_by_kind == {"junk:carbon_edge": 0.0, "junk:ice": 1.0}
    assert s.f1 == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
