"""AFR: the weights against a hand computation, the fit on a separable toy problem, and runs through the real
loop: the base's encoder and head loaded, records the aggregator reads, resumption, and run ids left alone."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import HEAD, PRETRAINED_ENCODER, RunDir
from robustmtl.methods.afr import afr_weights, fit_afr, softmax
from robustmtl.requirements import encoder_keepers, required_runs, with_transitive
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TINY, read_records, tiny_grid, write_spec

DATA = {**TINY, "n_val": 400, "n_test": 400}
FAST = {"afr_gammas": [1, 4], "afr_lambdas": [0, 0.01], "afr_steps": 200}


def test_weights_match_a_hand_computation():
    p_true = np.array([0.9, 0.2, 0.5, 0.7, 0.1])
    y = np.array([0, 0, 1, 1, 1])
    w = afr_weights(p_true, y, gamma=2.0)
    e = np.exp(-2.0 * p_true)
    by_hand = [e[0] / (e[0] + e[1]) / 2, e[1] / (e[0] + e[1]) / 2,
               e[2] / (e[2] + e[3] + e[4]) / 2, e[3] / (e[2] + e[3] + e[4]) / 2, e[4] / (e[2] + e[3] + e[4]) / 2]
    assert np.allclose(w, by_hand, rtol=1e-12, atol=0)
    assert math.isclose(w[y == 0].sum(), 0.5) and math.isclose(w[y == 1].sum(), 0.5)  # classes balanced
    assert w[1] > w[0] and w[4] > w[2] > w[3]  # within a class, the worse the base's guess, the heavier
    assert np.allclose(afr_weights(p_true, y, gamma=0.0), [0.25, 0.25, 1 / 6, 1 / 6, 1 / 6])  # γ = 0: class balance


def toy(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes separated by a margin along the first feature; the second feature is noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.stack([(2 * y - 1) * (1 + rng.random(n)), rng.standard_normal(n)], axis=1)
    return x, y


def test_the_fit_separates_a_separable_problem_from_a_wrong_start():
    x, y = toy()
    coef0 = np.array([[0.0, 1.0], [0.0, -1.0]])  # starts on the noise feature: about half wrong
    intercept0 = np.zeros(2)
    w = afr_weights(softmax(x @ coef0.T + intercept0)[np.arange(len(y)), y], y, gamma=4.0)
    coef, intercept = fit_afr(x, y, w, coef0, intercept0, lam=0.0, steps=500)
    assert ((x @ coef.T + intercept).argmax(axis=1) == y).all()
    assert ((x @ coef0.T + intercept0).argmax(axis=1) == y).mean() < 0.75
    # a strong pull towards the start keeps the start
    held, held_b = fit_afr(x, y, w, coef0, intercept0, lam=1e6, steps=500)
    assert np.abs(held - coef0).max() < 1e-4 and np.abs(held_b - intercept0).max() < 1e-4


def test_the_fit_reaches_the_optimum_of_the_regularised_objective():
    from scipy.optimize import minimize

    x, y = toy(80, seed=1)
    coef0, intercept0 = np.array([[0.3, 0.2], [-0.1, 0.4]]), np.array([0.1, -0.2])
    w = afr_weights(np.full(len(y), 0.5), y, gamma=1.0)

    def objective(theta):
        coef, b = theta[:4].reshape(2, 2), theta[4:]
        p = softmax(x @ coef.T + b)[np.arange(len(y)), y]
        return -(w * np.log(p)).sum() + 0.1 * ((coef - coef0) ** 2).sum() + 0.1 * ((b - intercept0) ** 2).sum()

    coef, b = fit_afr(x, y, w, coef0, intercept0, lam=0.1, steps=5000)
    reference = minimize(objective, np.concatenate([coef0.ravel(), intercept0]), method="BFGS", options={"gtol": 1e-10})
    assert objective(np.concatenate([coef.ravel(), b])) <= reference.fun + 1e-9


@pytest.mark.parametrize("key, value", [("afr_gammas", []), ("afr_gammas", [0]), ("afr_lambdas", [-1]),
                                        ("afr_base", "dfr"), ("afr_base", "afr")])
def test_bad_settings_are_one_line(key, value):
    with pytest.raises(UserError, match=key):
        build_config("afr", "synthetic", 0, None, {**TINY, key: value}, where="test")


def test_existing_run_ids_are_unchanged_and_afr_shares_the_grids_erm_cell(tmp_path):
    pinned = {("erm", ()): "d24e69726501", ("dfr", ()): "e2d90fd0246b",
              ("dfr", (("alpha_aux", 0.5), ("dfr_base", "mtl_l1"))): "41bb1370e9a9",
              ("mtl_l1", (("epochs", 2),)): "6b89343b527e"}
    for (method, values), run_id in pinned.items():
        assert build_config(method, "synthetic", 0, None, dict(values), where="t").run_id == run_id
    afr = build_config("afr", "synthetic", 0, None, {}, where="t")
    assert required_runs(afr)["base"].run_id == "d24e69726501"  # the ERM run itself
    assert build_config("afr", "synthetic", 0, None, {"afr_gammas": [1, 2]}, where="t").run_id == \
        build_config("afr", "synthetic", 0, None, {"afr_gammas": [1.0, 2.0]}, where="t").run_id
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", tiny_grid("afr", ["erm", "dfr", "afr"], [0]))))
    assert len(runs) == 3  # DFR and AFR retrain the grid's own ERM run, which keeps its weights
    (erm,) = [r for r in runs if r.config.method == "erm"]
    assert erm.keep_encoder and all(r.requires == [erm.run_id] for r in runs if r.config.method != "erm")


def run_afr(tmp_path, **extra):
    cfg = build_config("afr", "synthetic", 0, None, {**DATA, **FAST, **extra}, where="test")
    keepers = encoder_keepers(cfg)
    for needed in with_transitive(cfg):
        rd = RunDir(tmp_path / needed.run_id)
        prepare_run(rd, needed, RunOptions(threads=1, keep_encoder=needed.run_id in keepers))
        train_run(rd)
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1))
    return cfg, rd, train_run(rd)


def test_afr_end_to_end_records_the_aggregator_reads(tmp_path):
    from robustmtl.aggregate.load import load_runs

    cfg, rd, summary = run_afr(tmp_path)
    base = RunDir(tmp_path / required_runs(cfg)["base"].run_id)
    assert base.artifact(PRETRAINED_ENCODER).exists() and base.artifact(HEAD).exists()
    assert not rd.artifact(PRETRAINED_ENCODER).exists() and not rd.artifact(HEAD).exists()
    records = read_records(rd.metrics)
    assert [r["split"] for r in records] == ["val", "test"] and all(r["method"] == "afr" for r in records)
    val, test = records
    first, second = summary["afr_val_halves"]
    assert first + second == DATA["n_val"] and val["evaluated_on"] == {"examples": second, "of": DATA["n_val"]}
    assert "evaluated_on" not in test and not val["uses_train_groups"]
    chosen = f"{summary['afr_gamma']:g},{summary['afr_lambda']:g}"
    assert len(summary["afr_tuning"]) == 4 and summary["afr_tuning"][chosen] == max(summary["afr_tuning"].values())
    assert val["worst_group_acc"] == summary["afr_tuning"][chosen] == summary["final"]["val"]["worst_group_acc"]
    assert summary["steps"] == 0 and summary["afr_base_run"] == base.root.name
    loaded = load_runs([tmp_path])
    afr = loaded.records[loaded.records["run_id"] == cfg.run_id]
    assert sorted(afr["split"]) == ["test", "val"]
    assert afr.set_index("split").loc["test", "worst_group_acc"] == test["worst_group_acc"]
    assert loaded.runs.set_index("run_id").loc[cfg.run_id, "method"] == "afr"


def test_afr_starts_from_the_base_models_own_last_layer(tmp_path):
    """Pulled hard towards the base's last layer, AFR's head is the base's: its test accuracy is the base run's own
    final test accuracy, so the loop handed it the base's encoder and head."""
    cfg, rd, _ = run_afr(tmp_path, afr_gammas=[1], afr_lambdas=[1e6], afr_steps=5)
    base = RunDir(tmp_path / required_runs(cfg)["base"].run_id)
    base_test = [r for r in read_records(base.metrics) if r["split"] == "test"][-1]
    (test,) = [r for r in read_records(rd.metrics) if r["split"] == "test"]
    assert (test["avg_acc"], test["worst_group_acc"]) == (base_test["avg_acc"], base_test["worst_group_acc"])


def test_a_finished_afr_run_does_nothing_again_and_an_interrupted_one_writes_no_duplicates(tmp_path):
    _, rd, summary = run_afr(tmp_path)
    metrics, done = rd.metrics.read_bytes(), rd.done.read_bytes()
    assert train_run(rd) == json.loads(done) and rd.metrics.read_bytes() == metrics
    rd.done.unlink()  # as if killed after its records, before DONE
    again = train_run(rd)
    assert again["final"] == summary["final"] and again["afr_tuning"] == summary["afr_tuning"]
    assert rd.metrics.read_bytes() == metrics


def test_a_base_that_kept_only_its_encoder_is_one_line(tmp_path):
    cfg = build_config("afr", "synthetic", 0, None, {**DATA, **FAST}, where="test")
    (base,) = with_transitive(cfg)
    base_dir = RunDir(tmp_path / base.run_id)
    prepare_run(base_dir, base, RunOptions(threads=1, keep_encoder=True))
    train_run(base_dir)
    base_dir.artifact(HEAD).unlink()  # as a base kept before heads were kept
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1))
    with pytest.raises(UserError, match=r"finished without its head weights.*grid drop"):
        train_run(rd)
