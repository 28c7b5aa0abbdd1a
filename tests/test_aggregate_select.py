"""Model selection on its own: the epoch each rule picks within a run, the setting it picks across runs, and what it
tells the user, on hand-written runs whose answers are known (select_runs on the loaded grid, no table rendering)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from robustmtl.aggregate.load import load_runs
from robustmtl.aggregate.rules import SELECTORS, get_selector
from robustmtl.aggregate.select import select_runs
from robustmtl.errors import UserError
from tests.test_aggregate_pipeline import make_grid, record, sid, write_run


def select(grid: Path, rule: str = "worst-val", include_running: bool = False):
    return select_runs(load_runs([grid], include_running), get_selector(rule))


def write_points(grid: Path, setting: str, seed: int, points: list[tuple[int, int, str, float, float]]) -> None:
    """A finished run from (epoch, step, split, avg_acc, worst_group_acc) records."""
    run_dir = grid / "runs" / sid(f"{setting}/{seed}")
    run_dir.mkdir()
    lines = []
    for epoch, step, split, avg, worst in points:
        lines.append(json.dumps({**record(setting, seed, epoch, split, (avg, worst)), "step": step}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "DONE").write_text("{}")


def test_the_best_score_wins_and_ties_go_to_the_earliest_epoch_then_step(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_points(grid, "A", 0, [
        (1, 10, "val", 0.9, 0.6), (1, 10, "test", 0.9, 0.1),
        (2, 25, "val", 0.8, 0.7), (2, 25, "test", 0.8, 0.2),
        (2, 20, "val", 0.8, 0.7), (2, 20, "test", 0.8, 0.3),  # same epoch and score, earlier step: chosen
        (3, 30, "val", 0.7, 0.7), (3, 30, "test", 0.7, 0.4),
    ])
    chosen = select(grid).per_seed.iloc[0]
    assert (chosen["epoch"], chosen["step"], chosen["score"], chosen["worst_group_acc"]) == (2, 20, 0.7, 0.3)
    avg = select(grid, "avg-val").per_seed.iloc[0]
    assert (avg["epoch"], avg["step"], avg["score"], avg["avg_acc"]) == (1, 10, 0.9, 0.9)
    oracle = select(grid, "oracle").per_seed.iloc[0]
    assert (oracle["epoch"], oracle["step"], oracle["worst_group_acc"]) == (3, 30, 0.4)


def test_the_rules_and_their_labels():
    assert list(SELECTORS) == ["worst-val", "worst-val-patience", "avg-val", "worst-class", "few-groups", "oracle"]
    assert [(s.split, s.metric, s.upper_bound) for s in SELECTORS.values()] == [
        ("val", "worst_group_acc", False), ("val", "worst_group_acc", False), ("val", "avg_acc", False),
        ("val", "worst_class_acc", False), ("val", "worst_group_acc", False), ("test", "worst_group_acc", True)]
    assert [s.label for s in SELECTORS.values()] == [
        "worst-val", "worst-val-patience", "avg-val", "worst-class", "few-groups (5% of validation, seed 0)",
        "oracle (upper bound)"]
    valid = "worst-val, worst-val-patience, avg-val, worst-class, few-groups, oracle"
    with pytest.raises(UserError, match=rf"^unknown selection rule 'best'; valid: {valid}$"):
        get_selector("best")


def two_settings(tmp_path: Path, seeds_b: int = 2) -> Path:
    """A: validation 0.6 on both seeds; B: 0.5 and 0.8 at its second epoch (mean 0.65), its last seeds_b seeds
    finished."""
    grid = make_grid(tmp_path / "g", seeds=(0, 1))
    for seed in (0, 1):
        write_run(grid, "A", seed, [{"val": (0.9, 0.6), "test": (0.9, 0.3 + seed / 10)}],
                  hparams={"lr": 1e-5, "epochs": 3, "name": "A"})
    for seed, val in zip((0, 1), (0.5, 0.8), strict=True):
        write_run(grid, "B", seed, [{"val": (0.9, 0.45), "test": (0.9, 0.1)}, {"val": (0.9, val), "test": (0.8, 0.2)}],
                  done=seed >= 2 - seeds_b, hparams={"lr": 2e-5, "epochs": 3, "name": "B"})
    return grid


def test_the_setting_with_the_best_mean_score_is_chosen_and_described(tmp_path):
    selection = select(two_settings(tmp_path))
    chosen = selection.chosen.iloc[0]
    assert chosen["setting_id"] == sid("B") and chosen["score"] == pytest.approx(0.65)
    assert (chosen["n_seeds"], chosen["n_expected"], chosen["model"], chosen["uses_train_groups"]) == (2, 2, "bert",
                                                                                                     False)
    assert chosen["epochs"] == {0: 2, 1: 2}
    assert chosen["hparams"] == {"lr": 2e-5, "epochs": 3, "name": "B"}
    assert chosen["searched"] == {"lr": 2e-5, "name": "B"}  # epochs is the same in both settings
    per_seed = selection.per_seed
    assert list(per_seed["seed"]) == [0, 1] and list(per_seed["score"]) == [0.5, 0.8]
    assert list(per_seed["run_id"]) == [sid("B/0"), sid("B/1")] and per_seed["complete"].all()
    assert list(per_seed["worst_group_acc"]) == [0.2, 0.2] and selection.warnings == []
    assert list(per_seed.columns) == ["dataset", "method", "setting_id", "run_id", "seed", "epoch", "step", "score",
                                      "complete", "avg_acc", "worst_group_acc"]
    assert list(per_seed.index) == [0, 1]
    assert selection.chosen["uses_train_groups"].dtype == bool and selection.chosen["n_expected"].dtype == int


def test_a_setting_with_fewer_finished_seeds_does_not_compete_and_is_named(tmp_path):
    selection = select(two_settings(tmp_path, seeds_b=1), include_running=False)
    assert selection.chosen.iloc[0]["setting_id"] == sid("A")
    assert selection.warnings == [
        f"wb/erm: setting {sid('B')} has the higher selection score (0.8000 vs 0.6000) but 1 seed(s) done against 2 "
        f"for the chosen {sid('A')}; settings compete on the most seeds any of them has (finish its runs)"]
    assert list(selection.per_seed["worst_group_acc"]) == [0.3, 0.4]


def test_a_finished_run_without_the_rules_split_is_an_error_naming_it(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [{"test": (0.8, 0.5)}])
    write_run(grid, "B", 0, [{"test": (0.8, 0.5)}])
    first = sorted([sid("A/0"), sid("B/0")])[0]
    run_dir = grid / "runs" / first
    with pytest.raises(UserError, match=rf"^run {first} \({run_dir}\) has no val records with worst_group_acc; "
                                        r"the worst-val rule needs val data \(and 1 more run\(s\)\)$"):
        select(grid)


def test_one_finished_run_without_the_split_is_named_alone(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [{"test": (0.8, 0.5)}])
    write_run(grid, "B", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    with pytest.raises(UserError, match=rf"^run {sid('A/0')} .* the worst-val rule needs val data$"):
        select(grid)


def test_a_running_run_without_the_split_is_skipped_with_a_warning(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    write_run(grid, "B", 0, [{"test": (0.8, 0.5)}], done=False)
    selection = select(grid, include_running=True)
    assert selection.warnings == [f"run {sid('B/0')} (incomplete) has no val records yet; skipped"]
    assert list(selection.per_seed["run_id"]) == [sid("A/0")]


def test_a_selected_epoch_without_a_test_record_drops_that_seed_with_a_warning(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0, 1))
    write_run(grid, "A", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    write_run(grid, "A", 1, [{"val": (0.8, 0.6)}])
    selection = select(grid)
    assert selection.warnings == [f"run {sid('A/1')}: no test record at selected epoch 1 (step 10); dropped"]
    assert list(selection.per_seed["seed"]) == [0]


def test_only_helper_runs_or_no_validation_at_all_is_an_error(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "S", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}], report=False)
    with pytest.raises(UserError, match=r"^no reportable runs in scope: only helper runs"):
        select(grid)
    running = make_grid(tmp_path / "r", seeds=(0,))
    write_run(running, "A", 0, [{"test": (0.8, 0.5)}], done=False)
    with pytest.raises(UserError, match=r"^no run in scope has val records yet; nothing to select with worst-val$"):
        select(running, include_running=True)


def test_settings_tied_within_the_tolerance_go_to_the_smallest_id_without_a_warning(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    for name, score in (("A", 0.6), ("B", 0.6 + 5e-10), ("C", 0.6)):
        write_run(grid, name, 0, [{"val": (0.8, score), "test": (0.8, 0.5)}])
    selection = select(grid)
    assert list(selection.chosen["setting_id"]) == [min(sid("A"), sid("B"), sid("C"))] and selection.warnings == []


def test_searched_names_what_varied_within_the_cell_only(tmp_path):
    """Other cells' settings do not count; a key only some settings have (a field added later) varied."""
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [{"val": (0.8, 0.7), "test": (0.8, 0.5)}], hparams={"lr": 1e-5})
    write_run(grid, "B", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}], hparams={"lr": 1e-5, "extra": 2})
    write_run(grid, "G", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}], hparams={"lr": 3e-5}, method="gdro")
    chosen = select(grid).chosen.set_index("method")
    assert chosen.loc["erm", "searched"] == {"extra": None} and chosen.loc["gdro", "searched"] == {}


