"""Group DRO: the q update against a hand computation, the checkpointed q, balanced sampling, exact resume."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo, VectorSplit
from robustmtl.layout import RunDir
from robustmtl.methods.base import MethodContext
from robustmtl.methods.gdro import GroupDRO
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TIMING_KEYS, TINY, read_records

INFO = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=2)
COUNTS = [16, 4, 9, 1]  # training examples per group


class Logits(torch.nn.Module):
    """A 'model' whose logits are part of the batch: the per-group losses are known exactly."""

    def forward(self, batch):
        return batch["logits"]


def make(tmp_path, **values) -> GroupDRO:
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(COUNTS)])
    train = VectorSplit("train", torch.zeros(len(g), 2), g // 2, g, n_groups=4)
    cfg = build_config("gdro", "synthetic", 0, None, values, where="test")
    ctx = MethodContext(config=cfg, info=INFO, train=train, run_dir=RunDir(tmp_path), required={})
    return GroupDRO(cfg.method_params, ctx)


def ce(a: float) -> float:
    """Cross-entropy of logits (a, 0) for label 0."""
    return math.log(1 + math.exp(-a))


def batch(rows):
    """rows: (group, logit a of class 0) with label 0: the example's loss is ce(a)."""
    return {"g": torch.tensor([r[0] for r in rows]), "y": torch.zeros(len(rows), dtype=torch.long),
            "logits": torch.tensor([[r[1], 0.0] for r in rows])}


FIRST = [(0, 2.0), (0, 0.0), (1, -1.0), (3, 0.5)]  # group 2 absent
SECOND = [(1, 1.0), (2, -2.0), (2, 0.0)]  # groups 0 and 3 absent


def hand_losses(rows):
    by_group: dict[int, list[float]] = {}
    for g, a in rows:
        by_group.setdefault(g, []).append(ce(a))
    return {g: sum(v) / len(v) for g, v in by_group.items()}


def hand_update(q, rows, eta, c):
    losses = hand_losses(rows)
    q = [qg * math.exp(eta * (losses[g] + c / math.sqrt(COUNTS[g]))) if g in losses else qg for g, qg in enumerate(q)]
    total = sum(q)
    q = [v / total for v in q]
    return q, sum(q[g] * loss for g, loss in losses.items())


@pytest.mark.parametrize(("eta", "c"), [(0.01, 0.0), (0.5, 0.0), (0.3, 2.0)])
def test_q_after_one_and_two_steps_matches_hand_computation(tmp_path, eta, c):
    method = make(tmp_path, gdro_eta=eta, gdro_c=c)
    assert method.q.tolist() == pytest.approx([0.25] * 4)
    q = [0.25] * 4
    for rows in (FIRST, SECOND):
        q, robust = hand_update(q, rows, eta, c)
        terms = method.loss(Logits(), batch(rows), None)
        assert method.q.tolist() == pytest.approx(q, rel=1e-6)
        assert float(terms.total) == pytest.approx(robust, rel=1e-6)
        assert float(terms.parts["end"]) == pytest.approx(sum(ce(a) for _, a in rows) / len(rows), rel=1e-6)
    assert method.q.sum().item() == pytest.approx(1.0)


def test_adjustment_favours_small_groups(tmp_path):
    plain, adjusted = make(tmp_path, gdro_eta=0.1), make(tmp_path, gdro_eta=0.1, gdro_c=1.0)
    rows = [(0, 0.0), (3, 0.0)]  # same loss in a big group (16) and a tiny one (1)
    plain.loss(Logits(), batch(rows), None)
    adjusted.loss(Logits(), batch(rows), None)
    assert plain.q[0] == pytest.approx(plain.q[3])
    assert adjusted.q[3] > adjusted.q[0]


def test_loss_gradient_is_q_weighted_group_mean(tmp_path):
    method = make(tmp_path, gdro_eta=0.2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.5, 0.0]], requires_grad=True)
    b = {**batch(FIRST), "logits": logits}
    method.loss(Logits(), b, None).total.backward()
    q = method.q
    # d/d a of ce(a) = -sigmoid(-a); example i of group g of size n_g in the batch gets weight q_g / n_g
    sizes = {0: 2, 1: 1, 3: 1}
    expected = [-q[g] / sizes[g] * torch.sigmoid(torch.tensor(-a)) for g, a in FIRST]
    assert logits.grad[:, 0].tolist() == pytest.approx([float(e) for e in expected], rel=1e-5)


def test_state_dict_round_trips_q_through_a_checkpoint(tmp_path):
    method = make(tmp_path, gdro_eta=0.5)
    method.loss(Logits(), batch(FIRST), None)
    path = tmp_path / "state.pt"
    torch.save({"method": method.state_dict()}, path)
    fresh = make(tmp_path, gdro_eta=0.5)
    assert not torch.equal(fresh.q, method.q)
    fresh.load_state_dict(torch.load(path, weights_only=True)["method"])
    assert torch.equal(fresh.q, method.q)
    # and both continue identically
    method.loss(Logits(), batch(SECOND), None)
    fresh.loss(Logits(), batch(SECOND), None)
    assert torch.equal(fresh.q, method.q)


