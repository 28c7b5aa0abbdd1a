"""Simple data balancing (subg, suby, rwg, rwy): subset sizes, a fixed subset, inverse-frequency sampling."""

from __future__ import annotations

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data.base import DataInfo, VectorSplit
from robustmtl.layout import RunDir
from robustmtl.methods.balancing import SubG, SubY, balanced_subset
from robustmtl.methods.base import MethodContext
from robustmtl.registry import method_entry

GROUP_COUNTS = [600, 50, 30, 320]  # g = 2y + a: classes 650 / 350, groups from 30 to 600


def imbalanced_train() -> VectorSplit:
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(GROUP_COUNTS)])
    g = g[torch.randperm(len(g), generator=torch.Generator().manual_seed(0))]  # interleaved, not sorted
    return VectorSplit("train", torch.zeros(len(g), 20), g // 2, g, n_groups=4)


def make(tmp_path, name, seed=0):
    cfg = build_config(name, "synthetic", seed, None, {}, where="test")
    cls = method_entry(name)
    info = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=20)
    full = imbalanced_train()
    train = full if cls.uses_train_groups else full.hide_groups()
    ctx = MethodContext(config=cfg, info=info, train=train, run_dir=RunDir(tmp_path), required={})
    return cls(cfg.method_params, ctx), full


def test_only_the_group_methods_read_groups():
    assert method_entry("subg").uses_train_groups and method_entry("rwg").uses_train_groups
    assert not method_entry("suby").uses_train_groups and not method_entry("rwy").uses_train_groups


@pytest.mark.parametrize(("name", "key", "n_keys"), [("subg", "g", 4), ("suby", "y", 2)])
def test_subsample_is_min_count_per_key_and_the_same_every_epoch(tmp_path, name, key, n_keys):
    method, train = make(tmp_path, name)
    keys = getattr(train, key)
    smallest = int(torch.bincount(keys).min())
    assert smallest == {"g": 30, "y": 350}[key]
    epochs = [method.epoch_indices(e, torch.Generator().manual_seed(100 + e)) for e in range(1, 4)]
    for order in epochs:
        assert len(order) == n_keys * smallest
        assert len(set(order.tolist())) == len(order)  # no repeats inside an epoch
        assert torch.bincount(keys[order], minlength=n_keys).tolist() == [smallest] * n_keys
        assert sorted(order.tolist()) == sorted(epochs[0].tolist())  # the same subset every epoch
    assert not torch.equal(epochs[0], epochs[1])  # but shuffled differently
    # the subset is fixed by the run's seed: a new method object (a resumed run) picks the same one
    again, _ = make(tmp_path, name)
    assert torch.equal(again.subset, method.subset)
    other_seed, _ = make(tmp_path, name, seed=1)
    assert not torch.equal(other_seed.subset, method.subset)


def test_subg_keeps_every_example_of_the_smallest_group(tmp_path):
    method, train = make(tmp_path, "subg")
    counts = torch.bincount(train.g)
    smallest = int(counts.argmin())
    assert set((train.g == smallest).nonzero().flatten().tolist()) <= set(method.subset.tolist())
    assert isinstance(method, SubG) and not isinstance(make(tmp_path, "suby")[0], SubG)
    assert isinstance(make(tmp_path, "suby")[0], SubY)


@pytest.mark.parametrize(("name", "key", "n_keys"), [("rwg", "g", 4), ("rwy", "y", 2)])
def test_reweighting_draws_every_key_equally_often(tmp_path, name, key, n_keys):
    method, train = make(tmp_path, name)
    keys = getattr(train, key)
    natural = torch.bincount(keys, minlength=n_keys).double() / len(train)
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([method.epoch_indices(e, gen) for e in range(1, 51)])
    assert len(draws) == 50 * len(train)
    freq = torch.bincount(keys[draws], minlength=n_keys).double() / len(draws)
    assert freq.tolist() == pytest.approx([1 / n_keys] * n_keys, abs=0.01)
    assert natural.min() < 0.8 / n_keys  # far from uniform without the reweighting
    # weights ∝ 1 / count of the example's key
    counts = torch.bincount(keys)
    assert torch.allclose(method.weights * counts[keys], torch.ones(len(train), dtype=torch.float64))


def test_reweighting_order_is_a_function_of_the_generator(tmp_path):
    method, _ = make(tmp_path, "rwg")
    a = method.epoch_indices(1, torch.Generator().manual_seed(5))
    b = method.epoch_indices(1, torch.Generator().manual_seed(5))
    c = method.epoch_indices(2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("name", ["subg", "suby"])
def test_subsample_order_is_a_function_of_the_generator_alone(tmp_path, name):
    """The global RNG is no part of it, so a resumed run replays the same epochs."""
    method, _ = make(tmp_path, name)
    torch.manual_seed(1)
    a = method.epoch_indices(1, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    b = method.epoch_indices(1, torch.Generator().manual_seed(5))
    c = method.epoch_indices(1, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(a.sort().values, method.subset)


@pytest.mark.parametrize(("keys", "size"), [
    ([0, 0, 2, 2, 2], 2),  # key 1 absent: it neither sets the size nor appears
    ([0, 1, 1, 1], 1),  # a key with one example keeps it, and every other key is cut to one
])
def test_balanced_subset_takes_the_smallest_present_count_from_each_present_key(keys, size):
    keys = torch.tensor(keys)
    subset = balanced_subset(keys, torch.Generator().manual_seed(0))
    present = sorted(set(keys.tolist()))
    assert len(subset) == size * len(present)
    assert torch.bincount(keys[subset]).tolist() == [size if k in present else 0 for k in range(max(present) + 1)]
    assert subset.tolist() == sorted(set(subset.tolist()))  # sorted, without repeats


@pytest.mark.parametrize(("name", "hidden", "what"), [("subg", "g", "groups"), ("rwg", "g", "groups"),
                                                      ("suby", "y", "labels"), ("rwy", "y", "labels")])
def test_balancing_without_its_key_is_refused_by_name(tmp_path, name, hidden, what):
    cfg = build_config(name, "synthetic", 0, None, {}, where="test")
    cls = method_entry(name)
    info = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=20)
    full = imbalanced_train()
    y, g = full.y.clone(), full.g.clone()
    (g if hidden == "g" else y)[:5] = -1
    train = VectorSplit("train", full.x, y, g, n_groups=4)
    ctx = MethodContext(config=cfg, info=info, train=train, run_dir=RunDir(tmp_path), required={})
    with pytest.raises(ValueError, match=rf"^{cls.__name__} needs training {what}$"):
        cls(cfg.method_params, ctx)
