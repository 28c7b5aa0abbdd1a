"""ERM: the average cross-entropy over the batch."""

from __future__ import annotations

import torch

from robustmtl.methods.base import Method, Terms, cross_entropy
from robustmtl.models.base import Model


class ERM(Method):
    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        end = cross_entropy(model(batch), batch["y"])
        return Terms(total=end, parts={"end": end})
