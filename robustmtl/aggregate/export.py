"""Render a Summary as a terminal table, Markdown, long CSV, or a booktabs LaTeX table.

All renderers share one layout (rows = methods, columns = dataset x {avg, worst}) and one caption, so
the formats never disagree about what a number means.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pandas as pd
from rich.table import Table
from rich.text import Text

from robustmtl.aggregate.load import METRICS
from robustmtl.aggregate.stats import CI_TYPES
from robustmtl.aggregate.summary import Summary

METHOD_ORDER = ["erm", "jtt", "gdro", "subg", "suby", "rwg", "rwy", "l1", "mtl", "mtl_l1", "ldro"]
METRIC_LABELS = {"avg_acc": "avg", "worst_group_acc": "worst"}
TRAIN_GROUPS_NOTE = "uses training group labels"
SHORT_NOTE = "fewer seeds than the grid asked for"
MIXED_NOTE = "runs from more than one code version"
MISSING = "\u2013"  # en dash


def method_order(methods: Iterable[str]) -> list[str]:
    """Baseline first, then the usual paper order, then anything new alphabetically (stable across runs)."""
    unique = set(methods)
    known = [m for m in METHOD_ORDER if m in unique]
    return known + sorted(unique - set(known))


@dataclass(frozen=True)
class _Value:
    mean: str
    interval: str  # "" when there is none (n = 1)
    best: bool
    short: bool
    n: int
    mixed: bool  # the cell's runs came from more than one code version

    @property
    def marks(self) -> str:
        return ("†" if self.short else "") + ("‡" if self.mixed else "")


@dataclass
class _Layout:
    datasets: list[str]
    methods: list[str]
    values: dict[tuple[str, str, str], _Value]  # (method, dataset, metric)
    uniform_n: int | None
    train_groups: set[str]
    codes: list[str]  # every code version behind the table

    @property
    def any_short(self) -> bool:
        return any(v.short for v in self.values.values())

    @property
    def any_mixed(self) -> bool:
        return any(v.mixed for v in self.values.values())

    def n_of(self, method: str, dataset: str, missing: str = MISSING) -> str:
        v = self.values.get((method, dataset, METRICS[0]))
        return str(v.n) if v else missing


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _interval_text(row: dict, ci: str, pm: str) -> str:
    if row["n"] < 2 or math.isnan(row["lower"]):
        return ""
    if ci == "bootstrap":  # asymmetric: show the bounds, a ± would misstate them
        return f"[{_pct(row['lower'])}, {_pct(row['upper'])}]"
    return f"{pm} {_pct(row['half_width'])}"


def _layout(summary: Summary, pm: str = "±") -> _Layout:
    """Best = highest mean as displayed (one decimal), so visually tied cells are all bold."""
    cells = summary.cells
    shown = (100 * cells["mean"]).round(1)
    best = shown.groupby([cells["dataset"], cells["metric"]]).transform("max")
    values = {}
    for row, is_best in zip(cells.to_dict("records"), (shown == best) & shown.notna(), strict=True):
        values[(row["method"], row["dataset"], row["metric"])] = _Value(
            mean=_pct(row["mean"]) if not math.isnan(row["mean"]) else MISSING,
            interval=_interval_text(row, summary.ci, pm),
            best=bool(is_best),
            short=bool(row["n"] < row["n_expected"]),
            n=int(row["n"]),
            mixed=";" in row["code"],
        )
    ns = set(cells["n"])
    return _Layout(
        datasets=sorted(cells["dataset"].unique()),
        methods=method_order(cells["method"]),
        values=values,
        uniform_n=ns.pop() if len(ns) == 1 else None,
        train_groups=set(cells.loc[cells["uses_train_groups"], "method"]),
        codes=sorted({c for joined in cells["code"] for c in joined.split("; ")}),
    )


def caption(summary: Summary, layout: _Layout | None = None, pm: str = "±") -> str:
    """One sentence saying how numbers were selected, what the interval is, and how many seeds."""
    layout = layout or _layout(summary)
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
    return (
        f"Test accuracy (%) at the epoch and hyperparameters selected by the {sel.label} rule, "
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
    return notes


def code_note(layout: _Layout) -> str:
    """Which code the numbers came from (provenance `code`: commit, +dirty.<hash> for uncommitted edits)."""
    return f"Code: {', '.join(layout.codes)}."


def _columns(layout: _Layout) -> list[tuple[str, str]]:
    """(dataset, metric-or-'n') for every value column; n columns appear only when n varies."""
    cols = []
    for d in layout.datasets:
        cols += [(d, m) for m in METRICS]
        if layout.uniform_n is None:
            cols.append((d, "n"))
    return cols


# --- terminal ---------------------------------------------------------------------------------------


def render_rich(summary: Summary) -> Table:
    """Terminal table; Text objects (not markup) so names with brackets print literally."""
    layout = _layout(summary)
    notes = [f"{m} {t}" for m, t in footnotes(layout)] + [code_note(layout)]
    if summary.counts.excluded_incomplete:
        notes.append(f"{summary.counts.excluded_incomplete} incomplete run(s) excluded (--include-running)")
    table = Table(
        title=Text(f"Selection: {summary.selector.label}"),
        caption=Text("\n".join([caption(summary, layout), *notes])),
    )
    table.add_column("method", overflow="fold")
    for d, m in _columns(layout):
        table.add_column(Text(f"{d}\n{METRIC_LABELS.get(m, m)}"), justify="right", overflow="fold")
    for method in layout.methods:
        row = [Text(method + ("*" if method in layout.train_groups else ""))]
        for d, m in _columns(layout):
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
        table.add_row(*row)
    return table


def coverage_lines(summary: Summary) -> list[str]:
    """What the saved specs asked for and is not done, per grid directory and cell ([] when complete)."""
    from robustmtl.grid.coverage import gap_lines

    lines = []
    for grid_dir, gaps in summary.gaps.items():
        lines.append(f"coverage of {grid_dir}: {len(gaps)} cell(s) of its grid.toml have runs not done:")
        lines += [f"  {line}" for line in gap_lines(gaps)]
    return lines


def coverage_to_markdown(summary: Summary) -> str:
    lines = coverage_lines(summary)
    return "\n".join(["Coverage:", "", *(f"- {_md_escape(line.strip())}" for line in lines)]) + "\n" if lines else ""


def render_hparams_rich(summary: Summary, full: bool = False) -> Table:
    """The chosen setting per cell with its selected epochs, so a reader can rerun or audit the choice.

    `searched` lists only hyperparameters that differed among the compared settings; `full` adds all.
    """
    table = Table(title=Text(f"Chosen hyperparameters ({summary.selector.label})"))
    for name in _hparam_header(summary, full):
        table.add_column(name, overflow="fold")
    for r in _sorted_chosen(summary).itertuples():
        table.add_row(*map(Text, _hparam_row(r, full)))
    return table


DIFFERENCE_HEADER = ("dataset", "method", "metric", "difference", "n")


def _difference_rows(summary: Summary) -> list[tuple[str, ...]]:
    """Paired differences vs the baseline in percentage points, in method order."""
    diffs = summary.differences.copy()
    diffs["_order"] = diffs["method"].map({m: i for i, m in enumerate(method_order(diffs["method"]))})
    rows = []
    for r in diffs.sort_values(["dataset", "_order", "metric"]).itertuples():
        hw = "" if math.isnan(r.half_width) else f" ± {_pct(r.half_width)}"
        rows.append((r.dataset, r.method, METRIC_LABELS.get(r.metric, r.metric), f"{100 * r.mean_diff:+.1f}{hw}",
                     str(r.n)))
    return rows


def _difference_title(summary: Summary) -> str:
    return f"Paired difference vs {summary.baseline} (percentage points, {CI_TYPES['t']})"


def render_differences_rich(summary: Summary) -> Table | None:
    """None when no baseline was asked for."""
    if summary.differences is None:
        return None
    table = Table(title=Text(_difference_title(summary)))
    for name in DIFFERENCE_HEADER:
        table.add_column(name, justify="right" if name in ("difference", "n") else "left", overflow="fold")
    for row in _difference_rows(summary):
        table.add_row(*(Text(c) for c in row))
    return table


def differences_to_markdown(summary: Summary) -> str:
    """Markdown version of render_differences_rich ('' without a baseline)."""
    if summary.differences is None:
        return ""
    lines = [f"{_difference_title(summary)}:", "", "| " + " | ".join(DIFFERENCE_HEADER) + " |",
             "|" + "---|" * len(DIFFERENCE_HEADER)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in _difference_rows(summary)]
    return "\n".join(lines) + "\n"


def _sorted_chosen(summary: Summary) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(method_order(summary.chosen["method"]))}
    return summary.chosen.assign(_o=summary.chosen["method"].map(order)).sort_values(["dataset", "_o"])


def _kv(d: dict) -> str:
    return ", ".join(
        f"{k}={v if isinstance(v, str | int | float | bool) else json.dumps(v)}" for k, v in d.items()
    )


def _hparam_header(summary: Summary, full: bool) -> list[str]:
    sel = summary.selector
    score = f"{sel.split} {METRIC_LABELS.get(getattr(sel, 'metric', ''), 'score')}"
    cols = ["dataset", "method", "setting", "model", score, "seeds", "epochs (seed:epoch)", "searched"]
    return [*cols, "all hparams"] if full else cols


def _hparam_row(r: Any, full: bool) -> list[str]:  # r: an itertuples() row of Summary.chosen
    epochs = " ".join(f"{s}:{e}" for s, e in sorted(r.epochs.items())) if isinstance(r.epochs, dict) else ""
    row = [r.dataset, r.method, r.setting_id, r.model, _pct(r.score), f"{r.n_seeds}/{r.n_expected}", epochs]
    row.append(_kv(r.searched) or "(one setting)")
    return [*row, _kv(dict(sorted(r.hparams.items())))] if full else row


# --- markdown / csv ---------------------------------------------------------------------------------


def _md_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def to_markdown(summary: Summary) -> str:
    """Pipe table followed by the caption and footnotes (Markdown tables have no caption syntax)."""
    layout = _layout(summary)
    cols = _columns(layout)
    header = ["Method", *(f"{_md_escape(d)} {METRIC_LABELS.get(m, m)}" for d, m in cols)]
    lines = ["| " + " | ".join(header) + " |", "|:--" + "|--:" * len(cols) + "|"]
    for method in layout.methods:
        row = [_md_escape(method) + ("\\*" if method in layout.train_groups else "")]
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
    lines.append(_md_escape(code_note(layout)))
    return "\n".join(lines) + "\n"


def hparams_to_markdown(summary: Summary, full: bool = False) -> str:
    """Markdown version of render_hparams_rich."""
    header = _hparam_header(summary, full)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in _sorted_chosen(summary).itertuples():
        lines.append("| " + " | ".join(_md_escape(c) for c in _hparam_row(r, full)) + " |")
    return "\n".join(lines) + "\n"


def to_csv(summary: Summary) -> str:
    """Long format (one row per dataset x method x metric), fractions not percentages, for scripts."""
    return summary.cells.to_csv(index=False, lineterminator="\n", float_format="%.10g")


# --- latex ------------------------------------------------------------------------------------------

_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(s: str) -> str:
    """Escape TeX specials in user-chosen names (method/dataset strings like mtl_l1)."""
    return "".join(_LATEX_ESCAPES.get(c, c) for c in s)


def _tex_value(v: _Value | None, small_intervals: bool) -> str:
    if v is None:
        return "--"
    mean = rf"\textbf{{{v.mean}}}" if v.best else v.mean
    interval = (rf"{{\scriptsize {v.interval}}}" if small_intervals else v.interval) if v.interval else ""
    marks = (r"$^{\dagger}$" if v.short else "") + (r"$^{\ddagger}$" if v.mixed else "")
    return mean + (f" {interval}" if interval else "") + marks


def to_latex(summary: Summary, small_intervals: bool = False) -> str:
    """A complete `table` float using booktabs (\\usepackage{booktabs}); numbers are never truncated.

    `small_intervals` sets the intervals in \\scriptsize, as many papers do to keep wide tables readable.
    """
    layout = _layout(summary, pm=r"$\pm$")
    per = len(METRICS) + (layout.uniform_n is None)
    spec = "l" + "".join(" " + "c" * per for _ in layout.datasets)
    heads = [rf"\multicolumn{{{per}}}{{c}}{{{latex_escape(d)}}}" for d in layout.datasets]
    rules = " ".join(
        rf"\cmidrule(lr){{{2 + i * per}-{1 + (i + 1) * per}}}" for i in range(len(layout.datasets))
    )
    sub = [METRIC_LABELS[m].capitalize() for m in METRICS] + (["$n$"] if layout.uniform_n is None else [])
    token = "PLUSMINUSTOKEN"  # survives escaping, then becomes math-mode \pm
    cap = latex_escape(caption(summary, layout, pm=token)).replace(token, r"$\pm$")
    out = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{cap}}}",
        r"\label{tab:worst-group}",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(["", *heads]) + r" \\",
        rules,
        " & ".join(["Method", *(sub * len(layout.datasets))]) + r" \\",
        r"\midrule",
    ]
    for method in layout.methods:
        name = "{}" * method.startswith("[") + latex_escape(method)  # `\\ [` would read as a row skip
        row = [name + (r"$^{*}$" if method in layout.train_groups else "")]
        for d, m in _columns(layout):
            row.append(
                layout.n_of(method, d, "--") if m == "n"
                else _tex_value(layout.values.get((method, d, m)), small_intervals)
            )
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    tex_marks = {"*": "$^{*}$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$"}
    notes = [tex_marks[m] + " " + t for m, t in footnotes(layout)]
    notes.append(latex_escape(code_note(layout).rstrip(".")))
    out.append(r"\par\smallskip{\footnotesize " + "; ".join(notes) + ".}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"
