"""Figures of a grid: the average vs worst-group trade-off, and worst-group accuracy across the alpha sweep.

Headless (matplotlib's Agg backend), written as PNG and PDF. Both figures use the same selection rule
as the tables, so a figure never shows a number the table would not.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.load import load_runs
from robustmtl.aggregate.select import get_selector
from robustmtl.errors import UserError

SWEEP_AXES = ("alpha_aux", "alpha_reg")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def tradeoff_figure(grid_dirs: Sequence[Path], select: str, out: Path, formats: Sequence[str]) -> list[Path]:
    """Per dataset: each method's mean test average vs worst-group accuracy with its interval bars."""
    plt = _pyplot()
    summary = aggregate(list(grid_dirs), select=select)
    cells = summary.cells.pivot_table(index=["dataset", "method"], columns="metric",
                                      values=["mean", "lower", "upper"], aggfunc="first")
    datasets = sorted(summary.cells["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        for method, row in cells.loc[dataset].iterrows():
            x, y = 100 * row[("mean", "avg_acc")], 100 * row[("mean", "worst_group_acc")]
            xerr = [[x - 100 * row[("lower", "avg_acc")]], [100 * row[("upper", "avg_acc")] - x]]
            yerr = [[y - 100 * row[("lower", "worst_group_acc")]], [100 * row[("upper", "worst_group_acc")] - y]]
            ax.errorbar(x, y, xerr=xerr if pd.notna(xerr[0][0]) else None,
                        yerr=yerr if pd.notna(yerr[0][0]) else None, fmt="o", capsize=3, label=method)
            ax.annotate(method, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        ax.set_title(dataset)
        ax.set_xlabel("test average accuracy (%)")
        ax.set_ylabel("test worst-group accuracy (%)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"Average vs worst-group accuracy ({summary.selector.label}; mean, 95% {summary.ci} interval)",
                 fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out / "tradeoff", formats)


def sweep_table(grid_dirs: Sequence[Path], select: str, method: str) -> pd.DataFrame:
    """Per (dataset, alpha_aux, alpha_reg): test worst-group accuracy (mean over seeds, at each run's selected
    epoch) of the setting that the rule would choose among those with these alphas (other axes, e.g. lr,
    are selected on validation like in the tables, not averaged)."""
    loaded = load_runs(list(grid_dirs))
    runs = loaded.runs[(loaded.runs["method"] == method) & loaded.runs["included"]]
    if runs.empty:
        raise UserError(f"no complete {method} runs to plot a sweep for")
    records = loaded.records[loaded.records["run_id"].isin(runs["run_id"])]
    picked = get_selector(select).select_epochs(records)
    test = records.loc[records["split"] == "test", ["run_id", "epoch", "step", "worst_group_acc"]]
    columns = ["run_id", "dataset", "setting_id", "hparams"]
    per_run = picked.merge(test, on=["run_id", "epoch", "step"]).merge(runs[columns])
    for axis in SWEEP_AXES:
        per_run[axis] = [h.get(axis) for h in per_run["hparams"]]
    cell = ["dataset", *SWEEP_AXES]
    per_setting = per_run.groupby([*cell, "setting_id"], as_index=False)[["score", "worst_group_acc"]].mean()
    best = per_setting.sort_values([*cell, "score", "setting_id"], ascending=[True, True, True, False, True])
    return best.drop_duplicates(cell, keep="first")[[*cell, "worst_group_acc"]].reset_index(drop=True)


def sweep_heatmap(grid_dirs: Sequence[Path], select: str, out: Path, formats: Sequence[str],
                  method: str = "mtl_l1") -> list[Path]:
    plt = _pyplot()
    table = sweep_table(grid_dirs, select, method)
    datasets = sorted(table["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        grid = table[table["dataset"] == dataset].pivot(index="alpha_aux", columns="alpha_reg",
                                                        values="worst_group_acc") * 100
        image = ax.imshow(grid.to_numpy(), cmap="viridis", origin="lower", aspect="auto")
        ax.set_xticks(range(len(grid.columns)), [f"{v:.3g}" for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [f"{v:.3g}" for v in grid.index])
        for (i, j), value in pd.DataFrame(grid.to_numpy()).stack().items():
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
        ax.set_xlabel("alpha_reg")
        ax.set_ylabel("alpha_aux")
        ax.set_title(dataset)
        fig.colorbar(image, ax=ax, label="test worst-group accuracy (%)")
    fig.suptitle(f"{method}: test worst-group accuracy across the sweep\n(selection: {select}; mean over seeds)",
                 fontsize=10)
    fig.tight_layout()
    return _save(plt, fig, out / f"sweep_{method}", formats)


def _save(plt: Any, fig: Any, stem: Path, formats: Sequence[str]) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_suffix(f".{fmt}")
        fig.savefig(path, dpi=150)
        paths.append(path)
    plt.close(fig)
    return paths
