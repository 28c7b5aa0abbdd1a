"""A small MLP for vector inputs, with masked-feature reconstruction as its pre-training objective.

The representation `h` ends in a LayerNorm, like a transformer's CLS embedding, so that the L1
penalty acts on the same kind of activation as in the paper (an L1 on post-ReLU units would simply
switch them off). For a capacity limit the penalty can impose, `h_norm = false` leaves `h` the last
linear layer's output (the LayerNorm renormalises every example, so no unit can go quiet under it),
and `h_dim` sets the width of `h` apart from the hidden layers'.
"""

from __future__ import annotations

import torch
from torch import nn

from robustmtl.data.base import DataInfo
from robustmtl.models.base import AuxOutput, Encoded, Model
from robustmtl.models.params import MLPParams


class MLP(Model):
    def __init__(self, p: MLPParams, info: DataInfo) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = info.input_dim
        for _ in range(p.depth - 1):
            layers += [nn.Linear(width, p.hidden_dim), nn.ReLU()]
            width = p.hidden_dim
        h_dim = p.h_dim or p.hidden_dim
        layers.append(nn.Linear(width, h_dim))
        if p.h_norm:
            layers.append(nn.LayerNorm(h_dim))
        self.encoder = nn.Sequential(*layers)
        self.mask_value = nn.Parameter(torch.zeros(info.input_dim))
        self.decoder = nn.Linear(h_dim, info.input_dim)
        self.head = nn.Sequential(nn.Dropout(p.dropout), nn.Linear(h_dim, info.n_classes))
        self.mask_ratio = p.feature_mask_ratio

    @classmethod
    def build(cls, p: MLPParams, info: DataInfo) -> MLP:
        return cls(p, info)

    def _encode(self, x: torch.Tensor) -> Encoded:
        h = self.encoder(x)
        return Encoded(h=h, tokens=h[:, None, :])

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        return self._encode(batch["x"])

    def encoder_module(self) -> nn.Module:
        return self.encoder

    def _corrupt(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Hide a random subset of features behind a learned value; returns (inputs, hidden mask)."""
        mask = torch.rand(x.shape, device=x.device) < self.mask_ratio
        return torch.where(mask, self.mask_value.expand_as(x), x), mask

    def _reconstruction(self, encoded: Encoded, x: torch.Tensor, mask: torch.Tensor) -> AuxOutput:
        error = (self.decoder(encoded.h) - x).pow(2)
        return AuxOutput(loss=(error * mask).sum() / mask.sum().clamp(min=1), encoded=encoded)

    def aux_loss(self, batch: dict[str, torch.Tensor]) -> AuxOutput:
        """Reconstruct the hidden features only."""
        corrupted, mask = self._corrupt(batch["x"])
        return self._reconstruction(self._encode(corrupted), batch["x"], mask)

    def encode_pair(self, batch: dict[str, torch.Tensor],
                    aux_batch: dict[str, torch.Tensor]) -> tuple[Encoded, AuxOutput]:
        """One encoder pass over [end inputs; corrupted aux inputs]."""
        corrupted, mask = self._corrupt(aux_batch["x"])
        both = self._encode(torch.cat([batch["x"], corrupted]))
        n = len(batch["x"])
        end, aux = Encoded(h=both.h[:n], tokens=both.tokens[:n]), Encoded(h=both.h[n:], tokens=both.tokens[n:])
        return end, self._reconstruction(aux, aux_batch["x"], mask)
