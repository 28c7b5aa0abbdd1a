"""Stored per-example predictions on real runs, and `aggregate --metric` computed from them."""

from __future__ import annotations

import csv
import io
import shutil

import numpy as np
import pytest

from robustmtl.aggregate import aggregate
from robustmtl.errors import UserError
from robustmtl.layout import GridDir
from robustmtl.predictions import PREDICTIONS_DIR, PredictionStore, probs_name
from tests.conftest import TINY, read_records, trained_erm_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return trained_erm_grid(tmp_path_factory.mktemp("predictions"))


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


def test_a_redone_evaluation_keeps_the_first_files_intact(grid, tmp_path):
    """A redone evaluation (a resumed run) finds its files and leaves them: the first write stays, nothing is
    torn or doubled."""
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


def balanced_by_hand(store: PredictionStore, epoch: int, step: int) -> float:
    probs = store.read_probs("test", epoch, step)
    y = store.read_labels("test")[0]
    predicted = probs.argmax(axis=1)
    return float(np.mean([(predicted[y == c] == c).mean() for c in np.unique(y)]))


def test_aggregate_balanced_accuracy_is_that_of_the_stored_predictions_at_the_selected_epoch(grid, cli):
    summary = aggregate([grid.root], metric="balanced_acc")
    assert summary.metrics == ["avg_acc", "balanced_acc"]
    worst_val = aggregate([grid.root])
    assert summary.per_seed[["run_id", "epoch", "step"]].equals(worst_val.per_seed[["run_id", "epoch", "step"]])
    by_hand = [balanced_by_hand(store_of(grid, r.run_id), r.epoch, r.step) for r in summary.per_seed.itertuples()]
    assert len(by_hand) == 2  # one chosen setting, two seeds
    cell = summary.cells.set_index("metric").loc["balanced_acc"]
    assert cell["mean"] == pytest.approx(np.mean(by_hand), abs=1e-12)

    printed = cli("aggregate", grid.root, "--metric", "balanced_acc", "--format", "csv").stdout
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(printed))}
    assert set(rows) == {"avg_acc", "balanced_acc"}
    assert float(rows["balanced_acc"]["mean_pct"]) == pytest.approx(100 * np.mean(by_hand), abs=1e-8)
    table = cli("aggregate", grid.root, "--metric", "balanced_acc").stdout
    assert "balanced" in table and f"{100 * np.mean(by_hand):.1f}" in table
    assert "from the stored predictions" in " ".join(table.split())


def test_every_metric_is_computed_and_ece_bolds_the_lowest(grid):
    for name in ("avg_acc", "weighted_avg_acc", "worst_group_ece"):
        summary = aggregate([grid.root], metric=name)
        values = summary.cells.set_index("metric").loc[name]
        assert 0 <= values["mean"] <= 1
    with pytest.raises(UserError, match="both classes"):  # synthetic groups are label x attribute
        aggregate([grid.root], metric="worst_group_auroc")


def test_runs_without_stored_predictions_are_named_in_one_line(grid, tmp_path, cli):
    copy = GridDir(tmp_path / "older")
    shutil.copytree(grid.root, copy.root)
    bare = copy.run_ids()[:-1]  # one run keeps its predictions
    for run_id in bare:
        shutil.rmtree(copy.run(run_id).artifact(PREDICTIONS_DIR))
    with pytest.raises(UserError) as err:
        aggregate([copy.root], metric="balanced_acc")
    message = str(err.value)
    assert "\n" not in message and "only the record metrics are available" in message
    selected = set(aggregate([copy.root]).per_seed["run_id"])
    assert all(run_id in message for run_id in set(bare) & selected)
    result = cli("aggregate", copy.root, "--metric", "balanced_acc", ok=False)
    assert result.exit_code == 2
    assert len(aggregate([copy.root]).cells)  # the record metrics still aggregate
    with pytest.raises(UserError, match="unknown --metric"):
        aggregate([copy.root], metric="auc")
