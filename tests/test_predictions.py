"""Stored per-example predictions on real runs."""

from __future__ import annotations

import numpy as np
import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import GridDir
from robustmtl.predictions import PREDICTIONS_DIR, PredictionStore, probs_name
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TINY, read_records


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictions")
    g = GridDir(root)
    for seed in (0, 1):
        for lr in (1e-3, 1e-2):
            cfg = build_config("erm", "synthetic", seed, None, {**TINY, "lr": lr}, where="t")
            rd = g.run(cfg.run_id)
            prepare_run(rd, cfg, RunOptions(threads=1))
            train_run(rd)
    return g


def store_of(grid: GridDir, run_id: str) -> PredictionStore:
    return PredictionStore(grid.run(run_id).artifact(PREDICTIONS_DIR))


def test_every_val_and_test_evaluation_stores_its_probabilities_once_beside_its_record(grid):
    for run_id in grid.run_ids():
        store = store_of(grid, run_id)
        records = [r for r in read_records(grid.run(run_id).metrics) if r["split"] in ("val", "test")]
        expected = {probs_name(r["split"], r["epoch"], r["step"]) for r in records}
        assert {p.name for p in store.root.glob("*.npy")} == expected
        assert {p.name for p in store.root.iterdir()} == expected | {"labels-val.npz", "labels-test.npz"}
        for r in records:
            probs = store.read_probs(r["split"], r["epoch"], r["step"])
            y, membership, train_group_n = store.read_labels(r["split"])
            assert probs.dtype == np.float16 and probs.shape == (len(y), 2) and membership.shape[0] == len(y)
            assert np.allclose(probs.astype(np.float64).sum(axis=1), 1, atol=2e-3)
            assert train_group_n.sum() == TINY["n_train"]
            # the float16 argmax is the record's prediction but for the rare tie float16 rounding makes
            correct = probs.argmax(axis=1) == y
            assert abs(correct.mean() - r["avg_acc"]) <= 2 / len(y)


def test_a_resumed_run_keeps_one_intact_file_per_evaluation(grid, tmp_path):
    """A redone evaluation finds its files and leaves them: the first write stays, nothing is torn or doubled."""
    run_id = grid.run_ids()[0]
    store = PredictionStore(tmp_path / PREDICTIONS_DIR)
    original = store_of(grid, run_id)
    y, membership, train_group_n = original.read_labels("val")
    first = np.full((len(y), 2), 0.5, np.float16)
    store.write("val", 1, 7, first, y, membership, train_group_n)
    store.write("val", 1, 7, np.zeros_like(first), 1 - y, membership, train_group_n)  # the redo
    assert np.array_equal(store.read_probs("val", 1, 7), first)
    assert np.array_equal(store.read_labels("val")[0], y)
    assert sorted(p.name for p in store.root.iterdir()) == ["labels-val.npz", probs_name("val", 1, 7)]
