"""What the shared representation relies on: the paper's mechanism measured, not only its outcome.

The field names the tables read are listed in `robustmtl/metrics.py` (MECHANISM_FIELDS).

For datasets whose inputs are named blocks (`DataInfo.extra["blocks"]`: the synthetic task's core,
spurious and noise columns), every evaluation adds to the test record:

- `probe_y_acc`, `probe_a_acc`: accuracy on the test split of a linear probe fitted on the validation
  split's `h` (both splits balanced: the attribute is independent of the label there), predicting the
  label y and the spurious attribute a. High `probe_a_acc` means the representation keeps the
  shortcut; high `probe_y_acc` that it keeps the core signal. The probe is ridge-regularised least
  squares on standardised `h` (closed form: deterministic, no training loop of its own).
- `reliance_<block>`: the block's share of the classifier margin's variation, by gradient × input:
  with m the true class's logit minus the largest other, each example's contribution of a block is
  c_i = ∂m_i/∂x_i[block] · (x_i[block] − mean(x[block])), and the share is Σ_i c_i² over the sum for all
  blocks. A raw gradient norm would miss that a small weight on a widely separated feature moves the
  margin as much as a large weight on a narrow one; the centred input puts each block in its own units.
- `active_units`: units of `h` whose standard deviation over the test split is at least
  `ACTIVE_FRACTION` of the largest unit's: how many dimensions the L1 term leaves in use.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from robustmtl.data.base import Split, Splits, VectorSplit
from robustmtl.models.base import Model
from robustmtl.train.batches import to_device

RIDGE = 1e-3
ACTIVE_FRACTION = 0.01


def probe_accuracy(h_fit: np.ndarray, label_fit: np.ndarray, h_eval: np.ndarray, label_eval: np.ndarray) -> float:
    """Accuracy of a ridge least-squares linear probe for a binary label, fitted on one set, scored on another."""
    mean, std = h_fit.mean(axis=0), h_fit.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def design(h: np.ndarray) -> np.ndarray:
        return np.hstack([(h - mean) / std, np.ones((len(h), 1))])

    x = design(h_fit.astype(np.float64))
    target = 2.0 * label_fit - 1.0
    penalty = RIDGE * len(x) * np.eye(x.shape[1])
    penalty[-1, -1] = 0.0  # the intercept is not shrunk
    w = np.linalg.solve(x.T @ x + penalty, x.T @ target)
    predicted = design(h_eval.astype(np.float64)) @ w > 0
    return float((predicted == (label_eval > 0)).mean())


def active_units(h: np.ndarray) -> int:
    std = h.std(axis=0)
    top = std.max() if len(std) else 0.0
    return int((std >= ACTIVE_FRACTION * top).sum()) if top > 0 else 0


def reliance_shares(grad: np.ndarray, x: np.ndarray, blocks: dict[str, tuple[int, int]]) -> dict[str, float]:
    """Each block's share of Σ_i c_i², c_i = grad_i[block] · (x_i[block] − block mean) (see the module doc)."""
    centred = x.astype(np.float64) - x.mean(axis=0)
    contribution = {name: (grad[:, lo:hi].astype(np.float64) * centred[:, lo:hi]).sum(axis=1)
                    for name, (lo, hi) in blocks.items()}
    power = {name: float((c**2).sum()) for name, c in contribution.items()}
    total = sum(power.values())
    return {name: p / total if total > 0 else 0.0 for name, p in power.items()}


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit, per example."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.max(dim=1).values


def _representation(model: Model, split: Split, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """`h` of every example and the input gradient of its margin, in example order."""
    batch = to_device(split[torch.arange(len(split))], device)
    x = batch["x"].detach().clone().requires_grad_(True)
    encoded = model.encode({**batch, "x": x})
    (grad,) = torch.autograd.grad(margin(model.classify(encoded).float(), batch["y"]).sum(), x)
    return encoded.h.detach().float().cpu().numpy(), grad.float().cpu().numpy()


def measure(model: Model, val: Split, test: Split, n_attrs: int, blocks: dict[str, tuple[int, int]],
            device: torch.device) -> dict[str, Any]:
    """The mechanism fields of one evaluation (eval mode; the model's train/eval state is restored)."""
    was_training = model.training
    model.eval()
    try:
        h_val, _ = _representation(model, val, device)
        h_test, grad = _representation(model, test, device)
    finally:
        model.train(was_training)
    y_val, y_test = val.y.numpy(), test.y.numpy()
    a_val, a_test = val.g.numpy() % n_attrs, test.g.numpy() % n_attrs
    if not isinstance(test, VectorSplit):
        raise TypeError(f"mechanism fields need block-structured vectors, not a {type(test).__name__}")
    shares = reliance_shares(grad, test.x.numpy(), blocks)
    return {"probe_y_acc": probe_accuracy(h_val, y_val, h_test, y_test),
            "probe_a_acc": probe_accuracy(h_val, a_val, h_test, a_test),
            **{f"reliance_{name}": share for name, share in shares.items()},
            "active_units": active_units(h_test)}


def record_fields(model: Model, data: Splits, name: str, device: torch.device) -> dict[str, Any]:
    """What a record of split `name` adds: the mechanism fields on the test split of block-structured data."""
    if name != "test" or "blocks" not in data.info.extra:
        return {}
    return measure(model, data.val, data.test, data.info.n_attrs, data.info.extra["blocks"], device)
