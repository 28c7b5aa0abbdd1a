"""DFR, Deep Feature Reweighting (Kirichenko et al., ICLR 2023): retrain the last layer of a finished run on
group-balanced validation data.

A `dfr` run requires a finished base run (`dfr_base`, a method name: `erm` by default, `mtl_l1`, ...) with
this run's training, data and model parameters (`dfr_base` in `requirements.py`), so a grid's own cell of
that method with the same parameters is the very same run, trained once. Planning tells that run to keep its
final encoder weights (`encoder.pt`; `registry` `reads_encoders`, `RunOptions.keep_encoder`), which is what
this run loads; it trains no network weight itself (`trains = False`: the loop goes straight to `after_training`).
The pieces a last-layer method shares (its parameter block's base, `OnABase`; the frozen features, the records,
`LastLayer`) are defined here; AFR (`afr.py`) is the other such method.

It then, with the network frozen and in eval mode:
1. extracts the representation `h` (`model.encode`) of every validation and test example;
2. splits validation in two halves, stratified by group and seeded by the run's seed;
3. for each C of the authors' grid, standardises features on the first half, fits an L1-penalised logistic
   regression (the authors' liblinear objective, solved here in numpy) on `dfr_tune_subsets` group-balanced
   subsets of the first half (every group cut to the smallest group's size), averages their weights, and
   scores worst-group accuracy on the second half;
4. takes the C with the best second-half worst-group accuracy (the larger C on a tie: less regularisation,
   as the grid is listed from large to small and the first best is kept), and refits as the authors do: on
   `dfr_subsets` group-balanced subsets of the *whole* validation set, features standardised on all of it,
   weights averaged;
5. records: `val` = the step-3 head of the chosen C on the held-out second half (the numbers C was chosen
   by), `test` = the final head on the untouched test split. Both are written once, at epoch = step = 0.

The method reads validation group labels to train (that is DFR), never training-split group labels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from robustmtl.errors import UserError
from robustmtl.lazy import torch
from robustmtl.methods.base import Method, MethodContext, Terms
from robustmtl.methods.mtl import MTLL1Params
from robustmtl.params import positive

if TYPE_CHECKING:
    from robustmtl.data.base import Split
    from robustmtl.models.base import Model

# The authors' regularisation grid (their C_OPTIONS), largest first: on a tie the first (weakest penalty) wins.
C_GRID = (1.0, 0.7, 0.3, 0.1, 0.07, 0.03, 0.01)
# Runs that cannot be a base: helper runs leave no reported model, and a retrained last layer lives outside the
# network (DFR, AFR): there is nothing to retrain.
NOT_A_BASE = ("dfr", "afr", "pretrain", "jtt_stage1")
FEATURE_BATCH = 512


class OnABase:
    """The parameter block of a method that retrains the last layer of a finished run, its base (DFR, AFR): the
    base's method, in the field `base_key` names, and the base method's own parameters (those of `l1`, `mtl`,
    `mtl_l1`), so that a grid's `alpha_aux` etc. reach the base run; a base without a parameter has it reset
    to its default, so it never splits run ids. Its runs require the base (`requirements.retrained_base`)."""

    base_key: ClassVar[str]

    @property
    def base_method(self) -> str:
        return str(getattr(self, self.base_key))

    def __post_init__(self) -> None:
        from robustmtl.registry import METHODS, method_plugin

        if self.base_method in NOT_A_BASE or self.base_method not in METHODS:
            choices = ", ".join(m for m in METHODS if m not in NOT_A_BASE)
            raise UserError(f"{self.base_key} {self.base_method!r} is not a method whose last layer can be "
                            f"retrained; one of {choices}")
        kept = {f.name for f in fields(method_plugin(self.base_method).params)}
        for f in fields(MTLL1Params):
            if f.name not in kept:
                object.__setattr__(self, f.name, f.default)

    def base_values(self) -> dict[str, Any]:
        """The base run's method parameters."""
        return {f.name: getattr(self, f.name) for f in fields(MTLL1Params)}


@dataclass(frozen=True)
class DFRParams(OnABase, MTLL1Params):
    """DFR's own settings, and the base run's method parameters (`OnABase`)."""

    base_key = "dfr_base"  # a class attribute, not a field
    dfr_base: str = "erm"
    dfr_subsets: int = field(default=20, metadata=positive())
    dfr_tune_subsets: int = field(default=1, metadata=positive())


