"""Tables by condition: `aggregate --by KEY`, for studies that vary the data or the training regime.

A swept parameter that describes the experiment's condition (the synthetic task's variance ratio,
pre-training or not) must not be selected over like a hyperparameter: each of its values is a row
group of its own. Here the runs are split by the values of the `--by` keys (read from each run's
hparams), every group goes through the same selection as `aggregate` (epoch, then setting per
method), and each cell reports its test average and worst-group accuracy with intervals over seeds,
the paired difference against a baseline method within the same condition, and the mechanism
fields (robustmtl/metrics.py: MECHANISM_FIELDS) at the selected epochs.

A baseline run that lacks a `--by` key (ERM has no `alpha_reg`) is the baseline of every condition
that agrees with it on the keys it has: `--by alpha_reg` compares each L1 strength with the same ERM
runs. Other runs without the key form a condition of their own, shown as "–". Within a row group, runs of
one cell must not differ in a condition the keys leave out, and a method is paired only with baseline runs
of its own condition (aggregate/hyperparameters.py); where none exists the row says "–" and a note why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate.export import method_order
from robustmtl.aggregate.hyperparameters import check_no_condition_varies, paired_differences, parameters_of
from robustmtl.aggregate.load import Loaded, load_runs
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames, with_display_columns
from robustmtl.aggregate.parse import METRICS
from robustmtl.aggregate.rules import get_selector
from robustmtl.aggregate.select import RuleInputs, select_runs
from robustmtl.aggregate.stats import t_interval
from robustmtl.aggregate.units import ACCURACY, POINTS, SHARE, displayed, percent, stat_column, unit_of
from robustmtl.errors import UserError
from robustmtl.metrics import MECHANISM_FIELDS
from robustmtl.params import did_you_mean
from robustmtl.render import Column, Table, render


@dataclass
class ConditionTable:
    """cells: one row per (dataset, condition, method), its columns named and valued as the CSV holds them
    (units.stat_column: `worst_group_acc_mean_pct`, `worst_group_acc_diff_pp`, ...); intervals are 95% Student-t
    over seeds. notes: why some rows have no difference against the baseline (their `diff_note`), once each."""

    by: list[str]
    cells: pd.DataFrame
    baseline: str | None
    select: str
    warnings: list[str]
    notes: list[str] = field(default_factory=list)

    @property
    def mechanism(self) -> list[str]:
        return [f for f in MECHANISM_FIELDS
                if (c := stat_column(f, "mean")) in self.cells and self.cells[c].notna().any()]


def _condition_values(loaded: Loaded, by: Sequence[str]) -> pd.DataFrame:
    """The runs in scope with a column per `by` key (its value, None where a run lacks it); a key no run
    has is a typo, answered with the closest key and the keys whose values differ between the runs."""
    runs = loaded.runs[loaded.runs["included"] & loaded.runs["report"]].copy()
    parameters = parameters_of(runs)
    for key in by:
        values = pd.Series([p.get(key) for p in parameters], index=runs.index, dtype=object)
        if values.isna().all():
            known = {k for p in parameters for k in p}
            varied = sorted(k for k in known if len({_json_key((p.get(k),)) for p in parameters}) > 1)
            raise UserError(f"--by {key!r}: no run has that parameter{did_you_mean(key, known)}; "
                            f"parameters that differ between the runs: {', '.join(varied) or 'none'}")
        runs[key] = values
    return runs


def _json_key(values: tuple[Any, ...]) -> str:
    return json.dumps(values, sort_keys=True)


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _baseline_everywhere(runs: pd.DataFrame, by: Sequence[str], baseline: str | None) -> pd.DataFrame:
    """`runs`, with each baseline run that lacks some `by` key moved into every condition of another method
    of its dataset that agrees with it on the keys it has (and kept in its own where another method is)."""
    if baseline is None:
        return runs
    keys = list(by)
    base = runs["method"] == baseline
    partial = base & runs[keys].map(_missing).any(axis=1)
    if not partial.any():
        return runs

    def same(a: Any, b: Any) -> bool:
        return (_missing(a) and _missing(b)) or _json_key((a,)) == _json_key((b,))

    others = runs.loc[~base, ["dataset", *keys]]  # values may be lists: deduplicated by their JSON
    others = others[~others.map(lambda v: _json_key((None if _missing(v) else v,))).duplicated()]
    placed = [runs[~partial]]
    for _, run in runs[partial].iterrows():
        mine = others[others["dataset"] == run["dataset"]]
        copies = []
        for _, condition in mine.iterrows():
            if all(same(run[k], condition[k]) for k in keys):
                copies.append(run)  # its own condition holds another method too
            elif all(not _missing(condition[k]) and (_missing(run[k]) or same(run[k], condition[k])) for k in keys):
                copies.append(pd.concat([run.drop(keys), condition[keys]]))
        placed.append(pd.DataFrame(copies or [run]))
    return pd.concat(placed, ignore_index=True)


def condition_table(grid_dirs: Sequence[Path], by: Sequence[str], select: str = "worst-val",
                    baseline: str | None = "erm", include_running: bool = False) -> ConditionTable:
    by = list(dict.fromkeys(by))
    rule = get_selector(select)
    loaded = load_runs(list(grid_dirs), include_running)
    runs = _baseline_everywhere(_condition_values(loaded, by), by, baseline)
    warnings = list(loaded.warnings)
    rows: list[dict[str, Any]] = []
    mechanism_cols = [f for f in MECHANISM_FIELDS if f in loaded.records]
    test = loaded.records.loc[loaded.records["split"] == "test", ["run_id", "epoch", "step", *mechanism_cols]]
    several_datasets = runs["dataset"].nunique() > 1
    # a missing value is one condition whether it reads None or NaN (pandas turns None into NaN beside numbers)
    for _, group in runs.groupby([runs[k].map(lambda v: _json_key((None if _missing(v) else v,))) for k in by],
                                 sort=False):
        condition = {k: group[k].iloc[0] for k in by}
        check_no_condition_varies(group)
        ids = set(group["run_id"])
        sub = Loaded(loaded.records[loaded.records["run_id"].isin(ids)], loaded.runs[loaded.runs["run_id"].isin(ids)],
                     loaded.counts, [])
        selector = rule.bind(RuleInputs.of(sub.runs))  # its notes are this condition's
        sel = select_runs(sub, selector)
        warnings += [f"{_describe(condition)}: {w}" for w in sel.warnings + selector.notes()]
        parameters = dict(zip(zip(sel.chosen["dataset"], sel.chosen["method"], strict=True), parameters_of(sel.chosen),
                              strict=True))
        per_seed = sel.per_seed.merge(test, on=["run_id", "epoch", "step"], how="left")
        for (dataset, method), cell in per_seed.groupby(["dataset", "method"], sort=True):
            row: dict[str, Any] = {"dataset": dataset, **condition, "method": method, "n": int(cell["seed"].nunique())}
            for f in (*METRICS, *mechanism_cols):
                iv = t_interval(displayed(f, cell[f].dropna().to_numpy(dtype=float)))
                row[stat_column(f, "mean")], row[stat_column(f, "hw")] = iv.mean, iv.half_width
            if baseline is not None:
                base = per_seed[(per_seed["dataset"] == dataset) & (per_seed["method"] == baseline)]
                diffs, note = paired_differences(
                    f"{method} at {_describe(condition)}" + (f" on {dataset}" if several_datasets else ""), str(method),
                    parameters[(dataset, method)], cell, baseline,
                    None if base.empty else parameters[(dataset, baseline)], base, "in this condition",
                    scale=percent(1.0))
                for metric in METRICS:
                    d = diffs.get(metric)
                    for stat, value in zip(("diff", "diff_lo", "diff_hi"), (d.mean, d.lower, d.upper) if d else
                                           (math.nan,) * 3, strict=True):
                        row[stat_column(metric, stat)] = value
                row["diff_note"] = note  # last, after the columns it explains
            rows.append(row)
    if not rows:
        raise UserError("no reportable runs with test records in scope; nothing to tabulate")
    cells = pd.DataFrame(rows)
    order = {m: i for i, m in enumerate(method_order(cells["method"]))}
    cells = cells.sort_values(["dataset", *by, "method"], key=lambda c: c.map(order) if c.name == "method" else c,
                              kind="mergesort").reset_index(drop=True)
    notes = list(dict.fromkeys(n for n in cells["diff_note"] if n)) if baseline is not None else []
    return ConditionTable(by, cells, baseline, select, warnings, notes)


def _describe(condition: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in condition.items())


def condition_text(value: Any) -> str:
    """A condition's value as every table and figure prints it ("–" for a run without the key)."""
    return "–" if _missing(value) else str(value)


