"""The contract between models and methods.

A model encodes a batch into `h` (the shared pre-prediction representation, the CLS embedding for
transformers) and `tokens` (the whole last hidden state), classifies `h`, and computes its own
pre-training objective on a batch's inputs (MLM, masked-image or masked-feature modelling). Methods
only ever call these three things, so every method works with every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from robustmtl.data.base import Splits


@dataclass
class Encoded:
    h: torch.Tensor
    tokens: torch.Tensor


@dataclass
class AuxOutput:
    loss: torch.Tensor
    encoded: Encoded


class Model(nn.Module):
    head: nn.Module

    def prepare(self, splits: Splits, cache_dir: Path | None) -> Splits:
        """Turn a dataset's raw splits into model inputs (tokenise text, resize images); cached when slow."""
        return splits

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        raise NotImplementedError

    def aux_loss(self, batch: dict[str, torch.Tensor]) -> AuxOutput:
        """The pre-training objective computed on this batch's own inputs."""
        raise NotImplementedError

    def classify(self, encoded: Encoded) -> torch.Tensor:
        return self.head(encoded.h)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classify(self.encode(batch))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups with no decay on biases and normalisation weights (the reference inverts these)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
