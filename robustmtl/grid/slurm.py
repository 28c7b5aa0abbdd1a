"""Submitting a grid to SLURM as array jobs through submitit: submit, record, exit.

As few sbatch calls as possible: one array per dependency level (JTT's stage-1 runs before the
stage-2 runs that read them), split where a level is larger than the cluster's MaxArraySize. A
level waits (`afterok`) only on the jobs of the required runs that are not done yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.expand import PlannedRun
from robustmtl.grid.manifest import append_entries
from robustmtl.grid.scheduler import max_array_size, sbatch_message
from robustmtl.layout import GridDir


def slurm_parameters(settings: ExecutorSettings, job_name: str) -> dict[str, Any]:
    """AutoExecutor parameters from the [executor] settings (with CLI overrides already applied)."""
    params: dict[str, Any] = {
        "timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus, "slurm_job_name": job_name,
        # a short job gets its warning signal early enough to checkpoint; 90 s (submitit's default) otherwise
        "slurm_signal_delay_s": min(90, max(30, settings.timeout_min * 15)),
        # torch would otherwise start one thread per core of the whole node
        "slurm_setup": [f"export OMP_NUM_THREADS={settings.cpus}"],
    }
    optional = {"slurm_partition": settings.partition, "slurm_account": settings.account,
                "slurm_qos": settings.qos, "slurm_constraint": settings.constraint, "mem_gb": settings.mem_gb}
    params.update({k: v for k, v in optional.items() if v is not None})
    if settings.gpus:
        params["slurm_gpus_per_task"] = settings.gpus
    if settings.extra:
        params["slurm_additional_parameters"] = dict(_flag(f) for f in settings.extra)
    return params


def _flag(flag: str) -> tuple[str, Any]:
    body = flag.removeprefix("--")
    key, sep, value = body.partition("=")
    if not flag.startswith("--") or not key or (sep and not value):
        raise UserError(f"[executor] extra flag {flag!r} must look like --name=value (or --name)")
    return key.replace("-", "_"), value if sep else True


def levels(todo: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Runs grouped so that every run's requirements are in an earlier group (or not to be submitted)."""
    ids = {r.run_id for r in todo}
    placed: set[str] = set()
    out = []
    remaining = list(todo)
    while remaining:
        level = [r for r in remaining if all(q not in ids or q in placed for q in r.requires)]
        if not level:
            raise UserError("circular run requirements in the grid")
        out.append(level)
        placed |= {r.run_id for r in level}
        remaining = [r for r in remaining if r.run_id not in placed]
    return out


def chunked(runs: list[PlannedRun], max_size: int) -> list[list[PlannedRun]]:
    """Arrays of at most `max_size` tasks (indices 0 .. MaxArraySize-1)."""
    size = max(1, max_size)
    return [runs[i:i + size] for i in range(0, len(runs), size)]


def dependencies(runs: list[PlannedRun], job_of: dict[str, str]) -> list[str]:
    """Jobs of the required runs still queued or being submitted; a done requirement needs none."""
    return sorted({job_of[q] for r in runs for q in r.requires if q in job_of})


def with_requirements(todo: list[PlannedRun], everything: list[PlannedRun], skip: set[str]) -> list[PlannedRun]:
    """`todo` plus the runs it requires (transitively) that are neither done nor queued (`skip`)."""
    by_id = {r.run_id: r for r in everything}
    chosen = {r.run_id: r for r in todo}
    stack = list(todo)
    while stack:
        for q in stack.pop().requires:
            if q not in chosen and q not in skip and q in by_id:
                chosen[q] = by_id[q]
                stack.append(by_id[q])
    return [r for r in everything if r.run_id in chosen]


def submit_arrays(grid: GridDir, todo: list[PlannedRun], settings: ExecutorSettings, console: Console,
                  queued: dict[str, str] | None = None) -> int:
    """Queue `todo`; `queued` maps already queued runs to their job ids. Returns the number of runs queued.

    Each array's manifest entries are written as soon as sbatch accepted it, and only then.
    """
    max_size = max_array_size()
    job_of = dict(queued or {})
    submitted = 0
    for level in levels(todo):
        for chunk in chunked(level, max_size):
            try:
                job_ids = sbatch_array(grid, chunk, settings, dependencies(chunk, job_of), max_size)
            except UserError as exc:
                if submitted:
                    raise UserError(f"{exc} ({submitted} runs were queued before this; they are in "
                                    f"{grid.root / 'manifest.jsonl'})") from None
                raise
            append_entries(grid.root, [{"run_id": r.run_id, "job_id": j} for r, j in zip(chunk, job_ids, strict=True)])
            job_of.update({r.run_id: j for r, j in zip(chunk, job_ids, strict=True)})
            submitted += len(chunk)
            console.print(f"queued {len(chunk)} run(s) as job {job_ids[0].split('_')[0]}", highlight=False)
    return submitted


def sbatch_array(grid: GridDir, runs: list[PlannedRun], settings: ExecutorSettings, deps: list[str],
                 max_size: int) -> list[str]:
    """One sbatch call for `runs` (an array when there are several); returns their job ids in order."""
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from robustmtl.train.job import TrainJob

    params = slurm_parameters(settings, f"robustmtl-{grid.root.resolve().name}")
    params["slurm_array_parallelism"] = settings.array_parallelism or max_size
    if deps:
        params["slurm_dependency"] = "afterok:" + ":".join(deps)
        # a failed requirement ends the dependants (shown as cancelled) instead of leaving them pending forever
        params["slurm_additional_parameters"] = {**params.get("slurm_additional_parameters", {}),
                                                 "kill_on_invalid_dep": "yes"}
    folder = grid.submitit
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    try:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                         slurm_max_num_timeout=settings.max_requeues)
        executor.update_parameters(**params)
        jobs = executor.map_array(TrainJob(settings.max_requeues), [str(_absolute(grid, r)) for r in runs])
    except ValueError as exc:
        raise UserError(f"bad SLURM parameter: {str(exc).splitlines()[0]}") from None
    except (FailedJobError, FailedSubmissionError) as exc:
        for leftover in set(folder.iterdir()) - before:  # pickles and scripts of the rejected submission
            if leftover.is_file() or leftover.is_symlink():
                leftover.unlink()
        raise UserError(f"sbatch rejected the job: {sbatch_message(str(exc)) or exc}") from None
    return [str(j.job_id) for j in jobs]


def _absolute(grid: GridDir, run: PlannedRun) -> Path:
    return grid.run(run.run_id).root.resolve()