def _num(x: float, digits: int = 1) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pm(mean: float, hw: float, digits: int = 1) -> str:
    return _num(mean, digits) if hw is None or math.isnan(hw) else f"{_num(mean, digits)} ± {_num(hw, digits)}"


def _diff(row: pd.Series, metric: str) -> str:
    diff, lo, hi = (row.get(stat_column(metric, stat), math.nan) for stat in ("diff", "diff_lo", "diff_hi"))
    return "–" if math.isnan(diff) else f"{diff:+.1f} [{lo:+.1f}, {hi:+.1f}]"


DIGITS = {ACCURACY: 1, SHARE: 2, None: 0}  # decimals printed per unit (a count of units: none)


def _stat(row: pd.Series, field: str, intervals: bool) -> str:
    mean, hw = row[stat_column(field, "mean")], row[stat_column(field, "hw")]
    digits = DIGITS[unit_of(field)]
    return _pm(mean, hw, digits) if intervals else _num(mean, digits)


SHORT = {"spurious_variance_ratio": "σ²spur/σ²core", "pretrain_epochs": "pre-train ep.", "probe_y_acc": "probe y",
         "probe_a_acc": "probe a", "reliance_core": "rel. core", "reliance_spurious": "rel. spur.",
         "reliance_noise": "rel. noise", "active_units": "units"}


