"""The pre-training stage: a shared `pretrain` run, fine-tuning from its encoder, exact resume of both."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import PRETRAINED_ENCODER, RunDir
from robustmtl.pause import PAUSE_ENV
from robustmtl.requirements import pretrain_config, required_runs, with_transitive
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import Trainer, train_run
from tests.conftest import TIMING_KEYS, TINY, read_records

PRE = {**TINY, "pretrain_epochs": 2, "pretrain_batch_size": 32, "pretrain_n": 300}


def cfg(method: str = "mtl_l1", seed: int = 0, **values):
    return build_config(method, "synthetic", seed, None, {**PRE, **values}, where="test")


def train(cfg_, root: Path) -> RunDir:
    """Train a run and, first, the runs it requires, all beside each other as a grid lays them out."""
    for needed in [*with_transitive(cfg_), cfg_]:
        rd = RunDir(root / needed.run_id)
        prepare_run(rd, needed, RunOptions(threads=1))
        train_run(rd)
    return RunDir(root / cfg_.run_id)


def test_no_pretraining_keeps_run_ids_and_collapses_unused_settings():
    plain = build_config("erm", "synthetic", 0, None, {}, where="test")
    assert plain.run_id == "d24e69726501"  # the id every earlier version gave this config
    assert "pretrain_epochs" not in plain.canonical_json()
    unused = build_config("erm", "synthetic", 0, None, {"pretrain_lr": 0.5, "pretrain_seed": 3}, where="test")
    assert unused.run_id == plain.run_id  # settings of a stage that does not run never split a grid
    assert required_runs(plain) == {}


def test_fine_tunes_with_one_pretraining_config_share_one_pretraining_run(tmp_path: Path):
    spec = tmp_path / "g.toml"
    spec.write_text('name = "g"\ndatasets = ["synthetic"]\nmethods = ["erm", "jtt", "mtl_l1"]\nseeds = [0, 1]\n'
                    "[defaults]\npretrain_epochs = 2\n[sweep]\nlr = [0.001, 0.0003]\n"
                    '[executor]\nkind = "debug"\n')
    plan = expand(load_spec(spec))
    pretrain = [r for r in plan if r.config.method == "pretrain"]
    assert len(pretrain) == 1
    position = {r.run_id: i for i, r in enumerate(plan)}
    for run in plan:
        if run.config.method != "pretrain":
            assert pretrain[0].run_id in run.requires, run.config.method  # stage 1, stage 2 and the rest
        assert all(position[q] < position[run.run_id] for q in run.requires)
    other = cfg(pretrain_lr=3e-4)
    assert pretrain_config(other).run_id != pretrain_config(cfg()).run_id
    assert pretrain_config(cfg(seed=1, lr=3e-4)).run_id == pretrain_config(cfg()).run_id


def test_fine_tuning_starts_from_the_pretrained_encoder_with_a_fresh_head(tmp_path: Path):
    fine = cfg()
    train(pretrain_config(fine), tmp_path)
    rd = RunDir(tmp_path / fine.run_id)
    prepare_run(rd, fine, RunOptions(threads=1))
    pretrained = torch.load(tmp_path / pretrain_config(fine).run_id / PRETRAINED_ENCODER, weights_only=True)
    started = Trainer(rd).model.state_dict()
    assert pretrained and all(torch.equal(started[k], v) for k, v in pretrained.items())
    scratch_cfg = cfg(pretrain_epochs=0)
    scratch_rd = RunDir(tmp_path / scratch_cfg.run_id)
    prepare_run(scratch_rd, scratch_cfg, RunOptions(threads=1))
    scratch = Trainer(scratch_rd).model.state_dict()
    heads = [k for k in started if k.startswith("head.")]
    assert heads and all(torch.equal(started[k], scratch[k]) for k in heads)  # the seed's own fresh head
    assert not all(torch.equal(started[k], scratch[k]) for k in pretrained)


def test_pretrained_weights_that_do_not_fit_are_one_clear_error(tmp_path: Path):
    fine = cfg()
    train(pretrain_config(fine), tmp_path)
    encoder = tmp_path / pretrain_config(fine).run_id / PRETRAINED_ENCODER
    torch.save({"encoder.9.weight": torch.zeros(1)}, encoder)
    rd = RunDir(tmp_path / fine.run_id)
    prepare_run(rd, fine, RunOptions(threads=1))
    with pytest.raises(UserError, match=r"do not fit this model.*delete the pre-training run"):
        Trainer(rd)


def first_train_loss(rd: RunDir) -> float:
    return next(r for r in read_records(rd.metrics) if r["split"] == "train")["terms"]["end"]


def test_results_depend_on_whether_and_how_the_encoder_was_pretrained(tmp_path: Path):
    runs = {name: train(c, tmp_path) for name, c in
            {"scratch": cfg(pretrain_epochs=0), "two": cfg(), "four": cfg(pretrain_epochs=4)}.items()}
    losses = {name: first_train_loss(rd) for name, rd in runs.items()}
    assert len(set(losses.values())) == 3, losses
    # the last epoch's training loss, not a test accuracy that a tiny model can round to the same value
    finals = {name: [r for r in read_records(rd.metrics) if r["split"] == "train"][-1]["terms"]["end"]
              for name, rd in runs.items()}
    assert len(set(finals.values())) == 3, finals
    pretrain_runs = [p for p in tmp_path.iterdir() if json.loads((p / "config.json").read_text())["method"]
                     == "pretrain"]
    assert len(pretrain_runs) == 2  # one per pre-training config


def test_pretraining_trains_on_the_pool_and_never_reads_labels(tmp_path: Path):
    pre = pretrain_config(cfg())
    rd = RunDir(tmp_path / pre.run_id)
    prepare_run(rd, pre, RunOptions(threads=1))
    trainer = Trainer(rd)
    assert len(trainer.train_split) == PRE["pretrain_n"]
    assert (trainer.train_split.g == -1).all()
    trainer.run()
    terms = [r["terms"] for r in read_records(rd.metrics) if r["split"] == "train"]
    assert [set(t) for t in terms] == [{"aux", "total"}] * PRE["pretrain_epochs"]
    assert terms[-1]["aux"] < terms[0]["aux"]  # it learns to reconstruct


KILL_ARGS = ["--method", "mtl_l1", "--dataset", "synthetic", "--set", "epochs=3", "--set", "n_train=200",
             "--set", "n_val=50", "--set", "n_test=50", "--set", "batch_size=8", "--set", "pretrain_epochs=1",
             "--set", "pretrain_batch_size=8", "--set", "alpha_reg=0.01", "--threads", "1",
             "--checkpoint-every", "1", "--keep-checkpoint"]
KILL_PRETRAIN_STEPS = 25  # 200 examples in batches of 8, one epoch; the fine-tune takes 75


def _checkpoint_mtime(root: Path, phase: str) -> int:
    """The newest checkpoint of the phase: the fine-tune's own directory, or the pre-training run beside it."""
    paths = [root / "fine" / "checkpoint.pt"] if phase == "fine" else \
        [p / "checkpoint.pt" for p in root.glob("*") if p.name != "fine"]
    return max((p.stat().st_mtime_ns for p in paths if p.exists()), default=0)


