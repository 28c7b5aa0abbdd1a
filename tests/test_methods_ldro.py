"""L-DRO: the lookahead weights favour the group that would be worst after the step; τ → uniform; head-only."""

from __future__ import annotations

import math

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data.base import DataInfo, VectorSplit
from robustmtl.layout import RunDir
from robustmtl.methods.base import MethodContext
from robustmtl.methods.ldro import LookaheadDRO, entropy, lookahead_weights
from robustmtl.models.base import Encoded, Model

D = torch.float64


def objective(w, losses, gram, eta, tau):
    return float((losses - eta * gram @ w).max() - tau * entropy(w))


def brute_force_two(losses, gram, eta, tau, n=20001):
    grid = torch.linspace(0, 1, n, dtype=D)
    ws = torch.stack([grid, 1 - grid], dim=1)
    predicted = losses[None, :] - eta * ws @ gram  # gram is symmetric
    ent = -(ws * torch.log(ws.clamp(min=1e-300))).sum(1)
    values = predicted.max(1).values - tau * ent
    return ws[values.argmin()]


# Group A has the LOWER loss now, a small gradient, and conflicts with B; B's large gradient means a step
# that helps B lowers B a lot and raises A: after a uniform step A is the worst group.
LOSSES = torch.tensor([0.5, 0.6], dtype=D)
GRADS = torch.tensor([[0.3], [-2.0]], dtype=D)
GRAM = GRADS @ GRADS.T


def test_setup_lower_loss_group_is_worst_after_a_uniform_step():
    after = LOSSES - 1.0 * GRAM @ torch.tensor([0.5, 0.5], dtype=D)
    assert LOSSES[0] < LOSSES[1] and after[0] > after[1]


@pytest.mark.parametrize("tau", [0.001, 0.01, 0.1])
def test_the_group_that_would_be_worst_after_the_step_gets_more_weight(tau):
    w = lookahead_weights(LOSSES, GRAM, eta=1.0, tau=tau, steps=100)
    assert w.sum().item() == pytest.approx(1.0)
    assert w[0] > 0.75  # analytic minimax without entropy: w_A = 4.5 / 5.29 = 0.851
    best = brute_force_two(LOSSES, GRAM, 1.0, tau)
    assert objective(w, LOSSES, GRAM, 1.0, tau) == pytest.approx(objective(best, LOSSES, GRAM, 1.0, tau), abs=0.02)
    assert abs(w[0] - best[0]) < 0.02


def test_without_lookahead_the_currently_worst_group_wins():
    w = lookahead_weights(LOSSES, GRAM, eta=0.0, tau=0.01, steps=100)
    # eta = 0: the objective is max(losses) - tau H(w), constant in w up to the entropy: uniform
    assert w.tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    w = lookahead_weights(LOSSES, 0.01 * GRAM, eta=1.0, tau=0.001, steps=100)
    assert w[1] > w[0]  # a tiny lookahead: B (currently worst) gets the weight


@pytest.mark.parametrize("n", [2, 3, 5])
def test_large_tau_gives_nearly_uniform_weights(n):
    gen = torch.Generator().manual_seed(n)
    losses = torch.rand(n, generator=gen, dtype=D) * 2
    grads = torch.randn(n, 7, generator=gen, dtype=D)
    gram = grads @ grads.T
    w = lookahead_weights(losses, gram, eta=1.0, tau=1000.0, steps=100)
    assert w.tolist() == pytest.approx([1 / n] * n, abs=0.01)
    sharp = lookahead_weights(losses, gram, eta=1.0, tau=0.01, steps=100)
    assert float(entropy(sharp)) < float(entropy(w)) - 0.05


def test_single_group_gets_all_weight():
    assert lookahead_weights(torch.tensor([0.3]), torch.tensor([[2.0]]), 1.0, 0.1, 10).tolist() == [1.0]


