"""One method's figure for a table of three or more conditions (`plot --by X --by ... --by C --method M`), the
shape a capacity study reads: X on the x axis, a column of panels per value of the last key C, a line per
combination of the keys between them, and a row per quantity: the worst-group gain over the baseline, then
the mechanism fields. Panels per combination of every other key (the two-key figures) would be a wall of
small multiples at this size; here one row answers one question across all conditions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.ticker import FuncFormatter

from robustmtl.aggregate.axes import clip_accuracy, set_accuracy_limits, set_min_span
from robustmtl.aggregate.conditions import ConditionTable, condition_text
from robustmtl.aggregate.conditions_plot import LINESTYLES, MECHANISM_LABELS, condition_axis, dodged, log_x
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.plot import FORMATS, MARKERS, pyplot, save_figure
from robustmtl.aggregate.units import ACCURACY, POINTS, stat_column, unit_of

MIN_KEYS = 3
ROWS = ("gain", "active_units", "probe_a_acc", "reliance_spurious", "reliance_core")


def _line_label(keys: list[str], values: tuple[Any, ...]) -> str:
    return ", ".join(f"{k} = {condition_text(v)}" for k, v in zip(keys, values, strict=True))


def sweep_figure(table: ConditionTable, out: Path, method: str, names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    """The figure, or nothing when the table has fewer than MIN_KEYS conditions or no row of `method`."""
    if len(table.by) < MIN_KEYS:
        return []
    cells = table.cells[(table.cells["method"] == method) & table.cells[table.by[0]].notna()]
    if cells.empty:
        return []
    x_key, line_keys, column_key = table.by[0], table.by[1:-1], table.by[-1]
    rows = [r for r in ROWS if (r == "gain" and table.baseline is not None) or r in table.mechanism]
    columns = sorted(cells[column_key].dropna().unique())
    lines = sorted({tuple(v) for v in cells[line_keys].itertuples(index=False)})
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(4.2 * len(columns), 2.9 * len(rows)), squeeze=False,
                             sharex=True, sharey="row", layout="constrained")
    log = log_x(cells[x_key].astype(float))
    for c, column in enumerate(columns):
        panel = cells[cells[column_key] == column]
        for i, line in enumerate(lines):
            mask = (panel[line_keys] == pd.Series(line, index=line_keys)).all(axis=1)
            points = panel[mask].sort_values(x_key)
            x = dodged(points[x_key].astype(float), i, len(lines), log)
            style = {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
                     "linestyle": LINESTYLES[i % len(LINESTYLES)], "label": _line_label(line_keys, line)}
            for r, quantity in enumerate(rows):
                _draw(axes[r][c], quantity, points, x, style)
        axes[0][c].set_title(f"{column_key} = {condition_text(column)}", fontsize=10)
        condition_axis(axes[-1][c], x_key, cells)
    for r, quantity in enumerate(rows):
        _finish_row(axes[r], quantity, cells, names.method(str(table.baseline)))
    axes[0][-1].legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle(f"{names.method(method)}: mean over seeds, 95% Student-t interval (the gain: paired)")
    return save_figure(plt, fig, out / f"sweep_{method}_by_{x_key}", FORMATS)


def _draw(ax: Any, quantity: str, points: pd.DataFrame, x: pd.Series, style: dict[str, Any]) -> None:
    if quantity == "gain":
        y, lo, hi = (points[stat_column("worst_group_acc", s)] for s in ("diff", "diff_lo", "diff_hi"))
        ax.errorbar(x, y, yerr=[y - lo, hi - y], capsize=2, alpha=0.85, **style)
        return
    mean, hw = points[stat_column(quantity, "mean")], points[stat_column(quantity, "hw")].fillna(0)
    if unit_of(quantity) is ACCURACY:
        err = [(mean - clip_accuracy(mean - hw)).clip(lower=0), (clip_accuracy(mean + hw) - mean).clip(lower=0)]
    else:
        err = [hw, hw]
    ax.errorbar(x, mean, yerr=err, capsize=2, alpha=0.85, **style)


def _finish_row(row: Any, quantity: str, cells: pd.DataFrame, baseline: str) -> None:
    if quantity == "gain":
        for ax in row:
            ax.axhline(0, color="grey", lw=0.8)
        set_min_span(row[0], [*cells[stat_column("worst_group_acc", "diff_lo")],
                              *cells[stat_column("worst_group_acc", "diff_hi")]])
        row[0].set_ylabel(f"Δ worst-group vs {baseline}\n({POINTS.name})", fontsize=9)
        return
    if unit_of(quantity) is ACCURACY:
        mean, hw = cells[stat_column(quantity, "mean")], cells[stat_column(quantity, "hw")].fillna(0)
        set_accuracy_limits(row[0], "y", pd.concat([mean - hw, mean + hw]))
    if quantity == "active_units":  # widths from a few units to many: a log axis, ticks printed as counts
        row[0].set_yscale("log", base=2)
        row[0].yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    row[0].set_ylabel(MECHANISM_LABELS.get(quantity, quantity), fontsize=9)
