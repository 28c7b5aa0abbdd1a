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


def test_no_seed_is_all_nan_with_n_zero() -> None:
    for iv in (t_interval([]), t_interval([math.nan]), bootstrap_interval([], np.random.default_rng(0))):
        assert iv.n == 0 and all(math.isnan(v) for v in (iv.mean, iv.lower, iv.upper, iv.half_width))


def test_negative_bootstrap_seed_is_one_clear_line() -> None:
    with pytest.raises(UserError, match=r"^bootstrap seed must be >= 0, got -1$"):
        cell_rng(-1, "wb", "erm", "avg_acc")


SPREAD = [0.6131, 0.6647, 0.5821, 0.7049, 0.6436, 0.5913, 0.7342, 0.6878]  # irregular: resample means seldom tie


def test_bootstrap_bounds_are_the_tail_percentiles_of_the_resampled_means() -> None:
    iv = bootstrap_interval(SPREAD, np.random.default_rng(5))
    arr = np.array(SPREAD)
    means = arr[np.random.default_rng(5).integers(0, len(arr), size=(10_000, len(arr)))].mean(axis=1)
    assert (iv.lower, iv.upper) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert iv.n == len(SPREAD) and iv.mean == pytest.approx(arr.mean())


def test_interval_uses_the_given_generator_and_seed_zero_without_one() -> None:
    given = interval(SPREAD, "bootstrap", np.random.default_rng(7))
    assert given == bootstrap_interval(SPREAD, np.random.default_rng(7))
    assert interval(SPREAD, "bootstrap") == bootstrap_interval(SPREAD, np.random.default_rng(0))
    assert given != interval(SPREAD, "bootstrap")  # 8 distinct seeds: the generator shows in the bounds


def test_paired_difference_drops_a_seed_missing_on_either_side_and_takes_its_confidence() -> None:
    values, baseline = {0: math.nan, 1: 0.5, 2: 0.6, 3: 0.55}, {0: 0.4, 1: 0.3, 2: 0.2, 3: math.nan}
    diff = paired_difference(values, baseline, confidence=0.9)
    assert diff.seeds == (1, 2) and diff.n == 2
    expected = t_interval([0.2, 0.4], confidence=0.9)
    assert (diff.mean, diff.lower, diff.upper, diff.half_width) == pytest.approx(
        (expected.mean, expected.lower, expected.upper, expected.half_width))
    assert diff.half_width == pytest.approx(stats.t.ppf(0.95, 1) * np.std([0.2, 0.4], ddof=1) / math.sqrt(2))
