"""The main worst-group table of a Summary: terminal, Markdown and long CSV (LaTeX: latex.py).

Its layout (a header per dataset, the best mean in bold, footnote marks) is its own; escaping and the CSV writer
are robustmtl/render's, like every other table's. All formats share one layout (rows = methods, columns =
dataset x {avg, worst}) and one caption, so the formats never disagree about what a number means. Every number
is in the unit aggregate/units.py gives it, and every method and dataset is printed by its display name
(aggregate/names.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd
from rich.text import Text

from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames, with_display_columns
from robustmtl.aggregate.prediction_metrics import LOWER_IS_BETTER, PREDICTION_METRICS, RECORD_METRIC
from robustmtl.aggregate.stats import CI_TYPES
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY, POINTS, Unit, column, percent
from robustmtl.registry import METHODS
from robustmtl.render import MISSING, Column
from robustmtl.render.csv import frame_text
from robustmtl.render.markdown import escape as md_escape
from robustmtl.render.terminal import FittedTable

METRIC_LABELS = {**{m.name: m.label for m in PREDICTION_METRICS.values()}, "avg_acc": "avg",
                 "worst_group_acc": "worst"}
TRAIN_GROUPS_NOTE = "uses training group labels"
SHORT_NOTE = "fewer seeds than the grid asked for"
MIXED_NOTE = "runs from more than one code version"
UNFINISHED_NOTE = "includes runs that have not finished (--include-running)"


def method_order(methods: Iterable[str]) -> list[str]:
    """The registry's order (baseline first, then the paper's), then anything unknown alphabetically."""
    unique = set(methods)
    known = [m for m in METHODS if m in unique]
    return known + sorted(unique - set(known))


@dataclass(frozen=True)
class CellValue:
    mean: str
    interval: str  # "" when there is none (n = 1)
    best: bool
    short: bool
    n: int
    mixed: bool  # the cell's runs came from more than one code version
    unfinished: bool  # some of the cell's runs have no DONE yet

    @property
    def marks(self) -> str:
        return ("†" if self.short else "") + ("‡" if self.mixed else "") + ("§" if self.unfinished else "")


@dataclass
class _Layout:
    datasets: list[str]
    methods: list[str]
    values: dict[tuple[str, str, str], CellValue]  # (method, dataset, metric)
    uniform_n: int | None
    train_groups: set[str]
    codes: list[str]  # every code version behind the table
    metrics: list[str]  # the columns per dataset

    @property
    def any_short(self) -> bool:
        return any(v.short for v in self.values.values())

    @property
    def any_mixed(self) -> bool:
        return any(v.mixed for v in self.values.values())

    @property
    def any_unfinished(self) -> bool:
        return any(v.unfinished for v in self.values.values())

    def n_of(self, method: str, dataset: str, missing: str = MISSING) -> str:
        v = self.values.get((method, dataset, self.metrics[0]))
        return str(v.n) if v else missing


def percent_text(x: float) -> str:
    """An accuracy (a fraction) as every table prints it: percent, one decimal."""
    return f"{percent(x):.1f}"


def points_text(x: float) -> str:
    """A difference of accuracies (fractions) as every table prints it: signed percentage points, one decimal."""
    return f"{percent(x):+.1f}"


def interval_text(row: dict, ci: str, pm: str = "±") -> str:
    """A cell's interval as every table prints it: ± half-width, or the bounds of an asymmetric bootstrap."""
    if row["n"] < 2 or math.isnan(row["lower"]):
        return ""
    if ci == "bootstrap":  # asymmetric: show the bounds, a ± would misstate them
        return f"[{percent_text(row['lower'])}, {percent_text(row['upper'])}]"
    return f"{pm} {percent_text(row['half_width'])}"


def table_layout(summary: Summary, pm: str = "±") -> _Layout:
    """Best = highest mean as displayed (one decimal; lowest for an error such as ECE), so visually tied cells
    are all bold."""
    cells = summary.cells
    lower = cells["metric"].isin(LOWER_IS_BETTER)
    shown = percent(cells["mean"]).round(1)
    signed = shown.where(~lower, -shown)
    best_signed = signed.groupby([cells["dataset"], cells["metric"]]).transform("max")
    best = best_signed.where(~lower, -best_signed)
    values = {}
    for row, is_best in zip(cells.to_dict("records"), (shown == best) & shown.notna(), strict=True):
        values[(row["method"], row["dataset"], row["metric"])] = CellValue(
            mean=percent_text(row["mean"]) if not math.isnan(row["mean"]) else MISSING,
            interval=interval_text(row, summary.ci, pm),
            best=bool(is_best),
            short=bool(row["n"] < row["n_expected"]),
            n=int(row["n"]),
            mixed=";" in row["code"],
            unfinished=bool(row["n_unfinished"] > 0),
        )
    ns = set(cells["n"])
    return _Layout(
        datasets=sorted(cells["dataset"].unique()),
        methods=method_order(cells["method"]),
        values=values,
        uniform_n=ns.pop() if len(ns) == 1 else None,
        train_groups=set(cells.loc[cells["uses_train_groups"], "method"]),
        codes=sorted({c for joined in cells["code"] for c in joined.split("; ")}),
        metrics=list(summary.metrics),
    )


