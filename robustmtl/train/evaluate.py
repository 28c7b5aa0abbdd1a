"""Evaluate a model on a split (or a fixed subset of one): per-example correctness, then group metrics.

Evaluation batches come from a DataLoader with the run's worker processes and pinned memory on CUDA,
as training batches do, so decoding images for evaluation is not serial in the main process. A stop
request (a preemption signal) is honoured between evaluation batches: the pass raises `EvalStopped`
and its partial results are dropped, for the loop to checkpoint and the next attempt to redo the pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robustmtl import pause
from robustmtl.data.base import Split
from robustmtl.metrics import class_metrics, group_metrics
from robustmtl.models.base import Model
from robustmtl.train.batches import as_is, to_device

EvalKey = tuple[str, torch.Tensor]


class EvalStopped(Exception):
    """A stop was requested during an evaluation pass; its results are incomplete and discarded."""


@dataclass
class Predictions:
    correct: np.ndarray
    loss: float
    indices: np.ndarray | None = None  # the split's examples these are of, when a subset
    probs: np.ndarray | None = None  # [N, classes] softmax probabilities in float16, example order

    def metrics(self, split: Split) -> dict[str, Any]:
        membership, labels = split.membership.numpy(), split.y.numpy()
        if self.indices is not None:
            membership, labels = membership[self.indices], labels[self.indices]
        return {**group_metrics(self.correct, membership), **class_metrics(self.correct, labels), "loss": self.loss}


class EvalSampler(torch.utils.data.Sampler[EvalKey]):
    """Yields the (split name, batch indices) keys of the current pass."""

    def __init__(self) -> None:
        self.keys: list[EvalKey] = []

    def __iter__(self) -> Iterator[EvalKey]:
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class EvalData(torch.utils.data.Dataset):
    """A whole batch per key, from the split the key names."""

    def __init__(self, splits: dict[str, Split]) -> None:
        self.splits = splits

    def __len__(self) -> int:
        return sum(len(split) for split in self.splits.values())

    def __getitem__(self, key: EvalKey) -> dict[str, torch.Tensor]:
        name, idx = key
        return self.splits[name][idx]


def fixed_subset(n: int, size: int, seed: int) -> torch.Tensor | None:
    """`size` of `n` examples drawn once from `seed`, in index order; None when that is all of them."""
    if size < 0 or size >= n:
        return None
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class Evaluator:
    """Evaluation passes over named splits through one persistent worker pool.

    `stop_requested` is read between batches; `pause_key` names the passes for a test's pause
    (robustmtl/pause.py), which counts the evaluation batches of this process."""

    def __init__(self, splits: dict[str, Split], batch_size: int, device: torch.device,
                 autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext, num_workers: int = 0,
                 stop_requested: Callable[[], bool] | None = None, pause_key: str = "eval") -> None:
        self.splits = splits
        self.batch_size = batch_size
        self.device = device
        self.autocast = autocast
        self.stop_requested = stop_requested
        self.pause_key = pause_key
        self.batches = 0
        self.sampler = EvalSampler()
        # its own generator: by default a loader draws its workers' seed from the global RNG at every pass,
        # which would change the training's random draws (dropout, masking) with the worker count
        self.loader = torch.utils.data.DataLoader(
            EvalData(splits), sampler=self.sampler, batch_size=None, collate_fn=as_is, num_workers=num_workers,
            pin_memory=device.type == "cuda", persistent_workers=num_workers > 0, generator=torch.Generator())

    @torch.no_grad()
    def predict(self, model: Model, name: str, subset: torch.Tensor | None = None) -> Predictions:
        """Eval-mode pass over split `name` (or the examples `subset` of it), in the split's `eval_order`
        (text: by length, so little padding); results come back in example order, the device read only at the end."""
        split = self.splits[name]
        order = split.eval_order()
        if subset is not None:
            order = order[torch.isin(order, subset)]
        self.sampler.keys = [(name, idx) for idx in order.split(self.batch_size)]
        was_training = model.training
        model.eval()
        correct, probs, loss_sum = [], [], torch.zeros((), dtype=torch.float64, device=self.device)
        try:
            for batch in self.loader:
                batch = to_device(batch, self.device)
                with self.autocast():
                    logits = model(batch).float()
                loss_sum += torch.nn.functional.cross_entropy(logits, batch["y"], reduction="sum")
                correct.append(logits.argmax(dim=-1) == batch["y"])
                probs.append(torch.softmax(logits, dim=-1).half())  # kept on the device: one read at the end
                self.batches += 1
                if pause.wait_here(self.pause_key, self.batches, self.stop_requested):
                    raise EvalStopped(f"stopped during the evaluation of {name}")
        finally:
            model.train(was_training)
        ordered = torch.cat(correct).cpu().numpy() if correct else np.zeros(0, dtype=bool)
        to_example_order = np.argsort(order.numpy(), kind="stable")  # a subset is sorted
        scores = torch.cat(probs).cpu().numpy()[to_example_order] if probs else None
        return Predictions(correct=ordered[to_example_order], loss=float(loss_sum) / max(len(order), 1),
                           indices=None if subset is None else subset.numpy(), probs=scores)


def predict(model: Model, split: Split, batch_size: int, device: torch.device,
            autocast: Callable[[], AbstractContextManager[Any]] = contextlib.nullcontext) -> Predictions:
    """One pass over a whole split in this process (no workers): for callers outside a run's loop."""
    return Evaluator({split.name: split}, batch_size, device, autocast).predict(model, split.name)
