"""Seeded RNG streams shared by the loop and the methods (kept outside both so neither imports the other)."""

from __future__ import annotations

from robustmtl.lazy import torch


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """An RNG that depends only on (seed, epoch, stream): resuming mid-epoch rebuilds the same order.

    Streams: 0 = the epoch's visiting order, 1 = the auxiliary batches; epoch 0 is never a training
    epoch, so (seed, 0, k) serves once-per-run draws such as a balancing subset.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)
