"""Aggregate training runs into worst-group tables with confidence intervals over seeds.

Pipeline: load (JSONL -> records) -> select (epoch + hyperparameters) -> summary (intervals) -> export.
Kept free of torch/transformers so `robustmtl aggregate` starts instantly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from robustmtl.aggregate.details import differences_table, hparams_table
from robustmtl.aggregate.export import render_rich, to_csv, to_markdown
from robustmtl.aggregate.hyperparameters import check_no_condition_varies
from robustmtl.aggregate.latex import to_latex
from robustmtl.aggregate.load import Loaded, RunCounts, load_runs
from robustmtl.aggregate.prediction_metrics import RECORD_METRIC, check_metric, from_predictions, shown_metrics
from robustmtl.aggregate.rules import SELECTORS, get_selector
from robustmtl.aggregate.select import RuleInputs, Selector, select_runs
from robustmtl.aggregate.stats import check_ci, paired_difference
from robustmtl.aggregate.summary import Summary, build_cells, build_differences, run_codes
from robustmtl.errors import UserError
from robustmtl.grid.coverage import CellGap, coverage
from robustmtl.layout import GridDir

BOOTSTRAP_MIN_SEEDS = 10

__all__ = [
    "SELECTORS",
    "RunCounts",
    "Selector",
    "Summary",
    "aggregate",
    "differences_table",
    "hparams_table",
    "paired_difference",
    "render_rich",
    "to_csv",
    "to_latex",
    "to_markdown",
]


def aggregate(
    grid_dirs: Sequence[Path | str] | Path | str,
    select: str = "worst-val",
    include_running: bool = False,
    ci: str = "t",
    baseline: str | None = None,
    seed: int = 0,
    few_groups_fraction: float = 0.05,
    few_groups_seed: int = 0,
    metric: str = RECORD_METRIC,
) -> Summary:
    """Load runs under each GRID_DIR, apply the selection rule, and summarise test accuracy per cell.

    `seed` only drives the bootstrap (ci="bootstrap"), so the same inputs always give the same table;
    `few_groups_*` set the validation fraction (and its seed) that the few-groups rule may look at; `metric`
    is the test metric reported beside average accuracy (aggregate/prediction_metrics.py: all but the
    default are computed from the stored predictions at the selected epoch).
    """
    rule = get_selector(select)
    check_metric(metric)
    check_ci(ci)
    dirs = grid_list(grid_dirs)
    loaded = load_scope(dirs, include_running)
    return summarise(loaded, rule.bind(RuleInputs.of(loaded.runs, few_groups_fraction, few_groups_seed)), ci,
                     baseline, seed, coverage_gaps(dirs, loaded.runs), metric)


def grid_list(grid_dirs: Sequence[Path | str] | Path | str) -> list[Path]:
    """The grid directories given, each once, in order."""
    if isinstance(grid_dirs, str | Path):
        grid_dirs = [grid_dirs]
    dirs = list(dict.fromkeys(Path(d) for d in grid_dirs))
    if not dirs:
        raise UserError("no grid directory given")
    return dirs


def load_scope(dirs: Sequence[Path], include_running: bool) -> Loaded:
    """The runs a table may report, refused when a condition varies within a cell (select over it with --by)."""
    loaded = load_runs(dirs, include_running)
    check_no_condition_varies(loaded.runs[loaded.runs["included"] & loaded.runs["report"]])
    return loaded


def summarise(loaded: Loaded, selector: Selector, ci: str, baseline: str | None, seed: int,
              gaps: dict[str, list[CellGap]], metric: str = RECORD_METRIC) -> Summary:
    """One rule (bound to the loaded runs) applied to loaded runs: the Summary every table and figure shows."""
    sel = select_runs(loaded, selector)
    warnings = loaded.warnings + sel.warnings + selector.notes()
    if sel.per_seed.empty:
        raise UserError(f"no run has a test record at its selected epoch ({selector.name}); nothing to report")
    metrics = shown_metrics(metric)
    if metric != RECORD_METRIC:
        sel.per_seed = from_predictions(sel.per_seed, dict(zip(loaded.runs["run_id"], loaded.runs["run_dir"],
                                                               strict=True)), metric)
    cells = build_cells(sel.per_seed, sel.chosen, selector.name, ci, seed, run_codes(loaded.records), metrics)
    if ci == "bootstrap" and cells["n"].between(2, BOOTSTRAP_MIN_SEEDS - 1).any():
        warnings.append(f"percentile bootstrap intervals over fewer than {BOOTSTRAP_MIN_SEEDS} seeds are too narrow "
                        "(they cover the mean less often than 95%); the Student-t interval (--ci t) is the honest "
                        "one at this n")

    differences = None
    if baseline is not None:
        methods = sorted(sel.per_seed["method"].unique())
        if baseline not in methods:
            raise UserError(f"baseline method {baseline!r} not found; methods: {', '.join(methods)}")
        differences = build_differences(sel.per_seed, sel.chosen, baseline, metrics)
    return Summary(
        cells, sel.chosen, sel.per_seed, selector.name, ci, loaded.counts, warnings, baseline, differences, selector,
        loaded.runs, gaps, metrics, loaded.records,
    )


def coverage_gaps(dirs: Sequence[Path], runs: Any) -> dict[str, list[CellGap]]:
    """Per grid directory with a saved spec: the cells with runs that are not done (missing or unfinished)."""
    gaps = {}
    for d in dirs:
        grid = GridDir(d)
        if grid.spec.is_file():
            done = set(runs.loc[runs["complete"] & (runs["grid_dir"] == str(d)), "run_id"])
            found = coverage(grid, done)
            if found:
                gaps[str(d)] = found
    return gaps
