"""`grid submit --dry-run`'s cost estimate: what the runs still to do will cost, from finished ones.

Per (dataset, method), finished runs in the grid directory give a cost per epoch (their GPU-hours and
wall time over their epochs), and each run still to do is priced at that rate times its own epochs,
so a sweep over `epochs` is not priced at the mean run's length. Where some finished runs used a GPU,
only those price GPU-hours (a debug run on a CPU records 0 and would make a GPU grid look free). At
most SAMPLE finished runs per cell are read, spread evenly over the plan rather than its first
settings, so a huge grid stays fast. The table says how many runs each estimate rests on.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from robustmtl.grid.expand import PlannedRun
from robustmtl.layout import GridDir
from robustmtl.rundir import run_cost

SAMPLE = 200


@dataclass(frozen=True)
class CellEstimate:
    dataset: str
    method: str
    to_do: int
    sampled: int
    gpu_h: float  # NaN when no finished run could price it
    wall_h: float

    @property
    def gpu_h_per_run(self) -> float:
        return self.gpu_h / self.to_do


def estimate(grid: GridDir, runs: list[PlannedRun]) -> list[CellEstimate]:
    """One estimate per (dataset, method) with runs still to do; NaN costs where none has finished."""
    to_do: dict[tuple[str, str], int] = defaultdict(int)
    epochs_to_do: dict[tuple[str, str], int] = defaultdict(int)
    finished: dict[tuple[str, str], list[PlannedRun]] = defaultdict(list)
    done = grid.done_run_ids()
    for run in runs:
        cell = (run.config.dataset, run.config.method)
        if run.run_id in done:
            finished[cell].append(run)
        else:
            to_do[cell] += 1
            epochs_to_do[cell] += run.config.trained_epochs
    cells = []
    for cell, n in sorted(to_do.items()):
        wall, gpu = _rates(grid, _spread(finished[cell], SAMPLE))
        cells.append(CellEstimate(*cell, n, len(wall), _mean(gpu) * epochs_to_do[cell],
                                  _mean(wall) * epochs_to_do[cell]))
    return cells


def _spread(runs: list[PlannedRun], k: int) -> list[PlannedRun]:
    """At most k runs taken evenly across the list (every setting region, not only the first)."""
    if len(runs) <= k:
        return runs
    return [runs[i * len(runs) // k] for i in range(k)]


def _rates(grid: GridDir, runs: list[PlannedRun]) -> tuple[list[float], list[float]]:
    """Wall hours and GPU-hours per epoch of the finished runs that recorded their cost."""
    wall: list[float] = []
    gpu: list[float] = []
    cpu_only: list[float] = []
    for run in runs:
        cost = run_cost(grid.run(run.run_id).root)
        if cost is None or cost.wall_s is None:
            continue
        epochs = max(run.config.trained_epochs, 1)
        wall.append(cost.wall_s / 3600 / epochs)
        (gpu if cost.gpu_hours else cpu_only).append((cost.gpu_hours or 0.0) / epochs)
    return wall, gpu or cpu_only


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _hours(value: float) -> str:
    return "\u2013" if math.isnan(value) else f"{value:.3g}"


def render_estimate(cells: list[CellEstimate]) -> Table:
    known = [c for c in cells if c.sampled]
    total_gpu = sum(c.gpu_h for c in known)
    unknown = sum(c.to_do for c in cells if not c.sampled)
    caption = f"estimated total: {total_gpu:.3g} GPU-h for the {sum(c.to_do for c in known)} runs with an estimate"
    if unknown:
        caption += f"; {unknown} run(s) of cells with no finished run yet have none"
    table = Table(title=Text("Cost estimate from finished runs of the same dataset and method"),
                  caption=Text(caption))
    for name in ("dataset", "method", "to do", "from finished", "GPU-h / run", "GPU-h", "wall h (serial)"):
        table.add_column(name, justify="left" if name in ("dataset", "method") else "right")
    for c in cells:
        table.add_row(*map(Text, (c.dataset, c.method, str(c.to_do), str(c.sampled) if c.sampled else "none yet",
                                  _hours(c.gpu_h_per_run), _hours(c.gpu_h), _hours(c.wall_h))))
    return table
