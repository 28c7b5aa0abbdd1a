"""The mechanism measurements and the synthetic task's regime quantities, against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robustmtl.data.params import SyntheticParams
from robustmtl.data.regime import describe, spurious_mean_std, variance_ratio
from robustmtl.data.synthetic import Synthetic
from robustmtl.train.mechanism import active_units, margin, probe_accuracy, reliance_shares


def test_probe_separates_a_one_dimensional_representation_by_hand():
    h_fit = np.array([[1.0], [2.0], [3.0], [4.0]])
    label = np.array([0, 0, 1, 1])
    assert probe_accuracy(h_fit, label, np.array([[0.0], [5.0]]), np.array([0, 1])) == 1.0
    assert probe_accuracy(h_fit, label, np.array([[0.0], [5.0]]), np.array([1, 1])) == 0.5
    # a unit the label does not depend on leaves the probe at chance on a balanced set
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(400, 1))
    assert abs(probe_accuracy(noise[:200], rng.integers(0, 2, 200), noise[200:], rng.integers(0, 2, 200)) - 0.5) < 0.1


def test_active_units_counts_units_above_a_hundredth_of_the_widest():
    h = np.array([[1.0, 0.5, 0.001, 7.0], [-1.0, -0.5, -0.001, 7.0]])  # stds 1, 0.5, 0.001, 0
    assert active_units(h) == 2
    assert active_units(np.zeros((3, 4))) == 0


def test_reliance_shares_by_hand():
    x = np.array([[1.0, 0.0], [-1.0, 2.0]])  # centred: [[1, -1], [-1, 1]]
    grad = np.array([[2.0, 1.0], [2.0, 1.0]])  # contributions: a = [2, -2], b = [-1, 1]
    shares = reliance_shares(grad, x, {"a": (0, 1), "b": (1, 2)})
    assert shares == pytest.approx({"a": 8 / 10, "b": 2 / 10})
    constant = reliance_shares(grad, np.array([[1.0, 3.0], [1.0, 3.0]]), {"a": (0, 1), "b": (1, 2)})
    assert constant == {"a": 0.0, "b": 0.0}


def test_margin_is_true_logit_minus_best_other():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0]])
    assert margin(logits, torch.tensor([0, 2])).tolist() == [1.0, -2.0]


def _top_variance(block: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(torch.cov(block.T)).max())


def _projection_accuracy(block: torch.Tensor, label: torch.Tensor) -> float:
    return float(((block.sum(dim=1) > 0).long() == label).float().mean())


@pytest.mark.parametrize("ratio", [0.0, 0.5, 3.0])
def test_generated_blocks_have_the_variance_and_separability_the_regime_states(ratio: float):
    p = SyntheticParams(n_train=20000, n_val=20, n_test=20, spurious_variance_ratio=ratio)
    train = Synthetic.build(p, None).train
    x, y, a = train.x, train.y, train.g % 2
    stats = {b.block: b for b in describe(p)}
    core, spur, noise = x[:, :5], x[:, 5:10], x[:, 10:]
    assert _top_variance(core) == pytest.approx(stats["core"].leading_variance, rel=0.05)
    assert _top_variance(spur) == pytest.approx(stats["spurious"].leading_variance, rel=0.05)
    assert _top_variance(noise) == pytest.approx(1.0, rel=0.1)
    assert _projection_accuracy(core, y) == pytest.approx(stats["core"].separability, abs=0.01)
    assert _projection_accuracy(spur, a) == pytest.approx(stats["spurious"].separability, abs=0.01)
    assert _projection_accuracy(spur, y) == pytest.approx(stats["spurious"].label_accuracy_train, abs=0.01)
    if ratio:
        assert variance_ratio(p) == pytest.approx(ratio)
        assert _top_variance(spur) / _top_variance(core) == pytest.approx(ratio, rel=0.08)


def test_the_default_task_is_the_regime_where_reconstruction_favours_the_shortcut():
    p = SyntheticParams()
    assert variance_ratio(p) == pytest.approx((5 * 1.0**2 + 0.5**2) / (5 * 0.5**2 + 1.0**2))
    assert variance_ratio(p) > 1
    mean, std = spurious_mean_std(SyntheticParams(spurious_variance_ratio=0.25))
    assert mean / std == pytest.approx(p.spurious_mean / p.spurious_std)  # separability kept
    core = describe(p)[0]
    assert core.separability == pytest.approx(0.5 * (1 + math.erf(math.sqrt(5) * 0.5 / math.sqrt(2))))


def test_the_pretraining_pool_leaves_the_splits_unchanged():
    plain = Synthetic.build(SyntheticParams(), None)
    pooled = Synthetic.build(SyntheticParams(pretrain_n=500, pretrain_p_agree=0.5), None)
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(plain, name).x, getattr(pooled, name).x)
    assert plain.pretrain is None and pooled.pretrain is not None and len(pooled.pretrain) == 500
    agree = (pooled.pretrain.y == pooled.pretrain.g % 2).float().mean()
    assert abs(float(agree) - 0.5) < 0.07