class Features(Model):
    """Encoder: a learnable scale on the batch's features (not part of the head); head: a linear layer."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(3.0))
        self.head = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.copy_(torch.tensor([0.1, 0.0]))

    def encode(self, batch):
        h = self.scale * batch["x"]
        return Encoded(h=h, tokens=h[:, None, :])


def test_method_uses_head_gradients_and_weights_the_batch_loss(tmp_path):
    # group 0: x = +0.1, y = 0 (small gradient, lower loss); group 3: x = -0.6, y = 1 (large, conflicting)
    info = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=1)
    x = torch.tensor([[0.1], [0.1], [-0.6], [-0.6]])
    y = torch.tensor([0, 0, 1, 1])
    g = torch.tensor([0, 0, 3, 3])
    train = VectorSplit("train", x, y, g, n_groups=4)
    cfg = build_config("ldro", "synthetic", 0, None, {"ldro_lookahead_lr": 1.0, "ldro_tau": 0.01}, where="test")
    method = LookaheadDRO(cfg.method_params, MethodContext(config=cfg, info=info, train=train,
                                                           run_dir=RunDir(tmp_path), required={}))
    model = Features()
    batch = train[torch.arange(4)]
    terms = method.loss(model, batch, None)

    # independent: per-group losses and head-only gradients
    logits = model(batch)
    losses, grads = [], []
    for k in (0, 3):
        loss_k = torch.nn.functional.cross_entropy(logits[g == k], y[g == k])
        losses.append(loss_k.detach())
        grads.append(torch.cat([p.flatten() for p in torch.autograd.grad(loss_k, list(model.head.parameters()),
                                                                          retain_graph=True)]))
    losses_t, flat = torch.stack(losses).double(), torch.stack(grads).double()
    assert losses_t[0] < losses_t[1]
    w = lookahead_weights(losses_t, flat @ flat.T, 1.0, 0.01, cfg.method_params.ldro_steps)
    assert w[0] > 0.6 > w[1]  # the lower-loss group gets the larger weight
    assert float(terms.parts["w_max"]) == pytest.approx(float(w[0]), rel=1e-5)
    assert float(terms.total.detach()) == pytest.approx(float((w * losses_t).sum()), rel=1e-5)
    assert float(terms.parts["w_entropy"]) == pytest.approx(float(entropy(w)), rel=1e-4)
    end = torch.nn.functional.cross_entropy(logits.detach(), y)
    assert float(terms.parts["end"].detach()) == pytest.approx(float(end), rel=1e-5)

    # w is detached: the gradient of the total is Σ w_g ∇ℓ_g, also for the encoder's parameter
    model.zero_grad()
    terms.total.backward()
    expected = torch.autograd.grad((w[0] * torch.nn.functional.cross_entropy(model(batch)[:2], y[:2])
                                    + w[1] * torch.nn.functional.cross_entropy(model(batch)[2:], y[2:])).float(),
                                   model.scale)[0]
    assert model.scale.grad.item() == pytest.approx(expected.item(), rel=1e-4)


def test_weights_are_deterministic():
    gen = torch.Generator().manual_seed(0)
    losses, grads = torch.rand(4, generator=gen, dtype=D), torch.randn(4, 9, generator=gen, dtype=D)
    a = lookahead_weights(losses, grads @ grads.T, 0.3, 0.1, 100)
    b = lookahead_weights(losses, grads @ grads.T, 0.3, 0.1, 100)
    assert torch.equal(a, b) and math.isclose(float(a.sum()), 1.0)


def brute_force_three(losses, gram, eta, tau, n=401):
    a, b = torch.meshgrid(torch.linspace(0, 1, n, dtype=D), torch.linspace(0, 1, n, dtype=D), indexing="ij")
    keep = a + b <= 1
    ws = torch.stack([a[keep], b[keep], (1 - a[keep] - b[keep]).clamp(min=0)], dim=1)
    predicted = losses[None, :] - eta * ws @ gram
    ent = -(ws * torch.log(ws.clamp(min=1e-300))).sum(1)
    return ws[(predicted.max(1).values - tau * ent).argmin()]


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_the_solver_is_within_its_stated_gap_of_the_brute_force_optimum(n, seed):
    """The module's promise: on random 2-3 group problems, 100 steps land within ~0.02 of the optimum of F."""
    gen = torch.Generator().manual_seed(seed)
    losses, grads = 3 * torch.rand(n, generator=gen, dtype=D), 4 * torch.randn(n, 5, generator=gen, dtype=D)
    gram, eta, tau = grads @ grads.T, 0.01, 0.1
    w = lookahead_weights(losses, gram, eta, tau, 100)
    best = (brute_force_two if n == 2 else brute_force_three)(losses, gram, eta, tau)
    gap = objective(w, losses, gram, eta, tau) - objective(best, losses, gram, eta, tau)
    # the grids are 1/20000 and 1/400 apart, so the solver may beat them by the grid's own resolution
    assert -1e-3 <= gap <= 0.02 and w.dtype == D and float(w.sum()) == pytest.approx(1.0)
    assert objective(w, losses, gram, eta, tau) <= objective(torch.full((n,), 1 / n, dtype=D), losses, gram, eta,
                                                             tau)


class UnusedHeadPart(Model):
    """A head with a parameter the logits never touch (a frozen-in-practice extra layer)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.ModuleDict({"out": torch.nn.Linear(1, 2), "unused": torch.nn.Linear(1, 1)})

    def encode(self, batch):
        return Encoded(h=batch["x"], tokens=batch["x"][:, None, :])

    def classify(self, encoded):
        return self.head["out"](encoded.h)


def test_head_parameters_the_loss_never_reaches_count_as_zero_gradients(tmp_path):
    info = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=1)
    g = torch.tensor([0, 0, 3, 3])
    train = VectorSplit("train", torch.tensor([[0.1], [0.2], [-0.6], [-0.5]]), g // 2, g, n_groups=4)
    cfg = build_config("ldro", "synthetic", 0, None, {}, where="test")
    method = LookaheadDRO(cfg.method_params, MethodContext(config=cfg, info=info, train=train,
                                                           run_dir=RunDir(tmp_path), required={}))
    terms = method.loss(UnusedHeadPart(), train[torch.arange(4)], None)
    assert set(terms.parts) == {"end", "robust", "w_max", "w_entropy"} and terms.parts["robust"] is terms.total
    assert torch.isfinite(terms.total)


def test_one_solver_step_is_the_documented_mirror_descent_step():
    """w1 = normalise(w0 · exp(-s0 · ∇F(w0))), s0 = √(2 log G) / spread(∇F), from uniform w0; with ldro_steps=1
    the solver returns w1 when it lowers F, and uniform with ldro_steps=0."""
    losses, gram, eta, tau = LOSSES, GRAM, 1.0, 0.05
    w0 = torch.full((2,), 0.5, dtype=D)
    predicted = losses - eta * gram @ w0
    grad = tau * torch.log(w0) - eta * gram[int(predicted.argmax())]
    z = torch.log(w0) - math.sqrt(2 * math.log(2)) / float(grad.max() - grad.min()) * grad
    w1 = torch.softmax(z, 0)
    assert objective(w1, losses, gram, eta, tau) < objective(w0, losses, gram, eta, tau)  # the step helps here
    assert lookahead_weights(losses, gram, eta, tau, 1).tolist() == pytest.approx(w1.tolist(), rel=1e-12)
    assert lookahead_weights(losses, gram, eta, tau, 0).tolist() == [0.5, 0.5]
    assert lookahead_weights(losses[:1], gram[:1, :1], eta, tau, 5).dtype == D  # one group: weight 1, float64 too
