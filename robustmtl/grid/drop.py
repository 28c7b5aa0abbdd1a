"""`grid drop`: take runs out of a grid (a setting that always fails, a seed added by mistake), keeping their files.

A dropped run's directory moves to GRID_DIR/dropped/<run_id> and its line leaves plan.jsonl: status,
coverage, resume and aggregate read runs/ and the plan, so none of them counts it any more, and nothing is
deleted. Its old manifest lines stay (the manifest is append-only) and name a run no longer in runs/,
which the readers ignore. A run queued, running or required by a run that stays is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from robustmtl.errors import UserError
from robustmtl.grid.control import find_run, planned_from_dir
from robustmtl.grid.coverage import read_plan, save_plan
from robustmtl.grid.lock import submit_lock
from robustmtl.grid.status import ACTIVE, grid_status
from robustmtl.layout import GridDir


def drop(grid: GridDir, run_ids: list[str]) -> list[tuple[str, Path]]:
    """Move the runs (ids or unique prefixes) out of the grid; (run id, where its files are now) for each."""
    if not grid.spec.exists():
        raise UserError(f"{grid.root} is not a grid directory (no {grid.spec.name})")
    with submit_lock(grid.root):  # no submit or resume may start one of them meanwhile
        chosen = list(dict.fromkeys(find_run(grid, r) for r in run_ids))
        check_idle(grid, chosen)
        check_unneeded(grid, chosen)
        moved: list[tuple[str, Path]] = []
        for run_id in chosen:
            target = aside(grid, run_id)
            try:
                target.parent.mkdir(exist_ok=True)
                os.rename(grid.run(run_id).root, target)
            except OSError as exc:
                done = f"; moved before it: {', '.join(r for r, _ in moved)}" if moved else ""
                raise UserError(f"cannot move run {run_id} to {target}: {exc.strerror or exc}{done}") from None
            moved.append((run_id, target))
        plan = read_plan(grid)
        try:
            if plan is not None:
                save_plan(grid, [e for e in plan if e["run_id"] not in chosen])
        except OSError as exc:
            raise UserError(f"moved {', '.join(chosen)} to {grid.dropped}, but cannot rewrite {grid.plan}: "
                            f"{exc.strerror or exc}; coverage still expects them") from None
    return moved


def check_idle(grid: GridDir, run_ids: list[str]) -> None:
    """Refuse runs that are queued or training: their job would write into a folder that moved."""
    status = grid_status(grid, accounting=False)
    for run_id in run_ids:
        run = status.runs[run_id]
        if run.state in ACTIVE:
            how = (f"cancel it first (`robustmtl grid cancel {grid.root} --run {run_id}`)" if run.queued else
                   "wait for it to end, or stop the process training it")
            raise UserError(f"run {run_id} is {run.state}{f' ({run.note})' if run.note else ''}: {how}; "
                            "nothing was dropped")
        if run.job_id is not None and run.state != "done" and not status.queue_known:
            raise UserError(f"squeue did not answer, so whether run {run_id}'s job {run.job_id} is still queued is "
                            "unknown; nothing was dropped (retry when SLURM responds)")


def check_unneeded(grid: GridDir, run_ids: list[str]) -> None:
    """Refuse dropping a run that a run staying in the grid requires (its pre-training run, JTT's stage 1)."""
    plan = read_plan(grid)
    required = None if plan is None else {e["run_id"] for e in plan if e.get("required")}
    if required is not None and not required & set(run_ids):
        return  # no dropped run is one other runs need: no config to read
    for run in planned_from_dir(grid):
        if run.run_id in run_ids:
            continue
        if needed := next((r for r in run.requires if r in run_ids), None):
            raise UserError(f"run {needed} is required by run {run.run_id} ({run.config.method}), which stays in "
                            "the grid; drop both, or neither; nothing was dropped")


def aside(grid: GridDir, run_id: str) -> Path:
    """GRID_DIR/dropped/<run_id>, or <run_id>.N when a run of that id was dropped before."""
    target = grid.dropped / run_id
    n = 1
    while target.exists():
        n += 1
        target = grid.dropped / f"{run_id}.{n}"
    return target
