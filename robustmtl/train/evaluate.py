"""Evaluate a model on one split: per-example correctness, then group metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustmtl.data.base import Split
from robustmtl.metrics import group_metrics
from robustmtl.models.base import Model
from robustmtl.train.batches import to_device


@dataclass
class Predictions:
    correct: np.ndarray
    loss: float

    def metrics(self, split: Split) -> dict[str, Any]:
        return {**group_metrics(self.correct, split.membership.numpy()), "loss": self.loss}


@torch.no_grad()
def predict(model: Model, split: Split, batch_size: int, device: torch.device,
            autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> Predictions:
    """Eval-mode pass over a split; `autocast` is the training step's precision context (fp32: none).

    Batches follow the split's `eval_order` (text: by length, so little padding); results come back in
    example order, and the device is read once at the end rather than once per batch.
    """
    was_training = model.training
    model.eval()
    order = split.eval_order()
    correct, loss_sum = [], torch.zeros((), dtype=torch.float64, device=device)
    for idx in order.split(batch_size):
        batch = to_device(split[idx], device)
        with autocast():
            logits = model(batch).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["y"], reduction="sum")
        correct.append(logits.argmax(dim=-1) == batch["y"])
    model.train(was_training)
    all_correct = np.zeros(len(split), dtype=bool)
    if correct:
        all_correct[order.numpy()] = torch.cat(correct).cpu().numpy()
    return Predictions(correct=all_correct, loss=float(loss_sum) / max(len(split), 1))
