"""The one unit of every quantity a table, CSV or figure prints, and the one conversion into it.

Records and the Summary hold accuracies as fractions (what the training loop measures); everything a user
reads (terminal, Markdown, LaTeX, CSV, figures) is in the units below, converted by `percent` only. A CSV
column that holds a quantity with a unit ends in that unit's suffix (`mean_pct`, `mean_diff_pp`,
`wall_h_per_run`), so a script never has to guess. docs/results.md#units states the same table for readers
(a test keeps the two in step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Unit:
    """`symbol` follows numbers and heads columns on screen; `suffix` ends a CSV column's name."""

    quantity: str
    name: str
    symbol: str
    suffix: str


ACCURACY = Unit("accuracy (average, worst-group, balanced, weighted average, selection score, probe accuracy)",
                "percent", "%", "pct")
AUROC = Unit("area under the ROC curve (worst-group AUROC)", "percent", "%", "pct")
CALIBRATION = Unit("expected calibration error (worst-group ECE)", "percent", "%", "pct")
POINTS = Unit("difference of accuracies, AUROCs or ECEs, interval half-width", "percentage points", "pp", "pp")
WALL_TIME = Unit("wall time", "hours", "h", "h")
GPU_TIME = Unit("GPU time (wall time × GPUs)", "GPU-hours", "GPU-h", "gpu_h")
MEMORY = Unit("peak GPU memory", "gibibytes", "GiB", "gib")
SHARE = Unit("reliance share of the margin", "fraction of 1", "", "frac")
UNITS = (ACCURACY, AUROC, CALIBRATION, POINTS, WALL_TIME, GPU_TIME, MEMORY, SHARE)

SECONDS_PER_HOUR = 3600


def percent(fraction: T) -> T:
    """A fraction (a float, an array or a Series) in percent: accuracies, AUROCs and ECEs, and their differences
    in points."""
    return 100 * fraction  # type: ignore[operator,return-value]


def hours(seconds: float) -> float:
    return seconds / SECONDS_PER_HOUR


def column(name: str, unit: Unit) -> str:
    """A CSV column's name carrying its unit: column("mean", ACCURACY) == "mean_pct"."""
    return f"{name}_{unit.suffix}"


def unit_of(field: str) -> Unit | None:
    """The unit a record's field is printed in: accuracies (`avg_acc`, `probe_a_acc`, ...) in percent, reliance
    shares as fractions; None for a count (active units)."""
    if field.endswith("_acc"):
        return ACCURACY
    if field.endswith("_auroc"):
        return AUROC
    if field.endswith("_ece"):
        return CALIBRATION
    if field.startswith("reliance_"):
        return SHARE
    return None


def displayed(field: str, values: T) -> T:
    """A record field's values (a float, an array or a Series) in the unit unit_of(field) gives them."""
    return percent(values) if unit_of(field) in (ACCURACY, AUROC, CALIBRATION) else values


SPREADS = ("hw", "diff", "diff_lo", "diff_hi")  # half-widths and differences: accuracies in points


def stat_column(field: str, stat: str) -> str:
    """The CSV column of a statistic of a record field: stat_column("worst_group_acc", "diff") ==
    "worst_group_acc_diff_pp"; a count's column has no unit."""
    unit = unit_of(field)
    if unit in (ACCURACY, AUROC, CALIBRATION) and stat in SPREADS:
        unit = POINTS
    return f"{field}_{stat}" if unit is None else column(f"{field}_{stat}", unit)
