"""The learning-rate schedule: warm-up as a fraction of the run or as absolute steps, then the chosen shape."""

from __future__ import annotations

import math

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.errors import UserError
from robustmtl.train.optim import make_scheduler

LR = 1e-3
TOTAL = 10_000


def learning_rates(steps: list[int], total: int = TOTAL, **values) -> dict[int, float]:
    """The learning rate the optimiser holds for each of `steps` (0 = the first optimiser step)."""
    cfg = build_config("erm", "synthetic", 0, None, {"lr": LR, **values}, where="test")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=LR)
    scheduler = make_scheduler(optimizer, cfg, total)
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            seen[step] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return seen


def test_warmup_steps_warm_up_for_that_many_steps_whatever_the_run_length():
    for total in (TOTAL, 2 * TOTAL):  # 500 steps, not a share of the run
        lr = learning_rates([0, 250, 499, 500, 501], total=total, scheduler="cosine", warmup_steps=500)
        assert lr[0] == pytest.approx(LR / 500)
        assert lr[250] == pytest.approx(LR * 251 / 500)
        assert lr[499] == pytest.approx(LR)
        assert lr[500] == pytest.approx(LR)  # the peak: the cosine starts here
        assert lr[501] == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / (total - 500))))
        assert lr[501] < lr[500]


def test_warmup_frac_still_counts_a_share_of_the_run():
    lr = learning_rates([0, 599, 600], scheduler="linear", warmup_frac=0.06)  # 6% of 10,000 steps
    assert lr[0] == pytest.approx(LR / 600) and lr[599] == pytest.approx(LR) and lr[600] == pytest.approx(LR)


def test_no_warmup_by_default():
    assert learning_rates([0], scheduler="cosine")[0] == pytest.approx(LR)


def test_warmup_steps_is_left_out_of_the_run_id_at_its_default():
    plain = build_config("erm", "synthetic", 0, None, {}, where="t")
    assert build_config("erm", "synthetic", 0, None, {"warmup_steps": 0}, where="t").run_id == plain.run_id
    assert build_config("erm", "synthetic", 0, None, {"warmup_steps": 500}, where="t").run_id != plain.run_id


def test_warmup_steps_and_warmup_frac_together_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"^grid\.toml: warmup_steps = 500 and warmup_frac = 0\.06 both set") as info:
        build_config("erm", "synthetic", 0, None, {"warmup_steps": 500, "warmup_frac": 0.06}, where="grid.toml")
    assert "\n" not in str(info.value)


def test_weight_decay_shrinks_weight_matrices_and_spares_biases_and_layernorm_weights():
    """The usual grouping, the inverse of the reference's text optimiser (docs/reproducing.md)."""
    from robustmtl.data.base import DataInfo
    from robustmtl.models.vit import ViT
    from robustmtl.train.optim import make_optimizer

    cfg = build_config("erm", "mnist_spurious", 0, None, {"lr": 0.1, "weight_decay": 0.5, "vit_depth": 1},
                       where="test")
    info = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"),
                    extra={"image_size": 28})
    torch.manual_seed(0)
    model = ViT.build(cfg.model_params, info)
    before = {name: param.detach().clone() for name, param in model.named_parameters()}
    optimizer = make_optimizer(model, cfg, torch.device("cpu"))
    for param in model.parameters():
        param.grad = torch.zeros_like(param)  # no gradient: only the decay can move a parameter
    optimizer.step()
    moved = {name for name, param in model.named_parameters() if not torch.equal(param, before[name])}
    names = dict(model.named_parameters())
    decayed = {name for name, param in names.items()
               if param.ndim >= 2 and "norm" not in name.lower() and before[name].any()}  # the mask token starts at 0
    assert moved == decayed and {"head.weight", "decoder.0.weight", "vit.layers.0.mlp.fc1.weight"} <= moved
    spared = names.keys() - moved - {"vit.embeddings.mask_token"}
    assert {"head.bias", "vit.layernorm.weight", "vit.layers.0.layernorm_before.weight"} <= spared
    assert all(name.endswith(".bias") or "layernorm" in name for name in spared), spared
    shrunk = names["head.weight"] / before["head.weight"]
    assert torch.allclose(shrunk, torch.full_like(shrunk, 1 - 0.1 * 0.5))  # AdamW's decoupled decay: w(1 - lr·wd)
