"""`robustmtl run`: one run in this process, its required runs first, with a progress bar."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from robustmtl.config import RunConfig, RunOptions
from robustmtl.errors import UserError
from robustmtl.layout import CONFIG, TRAIN_LOCK, RunDir, claim_dir, make_dir, read_json
from robustmtl.requirements import encoder_keepers, with_transitive
from robustmtl.rundir import prepare_run


def run_with_requirements(cfg: RunConfig, opts: RunOptions, out: Path, console: Console) -> dict[str, Any]:
    """Required runs (pre-training, JTT stage 1) go beside `out`, so a later run with the same requirement
    reuses them."""
    keepers = encoder_keepers(cfg)
    for required in with_transitive(cfg):
        console.print(f"{cfg.method} needs the {required.method} run {required.run_id} first")
        needed_opts = dataclasses.replace(opts, keep_encoder=True) if required.run_id in keepers else opts
        run_in_process(required, needed_opts, out.parent / required.run_id, console)
    return run_in_process(cfg, opts, out, console)


def run_in_process(cfg: RunConfig, opts: RunOptions, out: Path, console: Console) -> dict[str, Any]:
    """Train (or resume, or report) the run in `out`, refusing a folder that holds something else."""
    from robustmtl.train.attempt import attempt
    from robustmtl.train.loop import Diverged
    from robustmtl.train.outcome import Caps, End

    rd = RunDir(out)
    claim_dir(out, "run directory", CONFIG, {TRAIN_LOCK})
    created = not rd.root.exists()
    make_dir(out, "run directory")
    if rd.done.exists():
        prepare_run(rd, cfg, opts)  # refuses a config that is not this run's
        console.print(f"run {cfg.run_id} is already done ({rd.done}); nothing to do")
        return read_json(rd.done, "DONE summary")
    columns = (TextColumn(f"{cfg.method} on {cfg.dataset} seed {cfg.seed}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("steps"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=None)

        def update(step: int, total: int) -> None:
            progress.update(task, completed=step, total=total)

        # the lock is held before prepare_run's first write: another process training this run keeps it
        outcome = attempt(rd, None, Caps(), progress=update, prepare=lambda: prepare_run(rd, cfg, opts),
                          via="run")
    if outcome.end is End.DONE and outcome.summary is not None:
        return outcome.summary
    if isinstance(outcome.error, UserError) and created and not rd.metrics.exists():
        shutil.rmtree(rd.root)  # a mistake found before training (data, model): leave nothing behind
    if isinstance(outcome.error, Diverged):  # the run's settings, not the code: one line, no traceback
        raise UserError(f"run {cfg.run_id} diverged: {outcome.error}; FAILED written, its files stay in {out} "
                        "(a lower lr or grad_clip may help)")
    raise outcome.error if outcome.error is not None else RuntimeError(f"run {cfg.run_id} ended {outcome.end.name}")
