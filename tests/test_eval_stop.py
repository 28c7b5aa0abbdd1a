"""A stop request is honoured wherever the loop is: inside an evaluation (mid-epoch or at an epoch's end),
right after the end-of-epoch checkpoint, and in `after_training` (JTT stage 1's pass over the training
split). Each time the run checkpoints and stops; the next attempt redoes what was cut short and ends with
the records and DONE summary of an undisturbed run, no record written twice. Evaluation batches from
worker processes equal those of the main process; the training split is scored as `eval_train` says."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import VectorSplit
from robustmtl.layout import RunDir
from robustmtl.predictions import PREDICTIONS_DIR
from robustmtl.rundir import prepare_run
from robustmtl.train.evaluate import Evaluator, fixed_subset
from robustmtl.train.loop import Interrupted, Trainer, train_run
from tests.conftest import TIMING_KEYS, TINY, Pause, read_records

SPLITS_PER_EVAL = 3  # train, val, test: one batch each at TINY's sizes (EVAL_BATCH 512)


def make_run(tmp_path, name: str, method: str = "erm", **extra) -> RunDir:
    cfg = build_config(method, "synthetic", 0, None, {**TINY, **extra}, where="test")
    rd = RunDir(tmp_path / name)
    prepare_run(rd, cfg, RunOptions(threads=1))
    return rd


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def stopped_where(rd: RunDir, pause: Pause, key: str, count: int) -> None:
    """Train `rd` in a thread until it waits at `count` of `key`, then request a stop; it must checkpoint
    and raise Interrupted."""
    run_id = json.loads(rd.config.read_text())["run_id"]
    stop = threading.Event()
    raised: list[BaseException] = []

    def train() -> None:
        try:
            train_run(rd, stop_requested=stop.is_set)
        except BaseException as exc:  # handed to the test's thread
            raised.append(exc)

    pause.at(count, key=key.format(run_id=run_id))
    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    pause.waited(key.format(run_id=run_id), count, timeout=120)
    stop.set()
    thread.join(120)
    pause.release()
    assert len(raised) == 1 and isinstance(raised[0], Interrupted), raised
    assert not rd.done.exists() and rd.checkpoint.exists()


def assert_like_undisturbed(tmp_path, rd: RunDir, method: str = "erm", **extra) -> None:
    reference = make_run(tmp_path, "reference", method=method, **extra)
    train_run(reference)
    train_run(rd)
    records = read_records(rd.metrics)
    keys = [(r["epoch"], r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys)), "a record was written twice"
    assert comparable(records) == comparable(read_records(reference.metrics))
    done, ref_done = (json.loads(d.done.read_text()) for d in (rd, reference))
    assert comparable([done]) == comparable([ref_done])
    for name in ("val_correct.jsonl",):
        assert (rd.root / name).read_text() == (reference.root / name).read_text()
    stored, ref_stored = (sorted((d.root / PREDICTIONS_DIR).iterdir()) for d in (rd, reference))
    assert [p.name for p in stored] == [p.name for p in ref_stored]  # one file per evaluation, no temp file
    for p, q in zip(stored, ref_stored, strict=True):
        if p.suffix == ".npy":
            assert p.read_bytes() == q.read_bytes()
        else:  # a zip's bytes hold its write time
            with np.load(p) as ours, np.load(q) as theirs:
                assert all(np.array_equal(ours[k], theirs[k]) for k in theirs.files)


@pytest.mark.parametrize("batches", [1, 2, 3, SPLITS_PER_EVAL + 2])
def test_a_stop_inside_an_end_of_epoch_evaluation_is_redone_exactly(tmp_path, pause, batches):
    """1: inside the training split; 2: inside val; 3: inside test; 5: inside the second epoch's
    evaluation. An evaluation writes its records once every split is predicted: a cut-short one none."""
    rd = make_run(tmp_path, "stopped", method="mtl_l1")
    stopped_where(rd, pause, "{run_id}.eval", batches)
    written = read_records(rd.metrics) if rd.metrics.exists() else []
    assert len(written) == SPLITS_PER_EVAL * ((batches - 1) // SPLITS_PER_EVAL)  # whole evaluations only
    assert_like_undisturbed(tmp_path, rd, method="mtl_l1")


def test_a_stop_inside_a_mid_epoch_evaluation_is_redone_before_the_next_step(tmp_path, pause):
    rd = make_run(tmp_path, "stopped", eval_every=3)
    stopped_where(rd, pause, "{run_id}.eval", 2)  # the step-3 evaluation, its training record written
    state = torch.load(rd.checkpoint, weights_only=True)
    assert state["step"] == 3 and state["eval_pending"]
    assert_like_undisturbed(tmp_path, rd, eval_every=3)


def test_a_stop_in_jtt_stage_one_after_training_is_redone(tmp_path, pause):
    rd = make_run(tmp_path, "stopped", method="jtt_stage1")
    last_eval = SPLITS_PER_EVAL * TINY["epochs"]
    stopped_where(rd, pause, "{run_id}.eval", last_eval + 1)  # the error set's pass over the training split
    assert not (rd.root / "error_set.json").exists()
    assert torch.load(rd.checkpoint, weights_only=True)["epoch"] == TINY["epochs"] + 1
    assert_like_undisturbed(tmp_path, rd, method="jtt_stage1")
    assert (rd.root / "error_set.json").read_text() == (tmp_path / "reference" / "error_set.json").read_text()


def test_a_stop_during_the_end_of_epoch_checkpoint_stops_right_after_it(tmp_path):
    rd = make_run(tmp_path, "stopped")
    trainer = Trainer(rd, stop_requested=lambda: trainer.step > 0 and trainer.batch_pos == 0)
    with pytest.raises(Interrupted):
        trainer.run()
    state = torch.load(rd.checkpoint, weights_only=True)
    assert (state["epoch"], state["batch_pos"]) == (2, 0)
    assert [r["epoch"] for r in read_records(rd.metrics)] == [1] * SPLITS_PER_EVAL
    assert_like_undisturbed(tmp_path, rd)


def test_evaluation_workers_give_the_main_process_results():
    gen = torch.Generator().manual_seed(0)
    split = VectorSplit("val", torch.randn(300, 4, generator=gen), torch.randint(0, 2, (300,), generator=gen),
                        torch.randint(0, 4, (300,), generator=gen), n_groups=4)
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))

    class Model(torch.nn.Module):
        def forward(self, batch):
            return model(batch["x"])

    here = Evaluator({"val": split}, 64, torch.device("cpu")).predict(Model(), "val")
    workers = Evaluator({"val": split}, 64, torch.device("cpu"), num_workers=2).predict(Model(), "val")
    subset = fixed_subset(300, 50, seed=3)
    assert subset is not None and len(subset) == 50 and fixed_subset(300, 300, seed=3) is None
    part = Evaluator({"val": split}, 64, torch.device("cpu"), num_workers=2).predict(Model(), "val", subset)
    assert (here.correct == workers.correct).all() and here.loss == pytest.approx(workers.loss, abs=1e-12)
    assert (part.correct == here.correct[subset.numpy()]).all() and part.metrics(split)["group_n"]


@pytest.mark.parametrize("eval_train, scored", [(-1, 200), (10_000, 200), (50, 50), (0, 0)])
def test_the_training_split_is_scored_as_eval_train_says(tmp_path, eval_train, scored):
    rd = make_run(tmp_path, "run", eval_train=eval_train)
    train_run(rd)
    train = [r for r in read_records(rd.metrics) if r["split"] == "train"]
    assert len(train) == TINY["epochs"] and all("terms" in r and "wall_s" in r for r in train)
    if scored == 0:
        assert all("avg_acc" not in r for r in train)
        return
    assert all(sum(r["group_n"].values()) == scored for r in train)
    sampled = [r.get("evaluated_on") for r in train]
    assert sampled == [None if scored == 200 else {"examples": scored, "of": 200}] * TINY["epochs"]
    val = [r for r in read_records(rd.metrics) if r["split"] == "val"]
    assert all(sum(r["group_n"].values()) == TINY["n_val"] for r in val)  # never subsampled


def test_checkpoints_come_every_n_steps_and_once_the_minutes_have_passed(tmp_path):
    cfg = build_config("erm", "synthetic", 0, None, TINY, where="test")
    rd = RunDir(tmp_path / "run")
    prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=3, checkpoint_minutes=5.0))
    trainer = Trainer(rd)
    trainer.step = 1
    assert not trainer._checkpoint_due()
    trainer.last_checkpoint -= 5 * 60  # five minutes of the attempt since the last checkpoint
    assert trainer._checkpoint_due()
    trainer.save_checkpoint()
    assert not trainer._checkpoint_due() and rd.checkpoint.exists()
    trainer.step = 3
    assert trainer._checkpoint_due()
    prepare_run(RunDir(tmp_path / "off"), cfg, RunOptions(threads=1, checkpoint_minutes=0.0))
    off = Trainer(RunDir(tmp_path / "off"))
    off.step, off.last_checkpoint = 1, off.last_checkpoint - 10**6
    assert not off._checkpoint_due()


def test_without_epoch_checkpoints_a_run_saves_on_its_cadence_at_a_stop_and_at_the_end(tmp_path, monkeypatch):
    """`epoch_checkpoints = false` skips the save at an epoch's end unless the cadence, a stop or the last
    epoch asks for it; the run's records and summary are those of a run that saved every epoch."""
    saves: list[tuple[str, int]] = []
    original = Trainer.save_checkpoint

    def counted(self: Trainer) -> None:
        saves.append((self.run_dir.root.name, self.epoch))
        original(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", counted)
    cfg = build_config("erm", "synthetic", 0, None, TINY, where="test")
    runs = {}
    for name, every_epoch in (("every", True), ("cadence", False)):
        runs[name] = RunDir(tmp_path / name)
        prepare_run(runs[name], cfg, RunOptions(threads=1, epoch_checkpoints=every_epoch, checkpoint_minutes=0.0))
        train_run(runs[name])
    epochs = TINY["epochs"]
    assert [e for n, e in saves if n == "every"] == list(range(2, epochs + 2))
    assert [e for n, e in saves if n == "cadence"] == [epochs + 1]  # after the last epoch only
    assert comparable(read_records(runs["every"].metrics)) == comparable(read_records(runs["cadence"].metrics))

    stopped = RunDir(tmp_path / "stopped")
    prepare_run(stopped, cfg, RunOptions(threads=1, epoch_checkpoints=False, checkpoint_minutes=0.0))
    trainer = Trainer(stopped)
    trainer.stop_requested = lambda: trainer.epoch == 2 and trainer.batch_pos == 0  # at epoch 1's end only
    with pytest.raises(Interrupted, match="after a checkpoint"):
        trainer.run()
    assert saves[-1] == ("stopped", 2) and stopped.checkpoint.exists()
    train_run(stopped)
    assert comparable(read_records(stopped.metrics)) == comparable(read_records(runs["every"].metrics))
