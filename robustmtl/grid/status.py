"""Run states of a grid, read from the run directories' markers."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from robustmtl.errors import UserError
from robustmtl.layout import GridDir

STATE_LABELS = {"done": "done", "failed": "failed", "started": "started", "new": "pending"}


@dataclass
class GridStatus:
    counts: Counter
    failed: list[tuple[str, str]]
    total: int


def grid_status(grid: GridDir) -> GridStatus:
    from robustmtl.grid.submit import failure_line

    if not grid.root.is_dir():
        raise UserError(f"no grid directory at {grid.root}")
    run_ids = grid.run_ids()
    if not run_ids:
        raise UserError(f"no runs under {grid.root} (expected {grid.runs}/<run_id>/config.json)")
    counts: Counter = Counter()
    failed = []
    for run_id in run_ids:
        rd = grid.run(run_id)
        state = STATE_LABELS[rd.state()]
        counts[state] += 1
        if state == "failed":
            failed.append((run_id, failure_line(rd)))
    return GridStatus(counts=counts, failed=failed, total=len(run_ids))
