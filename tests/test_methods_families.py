"""Every method on both real model families: MiniLM (pretrained BERT) on text, a small ViT on images.

One epoch on a handful of examples each, through the same path as `robustmtl run` (required runs such
as JTT's stage 1 first), checking the records each run leaves. Slow-marked: 22 real trainings.
"""

from __future__ import annotations

import pytest
from rich.console import Console

from robustmtl.config import RunOptions, build_config
from robustmtl.registry import METHODS
from robustmtl.runner import run_with_requirements
from tests.conftest import read_records

FAMILIES = {
    "text": ("text_spurious", {"text_n_train": 24, "text_n_val": 16, "text_n_test": 16, "bert_max_length": 16,
                               "batch_size": 8, "lr": 1e-5}),
    "image": ("mnist_spurious", {"mnist_n_train": 48, "mnist_n_val": 16, "mnist_n_test": 16, "batch_size": 16,
                                 "mnist_p_train": 0.75}),  # every group in training: group-aware methods need it
}
REPORTED = sorted(m for m in METHODS if m != "jtt_stage1")
OWN_TERMS = {"mtl": {"aux"}, "mtl_l1": {"aux", "reg"}, "l1": {"reg"}, "gdro": {"robust"}, "ldro": {"robust"},
             "pretrain": {"aux"}}
NO_END_TASK = {"pretrain"}  # trains the auxiliary objective alone
TRAINS_NOTHING = {"dfr", "afr"}  # fit a last layer on validation features: no training split, no loss terms


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("method", REPORTED)
def test_method_runs_on_model_family(tmp_path, monkeypatch, method, family):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    dataset, values = FAMILIES[family]
    values = {**values, "epochs": 1, **({"jtt_epochs": 1} if method == "jtt" else {})}
    cfg = build_config(method, dataset, 0, None, values, where="test")
    out = tmp_path / "runs" / cfg.run_id
    summary = run_with_requirements(cfg, RunOptions(threads=1), out, Console(quiet=True))
    splits = ["val", "test"] if method in TRAINS_NOTHING else ["train", "val", "test"]
    assert summary["run_id"] == cfg.run_id and set(summary["final"]) == set(splits)
    records = read_records(out / "metrics.jsonl")
    assert [r["split"] for r in records] == splits
    for r in records:
        assert r["worst_group_acc"] == min(r["group_acc"].values()) and 0.0 <= r["avg_acc"] <= 1.0
    if method in TRAINS_NOTHING:
        return
    end = set() if method in NO_END_TASK else {"end"}
    assert end | OWN_TERMS.get(method, set()) <= set(records[0]["terms"])
