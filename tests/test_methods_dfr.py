"""DFR: the shared base run, the group-balanced head tuned on the held-out half, records, and a finished run."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import PRETRAINED_ENCODER, RunDir
from robustmtl.methods.dfr import C_GRID, balanced_subset, stratified_halves
from robustmtl.requirements import encoder_keepers, required_runs, retrained_base, with_transitive
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TINY, read_records, tiny_grid, write_spec

DATA = {**TINY, "n_val": 400, "n_test": 400}


def test_the_grid_shares_its_erm_and_mtl_l1_cells_with_dfr(tmp_path):
    text = tiny_grid("dfr", ["erm", "mtl_l1", "dfr"], [0, 1], defaults={"alpha_aux": 0.5, "alpha_reg": 0.1},
                     sweeps={"dfr": {"dfr_base": ["erm", "mtl_l1"]}})
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", text)))
    by_id = {r.config.run_id: r for r in runs}
    dfr = [r for r in runs if r.config.method == "dfr"]
    assert len(dfr) == 4 and len(runs) == 8  # the bases are the grid's own cells: no run added
    for run in dfr:
        (base_id,) = run.requires
        base = by_id[base_id].config
        assert base.method == run.config.method_params.dfr_base and base.seed == run.config.seed
        assert base.train == run.config.train and base.data_params == run.config.data_params
    mtl_l1 = next(r.config for r in runs if r.config.method == "mtl_l1")
    assert (mtl_l1.method_params.alpha_aux, mtl_l1.method_params.alpha_reg) == (0.5, 0.1)
    # only the runs a dfr run retrains on are told to keep their encoder weights
    bases = {base_id for run in dfr for base_id in run.requires}
    assert {r.run_id for r in runs if r.keep_encoder} == bases


def test_only_a_run_dfr_retrains_on_keeps_its_encoder_and_a_base_without_one_is_one_line(tmp_path):
    cfg = build_config("dfr", "synthetic", 0, None, DATA, where="test")
    (base,) = with_transitive(cfg)
    assert encoder_keepers(cfg) == {base.run_id}
    base_dir = RunDir(tmp_path / base.run_id)
    prepare_run(base_dir, base, RunOptions(threads=1))  # planned without dfr: no keep_encoder
    train_run(base_dir)
    assert not base_dir.artifact(PRETRAINED_ENCODER).exists()
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1))
    with pytest.raises(UserError, match=r"finished without its encoder weights.*grid drop"):
        train_run(rd)


def test_base_method_parameters_a_base_lacks_never_split_dfr_ids():
    one = build_config("dfr", "synthetic", 0, None, {**TINY, "alpha_aux": 0.3}, where="test")
    other = build_config("dfr", "synthetic", 0, None, TINY, where="test")
    assert one.run_id == other.run_id  # an erm base has no alpha_aux
    on_mtl = build_config("dfr", "synthetic", 0, None, {**TINY, "dfr_base": "mtl", "alpha_aux": 0.3}, where="t")
    assert required_runs(on_mtl)["base"] == build_config("mtl", "synthetic", 0, None, {**TINY, "alpha_aux": 0.3},
                                                         where="t")


@pytest.mark.parametrize("base", ["dfr", "pretrain", "jtt_stage1", "nope"])
def test_a_base_that_leaves_no_reported_model_is_refused(base):
    with pytest.raises(UserError, match="dfr_base"):
        build_config("dfr", "synthetic", 0, None, {**TINY, "dfr_base": base}, where="test")


def test_dfr_on_jtt_requires_its_stage_one_first():
    cfg = build_config("dfr", "synthetic", 0, None, {**TINY, "dfr_base": "jtt"}, where="test")
    assert [c.method for c in with_transitive(cfg)] == ["jtt_stage1", "jtt"]


def test_halves_are_stratified_and_subsets_balanced():
    groups = np.repeat([0, 1, 2, 3], [50, 7, 9, 134])
    first, second = stratified_halves(groups, np.random.default_rng(0))
    assert not set(first) & set(second) and len(first) + len(second) == len(groups)
    assert [int((groups[first] == g).sum()) for g in range(4)] == [25, 3, 4, 67]
    subset = balanced_subset(groups[first], np.random.default_rng(1))
    assert [int((groups[first][subset] == g).sum()) for g in range(4)] == [3, 3, 3, 3]


def run_dfr(tmp_path, **extra):
    cfg = build_config("dfr", "synthetic", 0, None, {**DATA, **extra}, where="test")
    opts, keepers = RunOptions(threads=1), encoder_keepers(cfg)
    for needed in with_transitive(cfg):
        rd = RunDir(tmp_path / needed.run_id)
        prepare_run(rd, needed, RunOptions(threads=1, keep_encoder=needed.run_id in keepers))
        train_run(rd)
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, opts)
    return cfg, rd, train_run(rd)


def test_dfr_end_to_end_records_and_summary(tmp_path):
    cfg, rd, summary = run_dfr(tmp_path, dfr_subsets=3)
    base = RunDir(tmp_path / retrained_base(cfg)["base"].run_id)
    assert base.artifact(PRETRAINED_ENCODER).exists() and not rd.artifact(PRETRAINED_ENCODER).exists()
    records = read_records(rd.metrics)
    assert [r["split"] for r in records] == ["val", "test"] and all(r["method"] == "dfr" for r in records)
    val, test = records
    first, second = summary["dfr_val_halves"]
    assert first + second == DATA["n_val"] and val["evaluated_on"] == {"examples": second, "of": DATA["n_val"]}
    assert "evaluated_on" not in test  # the whole, untouched test split
    assert summary["dfr_c"] in C_GRID and summary["dfr_tuning"][str(summary["dfr_c"])] == max(
        summary["dfr_tuning"].values())
    assert val["worst_group_acc"] == summary["dfr_tuning"][str(summary["dfr_c"])]
    assert summary["final"]["test"]["worst_group_acc"] == test["worst_group_acc"]
    assert summary["dfr_subset_size"] % 4 == 0 and summary["dfr_tune_subset_size"] < summary["dfr_subset_size"]
    assert summary["steps"] == 0 and summary["dfr_base_run"] == base.root.name


def test_a_finished_dfr_run_does_nothing_again(tmp_path):
    _, rd, _ = run_dfr(tmp_path, dfr_subsets=2)
    metrics, done = rd.metrics.read_bytes(), rd.done.read_bytes()
    again = train_run(rd)
    assert again == json.loads(done) and rd.metrics.read_bytes() == metrics and rd.done.read_bytes() == done


def test_dfr_is_deterministic_and_an_interrupted_one_writes_no_duplicates(tmp_path):
    _, rd, summary = run_dfr(tmp_path, dfr_subsets=2)
    rd.done.unlink()  # as if killed after its records, before DONE
    again = train_run(rd)
    assert again["final"] == summary["final"] and len(read_records(rd.metrics)) == 2


def test_dfr_needs_its_base_done(tmp_path):
    cfg = build_config("dfr", "synthetic", 0, None, DATA, where="test")
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1))
    with pytest.raises(UserError, match="base run"):
        train_run(rd)


def test_the_l1_solver_reaches_liblinears_objective_optimum():
    from scipy.optimize import minimize

    from robustmtl.methods.dfr import l1_logistic

    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 5))
    t = (x[:, 0] - 0.5 * x[:, 1] + 0.3 * rng.standard_normal(120) > 0).astype(float)

    def objective(wb, c):
        z = x @ wb[:5] + wb[5]
        return np.abs(wb[:5]).sum() + c * np.logaddexp(0, -(2 * t - 1) * z).sum()

    for c in (0.01, 0.3):
        w, b = l1_logistic(x, t, c)
        reference = minimize(objective, np.zeros(6), args=(c,), method="Powell", options={"xtol": 1e-8, "ftol": 1e-10})
        assert objective(np.append(w, b), c) <= reference.fun + 1e-4
    assert not l1_logistic(x, t, 0.001)[0].any()  # a strong enough penalty zeroes every weight


def test_robustmtl_run_trains_the_base_keeping_its_encoder_then_dfr_and_prints_its_splits(tmp_path, cli):
    """`robustmtl run --method dfr`: the base run first, told to keep its encoder, then DFR, whose summary has no
    training split (it trains nothing) and prints validation and test."""
    sets = [a for k, v in {**DATA, "epochs": 2}.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "single" / "dfr"
    result = cli("run", "--method", "dfr", "--dataset", "synthetic", "--threads", "1", *sets, "--out", out)
    assert "needs the erm run" in result.output and "│ test" in result.output and "│ train" not in result.output
    (base,) = with_transitive(build_config("dfr", "synthetic", 0, None, {**DATA, "epochs": 2}, where="test"))
    assert RunDir(tmp_path / "single" / base.run_id).artifact(PRETRAINED_ENCODER).exists()
    assert json.loads(RunDir(out).done.read_text())["method"] == "dfr"


@pytest.mark.slow
def test_rules_that_ration_validation_group_labels_give_dfr_no_cell(tmp_path, cli):
    text = tiny_grid("dfr", ["erm", "dfr"], [0, 1], defaults={"n_val": 200}, sweeps={"dfr": {"dfr_subsets": [2]}})
    cli("grid", "submit", write_spec(tmp_path / "g.toml", text), "--out", tmp_path / "grid")
    out = tmp_path / "budget.csv"
    result = cli("aggregate", tmp_path / "grid", "--label-budget", "--output", out)
    assert "dfr fit on every validation group label: no cell under few-groups" in " ".join(result.output.split())
    rows = list(csv.DictReader(out.open()))
    budgets = {m: {r["budget"] for r in rows if r["method"] == m and r["mean_pct"]} for m in ("erm", "dfr")}
    assert len(budgets["erm"]) > 2 and budgets["dfr"] == {"worst-val"}  # ERM has a cell under every rule
    for select in ("few-groups", "worst-class", "avg-val"):
        table = cli("aggregate", tmp_path / "grid", "--select", select, "--format", "csv").output
        assert {r["method"] for r in csv.DictReader(io.StringIO(table[table.index("dataset,"):]))} == {"erm"}
