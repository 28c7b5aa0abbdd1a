"""The synthetic task's generator against the regime's formulas (robustmtl/data/regime.py), block by block.

Each statistic is measured on a large generated split and compared with the closed form the regime states:
class/attribute means and within-class spread per block, the leading-direction variance d·mean² + std², the
Bayes accuracies Φ(√d·mean/std), and the rate at which the attribute agrees with the label. Tolerances are
five standard errors of the estimate at the sample size used (the data are seeded, so the test is exact).
Blocks of different sizes and strengths make a swapped or misplaced block show up.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy.stats import norm

from robustmtl.data.params import SyntheticParams
from robustmtl.data.regime import block_slices, describe, spurious_mean_std, variance_ratio
from robustmtl.data.synthetic import Synthetic

N = 20_000
P = SyntheticParams(n_train=N, n_val=N, n_test=N, core_dim=3, spurious_dim=4, noise_dim=2, core_mean=0.4,
                    core_std=1.5, spurious_mean=0.9, spurious_std=2.0, noise_std=1.7, p_train=0.9, p_eval=0.3,
                    data_seed=7)


def se_mean(std: float, n: int) -> float:
    return 5 * std / math.sqrt(n)


def block(split, name: str, p: SyntheticParams) -> torch.Tensor:
    start, end = block_slices(p)[name]
    return split.x[:, start:end].double()


def attribute(split) -> torch.Tensor:
    return split.g - 2 * split.y  # g = n_attrs * y + a


def leading_variance(x: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(torch.cov(x.T)).max())


@pytest.fixture
def splits():
    """Built per test (a fraction of a second), so mutation testing sees every test exercise the generator."""
    return Synthetic.build(P, None)


def test_layout_names_and_sizes(splits):
    assert (splits.info.modality, splits.info.n_classes, splits.info.n_attrs) == ("vector", 2, 2)
    assert [s.name for s in splits.by_name().values()] == ["train", "val", "test"]
    assert splits.info.input_dim == splits.train.x.shape[1] == 9
    assert splits.info.extra["blocks"] == {"core": (0, 3), "spurious": (3, 7), "noise": (7, 9)}
    assert splits.info.group_names == ("y=0/a=0", "y=0/a=1", "y=1/a=0", "y=1/a=1")
    assert [len(s) for s in splits.by_name().values()] == [N, N, N] and splits.pretrain is None
    for split in splits.by_name().values():
        assert set(split.y.tolist()) == {0, 1} and set(attribute(split).tolist()) == {0, 1}


@pytest.mark.parametrize(("name", "sign_of", "mean", "std"), [
    ("core", "y", P.core_mean, P.core_std),
    ("spurious", "a", *spurious_mean_std(P)),
    ("noise", None, 0.0, P.noise_std),
])
def test_each_block_is_centred_on_its_variable_with_its_spread(splits, name, sign_of, mean, std):
    """Per column: mean ±`mean` by the block's own variable (label or attribute), spread `std` around it; noise
    is centred on 0 whatever the label."""
    split = splits.train
    x = block(split, name, P)
    var = attribute(split) if sign_of == "a" else split.y
    centre = (2 * var - 1).double()[:, None] * mean
    for value in (0, 1):
        rows = var == value
        expected = (2 * value - 1) * mean
        assert x[rows].mean(0).tolist() == pytest.approx([expected] * x.shape[1], abs=se_mean(std, int(rows.sum())))
    spread = (x - centre).std(0)
    assert spread.tolist() == pytest.approx([std] * x.shape[1], rel=5 * math.sqrt(0.5 / N))


def test_the_summaries_describe_the_configured_blocks():
    core, spurious, noise = describe(P)
    assert spurious_mean_std(P) == (P.spurious_mean, P.spurious_std)  # no variance ratio asked: unscaled
    assert (core.block, core.dims, core.mean, core.std) == ("core", 3, P.core_mean, P.core_std)
    assert (spurious.block, spurious.dims, spurious.mean, spurious.std) == ("spurious", 4, 0.9, 2.0)
    assert (noise.block, noise.dims, noise.mean, noise.std, noise.leading_variance) == ("noise", 2, 0.0, 1.7, 1.7**2)
    assert noise.separability == noise.label_accuracy_train == 0.5
    sep = norm.cdf(math.sqrt(4) * 0.9 / 2.0)
    assert spurious.label_accuracy_train == pytest.approx(0.9 * sep + 0.1 * (1 - sep))


def test_leading_direction_variance_per_block_is_the_regimes(splits):
    """The block's largest covariance eigenvalue is d·mean² + std² (noise: std²); the ratio is variance_ratio."""
    summaries = {s.block: s for s in describe(P)}
    measured = {name: leading_variance(block(splits.train, name, P)) for name in ("core", "spurious", "noise")}
    for name, value in measured.items():
        assert value == pytest.approx(summaries[name].leading_variance, rel=5 * math.sqrt(2 / N))
    assert summaries["core"].leading_variance == pytest.approx(3 * 0.4**2 + 1.5**2)
    assert measured["spurious"] / measured["core"] == pytest.approx(variance_ratio(P), rel=10 * math.sqrt(2 / N))


