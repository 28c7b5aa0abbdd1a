"""few-groups selection on real runs: it scores exactly the seeded validation subset."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.fewgroups import FewGroupsSelector
from robustmtl.errors import UserError
from robustmtl.layout import VAL_CORRECT, VAL_GROUPS, GridDir
from robustmtl.metrics import group_metrics, unpack_bools
from tests.conftest import read_records, trained_erm_grid


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    return trained_erm_grid(tmp_path_factory.mktemp("fewgroups"))


def test_val_correctness_matches_the_records(grid):
    rd = grid.run(grid.run_ids()[0])
    groups = json.loads(rd.artifact(VAL_GROUPS).read_text())
    membership = unpack_bools(groups["membership"], groups["n"] * groups["n_groups"]).reshape(groups["n"], -1)
    val = [r for r in read_records(rd.metrics) if r["split"] == "val"]
    lines = rd.artifact(VAL_CORRECT).read_text().splitlines()
    assert len(lines) == len(val)
    for line, rec in zip(lines, val, strict=True):
        stored = json.loads(line)
        metrics = group_metrics(unpack_bools(stored["correct"], groups["n"]), membership)
        assert (stored["epoch"], stored["step"]) == (rec["epoch"], rec["step"])
        assert metrics["worst_group_acc"] == rec["worst_group_acc"] and metrics["avg_acc"] == rec["avg_acc"]


def test_fraction_one_agrees_with_worst_val(grid):
    full = aggregate([grid.root], select="few-groups", few_groups_fraction=1.0)
    worst = aggregate([grid.root], select="worst-val")
    assert full.per_seed[["run_id", "epoch"]].equals(worst.per_seed[["run_id", "epoch"]])
    assert "few-groups (100% of validation" in full.selector.label


def test_small_fraction_scores_only_the_subset(grid):
    sel = FewGroupsSelector(0.2, 3, {})
    keep = sel.subset(100)
    assert len(keep) == 20 and len(set(keep)) == 20
    assert np.array_equal(keep, FewGroupsSelector(0.2, 3, {}).subset(100))
    assert not np.array_equal(keep, FewGroupsSelector(0.2, 4, {}).subset(100))
    summary = aggregate([grid.root], select="few-groups", few_groups_fraction=0.2, few_groups_seed=3)
    assert set(summary.per_seed["seed"]) == {0, 1}
    for row in summary.per_seed.itertuples():
        rd = grid.run(row.run_id)
        groups = json.loads(rd.artifact(VAL_GROUPS).read_text())
        n = groups["n"]
        membership = unpack_bools(groups["membership"], n * groups["n_groups"]).reshape(n, -1)
        subset = FewGroupsSelector(0.2, 3, {}).subset(n)
        by_hand = []
        for line in rd.artifact(VAL_CORRECT).read_text().splitlines():
            stored = json.loads(line)
            correct = unpack_bools(stored["correct"], n)[subset]
            by_hand.append((group_metrics(correct, membership[subset])["worst_group_acc"], -stored["epoch"]))
        best_score, best_epoch = max(by_hand)
        assert row.score == best_score and row.epoch == -best_epoch


def test_bad_fraction_is_a_user_error(grid):
    from robustmtl.errors import UserError

    with pytest.raises(UserError, match="fraction"):
        aggregate([grid.root], select="few-groups", few_groups_fraction=0.0)


def test_thin_groups_in_the_subset_are_named(grid):
    """n_val = 100 with p_eval = 0.5: a 5% subset (5 examples) cannot hold 5 of each of the 4 groups."""
    rd = grid.run(grid.run_ids()[0])
    groups = json.loads(rd.artifact(VAL_GROUPS).read_text())
    n = groups["n"]
    membership = unpack_bools(groups["membership"], n * groups["n_groups"]).reshape(n, -1)
    counts = membership[FewGroupsSelector(0.05, 0, {}).subset(n)].sum(axis=0)
    thin = aggregate([grid.root], select="few-groups", few_groups_fraction=0.05).warnings
    (warning,) = [w for w in thin if w.startswith("few-groups:")]
    assert f"{len(FewGroupsSelector(0.05, 0, {}).subset(n))}-example subset of a {n}-example" in warning
    assert f"({len(grid.run_ids())} run(s))" in warning
    assert all(f"group {g}: {c}" in warning for g, c in enumerate(counts) if c < 5)
    full = aggregate([grid.root], select="few-groups", few_groups_fraction=1.0).warnings
    assert not any(w.startswith("few-groups:") for w in full)  # 100 examples: every group has 5 or more



def test_runs_of_one_validation_size_with_other_group_labels_are_each_checked(grid, tmp_path):
    """Same n, other labels: the second run's subset is thin in group 3 although the first run's is not."""
    from robustmtl.metrics import pack_bools

    root = shutil.copytree(grid.root, tmp_path / "grid")
    first, second = sorted(GridDir(root).run_ids())[:2]
    path = GridDir(root).run(second).artifact(VAL_GROUPS)
    groups = json.loads(path.read_text())
    n, k = groups["n"], groups["n_groups"]
    membership = unpack_bools(groups["membership"], n * k).reshape(n, k).copy()
    in_last = np.flatnonzero(membership[:, k - 1])
    membership[in_last[2:], k - 1], membership[in_last[2:], 0] = False, True  # two examples left in group k-1
    path.write_text(json.dumps({**groups, "membership": pack_bools(membership.reshape(-1))}))
    dirs = {r: GridDir(root).run(r).root for r in (first, second)}
    selector = FewGroupsSelector(1.0, 0, dirs)
    import pandas as pd

    selector.select_epochs(pd.DataFrame({"run_id": [first, second], "split": "val"}))
    (warning,) = selector.thin_group_warnings()
    assert f"of a {n}-example validation split (1 run(s))" in warning and f"group {k - 1}: 2" in warning


DAMAGE = {
    "truncated": (VAL_GROUPS, b'{"x'),
    "binary": (VAL_GROUPS, bytes(range(256))),
    "wrong-shape": (VAL_GROUPS, b"[1, 2, 3]"),
    "bad-base64": (VAL_GROUPS, b'{"n": 100, "n_groups": 4, "membership": "!!"}'),
    "correct-binary": (VAL_CORRECT, bytes(range(256)) * 4),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_unreadable_file_costs_its_run_the_few_groups_data_with_a_warning(grid, tmp_path, damage):
    root = shutil.copytree(grid.root, tmp_path / "grid")
    run_id = sorted(GridDir(root).run_ids())[0]
    rd = GridDir(root).run(run_id)
    name, content = DAMAGE[damage]
    rd.artifact(name).write_bytes(content)
    with pytest.raises(UserError, match=f"run {run_id} .* cannot use {rd.artifact(name)} .*few-groups rule"):
        aggregate([root], select="few-groups", few_groups_fraction=1.0)

    rd.done.unlink()  # a running run may just be early: left out with a warning naming the file
    s = aggregate([root], select="few-groups", few_groups_fraction=1.0, include_running=True)
    assert run_id not in set(s.per_seed["run_id"]) and len(s.per_seed) > 0
    assert f"run {run_id} (incomplete) has no val records yet; skipped" in s.warnings
    (warning,) = [w for w in s.warnings if str(rd.artifact(name)) in w]
    assert "unreadable (" in warning and f"run {run_id} has no few-groups data" in warning


def test_damaged_correctness_lines_are_skipped_with_one_warning(grid, tmp_path):
    root = shutil.copytree(grid.root, tmp_path / "grid")
    expected = aggregate([root], select="few-groups", few_groups_fraction=1.0).per_seed
    path = GridDir(root).run(sorted(GridDir(root).run_ids())[0]).artifact(VAL_CORRECT)
    path.write_bytes(path.read_bytes() + b'{"epoch": 9, "step": 90}\n\xff\xfe\n{"epoch": 9, "st')
    s = aggregate([root], select="few-groups", few_groups_fraction=1.0)
    assert s.per_seed.equals(expected)
    (warning,) = [w for w in s.warnings if str(path) in w]
    assert "3 unreadable line(s) skipped (first: line " in warning
