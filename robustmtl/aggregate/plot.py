"""Figures of a grid: the average vs worst-group trade-off, and worst-group accuracy across the alpha sweep.

Headless (matplotlib's Agg backend), written as PNG and PDF. Both figures come from the tables' own
selection path, so a figure never shows a number the table would not: the trade-off plots aggregate()'s
cells, and the heatmap runs select_runs with the same Selector on the method's runs, one cell per
(alpha_aux, alpha_reg) pair instead of one per method.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.axes import MIN_ACCURACY_SPAN, accuracy_range, set_accuracy_limits
from robustmtl.aggregate.curves import curve_figures, curve_table
from robustmtl.aggregate.drawing import FORMATS, MARKERS, pyplot, save_figure
from robustmtl.aggregate.load import Loaded
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.select import select_runs
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY, percent
from robustmtl.errors import UserError
from robustmtl.registry import method_plugin

SWEEP_AXES = ("alpha_aux", "alpha_reg")


@dataclass(frozen=True)
class SelectOptions:
    """aggregate()'s selection options: plot takes the same ones, so its figures match the tables."""

    select: str = "worst-val"
    include_running: bool = False
    ci: str = "t"
    seed: int = 0
    few_groups_fraction: float = 0.05
    few_groups_seed: int = 0


@dataclass
class Figures:
    """What plot wrote, and what the user must be told: the aggregation's warnings, why no heatmap."""

    paths: list[Path]
    summary: Summary
    warnings: list[str]
    no_heatmap: str | None


class NoSweep(Exception):
    """Why a method has no alpha sweep to map: a note, not an error (the trade-off figure still stands)."""


def plot_grids(grid_dirs: Sequence[Path], out: Path, method: str, opts: SelectOptions = SelectOptions(),
               formats: Sequence[str] = FORMATS, names: DisplayNames = REGISTRY_NAMES) -> Figures:
    """Both figures of the grids; the cheap mistakes (method name, --out, unstarted grids) fail before any
    run is loaded or any figure written."""
    method_plugin(method)
    dirs = checked_dirs(grid_dirs, out)
    summary = aggregate(dirs, **asdict(opts))
    paths = tradeoff_figure(summary, out, formats, names)
    try:
        table, sweep_warnings = sweep_table(summary, method)
    except NoSweep as exc:
        return Figures(paths, summary, summary.warnings, str(exc))
    paths += sweep_heatmap(table, summary, method, out, formats, names)
    extra = [w for w in sweep_warnings if w not in summary.warnings]
    return Figures(paths, summary, summary.warnings + extra, None)


def plot_curves(grid_dirs: Sequence[Path], out: Path, opts: SelectOptions = SelectOptions(),
                names: DisplayNames = REGISTRY_NAMES) -> Figures:
    """The learning-curve figures (aggregate/curves.py) of every cell at the tables' chosen setting."""
    dirs = checked_dirs(grid_dirs, out)
    summary = aggregate(dirs, **asdict(opts))
    paths = curve_figures(curve_table(summary), summary, out, names)
    return Figures(paths, summary, summary.warnings, None)


def default_figures_dir(grid_dirs: Sequence[Path]) -> Path:
    """Where figures go without --out: beside the first grid directory (`runs/demo` -> `runs/demo-figures`),
    so a plot never writes into a folder the checkout ships (aggregates/figures is written by name only)."""
    first = Path(grid_dirs[0])
    if first.name in ("", ".."):
        first = first.resolve()
    return first.parent / f"{first.name or 'grid'}-figures"


def checked_dirs(grid_dirs: Sequence[Path], out: Path) -> list[Path]:
    dirs = list(dict.fromkeys(Path(d) for d in grid_dirs))
    _check_out(out)
    _check_started(dirs)
    return dirs


def _check_out(out: Path) -> None:
    """--out must be able to become a writable folder; checked before loading runs (minutes on a big grid)."""
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        where = "is a file" if existing == out else f"is under {existing}, a file"
        raise UserError(f"--out {out} {where}; give a folder for the figures")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {existing} is not writable")


def _check_started(dirs: Sequence[Path]) -> None:
    """A grid with no metrics yet is told how to start it (the loader only says what it did not find)."""
    for d in dirs:
        if d.is_dir() and next(d.glob("runs/*/metrics.jsonl"), None) is None:
            raise UserError(f"no run under {d} has written metrics yet: start the grid with "
                            f"`robustmtl grid submit SPEC --out {d}` (or see `robustmtl grid status {d}`)")


def interval_note(summary: Summary) -> str:
    """What the bars are; cells with one seed have none, and the title must not claim intervals for them."""
    n = summary.cells["n"]
    if (n < 2).all():
        return "one seed per cell (n=1): no interval"
    bars = f"mean over seeds, 95% {summary.ci} interval"
    return f"{bars}; cells with n=1 have no bars" if (n < 2).any() else bars


