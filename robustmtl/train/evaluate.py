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
    """Eval-mode pass over a split; `autocast` is the training step's precision context (fp32: none)."""
    was_training = model.training
    model.eval()
    correct, loss_sum = [], 0.0
    for start in range(0, len(split), batch_size):
        batch = to_device(split[torch.arange(start, min(start + batch_size, len(split)))], device)
        with autocast():
            logits = model(batch).float()
        loss_sum += torch.nn.functional.cross_entropy(logits, batch["y"], reduction="sum").item()
        correct.append((logits.argmax(dim=-1) == batch["y"]).cpu())
    model.train(was_training)
    all_correct = torch.cat(correct).numpy() if correct else np.zeros(0, dtype=bool)
    return Predictions(correct=all_correct, loss=loss_sum / max(len(split), 1))
