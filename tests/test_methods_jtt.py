"""JTT: the stage-1 error set, the stage-2 upsampling, the shared stage-1 run, and the two stages end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import ERROR_SET, GridDir, RunDir, write_json
from robustmtl.methods.base import MethodContext
from robustmtl.methods.jtt import JTT, JTTStage1
from robustmtl.registry import dataset_entry, method_entry, model_entry
from robustmtl.requirements import jtt_stage1
from robustmtl.rundir import prepare_run
from robustmtl.train.evaluate import Predictions, predict
from robustmtl.train.loop import train_run
from tests.conftest import TINY, read_records, tiny_grid, write_spec


def stage1_run(tmp_path, **extra):
    cfg = jtt_stage1(build_config("jtt", "synthetic", 0, None, {**TINY, **extra}, where="test"))["stage1"]
    rd = RunDir(tmp_path / cfg.run_id)
    prepare_run(rd, cfg, RunOptions(threads=1, keep_checkpoint=True))
    return cfg, rd


def test_stage1_config_is_erm_for_jtt_epochs_with_everything_else_equal():
    cfg = build_config("jtt", "synthetic", 3, None, {**TINY, "lr": 3e-4, "dropout": 0.2, "jtt_epochs": 1,
                                                    "jtt_upweight": 7, "p_train": 0.9}, where="test")
    stage1 = jtt_stage1(cfg)["stage1"]
    assert stage1.method == "jtt_stage1" and stage1.seed == 3 and stage1.model == cfg.model
    assert stage1.train.epochs == 1
    assert {**stage1.to_dict()["train"], "epochs": cfg.train.epochs} == cfg.to_dict()["train"]
    assert stage1.data_params == cfg.data_params and stage1.model_params == cfg.model_params
    assert "jtt_upweight" not in stage1.hparams()


def test_stage1_is_a_helper_run_that_tables_skip(tmp_path):
    assert JTTStage1.report is False and JTT.report is True
    assert not JTTStage1.uses_train_groups and not JTT.uses_train_groups
    _, rd = stage1_run(tmp_path)
    train_run(rd)
    records = read_records(rd.metrics)
    assert records and all(r["report"] is False for r in records)


def test_error_set_is_exactly_what_the_final_model_gets_wrong_in_eval_mode(tmp_path):
    # dropout makes train-mode predictions differ from eval-mode ones, so a train-mode pass would be caught
    cfg, rd = stage1_run(tmp_path, dropout=0.5, jtt_epochs=2)
    summary = train_run(rd)
    saved = json.loads(rd.artifact(ERROR_SET).read_text())

    data = dataset_entry("synthetic").build(cfg.data_params, None)
    model = model_entry("mlp").build(cfg.model_params, data.info)
    model.load_state_dict(torch.load(rd.checkpoint, weights_only=True)["model"])  # the final (epoch T) weights
    correct = predict(model, data.train, 512, torch.device("cpu")).correct
    wrong = [i for i, ok in enumerate(correct) if not ok]
    assert 0 < len(wrong) < len(correct)
    assert saved == {"indices": wrong, "count": len(wrong), "n_train": TINY["n_train"]}
    assert summary["error_set_size"] == len(wrong) == json.loads(rd.done.read_text())["error_set_size"]
    assert summary["epochs"] == 2


def test_after_training_writes_the_misclassified_indices(tmp_path):
    cfg = build_config("jtt_stage1", "synthetic", 0, None, TINY, where="test")
    data = dataset_entry("synthetic").build(cfg.data_params, None)
    ctx = MethodContext(config=cfg, info=data.info, train=data.train.hide_groups(), run_dir=RunDir(tmp_path),
                        required={})
    correct = torch.ones(TINY["n_train"], dtype=torch.bool)
    correct[[3, 17, 150]] = False
    seen = []

    def fake_predict(split):
        seen.append(split)
        return Predictions(correct=correct.numpy(), loss=0.0)

    assert JTTStage1(cfg.method_params, ctx).after_training(None, fake_predict) == {"error_set_size": 3}
    assert seen == ["train"]
    assert json.loads((tmp_path / ERROR_SET).read_text()) == {"indices": [3, 17, 150], "count": 3, "n_train": 200}


def build_stage2(tmp_path, upweight=5, n=50):
    """The stage-2 method of an n-example split, reading whatever tmp_path/stage1 holds."""
    cfg = build_config("jtt", "synthetic", 0, None, {**TINY, "n_train": n, "jtt_upweight": upweight}, where="test")
    data = dataset_entry("synthetic").build(cfg.data_params, None)
    ctx = MethodContext(config=cfg, info=data.info, train=data.train.hide_groups(), run_dir=RunDir(tmp_path / "s2"),
                        required={"stage1": RunDir(tmp_path / "stage1")})
    return JTT(cfg.method_params, ctx)


def stage2(tmp_path, errors, upweight, n=50, n_saved=None):
    write_json(RunDir(tmp_path / "stage1").artifact(ERROR_SET),
               {"indices": errors, "count": len(errors), "n_train": n if n_saved is None else n_saved})
    return build_stage2(tmp_path, upweight, n)


@pytest.mark.parametrize("upweight", [0, 1, 5])
def test_each_error_example_appears_one_plus_upweight_times_per_epoch(tmp_path, upweight):
    errors = [0, 7, 8, 42]
    method = stage2(tmp_path, errors, upweight)
    orders = [method.epoch_indices(e, torch.Generator().manual_seed(e)) for e in (1, 2)]
    for order in orders:
        assert len(order) == 50 + upweight * len(errors)
        counts = torch.bincount(order, minlength=50)
        expected = torch.ones(50, dtype=torch.long)
        expected[errors] = 1 + upweight
        assert torch.equal(counts, expected)
    assert not torch.equal(orders[0], orders[1])  # shuffled by the epoch's generator
    again = method.epoch_indices(1, torch.Generator().manual_seed(1))
    assert torch.equal(again, orders[0])  # a pure function of the generator (exact resume)


def test_error_set_of_another_training_split_is_refused(tmp_path):
    with pytest.raises(UserError, match="error set of a 60-example"):
        stage2(tmp_path, [1], upweight=5, n=50, n_saved=60)


def test_stage2_keeps_its_parameters_and_context(tmp_path):
    method = stage2(tmp_path, [1, 2], upweight=3)
    assert method.params.jtt_upweight == 3 and method.ctx.required["stage1"].root == tmp_path / "stage1"
    assert method.ctx.config.method == "jtt" and len(method.ctx.train) == 50


def test_an_empty_error_set_leaves_each_epoch_a_permutation_of_the_training_split(tmp_path):
    # JSON's [] carries no type: the indices must still be integers, or concatenating them with the
    # training indices turns every index into a float that cannot index the data
    method = stage2(tmp_path, [], upweight=5)
    order = method.epoch_indices(1, torch.Generator().manual_seed(1))
    assert order.dtype == torch.long
    assert torch.equal(order.sort().values, torch.arange(50))


def test_a_missing_error_set_names_the_file(tmp_path):
    with pytest.raises(UserError) as err:
        build_stage2(tmp_path)
    assert str(err.value) == f"JTT error set not found: {tmp_path / 'stage1' / ERROR_SET}"


@pytest.mark.parametrize(("text", "why"), [
    ("{not json", "Expecting property name enclosed in double quotes"),
    ("[1, 2]", "no list of integer 'indices'"),
    ('{"n_train": 50}', "no list of integer 'indices'"),
    ('{"n_train": 50, "indices": [1, 2.5]}', "no list of integer 'indices'")])
def test_an_unreadable_error_set_is_one_line_naming_the_file(tmp_path, text, why):
    path = RunDir(tmp_path / "stage1").artifact(ERROR_SET)
    path.parent.mkdir()
    path.write_text(text)
    with pytest.raises(UserError) as err:
        build_stage2(tmp_path)
    assert str(err.value) == f"JTT error set is corrupt ({why}): {path}; delete the run directory to rerun it"


SWEEP = tiny_grid("jtt", ["jtt"], [0, 1], sweeps={"jtt": {"jtt_upweight": [1, 5, 20], "jtt_epochs": [1, 2]}})


def test_upweight_sweep_shares_one_stage1_run_per_seed_and_t(tmp_path):
    runs = expand(load_spec(write_spec(tmp_path / "g.toml", SWEEP)))
    stage1 = [r for r in runs if r.config.method == "jtt_stage1"]
    stage2 = [r for r in runs if r.config.method == "jtt"]
    assert len(stage2) == 2 * 3 * 2
    assert len(stage1) == 2 * 2  # seeds × T, not × λ_up
    assert runs[: len(stage1)] == stage1  # required runs come first
    for run in stage2:
        (needed,) = run.requires
        s1 = next(r for r in stage1 if r.run_id == needed)
        assert s1.config.seed == run.config.seed
        assert s1.config.train.epochs == run.config.method_params.jtt_epochs
    by_t_seed = {}
    for run in stage2:
        key = (run.config.seed, run.config.method_params.jtt_epochs)
        by_t_seed.setdefault(key, set()).add(run.requires[0])
    assert all(len(ids) == 1 for ids in by_t_seed.values())


def test_jtt_end_to_end_through_the_cli(cli, tmp_path):
    out = tmp_path / "runs" / "stage2"
    cli("run", "--method", "jtt", "--dataset", "synthetic", "--set", "epochs=2", "--set", "n_train=200",
        "--set", "n_val=100", "--set", "n_test=100", "--set", "jtt_epochs=1", "--set", "jtt_upweight=3",
        "--threads", "1", "--out", out)
    cfg = build_config("jtt", "synthetic", 0, None, {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100,
                                                     "jtt_epochs": 1, "jtt_upweight": 3}, where="test")
    stage1 = RunDir(tmp_path / "runs" / jtt_stage1(cfg)["stage1"].run_id)
    assert stage1.done.exists()
    saved = json.loads(stage1.artifact(ERROR_SET).read_text())
    assert saved["count"] == len(saved["indices"]) == json.loads(stage1.done.read_text())["error_set_size"]
    assert json.loads(RunDir(out).done.read_text())["run_id"] == cfg.run_id
    records = read_records(out / "metrics.jsonl")
    assert [(r["epoch"], r["split"]) for r in records] == [(e, s) for e in (1, 2) for s in ("train", "val", "test")]
    steps_per_epoch = -(-(200 + 3 * saved["count"]) // 64)
    assert records[-1]["step"] == 2 * steps_per_epoch
    assert all(r["report"] for r in records)


@pytest.mark.slow
def test_jtt_grid_runs_stage1_once_then_stage2(cli, tmp_path):
    spec = write_spec(tmp_path / "g.toml", SWEEP.replace("jtt_epochs = [1, 2]", "").replace("seeds = [0, 1]",
                                                                                          "seeds = [0]"))
    cli("grid", "submit", spec, "--out", tmp_path / "grid")
    grid = GridDir(tmp_path / "grid")
    methods = [json.loads(grid.run(r).config.read_text())["method"] for r in grid.run_ids()]
    assert sorted(methods) == ["jtt", "jtt", "jtt", "jtt_stage1"]
    assert all(grid.run(r).done.exists() for r in grid.run_ids())
    assert method_entry("jtt_stage1") is JTTStage1


def test_the_reference_schedule_runs_stage1_on_the_e_epoch_horizon_and_stage2_for_e_minus_t_minus_1(cli, tmp_path):
    values = {"epochs": 5, "n_train": 200, "n_val": 100, "n_test": 100, "jtt_epochs": 2, "jtt_upweight": 3,
              "scheduler": "linear", "lr": 0.01}
    cfgs = {how: build_config("jtt", "synthetic", 0, None, {**values, "jtt_schedule": how}, where="test")
            for how in ("separate", "reference")}
    assert cfgs["separate"].run_id == build_config("jtt", "synthetic", 0, None, values, where="test").run_id
    last_lr: dict[str, float] = {}
    stage2_lr: dict[str, float] = {}
    errors: dict[str, int] = {}
    for how, cfg in cfgs.items():
        stage1 = jtt_stage1(cfg)["stage1"]
        assert stage1.train.epochs == 2
        rd = RunDir(tmp_path / how / stage1.run_id)  # where stage 2 looks for it, so the CLI finds it done
        prepare_run(rd, stage1, RunOptions(threads=1, keep_checkpoint=True))
        train_run(rd)
        last_lr[how] = torch.load(rd.checkpoint, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
        errors[how] = json.loads(rd.artifact(ERROR_SET).read_text())["count"]
        out = tmp_path / how / "stage2"
        sets = [a for k, v in {**values, "jtt_schedule": how}.items() for a in ("--set", f"{k}={v}")]
        cli("run", "--method", "jtt", "--dataset", "synthetic", *sets, "--threads", "1", "--out", out)
        records = read_records(out / "metrics.jsonl")
        epochs = {"separate": 5, "reference": 5 - 2 - 1}[how]
        assert sorted({r["epoch"] for r in records}) == list(range(1, epochs + 1))
        assert json.loads(RunDir(out).done.read_text())["epochs"] == epochs
        stage2 = RunDir(tmp_path / how / cfg.run_id)  # beside its stage 1, keeping its checkpoint to read the lr
        prepare_run(stage2, cfg, RunOptions(threads=1, keep_checkpoint=True))
        train_run(stage2)
        stage2_lr[how] = torch.load(stage2.checkpoint, weights_only=True)["optimizer"]["param_groups"][0]["lr"]
    assert last_lr["separate"] == pytest.approx(0.0, abs=1e-12)  # its own 2-epoch schedule ends at 0
    assert last_lr["reference"] == pytest.approx(0.01 * (1 - 2 / 5))  # 2 of 5 epochs in: far from annealed
    assert stage2_lr["separate"] == pytest.approx(0.0, abs=1e-12)
    # the reference's stage 2: a new schedule over E epochs of the plain split's batches, cut after E - T - 1
    # epochs of the longer upsampled ones
    batch = cfgs["reference"].train.batch_size
    trained = 2 * math.ceil((200 + 3 * errors["reference"]) / batch)
    horizon = 5 * math.ceil(200 / batch)
    assert errors["reference"] > 0 and trained < horizon
    assert stage2_lr["reference"] == pytest.approx(0.01 * (1 - trained / horizon))
    assert jtt_stage1(cfgs["reference"])["stage1"].train.schedule_epochs == 5


def test_the_reference_schedule_refuses_a_run_with_no_stage2_epochs_left():
    cfg = build_config("jtt", "synthetic", 0, None, {"epochs": 3, "jtt_epochs": 2, "jtt_schedule": "reference"},
                       where="test")
    with pytest.raises(UserError, match="at least jtt_epochs \\+ 2"):
        jtt_stage1(cfg)
    with pytest.raises(UserError, match="schedule_epochs = 2 is shorter than epochs = 3"):
        build_config("erm", "synthetic", 0, None, {"epochs": 3, "schedule_epochs": 2}, where="test")
