from __future__ import annotations

import base64
import math

import numpy as np
import pytest

from robustmtl.metrics import group_metrics, pack_bools, unpack_bools


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


def test_an_empty_split_has_no_accuracy_and_no_groups():
    m = group_metrics(np.zeros(0, dtype=bool), np.zeros((0, 4), dtype=bool))
    assert math.isnan(m["avg_acc"]) and math.isnan(m["worst_group_acc"])
    assert m["group_acc"] == {} and m["group_n"] == {}


def test_a_split_whose_examples_are_in_no_group_has_an_average_but_no_worst_group():
    m = group_metrics(np.array([1, 0, 1], dtype=bool), np.zeros((3, 2), dtype=bool))
    assert m["avg_acc"] == pytest.approx(2 / 3) and math.isnan(m["worst_group_acc"]) and m["group_acc"] == {}


def test_booleans_pack_one_bit_each_and_unpack_to_the_count_asked():
    values = np.array([1, 0, 1, 1, 0, 0, 0, 1, 1, 0], dtype=bool)
    text = pack_bools(values)
    assert text == base64.b64encode(bytes([0b10110001, 0b10000000])).decode()
    assert unpack_bools(text, 10).tolist() == values.tolist() and unpack_bools(text, 10).dtype == bool
    assert unpack_bools(text, 3).tolist() == [True, False, True]
    assert unpack_bools(pack_bools(values.reshape(2, 5)), 10).tolist() == values.tolist()  # any shape, row-major