def _errorbar(row: pd.Series) -> list[list[float]] | None:
    """Asymmetric bar lengths in percent, or None where the cell has no interval (one seed). Clipped at 0:
    matplotlib refuses a negative length, which float rounding can give a zero-width interval."""
    if pd.isna(row["lower"]) or pd.isna(row["upper"]):
        return None
    return [[max(0.0, percent(row["mean"] - row["lower"]))], [max(0.0, percent(row["upper"] - row["mean"]))]]


def _with_bars(cells: pd.DataFrame, metric: str) -> pd.Series:
    """Every value a metric's axis must show: the means and their bars' ends."""
    rows = cells[cells["metric"] == metric]
    return pd.concat([rows["mean"], rows["lower"], rows["upper"]]).dropna()


def tradeoff_figure(summary: Summary, out: Path, formats: Sequence[str] = FORMATS,
                    names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    """Per dataset: each method's mean test average vs worst-group accuracy, with interval bars where n >= 2.

    Methods are told apart by colour and marker, named in one legend: methods often land on top of each
    other (the group-balanced ones do), where labels beside the points would overprint."""
    plt = pyplot()
    datasets = sorted(summary.cells["dataset"].unique())
    methods = sorted(summary.cells["method"].unique())
    style = {m: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)]} for i, m in enumerate(methods)}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4.2), squeeze=False)
    handles = {}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        cells = summary.cells[summary.cells["dataset"] == dataset]
        for method, cell in cells.groupby("method", sort=True):
            avg, worst = (cell.set_index("metric").loc[m] for m in ("avg_acc", "worst_group_acc"))
            x, y = percent(avg["mean"]), percent(worst["mean"])
            handles[method] = ax.errorbar(x, y, xerr=_errorbar(avg), yerr=_errorbar(worst), linestyle="none",
                                          capsize=3, markersize=6, alpha=0.85, **style[method])
        set_accuracy_limits(ax, "x", percent(_with_bars(cells, "avg_acc")))
        set_accuracy_limits(ax, "y", percent(_with_bars(cells, "worst_group_acc")))
        ax.set_title(names.dataset(dataset))
        ax.set_xlabel(f"test average accuracy ({ACCURACY.symbol})")
        ax.set_ylabel(f"test worst-group accuracy ({ACCURACY.symbol})")
        ax.grid(alpha=0.3)
    fig.legend([handles[m] for m in methods], [names.method(m) for m in methods], loc="center left",
               bbox_to_anchor=(1.0, 0.5), fontsize=8)
    fig.suptitle(f"Average vs worst-group accuracy\nselection: {summary.selector.label}\n{interval_note(summary)}",
                 fontsize=10)
    fig.tight_layout()
    return save_figure(plt, fig, out / "tradeoff", formats)


def _why_out_of_scope(summary: Summary, runs: pd.DataFrame, method: str) -> str:
    """Why none of the method's runs reach the tables: absent, unfinished, or helper runs."""
    unfinished = int((~runs["included"]).sum())
    if unfinished:
        return f"{method} has no finished runs here ({unfinished} unfinished); --include-running plots them"
    if len(runs):
        return f"{method} runs are helper runs (report=false), never shown in the tables"
    return f"{method} has no runs in these grids (methods there: {', '.join(sorted(summary.cells['method'].unique()))})"


def _sweep_runs(summary: Summary, method: str) -> pd.DataFrame:
    """The method's runs in the tables' scope, with their alphas; NoSweep says why there is nothing to map."""
    assert summary.runs is not None  # aggregate() always sets it
    runs = summary.runs[summary.runs["method"] == method]
    scope = runs[runs["included"] & runs["report"]].copy()
    if scope.empty:
        raise NoSweep(_why_out_of_scope(summary, runs, method))
    for axis in SWEEP_AXES:
        scope[axis] = [h.get(axis) for h in scope["hparams"]]
    if scope[list(SWEEP_AXES)].isna().all(axis=None):
        raise NoSweep(f"{method} has no alpha_aux or alpha_reg hyperparameter to map")
    if len(scope[list(SWEEP_AXES)].drop_duplicates()) < 2:
        raise NoSweep(f"{method} ran at a single alpha_aux/alpha_reg setting; sweep them in the grid file "
                      f"([method.{method}.sweep]) to map it")
    return scope


def _pair_label(method: str, alphas: tuple[Any, ...]) -> str:
    """The cell name the shared selection sees (and its warnings show): the method and its exact alphas."""
    return ", ".join([method, *(f"{a}={v}" for a, v in zip(SWEEP_AXES, alphas, strict=True) if pd.notna(v))])


