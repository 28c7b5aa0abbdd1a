"""End-to-end aggregation over hand-made grid directories with known answers."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

import robustmtl.aggregate.parse as parse_mod
from robustmtl.aggregate import SELECTORS, Summary, aggregate, to_markdown
from robustmtl.aggregate.load import load_runs
from robustmtl.errors import UserError

Eval = dict[str, tuple[float, float]]  # split -> (avg_acc, worst_group_acc)


def sid(name: str) -> str:
    return hashlib.sha1(name.encode()).hexdigest()[:12]


def make_grid(root: Path, seeds: tuple[int, ...] | None = (0, 1, 2)) -> Path:
    """A grid directory; with `seeds`, the plan `grid submit` saves (what expected seed counts come from)."""
    (root / "runs").mkdir(parents=True)
    if seeds is not None:
        (root / "plan.jsonl").write_text("".join(
            json.dumps({"run_id": sid(f"A/{s}"), "dataset": "wb", "method": "erm", "seed": s, "setting": "defaults"})
            + "\n" for s in seeds))
    return root


def record(
    setting: str, seed: int, epoch: int, split: str, accs: tuple[float, float], **meta: object
) -> dict:
    base = {
        "run_id": sid(f"{setting}/{seed}"),
        "setting_id": sid(setting),
        "method": "erm",
        "dataset": "wb",
        "model": "bert",
        "seed": seed,
        "hparams": {"lr": 1e-5, "epochs": 3, "scheduler": setting},  # settings differ in a hyperparameter
        "uses_train_groups": False,
        "report": True,
    }
    base.update(meta)
    return {
        **base,
        "epoch": epoch,
        "step": 10 * epoch,
        "split": split,
        "avg_acc": accs[0],
        "worst_group_acc": accs[1],
        "group_acc": {"0": accs[0], "1": accs[1]},
        "group_n": {"0": 90, "1": 10},
        "loss": 0.5,
        "time_s": 1.0,
    }


def write_run(
    grid: Path,
    setting: str,
    seed: int,
    evals: list[Eval],
    *,
    done: bool = True,
    tail: str = "",
    **meta: object,
) -> Path:
    """One run; evals[i] holds the split -> (avg, worst) records of epoch i + 1 (train added for realism)."""
    lines = []
    for epoch, ev in enumerate(evals, start=1):
        for split, accs in {"train": (0.99, 0.98), **ev}.items():
            lines.append(json.dumps(record(setting, seed, epoch, split, accs, **meta)))
    run_dir = grid / "runs" / sid(f"{setting}/{seed}")
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"setting": setting, "seed": seed}))
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n" + tail)
    if done:
        (run_dir / "DONE").write_text(json.dumps({"epochs": len(evals)}))
    return run_dir


def cell(summary: Summary, metric: str, method: str = "erm", dataset: str = "wb") -> dict:
    rows = summary.cells
    sel = rows[(rows["method"] == method) & (rows["dataset"] == dataset) & (rows["metric"] == metric)]
    assert len(sel) == 1
    return sel.iloc[0].to_dict()


# Two settings whose winners differ by rule. Test accuracies get +0.01 * seed so seeds differ.
#   A: worst-val -> epoch 2 (ties with epoch 3, earliest wins), val worst .70 beats B's best .65
#   B: avg-val   -> epoch 1 (val avg .95 beats A's best .90)
#   B: oracle    -> epoch 2 (test worst .95 beats A's best .90)
SETTINGS: dict[str, list[Eval]] = {
    "A": [
        {"val": (0.90, 0.60), "test": (0.88, 0.55)},
        {"val": (0.80, 0.70), "test": (0.79, 0.66)},
        {"val": (0.85, 0.70), "test": (0.84, 0.90)},
    ],
    "B": [
        {"val": (0.95, 0.50), "test": (0.93, 0.45)},
        {"val": (0.70, 0.65), "test": (0.70, 0.95)},
        {"val": (0.60, 0.40), "test": (0.60, 0.40)},
    ],
}


def shifted(evals: list[Eval], seed: int) -> list[Eval]:
    return [{**ev, "test": (ev["test"][0] + 0.01 * seed, ev["test"][1] + 0.01 * seed)} for ev in evals]


@pytest.fixture
def grid(tmp_path: Path) -> Path:
    g = make_grid(tmp_path / "grid")
    for name, evals in SETTINGS.items():
        for seed in (0, 1, 2):
            write_run(g, name, seed, shifted(evals, seed))
    return g


@pytest.mark.parametrize(
    ("rule", "setting", "epoch", "test_avg", "test_worst"),
    [
        ("worst-val", "A", 2, 0.79, 0.66),
        ("avg-val", "B", 1, 0.93, 0.45),
        ("oracle", "B", 2, 0.70, 0.95),
    ],
)
def test_rules_pick_epoch_and_setting(
    grid: Path, rule: str, setting: str, epoch: int, test_avg: float, test_worst: float
) -> None:
    s = aggregate([grid], select=rule)
    chosen = s.chosen.iloc[0]
    assert chosen["setting_id"] == sid(setting)
    assert chosen["epochs"] == {0: epoch, 1: epoch, 2: epoch}
    assert chosen["hparams"]["scheduler"] == setting
    assert chosen["searched"] == {"scheduler": setting}  # the only hyperparameter that differs between A and B
    assert list(s.per_seed["worst_group_acc"]) == pytest.approx([test_worst + 0.01 * k for k in range(3)])
    assert cell(s, "avg_acc")["mean"] == pytest.approx(test_avg + 0.01)
    worst = cell(s, "worst_group_acc")
    assert worst["mean"] == pytest.approx(test_worst + 0.01)
    assert (worst["n"], worst["n_expected"], worst["select"], worst["ci"]) == (3, 3, rule, "t")
    lo, hi = stats.t.interval(0.95, 2, loc=test_worst + 0.01, scale=stats.sem([0.0, 0.01, 0.02]))
    assert (worst["lower"], worst["upper"]) == pytest.approx((lo, hi))
    assert s.warnings == []
    assert (s.counts.found, s.counts.complete, s.counts.excluded_incomplete) == (6, 6, 0)


def test_oracle_is_labelled_upper_bound() -> None:
    assert SELECTORS["oracle"].label == "oracle (upper bound)"
    assert SELECTORS["worst-val"].label == "worst-val"


def test_setting_chosen_by_mean_over_seeds_not_best_seed(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g")
    for seed, v in enumerate([0.9, 0.5, 0.5]):  # C: best single seed, mean 0.633
        write_run(g, "C", seed, [{"val": (0.8, v), "test": (0.8, 0.1)}])
    for seed in range(3):  # D: mean 0.7
        write_run(g, "D", seed, [{"val": (0.8, 0.7), "test": (0.8, 0.2)}])
    s = aggregate([g])
    assert s.chosen.iloc[0]["setting_id"] == sid("D")
    assert s.chosen.iloc[0]["score"] == pytest.approx(0.7)
    assert cell(s, "worst_group_acc")["mean"] == pytest.approx(0.2)


def test_cells_per_dataset_and_method_and_train_group_flag(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g")
    for ds in ("wb", "celeba"):
        for method, utg in (("erm", False), ("gdro", True)):
            for seed in range(3):
                write_run(
                    g,
                    f"{ds}-{method}",
                    seed,
                    [{"val": (0.8, 0.6), "test": (0.8, 0.5 + 0.1 * utg)}],
                    method=method,
                    dataset=ds,
                    uses_train_groups=utg,
                )
    s = aggregate([g])
    assert len(s.cells) == 2 * 2 * 2
    assert cell(s, "worst_group_acc", "gdro", "celeba")["mean"] == pytest.approx(0.6)
    assert cell(s, "worst_group_acc", "gdro", "celeba")["uses_train_groups"]
    assert not cell(s, "worst_group_acc", "erm", "wb")["uses_train_groups"]
    assert "Group DRO\\*" in to_markdown(s)  # the display name, marked as using group labels


def test_single_seed_has_no_interval(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=(0,))
    write_run(g, "A", 0, SETTINGS["A"])
    s = aggregate([g])
    c = cell(s, "worst_group_acc")
    assert c["n"] == 1 and c["n_expected"] == 1
    assert math.isnan(c["lower"]) and math.isnan(c["half_width"])
    assert "±" not in to_markdown(s).splitlines()[2]


def test_bootstrap_deterministic_given_seed(grid: Path) -> None:
    a = aggregate([grid], ci="bootstrap", seed=3).cells
    b = aggregate([grid], ci="bootstrap", seed=3).cells
    assert a.equals(b)
    assert set(a["ci"]) == {"bootstrap"}
    s = aggregate([grid], ci="bootstrap", seed=3)
    w = cell(s, "worst_group_acc")
    assert 0.66 <= w["lower"] <= w["mean"] <= w["upper"] <= 0.68
    assert any("fewer than 10 seeds are too narrow" in x for x in s.warnings)  # n = 3 here
    assert not any("too narrow" in x for x in aggregate([grid]).warnings)


def test_duplicates_last_wins_and_torn_lines_warn_once_per_file(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=(0,))
    run = write_run(g, "A", 0, SETTINGS["A"])
    path = run / "metrics.jsonl"
    lines = path.read_text().splitlines()
    # An early val record for epoch 1 claiming worst=.99 is superseded by a later duplicate (.60 again);
    # a rewritten test record for epoch 2 (last wins) changes the reported number.
    fake = json.dumps(record("A", 0, 1, "val", (0.9, 0.99)))
    real = json.dumps(record("A", 0, 1, "val", (0.9, 0.60)))
    retest = json.dumps(record("A", 0, 2, "test", (0.79, 0.61)))
    lines = [fake, *lines[:4], '{"run_id": "abc", "epo', *lines[4:], real, retest]
    path.write_text("\n".join(lines) + '\n{"run_id": "' + sid("A/0") + '", "epoch": 3, "sp')
    s = aggregate([g])
    assert s.chosen.iloc[0]["epochs"] == {0: 2}
    assert cell(s, "worst_group_acc")["mean"] == pytest.approx(0.61)
    assert len(s.warnings) == 1
    assert str(path) in s.warnings[0]
    assert "truncated last line" in s.warnings[0] and "1 corrupt line" in s.warnings[0]


def test_complete_last_line_without_newline_is_kept_silently(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=(0,))
    run = write_run(g, "A", 0, SETTINGS["A"][:2])
    path = run / "metrics.jsonl"
    path.write_text(
        path.read_text()
        + json.dumps(record("A", 0, 3, "val", (0.9, 0.9)))
        + "\n"
        + json.dumps(record("A", 0, 3, "test", (0.9, 0.77)))
    )
    s = aggregate([g])
    assert s.warnings == []
    assert cell(s, "worst_group_acc")["mean"] == pytest.approx(0.77)


def test_clean_files_never_take_the_line_by_line_path(grid: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(f: object) -> None:
        raise AssertionError("slow path used on a clean file")

    monkeypatch.setattr(parse_mod, "parse_slow", boom)
    loaded = load_runs([grid])
    assert len(loaded.records) == 6 * 3 * 3


def test_bad_file_does_not_poison_other_files(grid: Path) -> None:
    bad = grid / "runs" / sid("B/1") / "metrics.jsonl"
    bad.write_text("garbage\n" + bad.read_text())
    loaded = load_runs([grid])
    assert len(loaded.records) == 6 * 3 * 3
    assert len(loaded.warnings) == 1 and str(bad) in loaded.warnings[0]


def test_incomplete_runs_excluded_and_short_cells_flagged(grid: Path) -> None:
    for setting in ("A", "B"):
        (grid / "runs" / sid(f"{setting}/2") / "DONE").unlink()
    s = aggregate([grid])
    assert (s.counts.found, s.counts.complete, s.counts.excluded_incomplete) == (6, 4, 2)
    assert s.warnings == []  # excluded by design, not skipped as broken
    c = cell(s, "worst_group_acc")
    assert (c["n"], c["n_expected"]) == (2, 3)
    md = to_markdown(s)
    assert "†" in md and "fewer seeds than the grid asked for" in md

    assert "§" not in md
    s = aggregate([grid], include_running=True)
    assert s.counts.excluded_incomplete == 0
    assert (cell(s, "worst_group_acc")["n"], cell(s, "worst_group_acc")["n_unfinished"]) == (3, 1)
    md = to_markdown(s)
    assert "†" not in md and "§" in md and "have not finished" in md


def test_a_setting_with_fewer_seeds_cannot_win_the_selection(grid: Path) -> None:
    """A (best on validation) lost a seed: B, complete, is chosen, and the warning names A."""
    (grid / "runs" / sid("A/2") / "DONE").unlink()
    s = aggregate([grid])
    assert s.chosen.iloc[0]["setting_id"] == sid("B")
    assert cell(s, "worst_group_acc")["n"] == 3
    assert len(s.warnings) == 1 and sid("A") in s.warnings[0] and "2 seed(s) done against 3" in s.warnings[0]
    assert aggregate([grid], include_running=True).chosen.iloc[0]["setting_id"] == sid("A")


def test_settings_equal_up_to_float_rounding_tie_to_the_smallest_id() -> None:
    """Means that differ only in the last bit (summation order) are a tie, not a win for the larger id."""
    from robustmtl.aggregate.select import _choose_settings

    score = 0.35
    per_run = pd.DataFrame({"dataset": "wb", "method": "erm", "setting_id": ["aaa", "bbb"], "seed": [0, 0],
                            "score": [score, math.nextafter(score, 1.0)]})
    warnings: list[str] = []
    assert _choose_settings(per_run, warnings).iloc[0]["setting_id"] == "aaa" and warnings == []
    per_run.loc[1, "score"] = score + 1e-6
    assert _choose_settings(per_run, warnings).iloc[0]["setting_id"] == "bbb"


def test_expected_seeds_default_to_most_seen_without_a_plan(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=None)
    for seed in range(3):
        write_run(g, "A", seed, SETTINGS["A"], method="erm")
    for seed in range(2):
        write_run(g, "J", seed, SETTINGS["A"], method="jtt")
    s = aggregate([g])
    assert cell(s, "worst_group_acc", "jtt")["n_expected"] == 3
    assert cell(s, "worst_group_acc", "jtt")["n"] == 2


def test_helper_runs_never_reported(grid: Path) -> None:
    for seed in range(3):  # would win every rule if it were considered
        write_run(
            grid, "S1", seed, [{"val": (1.0, 1.0), "test": (1.0, 1.0)}], method="jtt_stage1", report=False
        )
        write_run(grid, "S1erm", seed, [{"val": (1.0, 1.0), "test": (1.0, 1.0)}], report=False)
    s = aggregate([grid], select="oracle")
    assert set(s.cells["method"]) == {"erm"}
    assert cell(s, "worst_group_acc")["mean"] == pytest.approx(0.96)
    assert s.counts.helper == 6


def test_multiple_grid_dirs_and_paired_baseline(tmp_path: Path) -> None:
    g1, g2 = make_grid(tmp_path / "g1"), make_grid(tmp_path / "g2")
    for seed in range(3):
        write_run(g1, "erm", seed, [{"val": (0.8, 0.6), "test": (0.8, 0.5 + 0.02 * seed)}])
        write_run(
            g2, "mtl", seed, [{"val": (0.8, 0.6), "test": (0.8, 0.6 + 0.01 * seed * seed)}], method="mtl"
        )
    s = aggregate([g1, g2], baseline="erm")
    d = s.differences
    row = d[(d["method"] == "mtl") & (d["metric"] == "worst_group_acc")].iloc[0]
    diffs = [0.1, 0.09, 0.1]  # (0.6 + .01 s^2) - (0.5 + .02 s)
    lo, hi = stats.t.interval(0.95, 2, loc=sum(diffs) / 3, scale=stats.sem(diffs))
    assert row["mean_diff"] == pytest.approx(sum(diffs) / 3)
    assert (row["lower"], row["upper"]) == pytest.approx((lo, hi))
    assert row["n"] == 3 and row["baseline"] == "erm"
    assert set(d["method"]) == {"mtl"}


def test_the_training_length_is_a_condition_and_the_learning_rate_a_hyperparameter(tmp_path: Path, cli) -> None:
    """Settings that differ in lr are selected over; runs that differ in epochs are refused in one line (each length
    is a row group with --by epochs), and a method is paired only with baseline runs of its own length."""
    g = make_grid(tmp_path / "g")
    for seed in range(3):
        write_run(g, "A", seed, shifted(SETTINGS["A"], seed), hparams={"lr": 1e-5, "epochs": 3})
        write_run(g, "B", seed, shifted(SETTINGS["B"], seed), hparams={"lr": 1e-4, "epochs": 3})
    cli("aggregate", g, "--output", tmp_path / "lr.csv", "--show-hparams")
    assert json.loads(pd.read_csv(tmp_path / "lr.hparams.csv")["searched"][0]) == {"lr": 1e-5}

    for seed in range(3):
        write_run(g, "C", seed, shifted(SETTINGS["B"], seed), hparams={"lr": 1e-5, "epochs": 5})
    refused = cli("aggregate", g, ok=False)
    assert refused.exit_code == 2 and len(refused.output.strip().splitlines()) == 1
    assert "runs of erm on wb differ in epochs (3, 5)" in refused.output and "--by epochs" in refused.output
    cli("aggregate", g, "--by", "epochs", "--output", tmp_path / "by.csv")
    assert list(pd.read_csv(tmp_path / "by.csv")[["epochs", "method", "n"]].itertuples(index=False, name=None)) == [
        (3, "erm", 3), (5, "erm", 3)]

    short, longer = make_grid(tmp_path / "short"), make_grid(tmp_path / "longer")
    for seed in range(3):  # the learning rates differ too: each method's own choice, never a reason not to pair
        write_run(short, "A", seed, shifted(SETTINGS["A"], seed), hparams={"lr": 1e-5, "epochs": 3})
        write_run(longer, "M", seed, shifted(SETTINGS["A"], seed), method="mtl", hparams={"lr": 1e-4, "epochs": 5})
    cli("aggregate", short, longer, "--baseline", "erm", "--output", tmp_path / "pairs.csv")
    notes = set(pd.read_csv(tmp_path / "pairs.differences.csv")["note"])
    assert notes == {"mtl on wb not paired with erm: the runs differ in epochs 5 vs 3 (a condition, not a "
                     "hyperparameter)"}


def test_unknown_baseline(grid: Path) -> None:
    with pytest.raises(UserError, match="baseline method 'jtt' not found; methods: erm"):
        aggregate([grid], baseline="jtt")


def test_unknown_rule_lists_valid_ones(grid: Path) -> None:
    valid = "worst-val, worst-val-patience, avg-val, worst-class, few-groups, oracle"
    with pytest.raises(UserError, match=f"valid: {valid}"):
        aggregate([grid], select="best")


def test_unknown_ci(grid: Path) -> None:
    with pytest.raises(UserError, match="unknown interval type"):
        aggregate([grid], ci="normal")


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        aggregate([tmp_path / "nope"])


def test_directory_without_runs(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        UserError, match=r"no runs found under .*empty: expected .*runs/<run_id>/metrics\.jsonl"
    ):
        aggregate([tmp_path / "empty"])


def test_no_complete_runs_points_to_include_running(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g")
    write_run(g, "A", 0, SETTINGS["A"], done=False)
    with pytest.raises(UserError, match="--include-running"):
        aggregate([g])
    assert cell(aggregate([g], include_running=True), "worst_group_acc")["n"] == 1


def test_finished_run_without_val_records_is_an_error_for_val_rules(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=(0,))
    write_run(g, "A", 0, [{"test": (0.8, 0.5)}])
    with pytest.raises(UserError, match=f"run {sid('A/0')} .* has no val records.*worst-val"):
        aggregate([g])
    assert cell(aggregate([g], select="oracle"), "worst_group_acc")["mean"] == pytest.approx(0.5)


def test_running_run_without_val_records_is_skipped_with_warning(grid: Path) -> None:
    write_run(grid, "A", 3, [{"test": (0.8, 0.5)}], done=False)
    s = aggregate([grid], include_running=True)
    assert any("has no val records yet" in w for w in s.warnings)
    assert cell(s, "worst_group_acc")["n"] == 3


def test_missing_test_record_at_selected_epoch_drops_seed_with_warning(grid: Path) -> None:
    path = grid / "runs" / sid("A/1") / "metrics.jsonl"
    kept = [
        ln
        for ln in path.read_text().splitlines()
        if not (json.loads(ln)["split"] == "test" and json.loads(ln)["epoch"] == 2)
    ]
    path.write_text("\n".join(kept) + "\n")
    s = aggregate([grid])
    assert any("no test record at selected epoch 2" in w for w in s.warnings)
    assert (cell(s, "worst_group_acc")["n"], cell(s, "worst_group_acc")["n_expected"]) == (2, 3)


def test_only_helper_runs_is_an_error(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g")
    write_run(g, "S1", 0, SETTINGS["A"], method="jtt_stage1", report=False)
    with pytest.raises(UserError, match="only helper runs"):
        aggregate([g])


def test_files_without_any_valid_record(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g")
    run = write_run(g, "A", 0, SETTINGS["A"])
    (run / "metrics.jsonl").write_text("")
    with pytest.raises(UserError, match="holds a valid record"):
        aggregate([g])
    write_run(g, "A", 1, SETTINGS["A"])
    s = aggregate([g])
    assert len(s.warnings) == 1 and "no valid record" in s.warnings[0]
    assert cell(s, "worst_group_acc")["n"] == 1


def test_unreadable_plan_falls_back_with_warning(tmp_path: Path) -> None:
    g = make_grid(tmp_path / "g", seeds=None)
    (g / "plan.jsonl").write_text('{"run_id": "a", "seed": 0\n')
    write_run(g, "A", 0, SETTINGS["A"])
    s = aggregate([g])
    assert any("plan.jsonl: unreadable" in w for w in s.warnings)
    assert cell(s, "worst_group_acc")["n_expected"] == 1


def test_a_copied_run_directory_is_ignored_whatever_its_name(grid: Path) -> None:
    """A backup beside the real run (here with better numbers) must neither replace nor join it."""
    expected = aggregate([grid]).cells
    real = grid / "runs" / sid("A/0")
    for name in (f"{sid('A/0')}.old", "backup"):
        copy = grid / "runs" / name
        shutil.copytree(real, copy)
        forged = [json.loads(line) for line in (copy / "metrics.jsonl").read_text().splitlines()]
        lines = [json.dumps({**r, "avg_acc": 1.0, "worst_group_acc": 1.0}) for r in forged]
        (copy / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    s = aggregate([grid])
    pd.testing.assert_frame_equal(s.cells, expected)
    assert s.counts.found == 6
    assert len(s.warnings) == 2
    for warning, name in zip(s.warnings, (f"{sid('A/0')}.old", "backup"), strict=True):
        assert warning.startswith(f"{grid / 'runs' / name}: holds records of run {sid('A/0')}") and "ignored" in warning


def test_records_naming_another_run_are_dropped_with_one_warning_per_file(grid: Path) -> None:
    expected = aggregate([grid]).cells
    path = grid / "runs" / sid("A/0") / "metrics.jsonl"
    strays = [record("A", 1, 2, "test", (1.0, 1.0)), record("A", 1, 9, "val", (1.0, 1.0)),
              record("A", 1, 9, "test", (1.0, 1.0))]
    path.write_text(path.read_text() + "".join(json.dumps(r) + "\n" for r in strays))
    s = aggregate([grid])
    pd.testing.assert_frame_equal(s.cells, expected)
    assert s.warnings == [f"{path}: 3 record(s) of other runs ({sid('A/1')}) dropped: the file belongs to run "
                          f"{sid('A/0')}"]


def test_a_run_found_in_two_grids_takes_its_records_from_the_kept_copy_only(tmp_path: Path) -> None:
    g1, g2 = make_grid(tmp_path / "g1", seeds=(0,)), make_grid(tmp_path / "g2", seeds=(0,))
    write_run(g1, "A", 0, [*SETTINGS["A"], {"val": (1.0, 1.0), "test": (0.0, 0.0)}])  # an epoch g2's copy lacks
    write_run(g2, "A", 0, SETTINGS["A"])
    s = aggregate([g1, g2])
    assert s.chosen.iloc[0]["epochs"] == {0: 2}
    assert s.warnings == [f"run {sid('A/0')} found twice; ignoring the copy in {g1 / 'runs' / sid('A/0')}"]


@pytest.mark.parametrize("slow", [False, True], ids=["bulk-parse", "line-by-line"])
def test_records_without_metrics_are_skipped_not_selected_or_counted_as_code(grid: Path, slow: bool) -> None:
    for name in ("A", "B"):
        for seed in range(3):
            shutil.rmtree(grid / "runs" / sid(f"{name}/{seed}"))
            write_run(grid, name, seed, shifted(SETTINGS[name], seed), code="abc123")
    expected = aggregate([grid]).cells
    path = grid / "runs" / sid("A/0") / "metrics.jsonl"
    bare = [{"run_id": sid("A/0"), "epoch": 2, "step": 20, "split": "val"},  # overwrites a complete record
            {"run_id": sid("A/0"), "epoch": 4, "step": 40, "split": "val", "worst_group_acc": 0.99}]
    path.write_text(path.read_text() + "".join(json.dumps(r) + "\n" for r in bare) + ("garbage\n" if slow else ""))
    s = aggregate([grid])
    pd.testing.assert_frame_equal(s.cells, expected)
    assert set(s.cells["code"]) == {"abc123"}
    assert len(s.warnings) == 1 and s.warnings[0].startswith(f"{path}: ")
    assert ("3 corrupt line(s)" if slow else "2 incomplete record(s)") in s.warnings[0]
