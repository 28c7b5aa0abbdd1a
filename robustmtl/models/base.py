"""The contract between models and methods.

A model encodes a batch into `h` (the shared pre-prediction representation, the CLS embedding for
transformers) and `tokens` (the whole last hidden state), classifies `h`, and computes its own
pre-training objective on a batch's inputs (MLM, masked-image or masked-feature modelling). Methods
only ever call these three things, so every method works with every model.

`encode_pair` encodes an end-task batch and computes the auxiliary objective on another batch in
one encoder forward where the model can (one large batch keeps a GPU busier than two half-size
ones); the default makes the two calls.
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

    def encode_pair(self, batch: dict[str, torch.Tensor],
                    aux_batch: dict[str, torch.Tensor]) -> tuple[Encoded, AuxOutput]:
        """`(encode(batch), aux_loss(aux_batch))`, in one forward where the model can batch them together."""
        return self.encode(batch), self.aux_loss(aux_batch)

    def at_full_length(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch at the width the reference code feeds every batch (text: padded to the maximum length);
        models whose inputs always have one size return it unchanged."""
        return batch

    def encoder_module(self) -> nn.Module:
        """The module that runs every token (what `compile_encoder` compiles and FLOP counts read)."""
        raise NotImplementedError

    def compile_encoder(self) -> None:
        """torch.compile the encoder's forward in place, so parameter names (and checkpoints) stay the same.

        Not `nn.Module.compile()`: it wraps torch's own `_call_impl`, a frame dynamo skips, so nothing compiles.
        """
        encoder = self.encoder_module()
        encoder.forward = torch.compile(encoder.forward)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """Every weight but the classification head's: what a pre-training run hands to its fine-tuning runs."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("head.")}

    def load_encoder_state(self, state: dict[str, torch.Tensor]) -> None:
        """Start from pre-trained weights, keeping this run's freshly initialised classification head."""
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = [k for k in missing if not k.startswith("head.")] + list(unexpected)
        if wrong:
            raise ValueError(f"pre-trained weights do not fit this model: {', '.join(wrong[:5])}")

    def classify(self, encoded: Encoded) -> torch.Tensor:
        return self.head(encoded.h)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.classify(self.encode(batch))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups with no decay on biases and normalisation weights (the reference inverts these)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
