"""AFR, Automatic Feature Reweighting (Qiu, Potapczynski, Izmailov and Wilson, ICML 2023): retrain the last layer of
a finished run on held-out data, each example weighted by how badly the base model predicts it.

An `afr` run requires a finished base run (`afr_base`: `erm` by default) exactly as a `dfr` run does
(`methods/dfr.py:OnABase`, `requirements.retrained_base`); planning tells that run to keep its final weights, and
the loop loads its encoder and its head (`reads_head`), so this run starts from the base model itself.

With the network frozen and in eval mode it:
1. extracts `h` of every validation and test example, and takes the base's last layer θ₀ = (W₀, b₀);
2. splits validation in two halves, stratified by class (no group label is read to fit), seeded by the run's seed;
3. for each γ in `afr_gammas` and λ in `afr_lambdas`: weights every first-half example by
   w_i ∝ exp(−γ · p̂_i(y_i)), p̂ the base model's probabilities, normalised within each class so that every class
   weighs the same (`afr_weights`), and fits the last layer from θ₀ by minimising
   Σ_i w_i · CE(W h_i + b, y_i) + λ · ‖θ − θ₀‖² (`fit_afr`); scores worst-group accuracy on the second half;
4. keeps the (γ, λ) with the best second-half worst-group accuracy (the first in grid order among equals): the
   group labels of the second half select, as in the AFR paper, and never enter a fit;
5. records: `val` = that head on the second half (the numbers it was chosen by), `test` = the same head on the
   test split, both at epoch = step = 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from robustmtl.errors import UserError
from robustmtl.lazy import torch
from robustmtl.methods.base import MethodContext
from robustmtl.methods.dfr import (
    Head,
    LastLayer,
    OnABase,
    accelerated,
    head_metrics,
    stratified_halves,
    top_eigenvalue,
    with_ones,
    worst_group_acc,
)
from robustmtl.methods.mtl import MTLL1Params
from robustmtl.params import positive

if TYPE_CHECKING:
    from robustmtl.models.base import Model


@dataclass(frozen=True)
class AFRParams(OnABase, MTLL1Params):
    """AFR's own settings, and the base run's method parameters (`OnABase`)."""

    base_key = "afr_base"  # a class attribute, not a field
    afr_base: str = "erm"
    afr_gammas: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0)
    afr_lambdas: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1)
    afr_steps: int = field(default=500, metadata=positive())

    def __post_init__(self) -> None:
        super().__post_init__()
        for key, low in (("afr_gammas", "> 0"), ("afr_lambdas", ">= 0")):
            values = getattr(self, key)
            bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | float)
                   or not np.isfinite(v) or (v <= 0 if low == "> 0" else v < 0)]
            if not values or bad:
                raise UserError(f"{key} must be a non-empty list of numbers {low}, got {list(values)!r}")
            object.__setattr__(self, key, tuple(float(v) for v in values))  # 1 and 1.0: one run id


def afr_weights(p_true: np.ndarray, y: np.ndarray, gamma: float) -> np.ndarray:
    """w_i ∝ exp(−γ · p_true_i), normalised within each class to 1 / (the number of classes present): every class
    weighs the same and the weights sum to 1, so the examples the base model gets wrong count most."""
    w = np.exp(-gamma * p_true.astype(np.float64))
    classes = np.unique(y)
    for k in classes:
        w[y == k] /= w[y == k].sum() * len(classes)
    return w


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_afr(x: np.ndarray, y: np.ndarray, w: np.ndarray, coef0: np.ndarray, intercept0: np.ndarray, lam: float,
            steps: int, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """Minimise Σ_i w_i · CE(coef h_i + intercept, y_i) + λ · ‖θ − θ₀‖² (θ: coef and intercept) from θ₀, by at
    most `steps` accelerated full-batch gradient steps of size 1/L, L the objective's smoothness bound (½ the
    weighted Gram matrix's top eigenvalue, the softmax Hessian being at most ½ I, plus 2λ)."""
    xb = with_ones(x)
    theta0 = np.concatenate([coef0, intercept0[:, None]], axis=1).T.astype(np.float64)  # (features + 1, classes)
    onehot = np.eye(theta0.shape[1])[y]
    step = 1.0 / (1.05 * (0.5 * top_eigenvalue(xb * np.sqrt(w)[:, None]) + 2 * lam) + 1e-12)
    theta, z, momentum = theta0.copy(), theta0.copy(), 1.0
    for _ in range(steps):
        grad = xb.T @ (w[:, None] * (softmax(xb @ z) - onehot)) + 2 * lam * (z - theta0)
        nxt = z - step * grad
        z, momentum = accelerated(nxt, theta, momentum)
        done = np.max(np.abs(nxt - theta)) < tol
        theta = nxt
        if done:
            break
    return theta[:-1].T, theta[-1]


