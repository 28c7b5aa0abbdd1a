"""Learning curves (`robustmtl plot --curves`): when the shortcut takes over, and where selection stopped.

Per (dataset, method) cell at the setting the tables' rule chose: validation and test, average and
worst-group accuracy against epoch, the mean over the cell's seeds with a band (the 95% Student-t
interval over seeds at that epoch, drawn clipped to [0, 100]; none where one seed has the epoch), and each
seed's selected epoch marked. One figure per dataset, one panel per method, plus the plotted numbers as CSV beside it
(percent, in columns named so: aggregate/units.py).
An epoch's point is its last evaluation (runs with eval_every evaluate several times an epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate.axes import clip_accuracy, set_accuracy_limits
from robustmtl.aggregate.drawing import FORMATS, pyplot, save_figure
from robustmtl.aggregate.export import method_order
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames, with_display_columns
from robustmtl.aggregate.stats import t_interval
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY, column, percent

SPLITS = ("val", "test")
METRICS = ("avg_acc", "worst_group_acc")
METRIC_COLORS = {"avg_acc": "C0", "worst_group_acc": "C3"}
SPLIT_STYLES: dict[str, Any] = {"val": "--", "test": "-"}  # Any: matplotlib types styles as literals
LABELS = {"avg_acc": "average", "worst_group_acc": "worst-group"}
MEAN, LOWER, UPPER = (column(stat, ACCURACY) for stat in ("mean", "lower", "upper"))
COLUMNS = ["dataset", "method", "split", "metric", "epoch", MEAN, LOWER, UPPER, "n"]
PANELS_PER_ROW = 4


def curve_table(summary: Summary) -> pd.DataFrame:
    """Per cell, split, metric and epoch: mean and t-interval over the reported runs of the chosen setting
    (the runs behind the tables' numbers), in percent; from the records the Summary was made of."""
    assert summary.records is not None  # aggregate() always sets them
    reported = summary.per_seed[["dataset", "method", "run_id"]]
    records = summary.records
    records = records[records["run_id"].isin(reported["run_id"]) & records["split"].isin(SPLITS)]
    last = records.sort_values("step").drop_duplicates(["run_id", "epoch", "split"], keep="last")
    curves = last.merge(reported, on="run_id")
    rows = []
    for (dataset, method, split, epoch), group in curves.groupby(["dataset", "method", "split", "epoch"]):
        for metric in METRICS:
            iv = t_interval(percent(group[metric].to_numpy(dtype=float)))
            rows.append({"dataset": dataset, "method": method, "split": split, "metric": metric,
                         "epoch": int(epoch), MEAN: iv.mean, LOWER: iv.lower, UPPER: iv.upper, "n": iv.n})
    return pd.DataFrame(rows, columns=COLUMNS)


def selected_epochs(summary: Summary, dataset: str, method: str) -> list[int]:
    """The epoch the rule selected for each seed of the cell, in seed order."""
    cell = summary.per_seed[(summary.per_seed["dataset"] == dataset) & (summary.per_seed["method"] == method)]
    return [int(e) for e in cell.sort_values("seed")["epoch"]]


def curve_figure(table: pd.DataFrame, summary: Summary, dataset: str, names: DisplayNames = REGISTRY_NAMES) -> Any:
    """One dataset's figure: a panel per method with its four curves, bands and selected epochs.

    Lines carry their (split, metric) as the label `<split> <metric>`, so the drawn data can be read back."""
    from matplotlib.lines import Line2D

    plt = pyplot()
    rows = table[table["dataset"] == dataset]
    methods = method_order(rows["method"].unique())
    ncols = min(PANELS_PER_ROW, len(methods))
    nrows = -(-len(methods) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 3.2 * nrows), squeeze=False, sharey=True)
    for ax, method in zip(axes.flat, methods, strict=False):
        for split in SPLITS:
            for metric in METRICS:
                line = rows[(rows["method"] == method) & (rows["split"] == split) & (rows["metric"] == metric)]
                line = line.sort_values("epoch")
                ax.plot(line["epoch"], line[MEAN], SPLIT_STYLES[split], color=METRIC_COLORS[metric],
                        label=f"{split} {metric}", linewidth=1.4)
                ax.fill_between(line["epoch"], clip_accuracy(line[LOWER]), clip_accuracy(line[UPPER]),
                                color=METRIC_COLORS[metric], alpha=0.15 if split == "test" else 0.08, linewidth=0)
        for epoch in sorted(set(selected_epochs(summary, dataset, method))):
            ax.axvline(epoch, color="0.4", linestyle=":", linewidth=1, label="_selected epoch")
        seeds = int(rows.loc[rows["method"] == method, "n"].max())
        ax.set_title(f"{names.method(method)} (n={seeds})", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"accuracy ({ACCURACY.symbol})")
    set_accuracy_limits(axes.flat[0], "y", pd.concat([rows[MEAN], rows[LOWER], rows[UPPER]]))  # y is shared
    handles = [Line2D([], [], color=METRIC_COLORS[m], linestyle=SPLIT_STYLES[s], label=f"{s} {LABELS[m]}")
               for s in SPLITS for m in METRICS]
    handles.append(Line2D([], [], color="0.4", linestyle=":", label="selected epoch (per seed)"))
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"{names.dataset(dataset)}: accuracy by epoch at the setting selected by {summary.selector.label}\n"
                 "mean over seeds; band: 95% Student-t interval over seeds", fontsize=10)
    fig.tight_layout()
    return fig


def curve_figures(table: pd.DataFrame, summary: Summary, out: Path, names: DisplayNames = REGISTRY_NAMES,
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """`curves_<dataset>.{png,pdf,csv}` for every dataset of the table."""
    paths = []
    for dataset in sorted(table["dataset"].unique()):
        fig = curve_figure(table, summary, dataset, names)
        paths += save_figure(pyplot(), fig, out / f"curves_{dataset}", formats)
        csv = out / f"curves_{dataset}.csv"
        with_display_columns(table[table["dataset"] == dataset], names).to_csv(csv, index=False, float_format="%.6g")
        paths.append(csv)
    return paths
