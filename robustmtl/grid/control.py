"""Acting on a submitted grid: `grid resume`, `grid cancel` and `grid logs`.

Everything is found from GRID_DIR alone: run configs in runs/, the executor settings in grid.toml,
job ids in manifest.jsonl, and submitit's logs under submitit/<job id>/.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid import scheduler
from robustmtl.grid.executor import executor_settings
from robustmtl.grid.expand import PlannedRun
from robustmtl.grid.local import write_new
from robustmtl.grid.lock import submit_lock
from robustmtl.grid.manifest import latest_entries
from robustmtl.grid.spec import parse_toml
from robustmtl.grid.status import ACTIVE, grid_status
from robustmtl.grid.submit import command, execute
from robustmtl.layout import GridDir
from robustmtl.params import did_you_mean
from robustmtl.requirements import required_runs

FOLLOW_POLL_S = 2.0


def planned_from_dir(grid: GridDir) -> list[PlannedRun]:
    """The grid's runs as written on disk (every spec that ever extended it), with their requirements."""
    from robustmtl.rundir import load_run

    runs = []
    for run_id in grid.run_ids():
        cfg, _ = load_run(grid.run(run_id))
        runs.append(PlannedRun(config=cfg, swept={},
                               requires=[c.run_id for c in required_runs(cfg).values()]))
    return runs


def resume(grid: GridDir, kind: str | None, failed_only: bool, overrides: dict[str, Any],
           console: Console, retry_diverged: bool = False) -> dict[str, str]:
    """Run again every run that is not done and not queued (with `failed_only`: the failed ones, and the runs
    blocked behind a failed requirement, which cannot run until it does).

    A diverged run would diverge again at the same step, so it and the runs that need it are left out, with
    a note, unless `retry_diverged` (after a change of code, say)."""
    from robustmtl.grid.slurm import with_requirements

    if not grid.spec.exists():
        raise UserError(f"{grid.root} is not a grid directory (no {grid.spec.name}); start it with `grid submit`")
    _, raw = parse_toml(grid.spec)
    settings = executor_settings(raw.get("executor", {}), str(grid.spec), {**overrides, "kind": kind})
    resolved = settings.resolved_kind()
    if resolved == "local":
        settings.check_python(str(grid.spec))
    with submit_lock(grid.root):
        status = grid_status(grid)
        if resolved == "slurm" and not status.queue_known:
            raise UserError("squeue did not answer, so which runs are still queued is unknown; nothing was "
                            "resubmitted (retry when SLURM responds)")
        runs = planned_from_dir(grid)
        keep = {rid for rid, r in status.runs.items() if r.state in ACTIVE or r.state == "done"}
        retry = {rid for rid, r in status.runs.items() if r.state in ("failed", "blocked")}
        diverged = set() if retry_diverged else {rid for rid, r in status.runs.items() if r.diverged_step is not None}
        held = needing(diverged, runs)
        wanted = (retry if failed_only else {r.run_id for r in runs} - keep) - held
        chosen = [r for r in runs if r.run_id in wanted]
        if diverged:
            dependents = len(held - diverged - keep)
            console.print(f"left out {len(diverged)} diverged run(s)"
                          + (f" and {dependents} run(s) that need them" if dependents else "")
                          + ": the same run diverges again; `grid resume --retry-diverged` runs them", highlight=False)
        todo = with_requirements(chosen, runs, keep | held)
        again = command("resume", str(grid.root), *(("--executor", kind) if kind else ()),
                        *(("--retry-diverged",) if retry_diverged else ()))
        return execute(grid, grid.root.name, runs, todo, settings, resolved, console, again)


def needing(run_ids: set[str], runs: list[PlannedRun]) -> set[str]:
    """`run_ids` and every run that requires one of them, directly or through other runs."""
    found = set(run_ids)
    grew = True
    while grew:
        grew = False
        for r in runs:
            if r.run_id not in found and any(q in found for q in r.requires):
                found.add(r.run_id)
                grew = True
    return found


def find_run(grid: GridDir, run_id: str) -> str:
    """A run id of the grid, also from a unique prefix."""
    known = grid.run_ids()
    if not known and not grid.root.is_dir():
        raise UserError(f"no grid directory at {grid.root}")
    matches = [r for r in known if r.startswith(run_id)] if run_id else []
    if run_id in known:
        return run_id
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise UserError(f"run id prefix {run_id!r} is ambiguous in {grid.root}: {', '.join(matches[:5])}")
    raise UserError(f"unknown run id {run_id!r} in {grid.root}{did_you_mean(run_id, known)}")


def cancel(grid: GridDir, run_id: str | None = None) -> list[str]:
    """scancel (one call) the queued or running jobs of the grid's unfinished runs, or of one run.

    A run packed with others shares their array task: cancelling it cancels the task, so its unfinished
    pack mates stop too (`pack_mates` names them; `grid resume` requeues them from their checkpoints).
    """
    status = grid_status(grid, accounting=False)
    if run_id is not None:
        run_id = find_run(grid, run_id)
        if status.runs[run_id].job_id is None:
            raise UserError(f"run {run_id} was never submitted to SLURM (no entry in {grid.manifest})")
    if not status.queue_known:
        raise UserError("squeue did not answer, so which jobs are still queued is unknown; nothing was cancelled")
    jobs = sorted({job for rid, job in status.active.items() if run_id is None or rid == run_id})
    scheduler.cancel(jobs)
    return jobs


def pack_mates(grid: GridDir, run_id: str) -> list[str]:
    """The other unfinished runs of the array task that runs `run_id` (empty when it is not packed)."""
    run_id = find_run(grid, run_id)
    entry = latest_entries(grid.root).get(run_id) or {}
    return [r for r in entry.get("pack", []) if r != run_id and not grid.run(r).done.exists()]


def log_path(grid: GridDir, run_id: str, err: bool) -> tuple[str, Path]:
    """(job id, path) of submitit's stdout or stderr log of the run's newest job."""
    from submitit.core.utils import JobPaths

    run_id = find_run(grid, run_id)
    entry = latest_entries(grid.root).get(run_id)
    if entry is None or not entry.get("job_id"):
        raise UserError(f"run {run_id} has no SLURM job in {grid.manifest} (never submitted to "
                        "SLURM); its files are in " + str(grid.run(run_id).root))
    job_id = str(entry["job_id"])
    paths = JobPaths(grid.submitit.resolve() / "%j", job_id=job_id, task_id=0)
    return job_id, paths.stderr if err else paths.stdout


def show_log(grid: GridDir, run_id: str, err: bool, follow: bool, write: Callable[[str], None]) -> None:
    """Print the log; with `follow`, keep printing what is appended until the job leaves the queue."""
    job_id, path = log_path(grid, run_id, err)
    if not follow:
        if not path.exists():
            raise UserError(f"no log yet for job {job_id} ({path}); the job has not started")
        write(path.read_text(errors="replace"))
        return
    offset = 0
    while True:
        queue = scheduler.queue_states([job_id])
        offset = write_new(path, offset, write)
        if queue is not None and job_id not in queue:
            write_new(path, offset, write)
            return
        time.sleep(FOLLOW_POLL_S)
