"""Batch plans: an epoch's index order cut into batches, served through a DataLoader, moved to the device.

An epoch's plan (its end-task batches and, for multitask methods, the auxiliary task's own shuffle)
is a pure function of (seed, epoch), computed in the main process. The DataLoader only materialises
the planned batches (`split[index_tensor]`, which pads text per batch) in its worker processes, so
workers change the speed, never the batches or their order, and a resumed run restarts the plan at
its saved position. A batch's random augmentation (image crops) is drawn from what its key carries, (seed,
epoch, position in the epoch's order), never from a worker's RNG state.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from robustmtl.cpus import job_cpus
from robustmtl.data.base import Draw, Split

Batch = dict[str, torch.Tensor]
Key = tuple[torch.Tensor, torch.Tensor | None, Draw]


def chunks(order: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    return list(order.split(batch_size))


def to_device(batch: Batch, device: torch.device) -> Batch:
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@dataclass
class EpochPlan:
    """The end-task batches of one epoch and the auxiliary order that pairs an aux batch with each."""

    batches: list[torch.Tensor]
    aux_order: torch.Tensor | None
    batch_size: int
    seed: int = 0
    epoch: int = 0

    def key(self, i: int) -> Key:
        draw = (self.seed, self.epoch, i * self.batch_size)  # batch i holds positions i·B, i·B + 1, ...
        if self.aux_order is None:
            return self.batches[i], None, draw
        window = torch.arange(i * self.batch_size, (i + 1) * self.batch_size) % len(self.aux_order)
        return self.batches[i], self.aux_order[window], draw


class PlanSampler(torch.utils.data.Sampler[Key]):
    """Yields the keys of the current plan from `start` on; the loop swaps in each epoch's plan."""

    def __init__(self) -> None:
        self.plan = EpochPlan([], None, 1)
        self.start = 0

    def set(self, plan: EpochPlan, start: int) -> None:
        self.plan, self.start = plan, start

    def __iter__(self) -> Iterator[Key]:
        return (self.plan.key(i) for i in range(self.start, len(self.plan.batches)))

    def __len__(self) -> int:
        return len(self.plan.batches) - self.start


class PairData(torch.utils.data.Dataset):
    """A whole (end-task batch, auxiliary batch or None) per key: the split pads each batch itself. Only the
    end-task batch is a training view (`Split.training_batch`); the auxiliary batch is the split's plain one."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: Key) -> tuple[Batch, Batch | None]:
        end, aux, draw = key
        return self.split.training_batch(end, draw), None if aux is None else self.split[aux]


def as_is(item: Any) -> Any:
    """Collate function: items already are whole batches."""
    return item


# Decoding full-size JPEGs (the per-batch path, image_cache = false) takes a worker several milliseconds
# an image, so a GPU stepping a few hundred images a second needs a dozen or so; each worker is its own
# interpreter with torch loaded and prefetched batches (hundreds of MB), so past 16 the memory grows and
# the step gains nothing. Jobs are sized by `cpus` in the grid's [executor], not by this cap.
MAX_AUTO_WORKERS = 16


def resolve_workers(requested: int, device: torch.device, cpus: int | None = None) -> int:
    """`-1` (auto): on CUDA, up to MAX_AUTO_WORKERS from the CPUs the job was given (`cpus.job_cpus`), one
    kept for the step itself (a 1-CPU SLURM task gets none); on a CPU none, since workers would take cores
    from the step."""
    if requested >= 0:
        return requested
    if device.type != "cuda":
        return 0
    cpus = cpus if cpus is not None else job_cpus()
    return max(0, min(MAX_AUTO_WORKERS, cpus - 1))


def make_loader(split: Split, sampler: PlanSampler, num_workers: int, pin_memory: bool) -> torch.utils.data.DataLoader:
    """Persistent workers over a fixed dataset; the per-epoch plan travels in the keys, not in the dataset.

    The loader gets its own generator: by default it draws its workers' base seed from the global
    RNG at every `iter()`, which would make a resumed run's random draws differ from an uninterrupted one.
    """
    return torch.utils.data.DataLoader(
        PairData(split), sampler=sampler, batch_size=None, collate_fn=as_is, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=num_workers > 0, generator=torch.Generator())
