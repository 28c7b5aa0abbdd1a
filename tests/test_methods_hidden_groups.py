"""Methods that do not declare `uses_train_groups` never read training group labels.

Each is trained twice on the same data, once with the training split's group labels scrambled (a
permutation of `g`, and so of `membership`), and its validation and test records must be identical.
A method that does use them (gdro, subg) must change, which shows the scrambling takes effect.
"""

from __future__ import annotations

import pytest
import torch
from rich.console import Console

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import Splits, VectorSplit
from robustmtl.data.synthetic import Synthetic
from robustmtl.registry import method_entry
from robustmtl.runner import run_with_requirements
from tests.conftest import TIMING_KEYS, read_records

SMALL = {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100, "batch_size": 32, "jtt_epochs": 1}
original_build = Synthetic.build


def scrambled_build(p, data_root):
    splits = original_build(p, data_root)
    train = splits.train
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(123))
    scrambled = VectorSplit("train", train.x, train.y, train.g[perm], n_groups=splits.info.n_groups)
    assert not torch.equal(scrambled.g, train.g)
    assert torch.equal(scrambled.membership, train.membership[perm])
    return Splits(splits.info, scrambled, splits.val, splits.test)


def records(tmp_path, method, name):
    values = {k: v for k, v in SMALL.items() if k != "jtt_epochs" or method == "jtt"}
    cfg = build_config(method, "synthetic", 0, None, values, where="test")
    out = tmp_path / name / "runs" / "run"
    run_with_requirements(cfg, RunOptions(threads=1), out, Console(quiet=True))
    found = []
    for r in read_records(out / "metrics.jsonl"):
        if r["split"] == "train":  # its group metrics use the scrambled groups; the rest must not move
            found.append({k: r[k] for k in ("epoch", "step", "avg_acc", "loss", "terms")})
        else:
            found.append({k: v for k, v in r.items() if k not in TIMING_KEYS})
    return found


def train_twice(tmp_path, monkeypatch, method):
    normal = records(tmp_path, method, "normal")
    with monkeypatch.context() as m:
        m.setattr(Synthetic, "build", staticmethod(scrambled_build))
        scrambled = records(tmp_path, method, "scrambled")
    return normal, scrambled


@pytest.mark.parametrize("method", ["erm", "jtt", "mtl", "mtl_l1", "l1", "suby", "rwy"])
def test_group_blind_methods_ignore_training_groups(tmp_path, monkeypatch, method):
    assert not method_entry(method).uses_train_groups
    normal, scrambled = train_twice(tmp_path, monkeypatch, method)
    assert len(normal) == 3 * SMALL["epochs"]
    assert scrambled == normal


@pytest.mark.parametrize("method", ["gdro", "subg"])
def test_group_methods_do_see_the_scrambling(tmp_path, monkeypatch, method):
    assert method_entry(method).uses_train_groups
    normal, scrambled = train_twice(tmp_path, monkeypatch, method)
    assert [r for r in scrambled if r.get("split") == "test"] != [r for r in normal if r.get("split") == "test"]
