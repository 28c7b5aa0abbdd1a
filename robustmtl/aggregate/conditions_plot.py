"""Figures of a condition table (`plot --by KEY`): what each method gains over the baseline, and what its
representation relies on, against the first `--by` key; one row of panels per value of the other keys."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from robustmtl.aggregate.conditions import ConditionTable
from robustmtl.aggregate.plot import FORMATS, pyplot, save_figure

MECHANISM_LABELS = {"probe_y_acc": "probe accuracy for y", "probe_a_acc": "probe accuracy for a",
                    "reliance_core": "margin reliance on core", "reliance_spurious": "margin reliance on spurious",
                    "reliance_noise": "margin reliance on noise", "active_units": "active units of h"}


def _panels(table: ConditionTable) -> list[tuple[str, pd.DataFrame]]:
    rest = table.by[1:]
    if not rest:
        return [("", table.cells)]
    return [(", ".join(f"{k}={v}" for k, v in zip(rest, key if isinstance(key, tuple) else (key,), strict=True)), g)
            for key, g in table.cells.groupby(rest if len(rest) > 1 else rest[0], sort=True)]


def _log_x(values: pd.Series) -> bool:
    positive = values[values > 0]
    return len(positive) == len(values) and positive.max() / positive.min() >= 4


def _methods(cells: pd.DataFrame, skip: str | None) -> list[str]:
    return [m for m in dict.fromkeys(cells["method"]) if m != skip]


def gain_figure(table: ConditionTable, out: Path) -> list[Path]:
    """Δ worst-group accuracy over the baseline (paired, 95% interval) against the first --by key."""
    plt = pyplot()
    x_key = table.by[0]
    panels = _panels(table)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, (title, cells) in zip(axes[0], panels, strict=True):
        methods = _methods(cells, table.baseline)
        for i, method in enumerate(methods):
            rows = cells[cells["method"] == method].sort_values(x_key)
            x = rows[x_key].astype(float)
            shift = 1 + 0.03 * (i - (len(methods) - 1) / 2)
            xs = x * shift if _log_x(x) else x + 0.02 * (i - (len(methods) - 1) / 2) * (x.max() - x.min() or 1)
            y = rows["worst_group_acc_diff"]
            err = [y - rows["worst_group_acc_diff_lo"], rows["worst_group_acc_diff_hi"] - y]
            ax.errorbar(xs, y, yerr=err, marker="o", capsize=3, label=method)
        ax.axhline(0, color="grey", lw=0.8)
        if _log_x(cells[x_key].astype(float)):
            ax.set_xscale("log", base=2)
        if x_key == "spurious_variance_ratio":
            ax.axvline(1, color="grey", ls=":", lw=0.8)
        ax.set_xlabel(x_key)
        ax.set_title(title)
    axes[0][0].set_ylabel(f"test worst-group accuracy − {table.baseline} (points)")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle("Paired difference over seeds, 95% Student-t interval")
    return save_figure(plt, fig, out / f"gain_by_{x_key}", FORMATS)


def mechanism_figure(table: ConditionTable, out: Path) -> list[Path]:
    """Each mechanism field (mean over seeds, 95% interval) against the first --by key, per method."""
    fields = [f for f in ("reliance_core", "reliance_spurious", "probe_a_acc", "active_units") if f in table.mechanism]
    if not fields:
        return []
    plt = pyplot()
    x_key = table.by[0]
    panels = _panels(table)
    fig, axes = plt.subplots(len(panels), len(fields), figsize=(4.2 * len(fields), 3.4 * len(panels)),
                             squeeze=False, layout="constrained")  # two-line titles fit between rows
    for r, (title, cells) in enumerate(panels):
        for c, f in enumerate(fields):
            ax = axes[r][c]
            for method in _methods(cells, None):
                rows = cells[cells["method"] == method].sort_values(x_key)
                hw = rows[f"{f}_hw"].fillna(0)
                ax.errorbar(rows[x_key].astype(float), rows[f"{f}_mean"], yerr=hw, marker="o", capsize=2,
                            label=method)
            if _log_x(cells[x_key].astype(float)):
                ax.set_xscale("log", base=2)
            ax.set_title(f"{MECHANISM_LABELS.get(f, f)}" + (f"\n{title}" if title else ""), fontsize=9)
            ax.set_xlabel(x_key)
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    return save_figure(plt, fig, out / f"mechanism_by_{x_key}", FORMATS)


def condition_figures(table: ConditionTable, out: Path) -> list[Path]:
    paths = gain_figure(table, out) if table.baseline is not None else []
    return paths + mechanism_figure(table, out)
