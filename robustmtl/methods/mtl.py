"""Multitask learning with the pre-training objective, and the L1 penalty on the shared representation.

`mtl`:    L_end + alpha_aux * L_aux
`mtl_l1`: L_end + alpha_aux * L_aux + alpha_reg * L1        (the paper's method)
`l1`:     L_end + alpha_reg * L1                            (ablation: no auxiliary task)

L_aux is the model's own pre-training objective (MLM / masked-image / masked-feature modelling)
computed on an auxiliary batch drawn from an independently shuffled pass over the training split,
as the reference code does; both batches go through the encoder in one forward (`encode_pair`).
The L1 term is computed on the representations the step already has:
`reg_target="cls"` (the paper) is the batch mean of ||h||_1 over the CLS embedding; `"tokens"` (the
official code) is the mean absolute activation of the whole last hidden state. With an auxiliary
batch, the term is summed over the end-task and auxiliary batches, like the reference.
"""

from __future__ import annotations

import torch

from robustmtl.methods.base import Method, Terms, cross_entropy
from robustmtl.models.base import Encoded, Model


def l1_penalty(encoded: Encoded, target: str) -> torch.Tensor:
    if target == "cls":
        return encoded.h.float().abs().sum(dim=-1).mean()
    return encoded.tokens.float().abs().mean()


class _Multitask(Method):
    """Shared loss of the three variants; each subclass only fixes which terms exist."""

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
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
        if hasattr(self.params, "alpha_reg"):
            reg = l1_penalty(encoded, self.params.reg_target)
            if aux is not None:
                reg = reg + l1_penalty(aux.encoded, self.params.reg_target)
            parts["reg"] = reg
            total = total + self.params.alpha_reg * reg
        return Terms(total=total, parts=parts)


class MTL(_Multitask):
    """L_end + alpha_aux · L_aux."""

    uses_aux_batch = True


class MTLL1(_Multitask):
    """L_end + alpha_aux · L_aux + alpha_reg · L1: the paper's method."""

    uses_aux_batch = True


class L1(_Multitask):
    """L_end + alpha_reg · L1: the ablation without the auxiliary task."""
