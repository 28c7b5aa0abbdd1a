"""Test worst-group accuracy per method against the validation labels selection may use (`--label-budget`).

Each column is one selection rule, from no group label to all of them: `avg-val` and `worst-class` (class
labels only), `few-groups` at growing fractions of validation, `worst-val`. A column is the worst-group row of
the Summary that rule gives (aggregate.summarise, on runs loaded once), so every number is the one
`aggregate --select RULE` prints, and its paired difference against `--baseline` is that table's too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate import coverage_gaps, grid_list, load_scope, summarise
from robustmtl.aggregate.axes import clip_accuracy, set_accuracy_limits
from robustmtl.aggregate.conditions_plot import LINESTYLES
from robustmtl.aggregate.details import difference_text
from robustmtl.aggregate.export import in_units, interval_text, method_order, percent_text
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.plot import FORMATS, MARKERS, pyplot, save_figure
from robustmtl.aggregate.rules import get_selector
from robustmtl.aggregate.select import RuleInputs
from robustmtl.aggregate.stats import CI_TYPES, check_ci
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY, POINTS, percent
from robustmtl.errors import UserError
from robustmtl.render import MISSING, Table, columns, render
from robustmtl.render import documents as table_documents

FRACTIONS = (0.05, 0.10, 0.25, 0.50)  # few-groups' budgets: of validation's examples, group-labelled
METRIC = "worst_group_acc"


@dataclass(frozen=True)
class Budget:
    """A column: the rule, few-groups' fraction, and the labels it may read, as the header says it."""

    rule: str
    labels: str
    fraction: float | None = None

    @property
    def key(self) -> str:
        """The column's name in the CSV and in warnings: the rule, with few-groups' fraction."""
        return self.rule if self.fraction is None else f"{self.rule} {self.fraction:.0%}"

    @property
    def share(self) -> str:
        """The share of validation examples whose group labels the rule reads: none, a percentage, all."""
        return {"no group labels": "none", "all group labels": "all"}.get(self.labels, f"{self.fraction or 0:.0%}")

    def head(self, sep: str = "\n") -> str:
        """The column's header (and the figure's tick): the rule, then the share in parentheses."""
        return f"{self.rule}{sep}({self.share})"


def budgets(fractions: Sequence[float] = FRACTIONS) -> list[Budget]:
    return [Budget("avg-val", "no group labels"), Budget("worst-class", "no group labels"),
            *(Budget("few-groups", f"group labels on {f:.0%}", f) for f in fractions),
            Budget("worst-val", "all group labels")]


@dataclass
class BudgetTable:
    """cells: one row per (dataset, method, budget) with the rule's test worst-group mean, interval and n
    (fractions, as in Summary.cells), and with a baseline the paired difference (`diff_*`) and its note.
    summaries: the Summary of each budget whose rule could select (the others have no cells, and a warning)."""

    budgets: list[Budget]
    cells: pd.DataFrame
    ci: str
    baseline: str | None
    few_groups_seed: int
    warnings: list[str]
    summaries: dict[str, Summary] = field(default_factory=dict)

    @property
    def datasets(self) -> list[str]:
        return sorted(self.cells["dataset"].unique())

    @property
    def methods(self) -> list[str]:
        return method_order(self.cells["method"])

    def cell(self, dataset: str, method: str, budget: Budget) -> dict | None:
        rows = self.cells[(self.cells["dataset"] == dataset) & (self.cells["method"] == method)
                          & (self.cells["budget"] == budget.key)]
        return rows.iloc[0].to_dict() if len(rows) else None


DIFF_COLUMNS = {"mean_diff": "diff_mean", "lower": "diff_lower", "upper": "diff_upper", "half_width": "diff_half_width",
                "n": "diff_n", "note": "diff_note"}