def stratified_halves(groups: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each group's examples shuffled and cut in two (the odd one to the second half): (first, second)."""
    first, second = [], []
    for g in np.unique(groups):
        idx = rng.permutation(np.flatnonzero(groups == g))
        first.append(idx[: len(idx) // 2])
        second.append(idx[len(idx) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def balanced_subset(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every group present, each cut at random to the smallest group's size."""
    present = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    size = min(len(idx) for idx in present)
    return np.sort(np.concatenate([rng.choice(idx, size, replace=False) for idx in present]))


@dataclass
class Head:
    """A linear head averaged over fits, on standardised features."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    classes: np.ndarray

    def logits(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef.T + self.intercept
        return np.concatenate([-z / 2, z / 2], axis=1) if z.shape[1] == 1 else z  # binary: softmax = sigmoid(z)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes[self.logits(x).argmax(axis=1)]

    def loss(self, x: np.ndarray, y: np.ndarray) -> float:
        z = self.logits(x)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        column = np.searchsorted(self.classes, y)
        return float(-log_p[np.arange(len(y)), column].mean())


def l1_logistic(x: np.ndarray, t: np.ndarray, c: float, iters: int = 2000,
                tol: float = 1e-6) -> tuple[np.ndarray, float]:
    """Binary logistic regression with an L1 penalty, liblinear's objective ||w||_1 + C * sum(log-loss) (targets
    t in {0, 1}; the intercept unpenalised), by accelerated proximal gradient (FISTA) on it divided by C*n."""
    n, d = x.shape
    lam = 1.0 / (c * n)
    xb = with_ones(x)
    step = 1.0 / (1.05 * top_eigenvalue(xb) / (4 * n) + 1e-12)
    w = np.zeros(d + 1)
    z, momentum = w.copy(), 1.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-(xb @ z)))
        moved = z - step * (xb.T @ (p - t) / n)
        nxt = moved.copy()
        nxt[:d] = np.sign(moved[:d]) * np.maximum(np.abs(moved[:d]) - step * lam, 0.0)  # soft-threshold
        z, momentum = accelerated(nxt, w, momentum)
        done = np.max(np.abs(nxt - w)) < tol
        w = nxt
        if done:
            break
    return w[:d], float(w[d])


def with_ones(x: np.ndarray) -> np.ndarray:
    """The features with a column of ones appended (the intercept), in float64."""
    return np.concatenate([x, np.ones((len(x), 1))], axis=1).astype(np.float64)


def top_eigenvalue(xb: np.ndarray) -> float:
    """The largest eigenvalue of xb^T xb, by 30 power iterations from a fixed start: a gradient method's safe
    step size follows from it."""
    v = np.random.default_rng(0).standard_normal(int(xb.shape[1]))
    for _ in range(30):
        v = xb.T @ (xb @ v)
        v /= np.linalg.norm(v)
    return float(np.linalg.norm(xb @ v) ** 2)


def accelerated(nxt: np.ndarray, previous: np.ndarray, momentum: float) -> tuple[np.ndarray, float]:
    """Nesterov's (FISTA's) extrapolation after a gradient step from `previous` to `nxt`: the next point to
    take the gradient at, and the next momentum."""
    m_next = (1 + np.sqrt(1 + 4 * momentum**2)) / 2
    return nxt + (momentum - 1) / m_next * (nxt - previous), m_next


def fit_once(x: np.ndarray, y: np.ndarray, classes: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
    """One L1 logistic regression, one-vs-rest beyond two classes as liblinear does: (coef, intercept)."""
    targets = [y == classes[1]] if len(classes) == 2 else [y == k for k in classes]
    fitted = [l1_logistic(x, t.astype(np.float64), c) for t in targets]
    return np.stack([w for w, _ in fitted]), np.array([b for _, b in fitted])


def fit_head(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float, subsets: int,
             rng: np.random.Generator) -> tuple[Head, list[int]]:
    """L1 logistic regressions on `subsets` group-balanced subsets of (x, y), averaged; also the subsets' sizes."""
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale = np.where(scale > 0, scale, 1.0)  # a constant feature: left at zero, as StandardScaler does
    coefs, intercepts, sizes = [], [], []
    classes = np.unique(y)
    if len(classes) < 2:
        raise UserError("DFR needs at least two classes among the validation examples")
    for _ in range(subsets):
        idx = balanced_subset(groups, rng)
        if not np.array_equal(np.unique(y[idx]), classes):
            raise UserError(f"a group-balanced subset of {len(idx)} validation examples lacks a class; DFR needs "
                            "every class in the validation groups")
        coef, intercept = fit_once((x[idx] - mean) / scale, y[idx], classes, c)
        coefs.append(coef)
        intercepts.append(intercept)
        sizes.append(len(idx))
    return Head(mean, scale, np.mean(coefs, axis=0), np.mean(intercepts, axis=0), classes), sizes


def group_of(split: Split, method: str) -> np.ndarray:
    """Each example's group (validation and test splits carry them)."""
    groups = split.g.numpy()
    if (groups < 0).any():
        raise UserError(f"{method} needs every {split.name} example's group; {int((groups < 0).sum())} have none")
    return groups


def head_metrics(head: Head, x: np.ndarray, split: Split, rows: np.ndarray | None) -> dict[str, Any]:
    """A record's metrics of `head` on the features `x` of `split` (of its examples `rows`, when given)."""
    from robustmtl.metrics import class_metrics, group_metrics

    y, membership = split.y.numpy(), split.membership.numpy()
    if rows is not None:
        y, membership = y[rows], membership[rows]
    correct = head.predict(x) == y
    metrics = {**group_metrics(correct, membership), **class_metrics(correct, y), "loss": head.loss(x, y)}
    if rows is not None:
        metrics["evaluated_on"] = {"examples": len(rows), "of": len(split)}
    return metrics


def worst_group_acc(head: Head, x: np.ndarray, split: Split, rows: np.ndarray) -> float:
    """Worst-group accuracy of `head` on the examples `rows` of `split`: what a retrained head is tuned on."""
    from robustmtl.metrics import group_metrics

    correct = head.predict(x) == split.y.numpy()[rows]
    return float(group_metrics(correct, split.membership.numpy()[rows])["worst_group_acc"])


class LastLayer(Method):
    """A method that retrains the last layer of its finished base run on frozen features (DFR, AFR): it trains no
    network weight (the loop loads the base's weights and goes straight to `after_training`), fits a head on
    validation features, and writes its `val` and `test` records itself, once, at epoch = step = 0."""

    trains: ClassVar[bool] = False
    leaves_encoder: ClassVar[bool] = False  # its encoder is the base run's, already on disk there

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        raise RuntimeError(f"{type(self).__name__} trains no network weight: the loop never steps it")

    def eval_splits(self) -> tuple[Split, Split]:
        """The validation and test splits."""
        if self.ctx.splits is None:
            raise RuntimeError(f"{type(self).__name__} needs the run's validation and test splits in its context")
        return self.ctx.splits["val"], self.ctx.splits["test"]

    def features(self, model: Model, split: Split) -> np.ndarray:
        """`h` of every example of `split`, in example order, network in eval mode."""
        device = next(model.parameters()).device
        order = split.eval_order()
        out = []
        model.eval()
        with torch.no_grad():
            for idx in order.split(FEATURE_BATCH):
                batch = {k: v.to(device) for k, v in split[idx].items()}
                out.append(model.encode(batch).h.float().cpu())
        h = torch.cat(out).numpy()
        return h[np.argsort(order.numpy(), kind="stable")]

    def write_records(self, results: dict[str, dict[str, Any]], started: float) -> dict[str, Any]:
        """One record per split (validation: the held-out examples the head was chosen on; test: all of it);
        returns the DONE summary's `final` and base-run fields."""
        from robustmtl.records import MetricsWriter, run_record

        base = run_record(self.ctx.config, uses_train_groups=False, report=self.report, epoch=0, step=0,
                          time_s=time.perf_counter() - started)
        writer = MetricsWriter(self.ctx.run_dir.metrics)
        for name, split_metrics in results.items():
            writer.append({**base, "split": name, **split_metrics})
        return {"final": {s: {k: m[k] for k in ("avg_acc", "worst_group_acc")} for s, m in results.items()},
                f"{self.ctx.config.method}_base_run": self.ctx.required["base"].root.name}


class DFR(LastLayer):
    """No training: the base run's frozen features, and a group-balanced logistic-regression head."""

    def __init__(self, params: DFRParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.params: DFRParams = params

    def after_training(self, model: Model, predict: Any) -> dict[str, Any]:
        started = time.perf_counter()
        cfg, p = self.ctx.config, self.params
        # the model arrives with the base run's encoder: the loop loads it (registry `reads_encoders`)
        val, test = self.eval_splits()
        x_val, x_test = self.features(model, val), self.features(model, test)
        y_val, g_val = val.y.numpy(), group_of(val, "DFR")

        rng = np.random.default_rng([cfg.seed, 0xDF])
        first, second = stratified_halves(g_val, rng)
        tuning: dict[float, float] = {}
        held_out: dict[float, Head] = {}
        tune_sizes: list[int] = []
        for c in C_GRID:
            head, tune_sizes = fit_head(x_val[first], y_val[first], g_val[first], c, p.dfr_tune_subsets,
                                        np.random.default_rng([cfg.seed, 0xDF, 1]))
            tuning[c] = worst_group_acc(head, x_val[second], val, second)
            held_out[c] = head
        best = max(C_GRID, key=lambda c: tuning[c])  # the first (largest) C among equals
        final, sizes = fit_head(x_val, y_val, g_val, best, p.dfr_subsets, rng)
        results = {"val": head_metrics(held_out[best], x_val[second], val, second),
                   "test": head_metrics(final, x_test, test, None)}
        return {
            **self.write_records(results, started), "dfr_c": best,
            "dfr_tuning": {str(c): w for c, w in tuning.items()},
            "dfr_tune_subset_size": tune_sizes[0], "dfr_subset_size": sizes[0],
            "dfr_val_halves": [len(first), len(second)],
        }
