"""The training loop on real (small) models: determinism, exact resume, no duplicate records."""

from __future__ import annotations

import json
import shutil

import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TIMING_KEYS, TINY, read_records


def make_run(tmp_path, name, method="mtl_l1", **extra):
    cfg = build_config(method, "synthetic", 0, None, {**TINY, **extra}, where="test")
    rd = RunDir(tmp_path / name)
    prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=3))
    return rd


def comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


class Stop(Exception):
    pass


def stop_at(step_to_stop):
    def progress(step, total):
        if step == step_to_stop:
            raise Stop

    return progress


@pytest.mark.parametrize("method", ["erm", "mtl", "mtl_l1", "l1"])
def test_every_record_has_the_schema(tmp_path, method):
    rd = make_run(tmp_path, method, method=method)
    summary = train_run(rd)
    records = read_records(rd.metrics)
    assert len(records) == 3 * TINY["epochs"]
    keys = {"run_id", "setting_id", "method", "dataset", "seed", "hparams", "epoch", "step", "split", "avg_acc",
            "worst_group_acc", "group_acc", "group_n", "worst_class_acc", "class_acc", "class_n", "loss", "time_s",
            "uses_train_groups", "report"}
    for r in records:
        assert keys <= set(r)
        assert r["worst_group_acc"] == min(r["group_acc"].values())
        assert r["worst_class_acc"] == min(r["class_acc"].values()) and set(r["class_n"]) == {"0", "1"}
    train = [r for r in records if r["split"] == "train"]
    expected_terms = {"erm": {"end"}, "mtl": {"end", "aux"}, "mtl_l1": {"end", "aux", "reg"}, "l1": {"end", "reg"}}
    assert set(train[0]["terms"]) == expected_terms[method] | {"total"}
    assert json.loads(rd.done.read_text()) == summary


def test_same_config_gives_bitwise_same_records(tmp_path):
    a, b = make_run(tmp_path, "a"), make_run(tmp_path, "b")
    train_run(a)
    train_run(b)
    assert comparable(read_records(a.metrics)) == comparable(read_records(b.metrics))


@pytest.mark.parametrize("stop_step", [2, 3, 7, 10])
def test_resume_after_interruption_is_exact(tmp_path, stop_step):
    reference = make_run(tmp_path, "ref")
    train_run(reference)
    rd = make_run(tmp_path, "interrupted")
    with pytest.raises(Stop):
        train_run(rd, stop_at(stop_step))
    assert not rd.done.exists()
    train_run(rd)
    records = read_records(rd.metrics)
    keys = [(r["epoch"], r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys))
    assert comparable(records) == comparable(read_records(reference.metrics))
    ref_done, done = json.loads(reference.done.read_text()), json.loads(rd.done.read_text())
    assert comparable([done]) == comparable([ref_done])


def test_torn_last_line_is_repaired_on_resume(tmp_path):
    rd = make_run(tmp_path, "torn")
    with pytest.raises(Stop):
        train_run(rd, stop_at(8))
    with open(rd.metrics, "a") as f:
        f.write('{"run_id": "abc", "epo')
    train_run(rd)
    records = read_records(rd.metrics)
    assert len(records) == 3 * TINY["epochs"]


def test_config_edited_by_hand_is_refused(tmp_path):
    from robustmtl.errors import UserError

    rd = make_run(tmp_path, "edited")
    raw = json.loads(rd.config.read_text())
    raw["train"]["lr"] = 0.5
    rd.config.write_text(json.dumps(raw))
    with pytest.raises(UserError, match="hashes to"):
        train_run(rd)


def test_finished_run_is_not_retrained(tmp_path):
    rd = make_run(tmp_path, "done")
    first = train_run(rd)
    shutil.copy(rd.metrics, tmp_path / "before.jsonl")
    assert train_run(rd) == first
    assert rd.metrics.read_text() == (tmp_path / "before.jsonl").read_text()


def test_requested_stop_checkpoints_at_a_step_boundary_and_resumes_exactly(tmp_path):
    from robustmtl.train.loop import Interrupted

    reference = make_run(tmp_path, "ref")
    train_run(reference)
    rd = make_run(tmp_path, "stopped")
    calls = {"n": 0}

    def stop_after_five() -> bool:
        calls["n"] += 1
        return calls["n"] == 5

    with pytest.raises(Interrupted):
        train_run(rd, stop_requested=stop_after_five)
    import torch

    assert torch.load(rd.checkpoint, weights_only=True)["step"] == 5
    train_run(rd)
    assert comparable(read_records(rd.metrics)) == comparable(read_records(reference.metrics))


def test_checkpoint_is_removed_after_done_unless_kept(tmp_path):
    removed = make_run(tmp_path, "removed")
    train_run(removed)
    assert removed.done.exists() and not removed.checkpoint.exists()
    cfg = build_config("erm", "synthetic", 0, None, TINY, where="test")
    kept = RunDir(tmp_path / "kept")
    prepare_run(kept, cfg, RunOptions(threads=1, keep_checkpoint=True))
    train_run(kept)
    assert torch_load(kept.checkpoint)["epoch"] == TINY["epochs"] + 1


def torch_load(path):
    import torch

    return torch.load(path, weights_only=True)
