from __future__ import annotations

import numpy as np
import pytest

from robustmtl.metrics import group_metrics


def test_group_metrics_by_hand():
    correct = np.array([1, 1, 0, 1, 0, 0, 1], dtype=bool)
    g = np.array([0, 0, 0, 1, 1, 3, 3])
    membership = np.eye(4, dtype=bool)[g]
    m = group_metrics(correct, membership)
    assert m["avg_acc"] == pytest.approx(4 / 7)
    assert m["group_acc"] == {"0": pytest.approx(2 / 3), "1": 0.5, "3": 0.5}
    assert m["group_n"] == {"0": 3, "1": 2, "3": 2}
    assert m["worst_group_acc"] == 0.5
    assert "2" not in m["group_acc"]


def test_overlapping_groups_count_an_example_in_each():
    correct = np.array([1, 0], dtype=bool)
    membership = np.array([[1, 1], [0, 1]], dtype=bool)
    m = group_metrics(correct, membership)
    assert m["group_acc"] == {"0": 1.0, "1": 0.5} and m["avg_acc"] == 0.5
