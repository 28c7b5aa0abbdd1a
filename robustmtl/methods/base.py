"""The method plug-in: what a method may change about training, and nothing else.

A method decides (1) which training examples each epoch visits, in which order and how often
(`epoch_indices`: subsampling, reweighting, JTT's upsampling) and (2) the loss of one step from the
model's outputs (`loss`). Its parameter block is a frozen dataclass in its own module (which grids read
without importing torch: `lazy.py`); the runs it needs first (JTT's stage 1) are named by its line in
`registry.py`. The loop owns everything else — optimisation, evaluation, checkpoints, records — so no
method copies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from robustmtl.config import RunConfig
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.lazy import torch

if TYPE_CHECKING:
    from robustmtl.data.base import DataInfo, Split
    from robustmtl.models.base import Model


@dataclass
class MethodContext:
    config: RunConfig
    info: DataInfo
    train: Split
    run_dir: RunDir
    required: dict[str, RunDir]
    splits: dict[str, Split] | None = None  # every split by name, for a method that reads evaluation splits (DFR)


@dataclass
class Terms:
    """The loss of one step and its parts (logged separately: end, aux, reg, ...)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class Method:
    uses_train_groups: ClassVar[bool] = False
    uses_aux_batch: ClassVar[bool] = False
    report: ClassVar[bool] = True
    trains_on_pool: ClassVar[bool] = False  # train on the dataset's pre-training pool (Splits.pretrain) if any
    # the loop saves the final encoder weights (encoder.pt) of every run of this method (pre-training hands
    # them to fine-tuning); other runs save them only when a run that needs them says so (RunOptions.keep_encoder)
    leaves_encoder: ClassVar[bool] = False
    trains: ClassVar[bool] = True  # False: no network training, the loop goes straight to `after_training` (DFR)
    # the loop also loads the final head of the runs its registry entry `reads_encoders` from (AFR starts there)
    reads_head: ClassVar[bool] = False

    def __init__(self, params: Any, ctx: MethodContext) -> None:
        self.params = params
        self.ctx = ctx

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.randperm(len(self.ctx.train), generator=gen)

    def schedule_steps(self, steps_per_epoch: int, epochs: int) -> int:
        """The learning-rate schedule's horizon in optimiser steps, given this run's steps per epoch and the epochs
        its schedule spans (`schedule_epochs`, else the epochs it trains)."""
        return steps_per_epoch * epochs

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        raise NotImplementedError

    def after_training(self, model: Model, predict: Any) -> dict[str, Any]:
        """Hook for methods that leave an artifact (JTT stage 1's error set); returns summary fields."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def refuse_empty_groups(cfg: RunConfig, train: Split, info: DataInfo) -> None:
    """A run of a method that `uses_train_groups`, on a training split with an empty group, would train as if
    the group did not exist: refused before training, as `data check` reports it. (The methods themselves
    still handle an empty group, which their unit tests build.)"""
    from robustmtl.data.base import empty_train_groups, no_examples_problem

    if empty := empty_train_groups(train, info):
        raise UserError(f"method {cfg.method!r} on {cfg.dataset}: {no_examples_problem(empty, 'train')} "
                        f"(`robustmtl data check {cfg.dataset}` lists the groups per split)")


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cross_entropy(logits.float(), y)