def caption(summary: Summary, layout: _Layout | None = None, pm: str = "±") -> str:
    """One sentence saying how numbers were selected, what the interval is, and how many seeds."""
    layout = layout or table_layout(summary)
    sel = summary.selector
    interval = (
        f"{pm} half-width of the {CI_TYPES['t']}" if summary.ci == "t" else f"[{CI_TYPES['bootstrap']}]"
    )
    n = (
        f"n = {layout.uniform_n} seeds per cell"
        if layout.uniform_n is not None
        else "n seeds per cell as shown"
    )
    single = ", none when n = 1" if any(v.n == 1 for v in layout.values.values()) else ""
    # what came from the stored predictions: any metric but the records' two (avg_acc only when alone)
    shown = [m for m in layout.metrics if m != RECORD_METRIC and (m != "avg_acc" or layout.metrics == ["avg_acc"])]
    stored = f"({ACCURACY.symbol}, from the stored predictions)"
    if shown == ["avg_acc"]:
        what = f"Test average accuracy {stored}"
    elif shown:
        what = (f"Test average accuracy ({ACCURACY.symbol}) and "
                f"{', '.join(PREDICTION_METRICS[m].description for m in shown)} {stored}")
    else:
        what = f"Test accuracy ({ACCURACY.symbol})"
    return (
        f"{what} at the epoch and hyperparameters selected by the {sel.label} rule, "
        f"maximising {sel.description}; mean over seeds {interval}{single}; {n}."
    )


def footnotes(layout: _Layout) -> list[tuple[str, str]]:
    """(marker name, text) pairs for markers that actually appear, so legends never list unused symbols."""
    notes = []
    if layout.train_groups:
        notes.append(("*", TRAIN_GROUPS_NOTE))
    if layout.any_short:
        notes.append(("†", SHORT_NOTE))
    if layout.any_mixed:
        notes.append(("‡", MIXED_NOTE))
    if layout.any_unfinished:
        notes.append(("§", UNFINISHED_NOTE))
    return notes


def code_note(layout: _Layout) -> str:
    """Which code the numbers came from (provenance `code`: commit, +dirty.<hash> for uncommitted edits)."""
    return f"Code: {', '.join(layout.codes)}."


def table_columns(layout: _Layout) -> list[tuple[str, str]]:
    """(dataset, metric-or-'n') for every value column; n columns appear only when n varies."""
    cols = []
    for d in layout.datasets:
        cols += [(d, m) for m in layout.metrics]
        if layout.uniform_n is None:
            cols.append((d, "n"))
    return cols


# --- terminal ---------------------------------------------------------------------------------------


def render_rich(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> FittedTable:
    """Terminal table fitted to the terminal's width, then its caption and notes at that width (a table's own
    caption wraps to the table's, often narrow, width). Text objects (not markup): names with brackets print
    literally."""
    layout = table_layout(summary)
    notes = [f"{m} {t}" for m, t in footnotes(layout)] + [code_note(layout)]
    if summary.counts.excluded_incomplete:
        notes.append(f"{summary.counts.excluded_incomplete} incomplete run(s) excluded (--include-running)")
    columns = [Column("method"), *(Column(f"{names.dataset(d)}\n{METRIC_LABELS.get(m, m)}", align="right")
                                   for d, m in table_columns(layout))]
    rows = []
    for method in layout.methods:
        row = [Text(names.method(method) + ("*" if method in layout.train_groups else ""))]
        for d, m in table_columns(layout):
            if m == "n":
                row.append(Text(layout.n_of(method, d)))
                continue
            v = layout.values.get((method, d, m))
            if v is None:
                row.append(Text(MISSING))
                continue
            cell = Text(v.mean, style="bold") if v.best else Text(v.mean)  # bold the mean only
            cell.append((" " + v.interval if v.interval else "") + v.marks, style="not bold")
            row.append(cell)
        rows.append(row)
    return FittedTable(f"Selection: {summary.selector.label}", columns, rows, keep=1,
                       caption="\n".join([caption(summary, layout), *notes]))


# --- markdown / csv ---------------------------------------------------------------------------------


def to_markdown(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> str:
    """Pipe table followed by the caption and footnotes (Markdown tables have no caption syntax)."""
    layout = table_layout(summary)
    cols = table_columns(layout)
    header = ["Method", *(f"{md_escape(names.dataset(d))} {METRIC_LABELS.get(m, m)}" for d, m in cols)]
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * len(cols) + "|"]
    for method in layout.methods:
        row = [md_escape(names.method(method)) + ("\\*" if method in layout.train_groups else "")]
        for d, m in cols:
            v = layout.values.get((method, d, m))
            if m == "n":
                row.append(layout.n_of(method, d))
            elif v is None:
                row.append(MISSING)
            else:
                mean = f"**{v.mean}**" if v.best else v.mean
                row.append(f"{mean}{' ' + v.interval if v.interval else ''}{v.marks}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", caption(summary, layout)]
    lines += [("\\*" if m == "*" else m) + " " + t for m, t in footnotes(layout)]
    lines.append(md_escape(code_note(layout)))
    return "\n".join(lines) + "\n"


CSV_UNITS = {"mean": ACCURACY, "lower": ACCURACY, "upper": ACCURACY, "half_width": POINTS}


def in_units(frame: pd.DataFrame, units: dict[str, Unit], names: DisplayNames) -> pd.DataFrame:
    """A frame as a CSV holds it: the columns in `units` converted from fractions to percent (or points) and
    named with their unit's suffix, and the display names beside the method and dataset keys."""
    out = frame.copy()
    for name in units:
        out[name] = percent(out[name])
    out = out.rename(columns={name: column(name, unit) for name, unit in units.items()})
    return with_display_columns(out, names)


def to_csv(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> str:
    """Long format (one row per dataset x method x metric) for scripts, in the units of aggregate/units.py."""
    return frame_text(in_units(summary.cells, CSV_UNITS, names))
