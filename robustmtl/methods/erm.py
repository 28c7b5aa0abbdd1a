"""ERM: the average cross-entropy over the batch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustmtl.lazy import torch
from robustmtl.methods.base import Method, Terms, cross_entropy

if TYPE_CHECKING:
    from robustmtl.models.base import Model


class ERM(Method):
    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        end = cross_entropy(model(batch), batch["y"])
        return Terms(total=end, parts={"end": end})
