"""`data check`'s report as a terminal table, Markdown, long CSV or JSON (one layout, so formats agree).

Its tables are rendered by robustmtl/render, as the results tables are: a group table pasted next to a results
table reads the same way.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from rich.console import Group, RenderableType
from rich.text import Text

from robustmtl.data.check import CheckReport, GroupTable
from robustmtl.errors import UserError
from robustmtl.render import MISSING, Table, columns, render
from robustmtl.render.csv import frame_text
from robustmtl.render.markdown import escape as md_escape

FORMATS = ("table", "markdown", "csv", "json")
REGIME_HEADER = ("block", "dims", "mean", "std", "leading variance", "separability %", "train label accuracy %")
REGIME_NOTE = ("leading variance: the largest variance of a direction within the block (d·mean² + std²); "
               "separability: Bayes accuracy of the block's own variable (y for core, a for spurious) from the "
               "block alone; train label accuracy: predicting y from the block alone in training")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return fmt


def _pct(x: float) -> str:
    return MISSING if math.isnan(x) else f"{100 * x:.1f}"


def _header(table: GroupTable) -> list[str]:
    return ["group", *(f"{split} {col}" for split in table.counts for col in ("n", "%"))]


def _rows(table: GroupTable) -> list[list[str]]:
    rows = []
    for k, name in enumerate(table.names):
        cells = [name]
        for split, counts in table.counts.items():
            cells += [str(counts[k]), _pct(table.share(split, k))]
        rows.append(cells)
    totals = ["all examples"]
    for total in table.totals.values():
        totals += [str(total), "" if table.overlapping else "100.0"]
    return [*rows, totals]


def summary_line(report: CheckReport) -> str:
    sizes = ", ".join(f"{n} {split}" for split, n in report.tables[0].totals.items())
    where = f" from {report.data_root}" if report.data_root else ""
    return f"{report.dataset}{where}: {sizes} examples"


def agreement_line(report: CheckReport) -> str:
    a = report.agreement
    equal = f"a = y for {_pct(a.equal_rate)}% of examples; " if a.equal_rate is not None else ""
    return (f"training split: {equal}the attribute alone predicts the label for {_pct(a.attribute_accuracy)}% "
            f"(the majority label alone: {_pct(a.majority_accuracy)}%)")


def _regime_rows(report: CheckReport) -> list[list[str]]:
    assert report.regime is not None
    return [[b.block, str(b.dims), f"{b.mean:.3g}", f"{b.std:.3g}", f"{b.leading_variance:.3g}",
             _pct(b.separability), _pct(b.label_accuracy_train)] for b in report.regime.blocks]


def _group_table(table: GroupTable) -> Table:
    header = _header(table)
    note = "shares of the split; groups overlap" if table.overlapping else "shares of the split"
    return Table(_sentence(table.title), columns(header, right_from=1), _rows(table), notes=[note])


def _regime_table(report: CheckReport) -> Table:
    return Table("Synthetic regime (robustmtl/data/regime.py)", columns(REGIME_HEADER, right_from=1),
                 _regime_rows(report), notes=[_sentence(REGIME_NOTE) + "."])


def render_rich(report: CheckReport) -> RenderableType:
    parts: list[RenderableType] = [Text(summary_line(report))]
    parts += [render(_group_table(table), "table") for table in report.tables]
    parts.append(Text(agreement_line(report)))
    if report.regime is not None:
        parts.append(render(_regime_table(report), "table"))
        parts.append(Text(report.regime.line, style="bold"))
    return Group(*parts)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:]


def to_markdown(report: CheckReport) -> str:
    lines = [md_escape(summary_line(report)) + ".", ""]
    for table in report.tables:
        lines += [render(_group_table(table), "markdown")]
    lines += [md_escape(_sentence(agreement_line(report))) + ".", ""]
    if report.regime is not None:
        lines += [render(_regime_table(report), "markdown"), f"**{md_escape(report.regime.line)}**", ""]
    for title, items in (("Problems", report.problems), ("Warnings", report.warnings)):
        if items:
            lines += [f"{title}:", "", *(f"- {md_escape(item)}" for item in items), ""]
    return "\n".join(lines)


def to_csv(report: CheckReport) -> str:
    """Long format: one row per group table × group × split, shares as fractions (for scripts)."""
    rows = [{"table": t.title.split(" (")[0], "group": name, "split": split, "n": counts[k],
             "share": t.share(split, k)}
            for t in report.tables for split, counts in t.counts.items() for k, name in enumerate(t.names)]
    return frame_text(pd.DataFrame(rows, columns=["table", "group", "split", "n", "share"]))


def _finite(value: Any) -> Any:
    """JSON has no NaN: an undefined number (a share of an empty split) is null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def to_json(report: CheckReport) -> str:
    return json.dumps(_finite(report.to_json()), indent=2, allow_nan=False, default=str) + "\n"


def render_text(report: CheckReport, fmt: str) -> str:
    """The machine-readable formats (the terminal table is rendered by rich)."""
    return {"markdown": to_markdown, "csv": to_csv, "json": to_json}[fmt](report)