def table_rows(table: ConditionTable, intervals: bool = True,
               names: DisplayNames = REGISTRY_NAMES) -> tuple[list[str], list[list[str]]]:
    """Header and text cells shared by every format, so the terminal and Markdown never disagree.
    Without `intervals` (the terminal), mechanism fields show their means only."""
    datasets = table.cells["dataset"].nunique() > 1
    header = [*(["dataset"] if datasets else []), *(SHORT.get(k, k) for k in table.by), "method", "n", "avg", "worst"]
    if table.baseline is not None:
        header.append(f"Δworst vs {names.method(table.baseline)}")
    header += [SHORT.get(f, f) for f in table.mechanism]
    rows = []
    for _, r in table.cells.iterrows():
        cells = [*([names.dataset(str(r["dataset"]))] if datasets else []), *(condition_text(r[k]) for k in table.by),
                 names.method(str(r["method"])), str(r["n"]),
                 *(_stat(r, metric, True) for metric in METRICS)]
        if table.baseline is not None:
            cells.append("–" if r["method"] == table.baseline else _diff(r, "worst_group_acc"))
        cells += [_stat(r, f, intervals) for f in table.mechanism]
        rows.append(cells)
    return header, rows


def caption(table: ConditionTable, names: DisplayNames = REGISTRY_NAMES) -> list[str]:
    """The caption's sentence, then its legend: one short paragraph each (the notes one line per method), so no
    format prints them as a single line of hundreds of characters."""
    parts = [f"Test accuracy ({ACCURACY.symbol}) per condition ({', '.join(table.by)}) at the epoch and setting "
             f"chosen by the {table.select} rule within each condition; mean ± half-width of the 95% Student-t "
             "interval over seeds."]
    short = [f"{SHORT[k]} = {k}" for k in table.by if k in SHORT]
    if short:
        parts.append("Columns: " + "; ".join(short) + ".")
    if table.baseline is not None:
        parts.append(f"Δworst: paired difference in worst-group accuracy against {names.method(table.baseline)} over "
                     f"the same seeds, in {POINTS.name}, with its 95% interval.")
    if table.notes:
        parts.append("No Δ (–) where no baseline run pairs:")
        parts += [f"- {note}." for note in table.notes]
    if table.mechanism:
        parts.append(f"Mechanism fields at the same epochs (robustmtl/train/mechanism.py): linear-probe accuracy "
                     f"({ACCURACY.symbol}) for y and a from h (probe y, probe a), each input block's share of the "
                     "margin's gradient × input (rel., a fraction of 1), active units of h.")
    return parts


def report(table: ConditionTable, intervals: bool = True, names: DisplayNames = REGISTRY_NAMES) -> Table:
    """The table to print (see table_rows for `intervals`); its CSV holds the cells as they are (units in the
    column names), with display names beside the keys, floats exact (the condition values are keys)."""
    header, rows = table_rows(table, intervals, names)
    identifying = header.index("method") + 1  # dataset, the condition keys and the method name a row
    return Table("Test accuracy by " + ", ".join(table.by), [Column(h) for h in header], rows,
                 notes=caption(table, names), keep=identifying, data=with_display_columns(table.cells, names),
                 float_format=None)


def to_markdown(table: ConditionTable, names: DisplayNames = REGISTRY_NAMES) -> str:
    return render(report(table, names=names), "markdown")


def to_csv(table: ConditionTable, names: DisplayNames = REGISTRY_NAMES) -> str:
    return render(report(table, names=names), "csv")


def render_rich(table: ConditionTable, names: DisplayNames = REGISTRY_NAMES) -> Any:
    """The terminal table with its caption, fitted to the terminal's width."""
    return render(report(table, intervals=False, names=names), "table")
