"""Confidence intervals over seeds: Student-t, percentile bootstrap, and paired differences vs a baseline.

Pure numerics (no pandas) so the statistics can be checked against scipy in isolation.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from robustmtl.errors import UserError

CI_TYPES: dict[str, str] = {
    "t": "95% Student-t interval",
    "bootstrap": "95% percentile bootstrap interval",
}
CONFIDENCE = 0.95
N_RESAMPLES = 10_000


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with its interval; bounds are NaN when n < 2 (one seed says nothing about spread)."""

    mean: float
    lower: float
    upper: float
    half_width: float  # NaN for the bootstrap: its interval is not symmetric about the mean
    n: int


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (method - baseline) over the seeds both have, with a t-interval on the differences."""

    mean: float
    lower: float
    upper: float
    half_width: float
    n: int
    seeds: tuple[int, ...]


def check_ci(ci: str) -> str:
    """Reject an unknown interval type early with the valid names (a user typo, not a bug)."""
    if ci not in CI_TYPES:
        raise UserError(f"unknown interval type {ci!r}; valid: {', '.join(CI_TYPES)}")
    return ci


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """NaN seeds carry no information, so they are dropped (and show up as a smaller n)."""
    arr = np.asarray(values, dtype=float)
    return arr[~np.isnan(arr)]


def _without_interval(arr: np.ndarray) -> Interval | None:
    """No seed: nothing; one seed: its value and no interval (there is no spread to estimate)."""
    if arr.size == 0:
        return Interval(math.nan, math.nan, math.nan, math.nan, 0)
    if arr.size == 1:
        return Interval(float(arr[0]), math.nan, math.nan, math.nan, 1)
    return None


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """mean ± t_{(1+c)/2, n-1} * sd / sqrt(n), with the sample sd (ddof=1)."""
    arr = _clean(values)
    if (degenerate := _without_interval(arr)) is not None:
        return degenerate
    from scipy.special import stdtrit  # Student t quantile; a third of scipy.stats' import time

    n, mean = int(arr.size), float(arr.mean())
    sem = float(arr.std(ddof=1)) / math.sqrt(n)
    half = float(stdtrit(n - 1, (1 + confidence) / 2)) * sem
    return Interval(mean, mean - half, mean + half, half, n)


def cell_rng(seed: int, *key: str) -> np.random.Generator:
    """A generator per cell so a cell's bootstrap does not depend on which other cells exist."""
    if seed < 0:
        raise UserError(f"bootstrap seed must be >= 0, got {seed}")
    return np.random.default_rng([seed, zlib.crc32("\0".join(key).encode())])


def bootstrap_interval(
    values: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
    n_resamples: int = N_RESAMPLES,
    confidence: float = CONFIDENCE,
) -> Interval:
    """Percentile bootstrap of the mean: resample seeds with replacement, take the tail quantiles."""
    arr = _clean(values)
    if (degenerate := _without_interval(arr)) is not None:
        return degenerate
    n, mean = int(arr.size), float(arr.mean())
    means = arr[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    lower, upper = np.percentile(means, [tail, 100 - tail])
    return Interval(mean, float(lower), float(upper), math.nan, n)


def interval(
    values: Sequence[float] | np.ndarray, ci: str, rng: np.random.Generator | None = None
) -> Interval:
    """Dispatch on the interval type name used by the CLI (`t` or `bootstrap`)."""
    if check_ci(ci) == "bootstrap":
        return bootstrap_interval(values, rng if rng is not None else np.random.default_rng(0))
    return t_interval(values)


def paired_difference(
    values: Mapping[int, float], baseline: Mapping[int, float], confidence: float = CONFIDENCE
) -> PairedDifference:
    """Pair by seed (same data order, same init) so seed-to-seed noise cancels; unmatched seeds drop out."""
    seeds = tuple(
        s
        for s in sorted(set(values) & set(baseline))
        if not (math.isnan(values[s]) or math.isnan(baseline[s]))
    )
    diffs = np.array([values[s] - baseline[s] for s in seeds], dtype=float)
    iv = t_interval(diffs, confidence)
    return PairedDifference(iv.mean, iv.lower, iv.upper, iv.half_width, iv.n, seeds)
