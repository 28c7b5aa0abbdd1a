"""`robustmtl run`: one run in this process, its required runs first, with a progress bar."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from robustmtl.config import RunConfig, RunOptions
from robustmtl.errors import UserError
from robustmtl.layout import CONFIG, RunDir, claim_dir, make_dir, read_json
from robustmtl.requirements import with_transitive
from robustmtl.rundir import prepare_run
from robustmtl.train.runlock import LOCK_NAME, holding


def run_with_requirements(cfg: RunConfig, opts: RunOptions, out: Path, console: Console) -> dict[str, Any]:
    """Required runs (pre-training, JTT stage 1) go beside `out`, so a later run with the same requirement
    reuses them."""
    for required in with_transitive(cfg):
        console.print(f"{cfg.method} needs the {required.method} run {required.run_id} first")
        run_in_process(required, opts, out.parent / required.run_id, console)
    return run_in_process(cfg, opts, out, console)


def run_in_process(cfg: RunConfig, opts: RunOptions, out: Path, console: Console) -> dict[str, Any]:
    """Train (or resume, or report) the run in `out`, refusing a folder that holds something else."""
    rd = RunDir(out)
    claim_dir(out, "run directory", CONFIG, {LOCK_NAME})
    created = not rd.root.exists()
    make_dir(out, "run directory")
    with holding(rd):  # before any write: another process training this run keeps it to itself
        return _train_here(rd, cfg, opts, created, console)


def _train_here(rd: RunDir, cfg: RunConfig, opts: RunOptions, created: bool, console: Console) -> dict[str, Any]:
    from robustmtl.provenance import record as record_provenance
    from robustmtl.train.attempts import write_failure
    from robustmtl.train.loop import train_run

    prepare_run(rd, cfg, opts)
    if rd.done.exists():
        console.print(f"run {cfg.run_id} is already done ({rd.done}); nothing to do")
        return read_json(rd.done, "DONE summary")
    columns = (TextColumn(f"{cfg.method} on {cfg.dataset} seed {cfg.seed}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=None)

        def update(step: int, total: int) -> None:
            progress.update(task, completed=step, total=total)

        try:
            record_provenance(rd, None)
            return train_run(rd, update)
        except UserError:
            if created and not rd.metrics.exists():
                shutil.rmtree(rd.root)  # a mistake found before training (data, model): leave nothing behind
            raise
        except Exception as exc:
            write_failure(rd, exc)
            raise
