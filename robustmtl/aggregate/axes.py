"""Axis rules every figure shares, so no figure magnifies seed noise into a dramatic-looking difference.

Accuracy axes (and the sweep heatmap's colour scale) span at least MIN_ACCURACY_SPAN points around the data and
stay inside [0, 100] (every figure draws accuracies in percent, aggregate/units.py); interval bands are clipped to
the same range. Categorical
x values (a condition's values) are ticked at the values themselves, printed as the tables print them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from robustmtl.aggregate.units import percent

FULL = percent(1.0)  # the top of every accuracy axis
MIN_ACCURACY_SPAN = 5.0  # points (percent): below it, one seed's noise would fill the axis
MARGIN = 0.05  # of the span, so points at the ends are not cut by the frame


def accuracy_range(values: Iterable[float]) -> tuple[float, float]:
    """The data range (percent) widened to at least MIN_ACCURACY_SPAN points, centred on the data, then moved
    inside [0, 100] keeping the span."""
    scale = FULL
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if finite.size == 0:
        return 0.0, scale
    low, high = float(finite.min()), float(finite.max())
    span = max(high - low, MIN_ACCURACY_SPAN)
    centre = (low + high) / 2
    low, high = centre - span / 2, centre + span / 2
    if low < 0:
        low, high = 0.0, high - low
    if high > scale:
        low, high = max(0.0, low - (high - scale)), scale
    return low, high


def set_accuracy_limits(ax: Any, axis: str, values: Iterable[float]) -> None:
    """Limit `ax`'s x or y axis to accuracy_range(values) plus a small margin, never outside [0, 100]."""
    low, high = accuracy_range(values)
    pad = MARGIN * (high - low)
    limits = (max(0.0, low - pad), min(FULL, high + pad))
    (ax.set_xlim if axis == "x" else ax.set_ylim)(*limits)


def set_min_span(ax: Any, values: Iterable[float], span: float = MIN_ACCURACY_SPAN) -> None:
    """A y axis of differences (points) spans at least `span` around its data; no [0, 100] clip applies."""
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return
    low, high = min(finite), max(finite)
    if high - low < span:
        centre = (low + high) / 2
        ax.set_ylim(centre - span / 2, centre + span / 2)


def clip_accuracy(values: Sequence[float] | Any) -> np.ndarray:
    """An interval's ends held inside [0, 100]: a t interval over seeds can run past a bound accuracy cannot."""
    return np.clip(np.asarray(values, dtype=float), 0.0, FULL)


def tick_at_values(ax: Any, values: Sequence[Any], text: Any) -> None:
    """x ticks at exactly `values`, labelled `text(value)` (the tables' printing), on a linear or log axis;
    a log axis's minor ticks are dropped, since they would label values no run has."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    labels = {float(v): text(v) for v in values}
    positions = sorted(labels)
    ax.xaxis.set_major_locator(FixedLocator(positions))
    ax.xaxis.set_major_formatter(FixedFormatter([labels[p] for p in positions]))
    ax.xaxis.set_minor_locator(NullLocator())
