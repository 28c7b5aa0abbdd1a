"""One attempt at a run: the single owner of its lock, its attempt log, and what a crash means.

A grid job (train/job.py, one run or a pack member) and `robustmtl run` (runner.py) both train through
`attempt`: it takes the run's lock once (train/runlock.py), records the start, the provenance and the
trackers, runs the loop, and ends with an `Outcome`: DONE, INTERRUPTED (checkpointed on a signal),
RETRY or FAILED (train/outcome.py's crash policy: only a SLURM job with a job id can requeue; a diverged
run is never requeued), or BUSY when another process holds the lock (the run's files are left alone).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from robustmtl import provenance, trackers
from robustmtl.layout import RunDir
from robustmtl.train import runlock
from robustmtl.train.attempt_log import record_attempt
from robustmtl.train.outcome import Caps, End, Outcome, give_up_diverged, judge_crash

Progress = Callable[[int, int], None]


class StepTracker:
    """The loop's progress callback: the last step completed, so a crash knows where it happened."""

    def __init__(self, then: Progress | None = None) -> None:
        self.step: int | None = None
        self.then = then

    def __call__(self, step: int, total: int) -> None:
        self.step = step
        if self.then is not None:
            self.then(step, total)


def attempt(rd: RunDir, job_id: str | None, caps: Caps, *, stop_requested: Callable[[], bool] | None = None,
            progress: Progress | None = None, prepare: Callable[[], None] | None = None,
            via: str | None = None) -> Outcome:
    """Train (or resume) `rd` once under its lock. `prepare` runs first under the lock (writing the run's
    files); `via` names a trainer other than a grid job in the attempt log (`grid status` tells them apart)."""
    try:
        with runlock.holding(rd):
            if prepare is not None:
                prepare()
            return _locked_attempt(rd, job_id, caps, stop_requested, StepTracker(progress), via)
    except runlock.RunBusy as exc:
        return Outcome(rd, End.BUSY, error=exc)


def _locked_attempt(rd: RunDir, job_id: str | None, caps: Caps, stop_requested: Callable[[], bool] | None,
                    steps: StepTracker, via: str | None) -> Outcome:
    # torch: `grid submit` loads this module (train/job.py's TrainJob is what it submits) and must not load torch
    from robustmtl.train import loop

    devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    record_attempt(rd, "start", job_id, checkpoint=rd.checkpoint.exists(),
                   **({"cuda_visible_devices": devices} if devices is not None else {}),
                   **({"via": via} if via is not None else {}))
    try:
        provenance.record(rd, job_id)
        with trackers.mirroring(rd):
            summary = loop.train_run(rd, progress=steps, stop_requested=stop_requested)
    except loop.Interrupted:
        return Outcome(rd, End.INTERRUPTED)
    except loop.Diverged as exc:
        give_up_diverged(rd, job_id, exc)
        return Outcome(rd, End.FAILED, error=exc)
    except Exception as exc:
        return Outcome(rd, judge_crash(rd, job_id, steps.step, exc, caps), error=exc)
    record_attempt(rd, "done", job_id)
    return Outcome(rd, End.DONE, summary)