def test_a_second_run_of_the_same_setting_and_seed_is_ignored_with_a_warning(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    write_run(grid, "A", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    copy = grid / "runs" / sid("A/0-copy")
    copy.mkdir()
    lines = (grid / "runs" / sid("A/0") / "metrics.jsonl").read_text().replace(sid("A/0"), sid("A/0-copy"))
    (copy / "metrics.jsonl").write_text(lines)
    (copy / "DONE").write_text("{}")
    selection = select(grid)
    earlier, later = sorted([sid("A/0"), sid("A/0-copy")])  # runs are compared in run-id order
    assert list(selection.per_seed["run_id"]) == [later]
    assert selection.warnings == [f"run {earlier} repeats a (setting, seed) pair of a later run; ignored"]


def test_a_rule_with_its_own_data_explains_a_missing_run_in_its_own_words(tmp_path):
    from robustmtl.aggregate.fewgroups import FewGroupsSelector

    grid = make_grid(tmp_path / "g", seeds=(0,))
    run_dir = write_run(grid, "A", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    rule = FewGroupsSelector(fraction=0.5, seed=0, run_dirs={sid("A/0"): run_dir})
    with pytest.raises(UserError, match=r"has no val_groups\.json \(trained before few-groups data was stored\?\); "
                                        r"the few-groups rule needs val data$"):
        select_runs(load_runs([grid]), rule)


def test_a_setting_with_fewer_seeds_that_only_ties_the_chosen_one_is_not_warned_about(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0, 1))
    assert sid("C") < sid("A")  # C comes first among tied settings, but has fewer seeds
    for seed in (0, 1):
        write_run(grid, "A", seed, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    write_run(grid, "C", 0, [{"val": (0.8, 0.6), "test": (0.8, 0.5)}])
    selection = select(grid)
    assert list(selection.chosen["setting_id"]) == [sid("A")] and selection.warnings == []


def test_class_metrics_by_hand():
    from robustmtl.metrics import class_metrics

    got = class_metrics([1, 1, 0, 1, 0, 0, 1], [0, 0, 0, 1, 1, 2, 2])
    assert got == {"worst_class_acc": 0.5, "class_acc": {"0": 2 / 3, "1": 0.5, "2": 0.5},
                   "class_n": {"0": 3, "1": 2, "2": 2}}


# Eight validation examples in groups g = 2 y + a, so classes y = g // 2: three of class 0, five of class 1.
GROUPS = [0, 0, 1, 2, 2, 3, 3, 3]
CORRECT = {  # epoch -> per-example correctness; worst-class accuracy by hand
    1: ([1, 1, 0, 1, 1, 1, 1, 0], 2 / 3),  # class 0: 2/3, class 1: 4/5
    2: ([1, 1, 1, 1, 0, 0, 1, 1], 3 / 5),  # class 0: 3/3, class 1: 3/5
    3: ([1, 1, 1, 1, 1, 1, 1, 0], 4 / 5),  # class 0: 3/3, class 1: 4/5
}


def write_val_files(run_dir: Path, groups: list[int] | np.ndarray, correct: dict) -> None:
    from robustmtl.layout import VAL_CORRECT, VAL_GROUPS
    from robustmtl.metrics import pack_bools

    membership = np.eye(4, dtype=bool)[groups] if not isinstance(groups, np.ndarray) else groups
    (run_dir / VAL_GROUPS).write_text(json.dumps({"n": len(membership), "n_groups": membership.shape[1],
                                                  "membership": pack_bools(membership)}))
    (run_dir / VAL_CORRECT).write_text("".join(
        json.dumps({"epoch": e, "step": 10 * e, "split": "val", "correct": pack_bools(np.array(c, dtype=bool))}) + "\n"
        for e, (c, _) in correct.items()))


def worst_class(grid: Path):
    from robustmtl.aggregate.select import RuleInputs

    loaded = load_runs([grid])
    return select_runs(loaded, get_selector("worst-class").bind(RuleInputs.of(loaded.runs)))


def test_worst_class_of_an_older_run_is_computed_from_its_validation_files_by_hand(tmp_path):
    """No worst_class_acc in the records: each example's class comes from its group (synthetic: 2 attributes)."""
    grid = make_grid(tmp_path / "g", seeds=(0,))
    # worst-val would pick epoch 1 (0.9); worst-class picks epoch 3 (4/5), from the files alone
    run_dir = write_run(grid, "A", 0, [{"val": (0.9, 0.9), "test": (0.5, 0.1)}, {"val": (0.8, 0.8), "test": (0.5, 0.2)},
                                       {"val": (0.7, 0.7), "test": (0.5, 0.3)}], dataset="synthetic")
    write_val_files(run_dir, GROUPS, CORRECT)
    chosen = worst_class(grid).per_seed.iloc[0]
    assert (chosen["epoch"], chosen["score"], chosen["worst_group_acc"]) == (3, 4 / 5, 0.3)
    assert select(grid).per_seed.iloc[0]["epoch"] == 1


def test_worst_class_is_read_from_the_records_where_they_carry_it(tmp_path):
    grid = make_grid(tmp_path / "g", seeds=(0,))
    run_dir = grid / "runs" / sid("A/0")
    run_dir.mkdir()
    lines = []
    for epoch, wc in ((1, 0.4), (2, 0.9), (3, 0.9)):  # a tie goes to the earliest epoch
        for split in ("val", "test"):
            lines.append(json.dumps({**record("A", 0, epoch, split, (0.8, 0.1 * epoch)), "worst_class_acc": wc}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (run_dir / "DONE").write_text("{}")
    write_val_files(run_dir, GROUPS, CORRECT)  # would say epoch 3: the records win
    chosen = worst_class(grid).per_seed.iloc[0]
    assert (chosen["epoch"], chosen["score"], chosen["worst_group_acc"]) == (2, 0.9, pytest.approx(0.2))


def test_worst_class_of_an_older_run_whose_groups_do_not_give_the_class_stops_with_why(tmp_path):
    """Overlapping groups (CivilComments' identities): an example in two groups, or in none, has no class."""
    grid = make_grid(tmp_path / "g", seeds=(0,))
    run_dir = write_run(grid, "A", 0, [{"val": (0.9, 0.9), "test": (0.5, 0.1)}], dataset="synthetic")
    membership = np.eye(4, dtype=bool)[GROUPS]
    membership[0, 3] = True
    write_val_files(run_dir, membership, {1: CORRECT[1]})
    why = r"its groups are not class × attribute \(1 example\(s\) in no group or several\)"
    with pytest.raises(UserError, match=r"has no worst_class_acc in its validation records, and .*val_groups\.json: "
                                        + why):
        worst_class(grid)
