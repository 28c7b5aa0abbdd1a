"""Runs executed on this machine: `local` (submitit's local executor, `parallel` at a time) and `debug`
(in this process), with a live progress bar; the command returns when they end.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.expand import PlannedRun
from robustmtl.layout import GridDir, RunDir


def _epochs_done(rd: RunDir) -> int:
    try:
        return rd.metrics.read_bytes().count(b'"split": "val"')
    except FileNotFoundError:
        return 0


def run_here(grid: GridDir, todo: list[PlannedRun], settings: ExecutorSettings, kind: str,
             console: Console) -> list[str]:
    """Execute runs on this machine, required runs first, `parallel` at a time; returns failed run ids."""
    import submitit

    from robustmtl.train.job import TrainJob

    shares = settings.local_gpu_shares() if kind == "local" else []
    load = dict.fromkeys(shares, 0)  # runs on each GPU share now
    if kind == "debug":
        executor: Any = submitit.DebugExecutor(folder=grid.submitit / "%j")
        parallel = 1
    else:
        executor = submitit.LocalExecutor(folder=grid.submitit / "%j", python=settings.python)
        executor.update_parameters(timeout_min=settings.timeout_min, setup=list(settings.setup))
        parallel = settings.local_parallel(len(shares))
    waiting = list(todo)
    running: dict[str, Any] = {}
    share_of: dict[str, str] = {}
    failed: list[str] = []
    total_epochs = sum(r.config.train.epochs for r in todo)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("epochs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("training", total=total_epochs)
        try:
            while waiting or running:
                for run in list(waiting):
                    if len(running) >= parallel:
                        break
                    blockers = [r for r in run.requires if not grid.run(r).done.exists()]
                    if any(b in failed for b in blockers):
                        waiting.remove(run)
                        failed.append(run.run_id)
                    elif not blockers:
                        waiting.remove(run)
                        if load:
                            share = share_of[run.run_id] = min(load, key=load.__getitem__)
                            load[share] += 1
                            executor.update_parameters(**gpu_visibility(share, settings.setup))
                        running[run.run_id] = executor.submit(TrainJob(), str(grid.run(run.run_id).root))
                for run_id, job in list(running.items()):
                    if kind == "debug" or job.done():
                        del running[run_id]
                        if run_id in share_of:
                            load[share_of.pop(run_id)] -= 1
                        try:
                            job.result()
                        except Exception:
                            failed.append(run_id)
                done_epochs = sum(min(_epochs_done(grid.run(r.run_id)), r.config.train.epochs) for r in todo)
                finished = sum(grid.run(r.run_id).done.exists() for r in todo)
                progress.update(task, completed=done_epochs,
                                description=f"runs {finished}/{len(todo)} done, {len(running)} running")
                if running and kind != "debug":
                    time.sleep(0.5)
        except KeyboardInterrupt:
            for job in running.values():
                job.cancel(check=False)
            raise UserError("interrupted: running jobs were cancelled; their checkpoints stay, and the same "
                            "`grid submit` resumes them") from None
    return failed


def gpu_visibility(share: str, setup: tuple[str, ...]) -> dict[str, Any]:
    """submitit LocalExecutor parameters that give one run CUDA_VISIBLE_DEVICES=`share`.

    submitit sets the variable from integer `visible_gpus` only; GPU UUIDs and MIG ids are exported by
    a setup line instead (it runs after submitit's own setting, in the job's shell).
    """
    ids = share.split(",")
    if all(i.isdigit() for i in ids):
        return {"visible_gpus": tuple(int(i) for i in ids), "gpus_per_node": len(ids), "setup": list(setup)}
    return {"visible_gpus": (), "gpus_per_node": 0,
            "setup": [*setup, f"export CUDA_VISIBLE_DEVICES={shlex.quote(share)}"]}
