"""The booktabs LaTeX table: the same layout, caption and markers as the other exports (see export.py)."""

from __future__ import annotations

from robustmtl.aggregate.export import (
    METRIC_LABELS,
    CellValue,
    caption,
    code_note,
    footnotes,
    table_columns,
    table_layout,
)
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.summary import Summary
from robustmtl.render.latex import escape as latex_escape


def _tex_value(v: CellValue | None, small_intervals: bool) -> str:
    if v is None:
        return "--"
    mean = rf"\textbf{{{v.mean}}}" if v.best else v.mean
    interval = (rf"{{\scriptsize {v.interval}}}" if small_intervals else v.interval) if v.interval else ""
    marks = (r"$^{\dagger}$" if v.short else "") + (r"$^{\ddagger}$" if v.mixed else "") + (
        r"$^{\S}$" if v.unfinished else "")
    return mean + (f" {interval}" if interval else "") + marks


def to_latex(summary: Summary, small_intervals: bool = False, names: DisplayNames = REGISTRY_NAMES) -> str:
    """A complete `table` float using booktabs (\\usepackage{booktabs}); numbers are never truncated.

    `small_intervals` sets the intervals in \\scriptsize, as many papers do to keep wide tables readable.
    """
    layout = table_layout(summary, pm=r"$\pm$")
    per = len(layout.metrics) + (layout.uniform_n is None)
    spec = "l" + "".join(" " + "c" * per for _ in layout.datasets)
    heads = [rf"\multicolumn{{{per}}}{{c}}{{{latex_escape(names.dataset(d))}}}" for d in layout.datasets]
    rules = " ".join(
        rf"\cmidrule(lr){{{2 + i * per}-{1 + (i + 1) * per}}}" for i in range(len(layout.datasets))
    )
    # the first letter raised only, so "worst AUROC" stays "Worst AUROC"
    sub = [METRIC_LABELS[m][:1].upper() + METRIC_LABELS[m][1:] for m in layout.metrics] + (
        ["$n$"] if layout.uniform_n is None else [])
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
        shown = names.method(method)
        name = "{}" * shown.startswith("[") + latex_escape(shown)  # `\\ [` would read as a row skip
        row = [name + (r"$^{*}$" if method in layout.train_groups else "")]
        for d, m in table_columns(layout):
            row.append(
                layout.n_of(method, d, "--") if m == "n"
                else _tex_value(layout.values.get((method, d, m)), small_intervals)
            )
        out.append(" & ".join(row) + r" \\")
    out += [r"\bottomrule", r"\end{tabular}"]
    tex_marks = {"*": "$^{*}$", "†": r"$^{\dagger}$", "‡": r"$^{\ddagger}$", "§": r"$^{\S}$"}
    notes = [tex_marks[m] + " " + t for m, t in footnotes(layout)]
    notes.append(latex_escape(code_note(layout).rstrip(".")))
    out.append(r"\par\smallskip{\footnotesize " + "; ".join(notes) + ".}")
    out.append(r"\end{table}")
    return "\n".join(out) + "\n"

