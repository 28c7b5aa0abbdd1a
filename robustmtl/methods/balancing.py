"""Simple data balancing (Idrissi et al., CLeaR 2022): subsample or reweight by group or by class.

Four methods, all with the plain ERM loss; they differ only in which training examples each epoch
visits (`epoch_indices`). The balancing key is the training group (`subg`, `rwg`: these read the
training group labels, `uses_train_groups = True`) or the class label (`suby`, `rwy`: labels only).

`subg` / `suby`: every group (class) with training examples is subsampled, without replacement, to
the size of the smallest one — once per run, with a generator seeded from the run's seed, so every
epoch (and every resumption) uses the same subset of n_keys × min-count examples. Each epoch visits
that subset once, in an order shuffled by the epoch's generator.

`rwg` / `rwy`: every epoch draws len(train) indices with replacement, an example's probability
∝ 1 / (training count of its group (class)), so each group (class) is drawn equally often in
expectation — the reference's WeightedRandomSampler with num_samples = len(train).
"""

from __future__ import annotations

from typing import ClassVar

from robustmtl.lazy import torch
from robustmtl.methods.base import MethodContext
from robustmtl.methods.erm import ERM
from robustmtl.rng import epoch_generator

SUBSET_STREAM = 2  # epoch_generator(seed, 0, 2): the loop's streams are epochs ≥ 1 and streams 0/1, never this


def inverse_frequency_weights(keys: torch.Tensor) -> torch.Tensor:
    """Per-example sampling weight ∝ 1 / (count of the example's key): every key equally likely."""
    counts = torch.bincount(keys)
    return 1.0 / counts[keys].double()


def balanced_subset(keys: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Sorted indices: min-count examples drawn without replacement from every key that occurs."""
    counts = torch.bincount(keys)
    size = int(counts[counts > 0].min())
    picked = []
    for key in counts.nonzero().flatten().tolist():
        members = (keys == key).nonzero().flatten()
        picked.append(members[torch.randperm(len(members), generator=gen)[:size]])
    return torch.cat(picked).sort().values


class _Balancing(ERM):
    by: ClassVar[str]  # "g" (groups) or "y" (classes)

    def keys(self) -> torch.Tensor:
        keys = self.ctx.train.g if self.by == "g" else self.ctx.train.y
        if (keys < 0).any():
            raise ValueError(f"{type(self).__name__} needs training {'groups' if self.by == 'g' else 'labels'}")
        return keys


class _Subsample(_Balancing):
    def __init__(self, params: object, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.subset = balanced_subset(self.keys(), epoch_generator(ctx.config.seed, 0, SUBSET_STREAM))

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return self.subset[torch.randperm(len(self.subset), generator=gen)]


class _Reweight(_Balancing):
    def __init__(self, params: object, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        self.weights = inverse_frequency_weights(self.keys())

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, len(self.weights), replacement=True, generator=gen)


class SubG(_Subsample):
    by = "g"
    uses_train_groups = True


class SubY(_Subsample):
    by = "y"


class RwG(_Reweight):
    by = "g"
    uses_train_groups = True


class RwY(_Reweight):
    by = "y"