def label_budget_table(grid_dirs: Sequence[Path | str] | Path | str, include_running: bool = False, ci: str = "t",
                       baseline: str | None = None, seed: int = 0, few_groups_seed: int = 0,
                       fractions: Sequence[float] = FRACTIONS) -> BudgetTable:
    """Every budget's rule applied to the same loaded runs; a rule that cannot select (runs without its data)
    leaves its column empty, with a warning saying why."""
    check_ci(ci)
    dirs = grid_list(grid_dirs)
    loaded = load_scope(dirs, include_running)
    methods = sorted(set(loaded.runs.loc[loaded.runs["included"] & loaded.runs["report"], "method"]))
    if baseline is not None and baseline not in methods:  # every column would say it: once, before them
        raise UserError(f"baseline method {baseline!r} not found; methods: {', '.join(methods)}")
    gaps = coverage_gaps(dirs, loaded.runs)
    columns, warnings, frames, summaries = budgets(fractions), [], [], {}
    for budget in columns:
        rule = get_selector(budget.rule).bind(RuleInputs.of(loaded.runs, budget.fraction or 1.0, few_groups_seed))
        try:
            summary = summarise(loaded, rule, ci, baseline, seed, gaps)
        except UserError as exc:
            warnings.append(f"{budget.key}: {exc}; its column is empty")
            continue
        summaries[budget.key] = summary
        warnings += summary.warnings
        cells = summary.cells[summary.cells["metric"] == METRIC]
        frame = cells[["dataset", "method", "mean", "lower", "upper", "half_width", "n"]].assign(
            budget=budget.key, rule=budget.rule, fraction=budget.fraction)
        if summary.differences is not None:
            diffs = summary.differences[summary.differences["metric"] == METRIC]
            frame = frame.merge(diffs[["dataset", "method", *DIFF_COLUMNS]].rename(columns=DIFF_COLUMNS),
                                on=["dataset", "method"], how="left")
        frames.append(frame)
    if not frames:
        raise UserError("no selection rule could select among these runs: " + "; ".join(warnings))
    cells = pd.concat(frames, ignore_index=True)
    order = ["dataset", "method", "budget", "rule", "fraction", "mean", "lower", "upper", "half_width", "n"]
    cells = cells[[*order, *(c for c in DIFF_COLUMNS.values() if c in cells)]]
    return BudgetTable(columns, cells, ci, baseline, few_groups_seed, list(dict.fromkeys(warnings)), summaries)


# --- text -------------------------------------------------------------------------------------------


def _value(row: dict | None, ci: str, uniform_n: bool) -> str:
    if row is None or math.isnan(row["mean"]):
        return MISSING
    interval = interval_text(row, ci)
    n = "" if uniform_n else f" (n={int(row['n'])})"
    return percent_text(row["mean"]) + (f" {interval}" if interval else "") + n


def _difference(row: dict | None, baseline: str, method: str) -> str:
    if row is None or method == baseline or "diff_mean" not in row:
        return MISSING
    return difference_text(row["diff_mean"], row["diff_half_width"])


def _uniform_n(table: BudgetTable) -> int | None:
    ns = set(table.cells["n"])
    return int(ns.pop()) if len(ns) == 1 else None


def header(table: BudgetTable, names: DisplayNames) -> list[str]:
    several = len(table.datasets) > 1
    return [*(["dataset"] if several else []), "method", *(b.head() for b in table.budgets)]


def rows(table: BudgetTable, names: DisplayNames = REGISTRY_NAMES, differences: bool = False) -> list[list[str]]:
    """One row per (dataset, method), one cell per budget: the mean ± interval, or the paired difference."""
    several, uniform = len(table.datasets) > 1, _uniform_n(table) is not None
    out = []
    for dataset in table.datasets:
        present = set(table.cells.loc[table.cells["dataset"] == dataset, "method"])
        for method in (m for m in table.methods if m in present):
            if differences and method == table.baseline:
                continue
            cells = [table.cell(dataset, method, b) for b in table.budgets]
            texts = [_difference(c, str(table.baseline), method) if differences else _value(c, table.ci, uniform)
                     for c in cells]
            out.append([*([names.dataset(dataset)] if several else []), names.method(method), *texts])
    return out


def caption(table: BudgetTable, names: DisplayNames = REGISTRY_NAMES, pm: str = "±") -> str:
    fractions = ", ".join(f"{b.fraction:.0%}" for b in table.budgets if b.fraction is not None)
    interval = f"{pm} half-width of the {CI_TYPES['t']}" if table.ci == "t" else f"[{CI_TYPES['bootstrap']}]"
    n = _uniform_n(table)
    seeds = f"n = {n} seeds per cell" if n is not None else "n seeds per cell as shown"
    return (f"Test worst-group accuracy ({ACCURACY.symbol}) at the epoch and setting each rule selects; in "
            "parentheses, the share of validation examples whose group labels the rule reads: none (avg-val; "
            f"worst-class, class labels only), a seeded random {fractions} (few-groups, seed {table.few_groups_seed}; "
            f"each subset holds the smaller ones), all (worst-val); mean over seeds {interval}; {seeds}.")


def difference_caption(table: BudgetTable, names: DisplayNames = REGISTRY_NAMES) -> str:
    return (f"Paired difference in test worst-group accuracy vs {names.method(str(table.baseline))} under the same "
            f"rule ({POINTS.name}, {CI_TYPES['t']}).")


def notes(table: BudgetTable) -> list[str]:
    """Why some methods have no paired difference, once each."""
    if "diff_note" not in table.cells:
        return []
    return list(dict.fromkeys(n for n in table.cells["diff_note"] if isinstance(n, str) and n))