def test_group_balanced_sampling(tmp_path):
    method = make(tmp_path)
    gen = torch.Generator().manual_seed(0)
    draws = torch.cat([method.epoch_indices(e, gen) for e in range(1, 401)])
    assert len(draws) == 400 * sum(COUNTS)
    freq = torch.bincount(method.ctx.train.g[draws], minlength=4).double() / len(draws)
    assert freq.tolist() == pytest.approx([0.25] * 4, abs=0.02)
    unbalanced = make(tmp_path, gdro_balanced=False)
    order = unbalanced.epoch_indices(1, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == list(range(sum(COUNTS)))


@pytest.mark.parametrize("stop_step", [3, 8])
def test_gdro_resumes_exactly_with_its_q(tmp_path, stop_step):
    def run(name, progress=None):
        cfg = build_config("gdro", "synthetic", 0, None, {**TINY, "gdro_eta": 0.5}, where="test")
        rd = RunDir(tmp_path / name)
        prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=2, keep_checkpoint=True))
        with contextlib.suppress(RuntimeError):
            train_run(rd, progress)
        return rd

    def stop(step, total):
        if step == stop_step:
            raise RuntimeError("stop")

    ref = run("ref")
    rd = run("resumed", stop)
    assert not rd.done.exists()
    train_run(rd)

    def comparable(path):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_records(path)]

    assert comparable(rd.metrics) == comparable(ref.metrics)
    assert torch.equal(torch.load(rd.checkpoint, weights_only=True)["method"]["q"],
                       torch.load(ref.checkpoint, weights_only=True)["method"]["q"])


def test_q_covers_training_groups_not_evaluation_groups(tmp_path):
    """CivilComments-style data: 4 training groups (y × any identity) but 16 overlapping evaluation groups."""
    import dataclasses

    info = dataclasses.replace(INFO, group_names=tuple(str(k) for k in range(16)),
                               train_group_names=("0", "1", "2", "3"))
    g = torch.cat([torch.full((n,), k) for k, n in enumerate(COUNTS)])
    train = VectorSplit("train", torch.zeros(len(g), 2), g // 2, g, n_groups=4)
    cfg = build_config("gdro", "synthetic", 0, None, {}, where="test")
    method = GroupDRO(cfg.method_params, MethodContext(config=cfg, info=info, train=train,
                                                       run_dir=RunDir(tmp_path), required={}))
    assert method.q.shape == (4,) and torch.allclose(method.q.sum(), torch.tensor(1.0))


@pytest.mark.parametrize("c", [0.0, 0.3, 2.0])
def test_logged_parts_and_the_references_adjusted_loss(tmp_path, c):
    """`robust_adjusted` = Σ q_g ℓ_g + Σ_g q_g C/√n_g over every group, logged only where C > 0 makes it differ."""
    method = make(tmp_path, gdro_eta=0.2, gdro_c=c)
    terms = method.loss(Logits(), batch(FIRST), None)
    q = method.q.tolist()
    assert set(terms.parts) == ({"end", "robust", "q_max"} | ({"robust_adjusted"} if c > 0 else set()))
    assert float(terms.parts["q_max"]) == pytest.approx(max(q)) and terms.parts["robust"] is terms.total
    if c > 0:
        adjustment = sum(qg * c / math.sqrt(n) for qg, n in zip(q, COUNTS, strict=True))
        assert float(terms.parts["robust_adjusted"]) == pytest.approx(float(terms.total) + adjustment, rel=1e-6)


def test_a_group_without_training_examples_still_has_a_weight_and_an_adjustment(tmp_path):
    """The last group empty in training: q and the adjustment still span every group of the dataset."""
    g = torch.cat([torch.full((n,), k) for k, n in enumerate([16, 4, 9])])
    train = VectorSplit("train", torch.zeros(len(g), 2), g // 2, g, n_groups=4)
    cfg = build_config("gdro", "synthetic", 0, None, {"gdro_eta": 0.1, "gdro_c": 1.0}, where="test")
    ctx = MethodContext(config=cfg, info=INFO, train=train, run_dir=RunDir(tmp_path), required={})
    method = GroupDRO(cfg.method_params, ctx)
    assert method.group_counts.tolist() == [16, 4, 9, 0] and method.adjustment.shape == (4,)
    method.loss(Logits(), batch([(0, 0.0), (1, 0.0)]), None)
    assert method.q.shape == (4,) and method.q[2] == method.q[3]  # absent from the batch: left alone


def test_a_plain_shuffle_is_a_function_of_the_epoch_generator_alone(tmp_path):
    method = make(tmp_path, gdro_balanced=False)
    torch.manual_seed(1)
    a = method.epoch_indices(1, torch.Generator().manual_seed(5))
    torch.manual_seed(2)
    assert torch.equal(a, method.epoch_indices(1, torch.Generator().manual_seed(5)))


def test_group_losses_with_fixed_shapes_equal_the_bincount_formula():
    """Counted without `bincount` (whose output size is read from the GPU): the same means and presence."""
    from robustmtl.methods.gdro import group_losses

    gen = torch.Generator().manual_seed(0)
    for n_groups, size in ((4, 1), (4, 9), (6, 50)):
        g = torch.randint(0, n_groups - 1, (size,), generator=gen)  # the last group is always absent
        per_example = torch.rand(size, generator=gen)
        counts = torch.bincount(g, minlength=n_groups)
        sums = torch.zeros(n_groups).index_add(0, g, per_example)
        losses, present = group_losses(per_example, g, n_groups)
        assert torch.equal(present, counts > 0) and not present[-1]
        assert torch.equal(losses, sums / counts.clamp(min=1).float())
