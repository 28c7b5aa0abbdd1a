"""`worst-val-patience`: the reference's early stopping as a selection rule, on hand-built record sequences whose
answers are known and through `aggregate` on a small trained grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustmtl.aggregate.load import load_runs
from robustmtl.aggregate.patience import REFERENCE_PATIENCE, PatienceSelector, patience_pick
from robustmtl.aggregate.rules import get_selector
from robustmtl.aggregate.select import select_runs
from tests.conftest import TINY
from tests.test_aggregate_pipeline import make_grid
from tests.test_aggregate_select import write_points


def kept_by_hand(scores: list[float], patience: int) -> list[float]:
    """The evaluations a run early-stopped with `patience` has: cut after the first run of `patience` evaluations
    in a row that each stay at or below the best before them."""
    improved = [i == 0 or s > max(scores[:i]) for i, s in enumerate(scores)]
    for end in range(patience, len(scores) + 1):
        if not any(improved[end - patience:end]):
            return scores[:end]
    return scores


def pick_by_hand(scores: list[float], patience: int) -> int:
    kept = kept_by_hand(scores, patience)
    return kept.index(max(kept))  # the first of equal scores


PLATEAU = [0.5, 0.6] + [0.55] * REFERENCE_PATIENCE


@pytest.mark.parametrize(("scores", "expected", "worst_val"), [
    # the best comes after 9 evaluations without improvement: the reference had stopped; truncation changes the pick
    ([*PLATEAU, 0.9], 1, 11),
    # one evaluation earlier it is within the patience: nothing changes
    ([*PLATEAU[:-1], 0.9], 10, 10),
    # improvements keep coming, each within the patience: the overall best
    ([0.1, 0.2, 0.15, 0.15, 0.3, 0.2, 0.25, 0.4], 7, 7),
    # equal to the best is no improvement: the first of them wins and the later ones count towards the stop
    ([0.5, 0.7] + [0.7] * REFERENCE_PATIENCE + [0.8], 1, 11),
])
def test_the_pick_is_the_best_before_the_stop(scores, expected, worst_val):
    assert patience_pick(scores, REFERENCE_PATIENCE) == expected == pick_by_hand(scores, REFERENCE_PATIENCE)
    assert int(np.argmax(scores)) == worst_val  # what worst-val picks (the first of equal maxima)


def test_patience_counts_evaluations_in_a_row_without_improvement():
    assert patience_pick([0.5, 0.4, 0.6], 1) == 0  # stopped at the first evaluation without improvement
    assert patience_pick([0.5, 0.4, 0.6], 2) == 2
    assert patience_pick([], 9) == -1


def write_run(grid: Path, setting: str, seed: int, val_worst: list[float]) -> None:
    """A finished run: one validation and one test record per epoch, test worst-group = 1 - validation's."""
    points = []
    for epoch, worst in enumerate(val_worst, start=1):
        points += [(epoch, 10 * epoch, "val", 0.9, worst), (epoch, 10 * epoch, "test", 0.9, round(1 - worst, 6))]
    write_points(grid, setting, seed, points)


def test_selection_truncates_each_run_at_its_own_stop(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0, 1))
    write_run(grid, "A", 0, [*PLATEAU, 0.9])  # stops before its best
    write_run(grid, "A", 1, [*PLATEAU[:-1], 0.9, 0.95])  # never stops: its best is its last
    loaded = load_runs([grid], False)
    patience = select_runs(loaded, get_selector("worst-val-patience")).per_seed.set_index("seed")
    worst_val = select_runs(loaded, get_selector("worst-val")).per_seed.set_index("seed")
    assert patience.loc[0, ["epoch", "step", "score"]].tolist() == [2, 20, 0.6]
    assert patience.loc[0, "worst_group_acc"] == pytest.approx(0.4)  # the test record at that epoch
    assert worst_val.loc[0, "epoch"] == 12
    assert patience.loc[1, "epoch"] == worst_val.loc[1, "epoch"] == 12


