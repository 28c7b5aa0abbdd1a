"""Batch plans: which training indices each step of an epoch uses, reproducible from (seed, epoch)."""

from __future__ import annotations

import torch


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """An RNG that depends only on (seed, epoch, stream): resuming mid-epoch rebuilds the same order."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + stream)


def chunks(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(order.split(batch_size))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
