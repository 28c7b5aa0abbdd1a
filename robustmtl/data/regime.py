"""The synthetic task described by what the paper's mechanism depends on (torch-free).

Each block of x = [core | spurious | noise] is summarised by two numbers:

- its **leading-direction variance**: the largest variance of any unit direction within the block. For
  the core block, x_core = s_y·core_mean·1 + core_std·ε with s_y = ±1 equally often, the mean direction
  1/√d carries  d·core_mean² + core_std²  (every other direction core_std²); likewise the spurious block
  d·spurious_mean² + spurious_std²; a noise dimension noise_std². A reconstruction objective under a
  capacity limit keeps the directions of largest variance first, so MTL can favour the core features
  only where the core block's leading variance is at least the spurious block's;
- its **separability**: the Bayes accuracy of the block's own variable (y for core, a for spurious)
  from that block alone, Φ(√d·mean/std), and for the spurious block also the accuracy of predicting
  y by its attribute in training, p·Φ + (1-p)·(1-Φ): how tempting the shortcut is for the classifier.

`spurious_variance_ratio` > 0 picks a regime by the variance ratio directly: the spurious block's mean
and std are scaled together by one factor (its separability stays) until its leading variance is that
multiple of the core block's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from robustmtl.data.params import SyntheticParams


def normal_cdf(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def leading_variance(dim: int, mean: float, std: float) -> float:
    return dim * mean**2 + std**2


def spurious_scale(p: SyntheticParams) -> float:
    """The factor applied to spurious_mean and spurious_std (1 unless spurious_variance_ratio is set)."""
    if p.spurious_variance_ratio <= 0:
        return 1.0
    target = p.spurious_variance_ratio * leading_variance(p.core_dim, p.core_mean, p.core_std)
    return math.sqrt(target / leading_variance(p.spurious_dim, p.spurious_mean, p.spurious_std))


def spurious_mean_std(p: SyntheticParams) -> tuple[float, float]:
    """The spurious block's mean offset and std as the generator uses them."""
    k = spurious_scale(p)
    return p.spurious_mean * k, p.spurious_std * k


@dataclass(frozen=True)
class BlockSummary:
    block: str
    dims: int
    mean: float
    std: float
    leading_variance: float
    separability: float  # Bayes accuracy of the block's own variable from the block alone (0.5: none)
    label_accuracy_train: float  # accuracy of predicting y from this block alone, in training


def describe(p: SyntheticParams) -> list[BlockSummary]:
    """One summary per block (core, spurious, noise) of the configured task."""
    s_mean, s_std = spurious_mean_std(p)
    core_sep = normal_cdf(math.sqrt(p.core_dim) * p.core_mean / p.core_std)
    spur_sep = normal_cdf(math.sqrt(p.spurious_dim) * s_mean / s_std)
    agree = max(p.p_train, 1.0 - p.p_train)
    blocks = [
        BlockSummary("core", p.core_dim, p.core_mean, p.core_std,
                     leading_variance(p.core_dim, p.core_mean, p.core_std), core_sep, core_sep),
        BlockSummary("spurious", p.spurious_dim, s_mean, s_std, leading_variance(p.spurious_dim, s_mean, s_std),
                     spur_sep, agree * spur_sep + (1.0 - agree) * (1.0 - spur_sep)),
    ]
    if p.noise_dim:
        blocks.append(BlockSummary("noise", p.noise_dim, 0.0, p.noise_std, p.noise_std**2, 0.5, 0.5))
    return blocks


def variance_ratio(p: SyntheticParams) -> float:
    """Spurious over core leading-direction variance: ≤ 1 is where the paper expects MTL to help."""
    s_mean, s_std = spurious_mean_std(p)
    return leading_variance(p.spurious_dim, s_mean, s_std) / leading_variance(p.core_dim, p.core_mean, p.core_std)


def block_slices(p: SyntheticParams) -> dict[str, tuple[int, int]]:
    """Column ranges of the blocks in x, for measurements that attribute reliance to a block."""
    core_end = p.core_dim
    spur_end = core_end + p.spurious_dim
    slices = {"core": (0, core_end), "spurious": (core_end, spur_end)}
    if p.noise_dim:
        slices["noise"] = (spur_end, spur_end + p.noise_dim)
    return slices
