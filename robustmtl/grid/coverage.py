"""Coverage: the runs the saved spec (GRID_DIR/grid.toml) asks for against the runs that are done.

Per (dataset, method) cell, which settings and seeds are still missing, so a table with a short cell
says what to rerun, and `grid status` says what is left. Used by `grid status` and `aggregate`.

`grid submit` saves the expanded spec as GRID_DIR/plan.jsonl (one line per run: id, dataset, method,
seed, setting), so coverage reads a file instead of expanding the spec again, which would import
every plug-in (and torch). Grid directories from before the plan file are expanded from grid.toml.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from robustmtl.errors import UserError
from robustmtl.layout import GridDir, atomic_write_text


@dataclass
class CellGap:
    """One (dataset, method) cell of the spec with runs not done: per setting, the seeds missing."""

    dataset: str
    method: str
    expected: int
    done: int
    missing: list[tuple[str, list[int]]]  # (setting, seeds), "defaults" for a method without swept values


def _entry(run: Any) -> dict[str, Any]:
    """A PlannedRun as one plan line."""
    c = run.config
    setting = ", ".join(f"{k}={v}" for k, v in sorted(run.swept.items())) or "defaults"
    return {"run_id": run.run_id, "dataset": c.dataset, "method": c.method, "seed": c.seed, "setting": setting}


def write_plan(grid: GridDir, runs: list[Any]) -> None:
    atomic_write_text(grid.plan, "".join(json.dumps(_entry(r), sort_keys=True) + "\n" for r in runs))


def _planned(grid: GridDir) -> list[dict[str, Any]] | None:
    """The saved plan; else the spec expanded again; None when neither can be read."""
    try:
        return [json.loads(line) for line in (grid.plan).read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        pass
    from robustmtl.grid.expand import expand
    from robustmtl.grid.spec import load_spec

    try:
        return [_entry(r) for r in expand(load_spec(grid.spec, saved=True))]
    except UserError:
        return None


def coverage(grid: GridDir, done: set[str]) -> list[CellGap] | None:
    """Cells of the saved spec with runs not in `done`; None when the spec cannot be read any more."""
    planned = _planned(grid)
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