def test_a_rule_with_its_own_patience_cuts_elsewhere(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [0.5, 0.4, 0.4, 0.6])
    loaded = load_runs([grid], False)
    assert select_runs(loaded, PatienceSelector(patience=2)).per_seed["epoch"].tolist() == [1]
    assert select_runs(loaded, PatienceSelector(patience=3)).per_seed["epoch"].tolist() == [4]


def chosen_epochs(markdown: str) -> dict[int, int]:
    """seed -> selected epoch, from the one cell of `aggregate --show-hparams --format markdown`."""
    lines = markdown.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| dataset | method |"))
    header, row = ([c.strip() for c in lines[i].strip("|").split("|")] for i in (at, at + 2))
    pairs = row[header.index("epochs (seed:epoch)")].split()
    return {int(s): int(e) for s, e in (pair.split(":") for pair in pairs)}


def test_the_cli_reports_the_epochs_before_the_stop(tmp_path, cli):
    grid = make_grid(tmp_path / "g", seeds=(0, 1))
    write_run(grid, "A", 0, [*PLATEAU, 0.9])
    write_run(grid, "A", 1, [*PLATEAU[:-1], 0.9, 0.95])
    out = cli("aggregate", grid, "--select", "worst-val-patience", "--show-hparams", "--format", "markdown").stdout
    assert chosen_epochs(out) == {0: 2, 1: 12}
    assert "worst-val-patience" in out
    out = cli("aggregate", grid, "--show-hparams", "--format", "markdown").stdout
    assert chosen_epochs(out) == {0: 12, 1: 12}


@pytest.fixture(scope="module")
def trained_grid(tmp_path_factory):
    """Four finished tiny ERM runs of 12 epochs: long enough for the reference's patience to matter."""
    from robustmtl.config import RunOptions, build_config
    from robustmtl.layout import GridDir
    from robustmtl.rundir import prepare_run
    from robustmtl.train.loop import train_run

    grid = GridDir(tmp_path_factory.mktemp("patience"))
    for seed in (0, 1):
        for lr in (1e-2, 5e-2):
            cfg = build_config("erm", "synthetic", seed, None, {**TINY, "epochs": 12, "lr": lr}, where="t")
            run_dir = grid.run(cfg.run_id)
            prepare_run(run_dir, cfg, RunOptions(threads=1))
            train_run(run_dir)
    return grid


@pytest.mark.slow
@pytest.mark.parametrize("patience", [REFERENCE_PATIENCE, 2])
def test_on_trained_runs_every_pick_is_the_best_before_the_stop(trained_grid, patience):
    loaded = load_runs([trained_grid.root], False)
    picked = PatienceSelector(patience=patience).select_epochs(loaded.records).set_index("run_id")
    assert len(picked) == 4
    for run_id in trained_grid.run_ids():
        lines = [json.loads(line) for line in trained_grid.run(run_id).metrics.read_text().splitlines()]
        val = sorted((r["epoch"], r["step"], r["worst_group_acc"]) for r in lines if r["split"] == "val")
        assert len(val) == 12
        expected = pick_by_hand([v[2] for v in val], patience)
        assert (picked.loc[run_id, "epoch"], picked.loc[run_id, "step"]) == val[expected][:2]


@pytest.mark.slow
def test_aggregate_with_the_rule_on_a_trained_grid(trained_grid, cli):
    out = cli("aggregate", trained_grid.root, "--select", "worst-val-patience", "--show-hparams", "--format",
              "markdown").stdout
    loaded = load_runs([trained_grid.root], False)
    per_seed = select_runs(loaded, get_selector("worst-val-patience")).per_seed
    assert chosen_epochs(out) == {int(r.seed): int(r.epoch) for r in per_seed.itertuples()}
    assert len(per_seed) == 2 and set(per_seed["run_id"]) <= set(trained_grid.run_ids())
