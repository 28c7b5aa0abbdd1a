"""Multitask learning with the pre-training objective, and the L1 penalty on the shared representation.

`mtl`:    L_end + alpha_aux * L_aux
`mtl_l1`: L_end + alpha_aux * L_aux + alpha_reg * L1        (the paper's method)
`l1`:     L_end + alpha_reg * L1                            (ablation: no auxiliary task)

L_aux is the model's own pre-training objective (MLM / masked-image / masked-feature modelling)
computed on an auxiliary batch drawn from an independently shuffled pass over the training split,
as the reference code does; both batches go through the encoder in one forward (`encode_pair`).
The L1 term is computed on the representations the step already has: `"tokens"` (the default) is the
mean absolute activation of the whole last hidden state, averaged over this batch's own elements: on the
end-task loss's scale at any width, the scale the paper's α grid was searched at; `reg_target="cls"`
(the paper's text) is the batch mean of ||h||_1 over `h` (the CLS embedding, or the pooled one a model's
settings choose), a sum that grows with the width; `"tokens_ref"` is the token term exactly as the
official code computes it: every batch padded to the model's maximum length (text; images have one size
already) and the sum of |activation| over all positions, padding included, divided by the element count
of the run's first end-task batch, frozen (a checkpoint keeps it). With an auxiliary batch, the term is
summed over the end-task and auxiliary batches, like the reference.

"tokens" and "tokens_ref" differ on text: robustmtl pads each batch only to its own longest example,
so "tokens" averages over the real tokens and a little padding, while on short texts the reference's
average is mostly over padding outputs: the two terms differ in value and in the direction of their
encoder gradients, so an alpha_reg tuned for one is not the same penalty under the other.
"tokens_ref" pays for the padded positions' compute too. On a last, smaller batch its frozen
normaliser also weighs the term less than a per-batch mean would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustmtl.lazy import torch
from robustmtl.methods.base import Method, MethodContext, Terms, cross_entropy
from robustmtl.params import at_least, one_of

if TYPE_CHECKING:
    from robustmtl.models.base import Encoded, Model

REFERENCE_TOKENS = "tokens_ref"


@dataclass(frozen=True)
class MTLParams:
    alpha_aux: float = field(default=1.0, metadata=at_least(0.0))


@dataclass(frozen=True)
class L1Params:
    alpha_reg: float = field(default=math.exp(-1), metadata=at_least(0.0))
    reg_target: str = field(default="tokens", metadata=one_of("cls", "tokens", REFERENCE_TOKENS))


@dataclass(frozen=True)
class MTLL1Params(L1Params, MTLParams):
    """Both terms; each key keeps its one definition above."""


def l1_penalty(encoded: Encoded, target: str, normaliser: int | None = None) -> torch.Tensor:
    """The L1 term of one batch; `tokens_ref` divides the sum by the frozen `normaliser` instead of its own size."""
    if target == "cls":
        return encoded.h.float().abs().sum(dim=-1).mean()
    if target == REFERENCE_TOKENS:
        if normaliser is None:
            raise ValueError("tokens_ref needs the frozen normaliser")
        return encoded.tokens.float().abs().sum() / normaliser
    return encoded.tokens.float().abs().mean()


class _Multitask(Method):
    """Shared loss of the three variants; each subclass only fixes which terms exist: the auxiliary task's
    with `uses_aux_batch`, the L1 penalty's with `l1_term` (its block then holds alpha_reg and reg_target)."""

    l1_term = False

    def __init__(self, params: Any, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.reference_l1 = self.l1_term and params.reg_target == REFERENCE_TOKENS
        self.l1_normaliser: int | None = None  # tokens_ref: element count of the first end-task batch

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        if self.reference_l1:
            batch = model.at_full_length(batch)
            aux_batch = model.at_full_length(aux_batch) if aux_batch is not None else None
        aux = None
        if aux_batch is None:
            encoded = model.encode(batch)
        else:
            encoded, aux = model.encode_pair(batch, aux_batch)  # one encoder forward for both tasks
        end = cross_entropy(model.classify(encoded), batch["y"])
        parts = {"end": end}
        total = end
        if aux is not None:
            parts["aux"] = aux.loss
            total = total + self.params.alpha_aux * aux.loss
        if self.l1_term:
            if self.reference_l1 and self.l1_normaliser is None:
                self.l1_normaliser = encoded.tokens.numel()
            target, normaliser = self.params.reg_target, self.l1_normaliser
            reg = l1_penalty(encoded, target, normaliser)
            if aux is not None:
                reg = reg + l1_penalty(aux.encoded, target, normaliser)
            parts["reg"] = reg
            total = total + self.params.alpha_reg * reg
        return Terms(total=total, parts=parts)

    def state_dict(self) -> dict[str, Any]:
        return {"l1_normaliser": self.l1_normaliser} if self.l1_normaliser is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.l1_normaliser = state.get("l1_normaliser", self.l1_normaliser)


class MTL(_Multitask):
    """L_end + alpha_aux · L_aux."""

    uses_aux_batch = True


class MTLL1(_Multitask):
    """L_end + alpha_aux · L_aux + alpha_reg · L1: the paper's method."""

    uses_aux_batch = True
    l1_term = True


class L1(_Multitask):
    """L_end + alpha_reg · L1: the ablation without the auxiliary task."""

    l1_term = True
