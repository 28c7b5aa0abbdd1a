"""Evaluation batches text by length and still returns every example's result in its own place."""

from __future__ import annotations

import torch
from torch import nn

from robustmtl.data.base import Split
from robustmtl.data.text import TokenSplit
from robustmtl.train.evaluate import predict


class LengthModel(nn.Module):
    """Predicts class 1 for an example with an even number of real tokens; records the widths it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.widths: list[int] = []

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        self.widths.append(batch["input_ids"].shape[1])
        even = (batch["attention_mask"].sum(dim=1) % 2 == 0).float()
        return torch.stack([1 - even, even], dim=1) * 4.0


def token_split(lengths: list[int]) -> TokenSplit:
    n = len(lengths)
    y = torch.tensor([i % 2 for i in range(n)])
    raw = Split("val", y, y, n_groups=2)
    offsets = torch.zeros(n + 1, dtype=torch.long)
    offsets[1:] = torch.tensor(lengths).cumsum(0)
    return TokenSplit(raw, torch.arange(int(offsets[-1]), dtype=torch.int32) % 50 + 1, offsets, None, pad_id=0)


def test_length_sorted_batches_return_results_in_example_order():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 200, (103,), generator=gen).tolist()
    split = token_split(lengths)
    model = LengthModel()
    predictions = predict(model, split, batch_size=10, device=torch.device("cpu"))
    expected = [(length % 2 == 0) == (i % 2 == 1) for i, length in enumerate(lengths)]
    assert predictions.correct.tolist() == expected
    plain_widths = [max(lengths[i:i + 10]) for i in range(0, len(lengths), 10)]
    assert sum(model.widths) < 0.7 * sum(plain_widths)  # sorted: each batch pads to about its own length
    logits = torch.tensor([[4.0, 0.0] if length % 2 else [0.0, 4.0] for length in lengths])
    loss = nn.functional.cross_entropy(logits, split.y).item()
    assert abs(predictions.loss - loss) < 1e-6