def sweep_table(summary: Summary, method: str) -> tuple[pd.DataFrame, list[str]]:
    """Per (dataset, alpha_aux, alpha_reg): mean test worst-group accuracy over seeds (n of them) of the
    setting the tables' rule would choose among those with these alphas (other axes, e.g. lr, are selected
    on validation like in the tables, not averaged); and the selection's warnings.

    select_runs picks one setting per (dataset, method), so each alpha pair is made a "method" of its own.
    Runs and records come from the tables' own load (the Summary's).
    """
    assert summary.records is not None  # aggregate() always sets them
    runs = _sweep_runs(summary, method)
    runs["method"] = [_pair_label(method, pair) for pair in runs[list(SWEEP_AXES)].itertuples(index=False, name=None)]
    records = summary.records
    try:
        selection = select_runs(Loaded(records[records["run_id"].isin(runs["run_id"])], runs, summary.counts, []),
                                summary.selector)
    except UserError as exc:  # e.g. the method's runs are all too early to have validation records
        raise NoSweep(str(exc)) from None
    if selection.per_seed.empty:
        raise NoSweep(f"no {method} run has a test record at its selected epoch")
    means = selection.per_seed.groupby(["dataset", "method"], as_index=False).agg(
        worst_group_acc=("worst_group_acc", "mean"), n=("worst_group_acc", "count"))
    table = means.join(runs.drop_duplicates("method").set_index("method")[list(SWEEP_AXES)], on="method")
    return table[["dataset", *SWEEP_AXES, "worst_group_acc", "n"]], selection.warnings


def _tick(value: Any) -> str:
    """An axis the method does not have (l1 has no alpha_aux) is one row or column labelled n/a."""
    return "n/a" if pd.isna(value) else f"{value:.3g}"


def _seeds_note(n: pd.Series) -> str:
    """How many seeds each cell averages; the heatmap draws no intervals, so n is all a reader gets."""
    low, high = int(n.min()), int(n.max())
    return f"mean over n={low}{'' if high == low else f'-{high}'} seed(s)"


def chosen_pair(summary: Summary, dataset: str, method: str) -> tuple[Any, Any] | None:
    """The (alpha_aux, alpha_reg) of the setting the tables report for the cell, or None if it has none."""
    chosen = summary.chosen[(summary.chosen["dataset"] == dataset) & (summary.chosen["method"] == method)]
    if chosen.empty:
        return None
    hparams = chosen["hparams"].iloc[0]
    return hparams.get(SWEEP_AXES[0]), hparams.get(SWEEP_AXES[1])


def _position(labels: pd.Index, value: Any) -> int | None:
    for i, label in enumerate(labels):
        if (pd.isna(label) and pd.isna(value)) or label == value:
            return i
    return None


def sweep_heatmap(table: pd.DataFrame, summary: Summary, method: str, out: Path,
                  formats: Sequence[str] = FORMATS, names: DisplayNames = REGISTRY_NAMES) -> list[Path]:
    """Per dataset: a sweep_table as an alpha_aux × alpha_reg grid of percentages, the selected pair outlined.

    The colour scale is accuracy_range of the cells (at least MIN_ACCURACY_SPAN points), so cells that differ
    by less than seed noise do not span the whole colour map."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    datasets = sorted(table["dataset"].unique())
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.8 * len(datasets), 4.4), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        grid = table[table["dataset"] == dataset].pivot(index="alpha_aux", columns="alpha_reg",
                                                        values="worst_group_acc").pipe(percent)
        values = grid.to_numpy(dtype=float)
        low, high = accuracy_range(values.ravel())
        image = ax.imshow(values, cmap="viridis", origin="lower", aspect="auto", vmin=low, vmax=high)
        ax.set_xticks(range(len(grid.columns)), [_tick(v) for v in grid.columns])
        ax.set_yticks(range(len(grid.index)), [_tick(v) for v in grid.index])
        for (i, j), value in pd.DataFrame(values).stack().items():
            ax.text(j, i, f"{value:.1f}", ha="center", va="center", fontsize=8,
                    bbox={"boxstyle": "round", "facecolor": "white", "alpha": 0.7, "linewidth": 0})
        pair = chosen_pair(summary, dataset, method)
        row, column = (None, None) if pair is None else (_position(grid.index, pair[0]),
                                                         _position(grid.columns, pair[1]))
        if row is not None and column is not None:
            ax.add_patch(Rectangle((column - 0.5, row - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2.5,
                                   label=f"setting selected ({summary.selector.label})"))
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), fontsize=8, frameon=False)
        ax.set_xlabel("alpha_reg")
        ax.set_ylabel("alpha_aux")
        ax.set_title(names.dataset(dataset))
        fig.colorbar(image, ax=ax, label=f"test worst-group accuracy ({ACCURACY.symbol})")
    fig.suptitle(f"{names.method(method)}: test worst-group accuracy across the sweep\n"
                 f"selection: {summary.selector.label}\n{_seeds_note(table['n'])}; "
                 f"colour scale spans at least {MIN_ACCURACY_SPAN:g} points", fontsize=10)
    fig.tight_layout()
    return save_figure(plt, fig, out / f"sweep_{method}", formats)