def last_linear(model: Model, name: str) -> tuple[np.ndarray, np.ndarray]:
    """The base's last layer (coef, intercept): the model's head must be one linear layer (dropout aside, the
    identity in eval mode), so that retraining it retrains the whole head."""
    nn = torch.nn
    modules = list(model.head.modules())
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if len(linears) != 1 or linears[0].bias is None or any(
            not isinstance(m, nn.Linear | nn.Dropout | nn.Sequential) for m in modules):
        raise UserError(f"AFR retrains a linear last layer; model {name!r}'s head is {model.head}")
    linear = linears[0]
    return (linear.weight.detach().double().cpu().numpy(),
            linear.bias.detach().double().cpu().numpy())  # type: ignore[union-attr]


class AFR(LastLayer):
    """No training: the base run's frozen features and last layer, retrained on loss-weighted validation data."""

    reads_head: ClassVar[bool] = True

    def __init__(self, params: AFRParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.params: AFRParams = params

    def after_training(self, model: Model, predict: Any) -> dict[str, Any]:
        started = time.perf_counter()
        cfg, p = self.ctx.config, self.params
        val, test = self.eval_splits()  # the model arrives as the base run left it (encoder and head)
        x_val, x_test = self.features(model, val), self.features(model, test)
        y_val = val.y.numpy()
        coef0, intercept0 = last_linear(model, cfg.model)
        classes = np.arange(len(intercept0))
        base = Head(np.zeros(x_val.shape[1]), np.ones(x_val.shape[1]), coef0, intercept0, classes)
        p_true = softmax(base.logits(x_val))[np.arange(len(y_val)), y_val]

        first, second = stratified_halves(y_val, np.random.default_rng([cfg.seed, 0xAF]))
        tuning: dict[tuple[float, float], float] = {}
        heads: dict[tuple[float, float], Head] = {}
        for gamma in p.afr_gammas:
            w = afr_weights(p_true[first], y_val[first], gamma)
            for lam in p.afr_lambdas:
                coef, intercept = fit_afr(x_val[first], y_val[first], w, coef0, intercept0, lam, p.afr_steps)
                heads[gamma, lam] = Head(base.mean, base.scale, coef, intercept, classes)
                tuning[gamma, lam] = worst_group_acc(heads[gamma, lam], x_val[second], val, second)
        best = max(tuning, key=lambda key: tuning[key])  # the first in grid order among equals
        chosen = heads[best]
        results = {"val": head_metrics(chosen, x_val[second], val, second),
                   "test": head_metrics(chosen, x_test, test, None)}
        return {
            **self.write_records(results, started), "afr_gamma": best[0], "afr_lambda": best[1],
            "afr_tuning": {f"{g:g},{lam:g}": wga for (g, lam), wga in tuning.items()},
            "afr_base_val_wga": worst_group_acc(base, x_val[second], val, second),
            "afr_val_halves": [len(first), len(second)],
        }
