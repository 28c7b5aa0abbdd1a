"""Intervals over seeds, checked against scipy's own implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from robustmtl.aggregate.stats import (
    bootstrap_interval,
    cell_rng,
    check_ci,
    interval,
    paired_difference,
    t_interval,
)
from robustmtl.errors import UserError


@pytest.mark.parametrize(
    "values", [[0.7, 0.75], [0.61, 0.66, 0.58], [0.9, 0.91, 0.93, 0.88, 0.95, 0.9, 0.89]]
)
def test_t_interval_matches_scipy(values: list[float]) -> None:
    arr = np.array(values)
    n = len(arr)
    lo, hi = stats.t.interval(0.95, n - 1, loc=arr.mean(), scale=stats.sem(arr))
    iv = t_interval(arr)
    assert iv.n == n
    assert iv.mean == pytest.approx(arr.mean())
    assert iv.lower == pytest.approx(lo)
    assert iv.upper == pytest.approx(hi)
    assert iv.half_width == pytest.approx((hi - lo) / 2)


def test_t_interval_single_seed_has_no_interval() -> None:
    iv = t_interval([0.8])
    assert iv.mean == pytest.approx(0.8)
    assert iv.n == 1
    assert math.isnan(iv.lower) and math.isnan(iv.upper) and math.isnan(iv.half_width)


def test_t_interval_drops_nan_and_handles_empty() -> None:
    assert t_interval([0.5, math.nan, 0.7]).n == 2
    empty = t_interval([])
    assert empty.n == 0 and math.isnan(empty.mean)


def test_t_interval_zero_spread() -> None:
    iv = t_interval([0.5, 0.5, 0.5])
    assert (iv.lower, iv.upper, iv.half_width) == (0.5, 0.5, 0.0)


def test_bootstrap_is_deterministic_per_seed() -> None:
    values = list(
        np.random.default_rng(123).uniform(0.5, 0.8, size=12)
    )  # continuous: quantiles differ by seed
    a = bootstrap_interval(values, cell_rng(0, "wb", "erm", "worst_group_acc"))
    b = bootstrap_interval(values, cell_rng(0, "wb", "erm", "worst_group_acc"))
    c = bootstrap_interval(values, cell_rng(1, "wb", "erm", "worst_group_acc"))
    assert a == b
    assert (a.lower, a.upper) != (c.lower, c.upper)
    assert min(values) <= a.lower < a.mean < a.upper <= max(values)
    assert math.isnan(a.half_width)  # asymmetric: no single half-width


def test_bootstrap_is_a_percentile_bootstrap_of_the_mean() -> None:
    values = np.array([0.61, 0.66, 0.58, 0.7])
    iv = bootstrap_interval(values, np.random.default_rng(7), n_resamples=5000)
    idx = np.random.default_rng(7).integers(0, 4, size=(5000, 4))
    lo, hi = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    assert (iv.lower, iv.upper) == pytest.approx((lo, hi))


def test_bootstrap_single_seed_has_no_interval() -> None:
    iv = bootstrap_interval([0.4], np.random.default_rng(0))
    assert iv.mean == pytest.approx(0.4) and math.isnan(iv.lower)


def test_cell_rng_depends_on_key_and_rejects_negative_seed() -> None:
    assert cell_rng(0, "a").random() == cell_rng(0, "a").random()
    assert cell_rng(0, "a").random() != cell_rng(0, "b").random()
    with pytest.raises(UserError):
        cell_rng(-1, "a")


def test_interval_dispatch_and_unknown_type() -> None:
    assert interval([0.1, 0.2], "t") == t_interval([0.1, 0.2])
    assert math.isnan(interval([0.1, 0.2], "bootstrap").half_width)
    with pytest.raises(UserError, match="valid: t, bootstrap"):
        check_ci("normal")


def test_paired_difference_matches_ttest_rel_and_pairs_by_seed() -> None:
    method = {0: 0.70, 1: 0.74, 2: 0.69, 3: 0.99}  # seed 3 has no baseline: must be ignored
    base = {2: 0.60, 0: 0.65, 1: 0.66, 9: 0.1}  # different insertion order: pairing is by seed, not position
    d = paired_difference(method, base)
    a = np.array([0.70, 0.74, 0.69])
    b = np.array([0.65, 0.66, 0.60])
    ci = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert d.seeds == (0, 1, 2)
    assert d.n == 3
    assert d.mean == pytest.approx((a - b).mean())
    assert (d.lower, d.upper) == pytest.approx((ci.low, ci.high))


def test_paired_difference_single_pair_has_no_interval() -> None:
    d = paired_difference({0: 0.7}, {0: 0.6, 1: 0.5})
    assert d.n == 1 and d.mean == pytest.approx(0.1) and math.isnan(d.lower)
