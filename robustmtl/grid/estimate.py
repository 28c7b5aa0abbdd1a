"""`grid submit --dry-run`'s cost estimate: what the runs still to do will cost, from finished ones.

Per (dataset, method), the mean GPU-hours and wall time of the finished runs in the grid directory
(at most SAMPLE of them are read, so a huge grid stays fast) times the runs not done yet. Settings
of one cell differ in cost (batch size, epochs); the mean over what has finished is an estimate, and
the table says how many runs it rests on.
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
    gpu_h_per_run: float
    wall_h_per_run: float

    @property
    def gpu_h(self) -> float:
        return self.to_do * self.gpu_h_per_run

    @property
    def wall_h(self) -> float:
        return self.to_do * self.wall_h_per_run


def estimate(grid: GridDir, runs: list[PlannedRun]) -> list[CellEstimate]:
    """One estimate per (dataset, method) with runs still to do; NaN per-run costs where none has finished."""
    to_do: dict[tuple[str, str], int] = defaultdict(int)
    gpu: dict[tuple[str, str], list[float]] = defaultdict(list)
    wall: dict[tuple[str, str], list[float]] = defaultdict(list)
    done = grid.done_run_ids()
    for run in runs:
        cell = (run.config.dataset, run.config.method)
        if run.run_id not in done:
            to_do[cell] += 1
        elif len(wall[cell]) < SAMPLE and (cost := run_cost(grid.run(run.run_id).root)) is not None \
                and cost.wall_s is not None:
            wall[cell].append(cost.wall_s / 3600)
            gpu[cell].append(cost.gpu_hours or 0.0)
    return [CellEstimate(d, m, n, len(wall[(d, m)]), _mean(gpu[(d, m)]), _mean(wall[(d, m)]))
            for (d, m), n in sorted(to_do.items())]


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
