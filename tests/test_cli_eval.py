"""`robustmtl eval`: a run kept with `--keep-model`, evaluated again without training, gives the run's own final
records; other data of the same modality is evaluated, and the mistakes are one line each."""

from __future__ import annotations

import json

import pytest
import torch

from robustmtl.aggregate.load import load_runs
from robustmtl.layout import EVAL_TARGET, HEAD, PRETRAINED_ENCODER, RunDir
from robustmtl.rundir import load_run
from tests.conftest import TINY, read_records

SETS = [a for k, v in {**TINY, "epochs": 2}.items() for a in ("--set", f"{k}={v}")]


def train(cli, out, *options):
    cli("run", "--method", "erm", "--dataset", "synthetic", "--threads", "1", *SETS, "--out", out, *options)
    return out


@pytest.fixture(scope="module")
def kept(tmp_path_factory):
    """One tiny ERM run that kept its model (trained once for the module)."""
    from typer.testing import CliRunner

    from robustmtl.cli import app

    out = tmp_path_factory.mktemp("kept") / "erm"
    args = ["run", "--method", "erm", "--dataset", "synthetic", "--threads", "1", *SETS, "--out", str(out),
            "--keep-model"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out


def last_records(run_dir):
    """The run's final-epoch record of each split."""
    return {r["split"]: r for r in read_records(run_dir / "metrics.jsonl")}


def test_eval_of_a_kept_model_writes_the_runs_own_final_records(cli, kept):
    assert (kept / PRETRAINED_ENCODER).exists() and (kept / HEAD).exists() and not (kept / "checkpoint.pt").exists()
    result = cli("eval", kept, "--split", "val", "--split", "test", "--split", "train")
    folder = kept / "eval" / "synthetic"
    assert "worst-group acc" in result.output and "records in" in result.output
    evaluated = read_records(folder / "metrics.jsonl")
    assert [r["split"] for r in evaluated] == ["val", "test", "train"]
    own = last_records(kept)
    for record in evaluated:
        reference = own[record["split"]]
        if record["split"] == "train":  # the train record also carries the training's loss terms and cost
            assert {k: reference[k] for k in record} == record
        else:
            assert record == reference  # every field, bitwise: metrics, mechanism fields, identity, epoch, step
    again = cli("eval", kept, "--split", "test")  # the same evaluation again: nothing written twice
    assert "records in" in again.output and len(read_records(folder / "metrics.jsonl")) == 3
    # the folder is a run directory to the aggregator
    loaded = load_runs([folder])
    cfg, _ = load_run(RunDir(kept))
    assert list(loaded.runs["run_id"]) == [cfg.run_id] and bool(loaded.runs["complete"].iloc[0])
    test = loaded.records[loaded.records["split"] == "test"]
    assert list(test["worst_group_acc"]) == [own["test"]["worst_group_acc"]]
    assert cli("aggregate", folder).exit_code == 0


def test_eval_on_other_data_of_the_same_modality(cli, kept):
    """A distribution shift of the training data (the spurious attribute agreeing with the label 90% of the time
    at evaluation): its own folder, and the numbers of the kept weights on that data."""
    from robustmtl.config import build_config
    from robustmtl.data.synthetic import Synthetic
    from robustmtl.models.mlp import MLP
    from robustmtl.train.evaluate import predict

    cli("eval", kept, "--set", "p_eval=0.9", "--split", "test")
    (folder,) = [p for p in (kept / "eval").iterdir() if p.name.startswith("synthetic-")]
    target = json.loads((folder / EVAL_TARGET).read_text())
    assert target["dataset"] == "synthetic" and target["data_params"]["p_eval"] == 0.9
    (record,) = read_records(folder / "metrics.jsonl")
    cfg, _ = load_run(RunDir(kept))
    shifted = build_config("erm", "synthetic", 0, None, {**TINY, "epochs": 2, "p_eval": 0.9}, where="test")
    data = Synthetic.build(shifted.data_params, None)
    model = MLP.build(cfg.model_params, data.info)
    model.load_state_dict({**torch.load(kept / PRETRAINED_ENCODER), **torch.load(kept / HEAD)})
    by_hand = predict(model, data.test, 512, torch.device("cpu")).metrics(data.test)
    assert record["avg_acc"] == by_hand["avg_acc"] and record["worst_group_acc"] == by_hand["worst_group_acc"]
    assert record["run_id"] == cfg.run_id and record["hparams"]["p_eval"] == cfg.data_params.p_eval


def one_line_error(cli, *args) -> str:
    result = cli("eval", *args, ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    return result.output


def test_a_run_without_a_kept_model_names_the_option(cli, tmp_path):
    plain = train(cli, tmp_path / "plain")
    line = one_line_error(cli, plain)
    assert "kept no final model" in line and "keep_model" in line and "--keep-model" in line
    assert not (plain / "eval").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--dataset", "multinli"], "has text inputs: evaluate on a vector dataset"),
    (["--set", "noise_dim=3"], "does not take dataset 'synthetic''s inputs"),
    (["--set", "nosuch=1"], "not a parameter of dataset 'synthetic'"),
    (["--split", "dev"], "--split 'dev': one of train, val, test"),
    (["--dataset", "nope"], "unknown dataset 'nope'"),
])
def test_a_wrong_dataset_or_split_is_one_line(cli, kept, args, fragment):
    assert fragment in one_line_error(cli, kept, *args)


def test_a_method_without_a_network_of_its_own_is_one_line(cli, tmp_path):
    sets = [a for k, v in {**TINY, "epochs": 1, "n_val": 200}.items() for a in ("--set", f"{k}={v}")]
    out = tmp_path / "single" / "dfr"
    cli("run", "--method", "dfr", "--dataset", "synthetic", "--threads", "1", *sets, "--out", out, "--keep-model")
    assert not (out / PRETRAINED_ENCODER).exists()  # keep_model keeps nothing of a run that trains no weight
    assert "fits its last layer outside the network" in one_line_error(cli, out)
