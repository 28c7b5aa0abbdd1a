"""The pre-training stage: the model's own auxiliary objective alone (masked-feature reconstruction, MLM,
SimMIM), on the dataset's pre-training pool where it has one, else on the training split's inputs.

A helper run (`report = False`) that other runs require (`robustmtl/requirements.py`): labels and
groups are never read, and when it ends the loop saves its encoder weights (everything but the
classification head) for the runs that fine-tune from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustmtl.lazy import torch
from robustmtl.methods.base import Method, Terms

if TYPE_CHECKING:
    from robustmtl.models.base import Model


class Pretrain(Method):
    report = False
    trains_on_pool = True
    leaves_encoder = True

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        aux = model.aux_loss(batch).loss
        return Terms(total=aux, parts={"aux": aux})
