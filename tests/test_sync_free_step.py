"""The training step's sync check (`robustmtl/train/syncs.py`) runs every checked method here on the CPU, where
the check itself is off, so that its wiring holds before a GPU runs it (tests/test_gpu.py)."""

from __future__ import annotations

import math

import pytest
import torch

from robustmtl.train.syncs import CHECKED_METHODS, fail_on_sync, train_steps
from tests.conftest import tiny_bert

TINY_TEXT = {"text_n_train": 64, "text_n_val": 8, "text_n_test": 8, "bert_max_length": 32, "batch_size": 8}


@pytest.mark.parametrize("method", CHECKED_METHODS)
def test_every_checked_method_steps_through_the_check_on_the_mlp(tmp_path, method):
    terms = train_steps(tmp_path, method, device="cpu", precision="fp32")
    assert terms and all(math.isfinite(v) for v in terms.values())
    assert ("aux" in terms) == method.startswith("mtl") and ("reg" in terms) == (method == "mtl_l1")


@pytest.mark.parametrize("method", ["mtl_l1", "gdro"])
def test_bert_steps_through_the_check(tmp_path, method):
    values = {**TINY_TEXT, "bert_pretrained": str(tiny_bert(tmp_path))}
    terms = train_steps(tmp_path, method, "text_spurious", values, device="cpu", precision="fp32")
    assert all(math.isfinite(v) for v in terms.values())


def test_the_check_is_off_the_gpu():
    with fail_on_sync(torch.device("cpu")):
        assert torch.tensor([1.0]).item() == 1.0
