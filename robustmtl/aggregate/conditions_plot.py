"""Figures of a condition table (`plot --by KEY`): what each method gains over the baseline, and what its
representation relies on, against the first `--by` key; one row of panels per value of the other keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate.axes import clip_accuracy, set_accuracy_limits, set_min_span, tick_at_values
from robustmtl.aggregate.conditions import ConditionTable, condition_text
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.plot import FORMATS, MARKERS, pyplot, save_figure
from robustmtl.aggregate.units import ACCURACY, POINTS, stat_column, unit_of

MECHANISM_LABELS = {"probe_y_acc": f"probe accuracy for y ({ACCURACY.symbol})",
                    "probe_a_acc": f"probe accuracy for a ({ACCURACY.symbol})",
                    "reliance_core": "margin reliance on core", "reliance_spurious": "margin reliance on spurious",
                    "reliance_noise": "margin reliance on noise", "active_units": "active units of h"}


def _panels(table: ConditionTable) -> list[tuple[str, pd.DataFrame]]:
    rest = table.by[1:]
    if not rest:
        return [("", table.cells)]
    return [(", ".join(f"{k}={v}" for k, v in zip(rest, key if isinstance(key, tuple) else (key,), strict=True)), g)
            for key, g in table.cells.groupby(rest if len(rest) > 1 else rest[0], sort=True)]


LINESTYLES = ("-", "--", "-.", ":")
DODGE = 0.03  # per method: x times 1 ± DODGE on a log axis, ± DODGE of the x range on a linear one


def log_x(values: pd.Series) -> bool:
    positive = values[values > 0]
    return len(positive) == len(values) and positive.max() / positive.min() >= 4


def _methods(cells: pd.DataFrame, skip: str | None) -> list[str]:
    return [m for m in dict.fromkeys(cells["method"]) if m != skip]


def method_styles(table: ConditionTable) -> dict[str, dict[str, Any]]:
    """One colour, marker and line style per method, the same in every panel of both figures, so methods that
    land on one line stay told apart."""
    methods = list(dict.fromkeys(table.cells["method"]))
    return {m: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
                "linestyle": LINESTYLES[i % len(LINESTYLES)]} for i, m in enumerate(methods)}


def dodged(x: pd.Series, i: int, count: int, log: bool) -> pd.Series:
    """Method i of count shifted a little sideways, so markers and bars at one x do not hide each other."""
    offset = i - (count - 1) / 2
    return x * (1 + DODGE * offset) if log else x + DODGE * offset * (x.max() - x.min() or 1)


def condition_axis(ax: Any, x_key: str, cells: pd.DataFrame) -> None:
    """Ticks at the condition's values, printed as the tables print them; log scale for a wide positive range."""
    x = cells[x_key].astype(float)
    if log_x(x):
        ax.set_xscale("log", base=2)
    tick_at_values(ax, list(cells[x_key]), condition_text)
    ax.set_xlabel(x_key)


def gain_figure(table: ConditionTable, out: Path, names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    """Δ worst-group accuracy over the baseline (paired, 95% interval) against the first --by key."""
    plt = pyplot()
    x_key = table.by[0]
    panels = _panels(table)
    styles = method_styles(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False, sharey=True,
                             layout="constrained")
    shown: list[float] = [0.0]
    for ax, (title, cells) in zip(axes[0], panels, strict=True):
        methods = _methods(cells, table.baseline)
        log = log_x(cells[x_key].astype(float))
        for i, method in enumerate(methods):
            rows = cells[cells["method"] == method].sort_values(x_key)
            y, lo, hi = (rows[stat_column("worst_group_acc", stat)] for stat in ("diff", "diff_lo", "diff_hi"))
            ax.errorbar(dodged(rows[x_key].astype(float), i, len(methods), log), y, yerr=[y - lo, hi - y], capsize=3,
                        alpha=0.85, label=names.method(method), **styles[method])
            shown += [*lo, *hi]
        ax.axhline(0, color="grey", lw=0.8)
        condition_axis(ax, x_key, cells)
        if x_key == "spurious_variance_ratio":
            ax.axvline(1, color="grey", ls=":", lw=0.8)
        ax.set_title(title)
    set_min_span(axes[0][0], shown)  # y is shared
    axes[0][0].set_ylabel(f"test worst-group accuracy − {names.method(str(table.baseline))} ({POINTS.name})")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Paired difference over seeds, 95% Student-t interval")
    return save_figure(plt, fig, out / f"gain_by_{x_key}", FORMATS)


def mechanism_figure(table: ConditionTable, out: Path, names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    """Each mechanism field (mean over seeds, 95% interval) against the first --by key, per method; probe
    accuracies on a percent axis spanning at least MIN_ACCURACY_SPAN points."""
    fields = [f for f in ("reliance_core", "reliance_spurious", "probe_a_acc", "active_units") if f in table.mechanism]
    if not fields:
        return []
    plt = pyplot()
    x_key = table.by[0]
    panels = _panels(table)
    styles = method_styles(table)
    fig, axes = plt.subplots(len(panels), len(fields), figsize=(4.2 * len(fields), 3.4 * len(panels)),
                             squeeze=False, layout="constrained")  # two-line titles fit between rows
    for r, (title, cells) in enumerate(panels):
        methods = _methods(cells, None)
        log = log_x(cells[x_key].astype(float))
        for c, f in enumerate(fields):
            ax = axes[r][c]
            accuracy = unit_of(f) is ACCURACY
            mean_col, hw_col = stat_column(f, "mean"), stat_column(f, "hw")
            for i, method in enumerate(methods):
                rows = cells[cells["method"] == method].sort_values(x_key)
                mean, hw = rows[mean_col], rows[hw_col].fillna(0)
                if accuracy:
                    # bars clipped to [0, 100], so markers at 100 may be drawn whole over the axis's edge
                    err = [(mean - clip_accuracy(mean - hw)).clip(lower=0),
                           (clip_accuracy(mean + hw) - mean).clip(lower=0)]
                else:
                    err = [hw, hw]
                ax.errorbar(dodged(rows[x_key].astype(float), i, len(methods), log), mean, yerr=err, capsize=2,
                            alpha=0.85, label=names.method(method), clip_on=not accuracy, **styles[method])
            if accuracy:
                set_accuracy_limits(ax, "y", pd.concat([cells[mean_col] - cells[hw_col].fillna(0),
                                                        cells[mean_col] + cells[hw_col].fillna(0)]))
            condition_axis(ax, x_key, cells)
            ax.set_title(f"{MECHANISM_LABELS.get(f, f)}" + (f"\n{title}" if title else ""), fontsize=9)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(plt, fig, out / f"mechanism_by_{x_key}", FORMATS)


def condition_figures(table: ConditionTable, out: Path, names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    paths = gain_figure(table, out, names) if table.baseline is not None else []
    return paths + mechanism_figure(table, out, names)