def accuracy(prediction: torch.Tensor, target: torch.Tensor) -> float:
    return float((prediction == target).double().mean())


def test_separability_is_the_bayes_accuracy_of_each_blocks_own_variable(splits):
    """The Bayes rule from a block alone is the sign of its column sum; its accuracy is Φ(√d·mean/std)."""
    summaries = {s.block: s for s in describe(P)}
    split = splits.test
    core_rule = (block(split, "core", P).sum(1) > 0).long()
    spurious_rule = (block(split, "spurious", P).sum(1) > 0).long()
    tolerance = 5 * math.sqrt(0.25 / N)
    assert accuracy(core_rule, split.y) == pytest.approx(summaries["core"].separability, abs=tolerance)
    assert accuracy(spurious_rule, attribute(split)) == pytest.approx(summaries["spurious"].separability, abs=tolerance)
    assert summaries["core"].separability == pytest.approx(norm.cdf(math.sqrt(3) * 0.4 / 1.5))
    assert summaries["spurious"].separability == pytest.approx(norm.cdf(math.sqrt(4) * 0.9 / 2.0))
    assert summaries["noise"].separability == 0.5
    train_rule = (block(splits.train, "spurious", P).sum(1) > 0).long()
    assert accuracy(train_rule, splits.train.y) == pytest.approx(summaries["spurious"].label_accuracy_train,
                                                                 abs=tolerance)
    assert accuracy(core_rule, split.y) == pytest.approx(summaries["core"].label_accuracy_train, abs=tolerance)
    noise_rule = (block(splits.train, "noise", P).sum(1) > 0).long()
    assert accuracy(noise_rule, splits.train.y) == pytest.approx(summaries["noise"].label_accuracy_train, abs=tolerance)


@pytest.mark.parametrize(("name", "rate"), [("train", P.p_train), ("val", P.p_eval), ("test", P.p_eval)])
def test_attribute_agrees_with_the_label_at_the_splits_rate(splits, name, rate):
    split = splits.by_name()[name]
    assert accuracy(attribute(split), split.y) == pytest.approx(rate, abs=5 * math.sqrt(rate * (1 - rate) / N))
    assert float(split.y.double().mean()) == pytest.approx(0.5, abs=5 * math.sqrt(0.25 / N))


@pytest.mark.parametrize("ratio", [0.5, 3.0])
def test_spurious_variance_ratio_rescales_the_spurious_block_and_keeps_its_separability(ratio):
    p = replace(P, spurious_variance_ratio=ratio, n_val=10, n_test=10)
    train = Synthetic.build(p, None).train
    assert variance_ratio(p) == pytest.approx(ratio)
    mean, std = spurious_mean_std(p)
    assert mean / std == pytest.approx(P.spurious_mean / P.spurious_std)
    measured = leading_variance(block(train, "spurious", p)) / leading_variance(block(train, "core", p))
    assert measured == pytest.approx(ratio, rel=10 * math.sqrt(2 / N))
    x = block(train, "spurious", p)
    a = attribute(train)
    assert x[a == 1].mean().item() == pytest.approx(mean, abs=se_mean(std, N))
    assert describe(p)[1].separability == pytest.approx(describe(P)[1].separability)


def test_the_data_depend_on_data_seed_only_and_a_pretraining_pool_leaves_the_splits_alone(splits):
    small = replace(P, n_train=50, n_val=40, n_test=30)
    first, again = Synthetic.build(small, None), Synthetic.build(small, None)
    other = Synthetic.build(replace(small, data_seed=8), None)
    pooled = Synthetic.build(replace(small, pretrain_n=500, pretrain_p_agree=0.8), None)
    for name, split in first.by_name().items():
        assert torch.equal(split.x, again.by_name()[name].x) and torch.equal(split.g, pooled.by_name()[name].g)
        assert torch.equal(split.x, pooled.by_name()[name].x)
        assert not torch.equal(split.x, other.by_name()[name].x)
    assert pooled.pretrain is not None and len(pooled.pretrain) == 500 and pooled.pretrain.name == "pretrain"
    agree = accuracy(attribute(pooled.pretrain), pooled.pretrain.y)
    assert agree == pytest.approx(0.8, abs=5 * math.sqrt(0.8 * 0.2 / 500))


def test_without_noise_dimensions_there_is_no_noise_block():
    p = replace(P, noise_dim=0, n_train=20, n_val=20, n_test=20)
    splits = Synthetic.build(p, None)
    assert splits.train.x.shape[1] == 7 and "noise" not in block_slices(p)
    assert [s.block for s in describe(p)] == ["core", "spurious"]
    assert np.isfinite(splits.train.x.numpy()).all()


def test_every_split_has_a_membership_column_per_group_even_when_groups_are_missing():
    """With the attribute never agreeing (a = 1 - y), groups 0 and 3 are empty but still evaluated columns."""
    splits = Synthetic.build(replace(P, n_train=50, n_val=50, n_test=50, p_train=0.0, p_eval=0.0), None)
    for split in splits.by_name().values():
        assert set(split.g.tolist()) == {1, 2} and split.membership.shape == (50, 4)