CSV_UNITS = {"mean": ACCURACY, "lower": ACCURACY, "upper": ACCURACY, "half_width": POINTS, "diff_mean": POINTS,
             "diff_lower": POINTS, "diff_upper": POINTS, "diff_half_width": POINTS}


def tables(table: BudgetTable, names: DisplayNames = REGISTRY_NAMES) -> dict[str, Table]:
    """The table, and with a baseline the differences, by document name. The CSV is one, long format (a row per
    dataset, method and budget, in the units of aggregate/units.py): it holds the differences in its rows."""
    head = header(table, names)
    cols = columns(head, right_from=head.index("method") + 1)
    keep = head.index("method") + 1
    out = {"": Table("Test worst-group accuracy by validation label budget", cols, rows(table, names),
                     notes=[caption(table, names)], keep=keep, label="tab:label-budget",
                     data=in_units(table.cells, {k: u for k, u in CSV_UNITS.items() if k in table.cells}, names))}
    if table.baseline is not None:
        out["differences"] = Table(f"Paired difference vs {names.method(table.baseline)}", cols,
                                   rows(table, names, differences=True),
                                   notes=[difference_caption(table, names), *(f"- {n}" for n in notes(table))],
                                   keep=keep, label="tab:label-budget-differences")
    return out


def render_rich(table: BudgetTable, names: DisplayNames = REGISTRY_NAMES) -> list[Any]:
    """The table (and with a baseline the differences) fitted to the terminal's width."""
    return [render(t, "table") for t in tables(table, names).values()]


def documents(table: BudgetTable, fmt: str, names: DisplayNames = REGISTRY_NAMES) -> dict[str, str]:
    """As report.documents: Markdown is one document; LaTeX's differences are a file of their own; the CSV
    holds the differences in its rows."""
    return table_documents(tables(table, names), fmt)


# --- figure -----------------------------------------------------------------------------------------


def budget_figure(table: BudgetTable, out: Path, names: DisplayNames = REGISTRY_NAMES,
                  formats: Sequence[str] = FORMATS) -> list[Path]:
    """Per dataset: each method's test worst-group accuracy (mean, interval band clipped to [0, 100]) at each
    budget, the budgets evenly spaced from no group label to all; methods named in one legend beside the panels."""
    plt = pyplot()
    datasets, methods = table.datasets, table.methods
    # colour, marker and line style per method, so methods with the same numbers stay told apart
    style = {m: {"color": f"C{i % 10}", "marker": MARKERS[i % len(MARKERS)],
                 "linestyle": LINESTYLES[i % len(LINESTYLES)]} for i, m in enumerate(methods)}
    x = list(range(len(table.budgets)))
    fig, axes = plt.subplots(1, len(datasets), figsize=(max(6.0, 0.9 * len(x) + 2) * len(datasets), 4.4),
                             squeeze=False, layout="constrained")
    handles = {}
    for ax, dataset in zip(axes[0], datasets, strict=True):
        shown: list[float] = []
        for method in methods:
            cells = [table.cell(dataset, method, b) for b in table.budgets]
            points = [(i, c) for i, c in zip(x, cells, strict=True) if c is not None and not math.isnan(c["mean"])]
            if not points:
                continue
            xs = [i for i, _ in points]
            mean = percent(pd.Series([c["mean"] for _, c in points], dtype=float))
            low = clip_accuracy(percent(pd.Series([c["lower"] for _, c in points], dtype=float)).fillna(mean))
            high = clip_accuracy(percent(pd.Series([c["upper"] for _, c in points], dtype=float)).fillna(mean))
            (line,) = ax.plot(xs, clip_accuracy(mean), label=names.method(method), **style[method])
            ax.fill_between(xs, low, high, color=style[method]["color"], alpha=0.15, linewidth=0)
            handles[method] = line
            shown += [*low, *high]
        set_accuracy_limits(ax, "y", shown)
        ax.set_xticks(x, [b.head() for b in table.budgets], fontsize=8)
        ax.set_xlim(-0.4, len(x) - 0.6)
        ax.set_xlabel("selection rule: share of validation examples with group labels")
        ax.set_ylabel(f"test worst-group accuracy ({ACCURACY.symbol})")
        ax.set_title(names.dataset(dataset))
        ax.grid(alpha=0.3)
    present = [m for m in methods if m in handles]
    fig.legend([handles[m] for m in present], [names.method(m) for m in present], loc="outside right center",
               fontsize=8)
    interval = "95% Student-t" if table.ci == "t" else "95% percentile bootstrap"
    fig.suptitle(f"Test worst-group accuracy by validation label budget\nmean over seeds, {interval} band", fontsize=10)
    return save_figure(plt, fig, out / "label_budget", formats)