def _numbers(records: list[dict]) -> list[dict]:
    """Records without timings and the code version (which names the checkout each process started from)."""
    return [{k: v for k, v in r.items() if k not in (*TIMING_KEYS, "code")} for r in records]


@pytest.mark.slow
def test_sigkill_during_pretraining_and_fine_tuning_ends_bitwise_equal(tmp_path: Path, pause):
    def command(root: Path) -> list[str]:
        return [sys.executable, "-m", "robustmtl", "run", *KILL_ARGS, "--out", str(root / "fine")]

    subprocess.run(command(tmp_path / "reference"), check=True, capture_output=True,
                   env=pause.env() | {PAUSE_ENV: ""})
    root = tmp_path / "killed"
    rng = random.Random(7)
    # the pause holds each run at its own step count: the pre-training run's 25 steps, then the fine-tune's 75
    limits = [("pretrain", rng.randint(2, 10))]
    limits.append(("pretrain", limits[-1][1] + rng.randint(1, 3)))
    limits.append(("fine", KILL_PRETRAIN_STEPS + rng.randint(5, 20)))
    limits.append(("fine", limits[-1][1] + rng.randint(1, 3)))
    for phase, limit in limits:
        pause.at(limit)
        before = _checkpoint_mtime(root, phase)
        proc = subprocess.Popen(command(root), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _checkpoint_mtime(root, phase) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before its kill in {phase}"
        time.sleep(rng.uniform(0.0, 0.05))  # within a few steps of a checkpoint of that phase
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    pause.release()
    subprocess.run(command(root), check=True, capture_output=True)
    names = sorted(p.name for p in (tmp_path / "reference").iterdir())
    assert sorted(p.name for p in root.iterdir()) == names and len(names) == 2
    for name in names:
        ours = read_records(root / name / "metrics.jsonl")
        ref = read_records(tmp_path / "reference" / name / "metrics.jsonl")
        assert _numbers(ours) == _numbers(ref), name
    encoder = next(p for p in names if p != "fine")
    ours, ref = (torch.load(d / encoder / PRETRAINED_ENCODER, weights_only=True)
                 for d in (root, tmp_path / "reference"))
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ours)
