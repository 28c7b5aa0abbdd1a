"""The grid's plan, and coverage: the runs it asks for against the runs that are done.

`grid submit` saves the expanded spec as GRID_DIR/plan.jsonl (one line per run: id, dataset, method,
seed, setting, and whether other runs require it): the one record of what a grid is that status, coverage
and aggregation read, so none of them expands the spec again (which would import every plug-in, and torch).

Coverage: per (dataset, method) cell, which settings and seeds are still missing, so a table with a
short cell says what to rerun, and `grid status` says what is left.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from robustmtl.layout import GridDir, atomic_write_text
from robustmtl.requirements import PRETRAIN_METHOD


@dataclass
class CellGap:
    """One (dataset, method) cell of the spec with runs not done: per setting, the seeds missing."""

    dataset: str
    method: str
    expected: int
    done: int
    missing: list[tuple[str, list[int]]]  # (setting, seeds), "defaults" for a method without swept values


def _entry(run: Any, required: bool) -> dict[str, Any]:
    """A PlannedRun as one plan line."""
    c = run.config
    setting = ", ".join(f"{k}={v}" for k, v in sorted(run.swept.items())) or "defaults"
    return {"run_id": run.run_id, "dataset": c.dataset, "method": c.method, "seed": c.seed, "setting": setting,
            "required": required}


def write_plan(grid: GridDir, runs: list[Any]) -> None:
    required = {run_id for r in runs for run_id in r.requires}
    save_plan(grid, [_entry(r, r.run_id in required) for r in runs])


def save_plan(grid: GridDir, entries: list[dict[str, Any]]) -> None:
    """Write plan lines (what `read_plan` returns), atomically."""
    atomic_write_text(grid.plan, "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))


def read_plan(grid: GridDir) -> list[dict[str, Any]] | None:
    """The saved plan, one dict per run; None when the grid has none or it cannot be read."""
    try:
        entries = [json.loads(line) for line in grid.plan.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    fields = ("run_id", "dataset", "method", "seed", "setting")
    return entries if all(isinstance(e, dict) and all(k in e for k in fields) for e in entries) else None


def _is_required(entry: dict[str, Any]) -> bool:
    """Whether other runs of the plan need this one (pre-training, JTT's stage 1): such a run may have a seed
    its role gives it (`pretrain_seed`), not one of the grid's. A plan saved without the field is judged by
    method: pre-training is the one required run with a seed of its own."""
    return bool(entry.get("required", entry["method"] == PRETRAIN_METHOD))


def end_task_seeds(plan: list[dict[str, Any]]) -> set[int]:
    """The seeds the grid asked its end-task runs for (the spec's `seeds`): what each cell should have."""
    return {e["seed"] for e in plan if not _is_required(e)}


def coverage(grid: GridDir, done: set[str]) -> list[CellGap] | None:
    """Cells of the plan with runs not in `done`; None when there is no readable plan."""
    planned = read_plan(grid)
    if planned is None:
        return None
    cells: dict[tuple[str, str], list[tuple[str, int, bool]]] = {}
    for run in planned:
        cells.setdefault((run["dataset"], run["method"]), []).append((run["setting"], run["seed"],
                                                                        run["run_id"] in done))
    gaps = []
    for (dataset, method), runs in cells.items():
        missing: dict[str, list[int]] = {}
        for setting, seed, is_done in runs:
            if not is_done:
                missing.setdefault(setting, []).append(seed)
        if missing:
            gaps.append(CellGap(dataset, method, len(runs), sum(d for *_, d in runs),
                                [(k, sorted(v)) for k, v in missing.items()]))
    return gaps


def gap_lines(gaps: list[CellGap]) -> list[str]:
    """One line per incomplete cell: how many runs are done, and the seeds missing per setting."""
    return [f"{g.dataset}/{g.method} ({g.done}/{g.expected} done): "
            + "; ".join(f"{setting}: seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                        for setting, seeds in g.missing) for g in gaps]
