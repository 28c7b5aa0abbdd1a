"""The Summary handed to exporters, and the step that turns per-seed results into long-format cells."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from robustmtl.aggregate.hyperparameters import paired_differences, parameters_of
from robustmtl.aggregate.load import RunCounts
from robustmtl.aggregate.parse import METRICS
from robustmtl.aggregate.rules import SELECTORS
from robustmtl.aggregate.select import CELL, Selector
from robustmtl.aggregate.stats import cell_rng, interval
from robustmtl.grid.coverage import CellGap

CELL_COLUMNS = [
    "dataset",
    "method",
    "metric",
    "mean",
    "lower",
    "upper",
    "half_width",
    "n",
    "n_expected",
    "n_unfinished",
    "select",
    "ci",
    "uses_train_groups",
    "code",
]
UNKNOWN_CODE = "unknown"
DIFF_COLUMNS = ["dataset", "method", "baseline", "metric", "mean_diff", "lower", "upper", "half_width", "n", "note"]


@dataclass
class Summary:
    """Everything a table needs. Accuracies are fractions in [0, 1]; exporters print percentages.

    cells: long format, one row per (dataset, method, metric) (columns CELL_COLUMNS).
    chosen: one row per (dataset, method): setting_id, model, hparams, searched (the hyperparameters that
        differed among the compared settings), epochs (seed -> selected epoch), score (mean selection metric).
    per_seed: the test metrics of every reported run at its selected epoch.
    differences: paired (method - baseline) per (dataset, method, metric), when a baseline was asked for;
        `note` says why a row has no numbers (no baseline run of the method's condition).
    runs: every run found (Loaded.runs), helper runs included, for the cost table.
    gaps: per grid directory, the cells of its saved spec with runs not done (coverage).
    records: every record of those runs (Loaded.records), so a figure of other epochs or settings (curves, the
        sweep heatmap) reads the runs once, with the table.
    """

    cells: pd.DataFrame
    chosen: pd.DataFrame
    per_seed: pd.DataFrame
    select: str
    ci: str
    counts: RunCounts
    warnings: list[str] = field(default_factory=list)
    baseline: str | None = None
    differences: pd.DataFrame | None = None
    rule: Selector | None = None
    runs: pd.DataFrame | None = None
    gaps: dict[str, list[CellGap]] = field(default_factory=dict)
    metrics: list[str] = field(default_factory=lambda: list(METRICS))  # the columns shown per dataset
    records: pd.DataFrame | None = None

    @property
    def selector(self) -> Selector:
        return self.rule or SELECTORS[self.select]


def run_codes(records: pd.DataFrame) -> dict[str, frozenset[str]]:
    """run id → the code versions (provenance `code` field) its records were written by; "unknown" before
    robustmtl recorded it. A run resumed under other code has several."""
    codes = records["code"].fillna(UNKNOWN_CODE) if "code" in records else pd.Series(UNKNOWN_CODE, records.index)
    pairs = pd.DataFrame({"run": records["run_id"], "code": codes}).drop_duplicates()  # ~3x a groupby's speed
    found: dict[str, set[str]] = {}
    for run, code in zip(pairs["run"], pairs["code"], strict=True):
        found.setdefault(run, set()).add(code)
    return {run: frozenset(c) for run, c in found.items()}


def build_cells(
    per_seed: pd.DataFrame, chosen: pd.DataFrame, select: str, ci: str, seed: int,
    codes: dict[str, frozenset[str]] | None = None, metrics: Sequence[str] = METRICS,
) -> pd.DataFrame:
    """Mean and interval over seeds for every cell; n_expected kept so short cells get flagged, not mixed.

    `n_unfinished` counts runs without DONE in the cell (only with --include-running): their numbers may
    still change. `code` lists the code versions of the cell's runs ("; "-separated): more than one flags a cell whose
    numbers came from different commits.
    """
    info = chosen.set_index(CELL)
    codes = codes or {}
    rows = []
    for (dataset, method), group in per_seed.groupby(CELL, sort=True):
        cell_codes = sorted(set().union(*(codes.get(r, {UNKNOWN_CODE}) for r in group["run_id"])))
        for metric in metrics:
            rng = cell_rng(seed, str(dataset), str(method), metric) if ci == "bootstrap" else None
            iv = interval(group[metric].to_numpy(dtype=float), ci, rng)
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "metric": metric,
                    "mean": iv.mean,
                    "lower": iv.lower,
                    "upper": iv.upper,
                    "half_width": iv.half_width,
                    "n": iv.n,
                    "n_expected": int(info.loc[(dataset, method), "n_expected"]),
                    "n_unfinished": int((~group["complete"].astype(bool)).sum()),
                    "select": select,
                    "ci": ci,
                    "uses_train_groups": bool(info.loc[(dataset, method), "uses_train_groups"]),
                    "code": "; ".join(cell_codes),
                }
            )
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def build_differences(per_seed: pd.DataFrame, chosen: pd.DataFrame, baseline: str,
                      metrics: Sequence[str] = METRICS) -> pd.DataFrame:
    """Paired by seed within each dataset, and only between runs of one condition (they may differ in the
    hyperparameters of either method alone). A method that cannot be paired gets rows without numbers and a
    `note` saying why, so the table never shows a difference across conditions, nor drops a method silently."""
    parameters = dict(zip(zip(chosen["dataset"], chosen["method"], strict=True), parameters_of(chosen), strict=True))
    rows = []
    for dataset, group in per_seed.groupby("dataset", sort=True):
        base = group[group["method"] == baseline]
        for method, g in group[group["method"] != baseline].groupby("method", sort=True):
            diffs, note = paired_differences(
                f"{method} on {dataset}", str(method), parameters[(dataset, method)], g, baseline,
                None if base.empty else parameters[(dataset, baseline)], base, "on this dataset", metrics=metrics)
            for metric in metrics:
                d = diffs.get(metric)
                rows.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "baseline": baseline,
                        "metric": metric,
                        "mean_diff": d.mean if d else math.nan,
                        "lower": d.lower if d else math.nan,
                        "upper": d.upper if d else math.nan,
                        "half_width": d.half_width if d else math.nan,
                        "n": d.n if d else 0,
                        "note": note,
                    }
                )
    return pd.DataFrame(rows, columns=DIFF_COLUMNS)
