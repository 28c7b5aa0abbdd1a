"""Batch plans: an epoch's index order cut into batches, and batches moved to the device."""

from __future__ import annotations

import torch


def chunks(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(order.split(batch_size))


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
