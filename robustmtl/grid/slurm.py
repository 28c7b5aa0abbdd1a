"""Submitting a grid to SLURM as array jobs through submitit: submit, record, exit."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.expand import PlannedRun
from robustmtl.grid.manifest import append_entries
from robustmtl.layout import GridDir


def slurm_parameters(settings: ExecutorSettings) -> dict[str, Any]:
    params: dict[str, Any] = {"timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus,
                              "slurm_job_name": "robustmtl"}
    optional = {"slurm_partition": settings.partition, "slurm_account": settings.account,
                "slurm_qos": settings.qos, "slurm_constraint": settings.constraint,
                "mem_gb": settings.mem_gb, "slurm_array_parallelism": settings.array_parallelism or None}
    params.update({k: v for k, v in optional.items() if v is not None})
    if settings.gpus:
        params["slurm_gpus_per_task"] = settings.gpus
    if settings.extra:
        params["slurm_additional_parameters"] = dict(_flag(f) for f in settings.extra)
    return params


def _flag(flag: str) -> tuple[str, str]:
    body = flag.removeprefix("--")
    key, _, value = body.partition("=")
    if not key or not value:
        raise UserError(f"[executor] extra flag {flag!r} must look like --name=value")
    return key.replace("-", "_"), value


def levels(todo: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Runs grouped so that every run's requirements are in an earlier group (or already done)."""
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


def submit_arrays(grid: GridDir, todo: list[PlannedRun], settings: ExecutorSettings, console: Console) -> None:
    import submitit

    from robustmtl.train.job import TrainJob

    job_of: dict[str, str] = {}
    for level in levels(todo):
        executor = submitit.AutoExecutor(folder=grid.submitit / "%j", cluster="slurm",
                                         slurm_max_num_timeout=settings.max_requeues)
        params = slurm_parameters(settings)
        deps = sorted({job_of[q] for r in level for q in r.requires if q in job_of})
        if deps:
            extra = dict(params.get("slurm_additional_parameters", {}))
            extra["dependency"] = "afterok:" + ":".join(deps)
            params["slurm_additional_parameters"] = extra
        executor.update_parameters(**params)
        try:
            jobs = executor.map_array(TrainJob(), [str(grid.run(r.run_id).root) for r in level])
        except Exception as exc:
            raise UserError(f"sbatch rejected the array: {str(exc).strip().splitlines()[-1]}") from None
        append_entries(grid.root, [{"run_id": r.run_id, "job_id": j.job_id} for r, j in zip(level, jobs, strict=True)])
        job_of.update({r.run_id: j.job_id for r, j in zip(level, jobs, strict=True)})
        console.print(f"queued {len(jobs)} runs as array {jobs[0].job_id.split('_')[0]}")
