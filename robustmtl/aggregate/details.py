"""The tables beside the main one: chosen hyperparameters, paired differences to a baseline, coverage."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from robustmtl.aggregate.export import METRIC_LABELS, in_units, method_order, percent_text, points_text
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.stats import CI_TYPES
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY, POINTS
from robustmtl.grid.coverage import gap_lines
from robustmtl.render import MISSING, Column, Table
from robustmtl.render.markdown import escape as md_escape


def coverage_lines(summary: Summary) -> list[str]:
    """What the saved specs asked for and is not done, per grid directory and cell ([] when complete)."""
    lines = []
    for grid_dir, gaps in summary.gaps.items():
        lines.append(f"coverage of {grid_dir}: {len(gaps)} cell(s) of its grid.toml have runs not done:")
        lines += [f"  {line}" for line in gap_lines(gaps)]
    return lines


def coverage_to_markdown(summary: Summary) -> str:
    lines = coverage_lines(summary)
    return "\n".join(["Coverage:", "", *(f"- {md_escape(line.strip())}" for line in lines)]) + "\n" if lines else ""


def hparams_table(summary: Summary, full: bool = False, names: DisplayNames = REGISTRY_NAMES) -> Table:
    """The chosen setting per cell with its selected epochs, so a reader can rerun or audit the choice.

    `searched` lists only hyperparameters that differed among the compared settings; `full` adds all. Its CSV
    holds one row per cell with the hyperparameters as JSON."""
    header = hparam_header(summary, full)
    return Table(f"Chosen hyperparameters ({summary.selector.label})",
                 [Column(name, words=i >= HPARAM_TEXT_FROM) for i, name in enumerate(header)],
                 hparam_rows(summary, full, names), keep=2, label="tab:hparams", data=_hparams_frame(summary, names))


DIFFERENCE_HEADER = ("dataset", "method", "metric", "difference", "n")


def difference_rows(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> list[tuple[str, ...]]:
    """Paired differences vs the baseline in percentage points, in method order."""
    if summary.differences is None:
        return []
    diffs = summary.differences.copy()
    diffs["_order"] = diffs["method"].map({m: i for i, m in enumerate(method_order(diffs["method"]))})
    rows: list[tuple[str, ...]] = []
    for r in diffs.sort_values(["dataset", "_order", "metric"]).itertuples():
        difference = difference_text(r.mean_diff, r.half_width)
        rows.append((names.dataset(str(r.dataset)), names.method(str(r.method)), METRIC_LABELS.get(r.metric, r.metric),
                     difference, str(r.n)))
    return rows


def difference_text(mean_diff: float, half_width: float) -> str:
    """A paired difference as every table prints it: signed points ± the half-width of its t interval."""
    hw = "" if math.isnan(half_width) else f" ± {percent_text(half_width)}"
    return MISSING if math.isnan(mean_diff) else f"{points_text(mean_diff)}{hw}"


def difference_notes(summary: Summary) -> list[str]:
    """Why some methods have no paired difference, once per (dataset, method), in table order."""
    if summary.differences is None:
        return []
    return list(dict.fromkeys(note for note in summary.differences["note"] if note))


def difference_title(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> str:
    return f"Paired difference vs {names.method(str(summary.baseline))} ({POINTS.name}, {CI_TYPES['t']})"


DIFFERENCE_UNITS = {"mean_diff": POINTS, "lower": POINTS, "upper": POINTS, "half_width": POINTS}


def differences_table(summary: Summary, names: DisplayNames = REGISTRY_NAMES) -> Table | None:
    """The paired differences to the baseline, and why some methods have none (None without a baseline)."""
    if summary.differences is None:
        return None
    return Table(difference_title(summary, names),
                 [Column(name, "right" if name in ("difference", "n") else "") for name in DIFFERENCE_HEADER],
                 difference_rows(summary, names), notes=[f"- {note}" for note in difference_notes(summary)],
                 label="tab:differences", data=in_units(summary.differences, DIFFERENCE_UNITS, names))


def sorted_chosen(summary: Summary) -> pd.DataFrame:
    order = {m: i for i, m in enumerate(method_order(summary.chosen["method"]))}
    return summary.chosen.assign(_o=summary.chosen["method"].map(order)).sort_values(["dataset", "_o"])


def _kv(d: dict) -> str:
    return ", ".join(
        f"{k}={v if isinstance(v, str | int | float | bool) else json.dumps(v)}" for k, v in d.items()
    )


HPARAM_TEXT_FROM = 6  # epochs, searched and all hparams: lists that wrap between their items


def hparam_header(summary: Summary, full: bool = False) -> list[str]:
    sel = summary.selector
    score = f"{sel.split} {METRIC_LABELS.get(getattr(sel, 'metric', ''), 'score')} ({ACCURACY.symbol})"
    cols = ["dataset", "method", "setting", "model", score, "seeds", "epochs (seed:epoch)", "searched"]
    return [*cols, "all hparams"] if full else cols


def _hparam_row(r: Any, full: bool, names: DisplayNames) -> list[str]:  # r: an itertuples() row of Summary.chosen
    epochs = " ".join(f"{s}:{e}" for s, e in sorted(r.epochs.items())) if isinstance(r.epochs, dict) else ""
    row = [names.dataset(r.dataset), names.method(r.method), r.setting_id, r.model, percent_text(r.score),
           f"{r.n_seeds}/{r.n_expected}", epochs]
    row.append(_kv(r.searched) or "(one setting)")
    return [*row, _kv(dict(sorted(r.hparams.items())))] if full else row


def hparam_rows(summary: Summary, full: bool = False, names: DisplayNames = REGISTRY_NAMES) -> list[list[str]]:
    """The chosen setting of every cell, in table order, as strings (one list per row of hparam_header)."""
    return [_hparam_row(r, full, names) for r in sorted_chosen(summary).itertuples()]


def _hparams_frame(summary: Summary, names: DisplayNames) -> pd.DataFrame:
    """One row per cell: the chosen setting, its score (an accuracy) and seeds, and its hyperparameters as JSON."""
    chosen = sorted_chosen(summary)
    for column in ("hparams", "searched", "epochs"):
        chosen[column] = [json.dumps(v, sort_keys=True) for v in chosen[column]]
    columns = ["dataset", "method", "setting_id", "model", "score", "n_seeds", "n_expected", "epochs", "searched",
               "hparams"]
    return in_units(chosen[columns], {"score": ACCURACY}, names)
