"""The callable every executor runs: its argument is a run directory (or a pack of them); all else is on disk.

A job that is preempted or times out is requeued with the same run directories (`scontrol requeue`
keeps the job id and restarts it from its submission), and the loop resumes from the newest checkpoint
there. Under SLURM the preemption signals (USR2 from the `--signal` warning, TERM from a requeue, a
preemption or `scancel --signal=TERM`) only raise a flag: the loop checkpoints at the next step
boundary, and only then is the job requeued — never in the middle of an optimiser step. After USR2 the
job requeues itself. After TERM one `scontrol show job` says who sent it: SLURM requeueing the job (it
restarts by itself), SLURM ending it (`scancel`, time limit: the run stops, `grid resume` continues it),
or nobody ending it (a cluster that preempts with a bare TERM, `scancel --signal=TERM`): then the job
requeues itself. The job owns requeueing: submitit's signal handler never runs (its USR2 handler would
requeue on its own count of timeouts). While the interpreter starts, the job holds USR2 and TERM back
(grid/slurm.py starts it so; with a configured `python`, from the moment its pickle is loaded), and the
flag receives one that came meanwhile; after the runs, the flag stays installed, so a late signal asks
for nothing.

A crash (an exception in the run) under SLURM requeues the job too, unless train/outcome.py's crash
policy gives up on the run (the same step crashed twice, or `max_crashes` used up). Preemptions,
timeouts and crashes are capped separately (`max_preemptions`, `max_timeouts`, `max_crashes`), counted
per run within one job id, so a `grid resume` (a new job) starts a fresh budget.

A pack (`[executor] pack = K`) is one array task running K runs: one after another (`sequential`), or
side by side in child processes with one share of the task's GPUs each (`parallel`, train/pack.py). Runs that are
DONE, or that this job already gave up on, are skipped when a requeued pack restarts.

Each run is one attempt (train/attempt.py) under its lock: a job that finds another process training
it leaves the run's files alone and counts no crash; it fails with RunBusy once its other runs are through.

Every start, interruption and end is appended to RUN/attempts.jsonl, which `grid status` counts:
`start` (with whether a checkpoint was there), `preempted`, `timeout`, `terminated` (ended by SLURM,
not requeued), `crashed` (with the step and the error), `failed` (given up, with the reason; a diverged
run's with its first non-finite step), `done`; a local grid stopped by Ctrl-C adds `stopped` (grid/local.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any, NoReturn

from robustmtl.layout import RunDir
from robustmtl.train.attempt import attempt
from robustmtl.train.attempt_log import record_attempt
from robustmtl.train.outcome import Caps, End, Outcome, RequeueLimit, finished_before, give_up
from robustmtl.train.pack import side_by_side
from robustmtl.train.signals import StopFlag, current_job_id, interruption, requeue_self, under_slurm


class PackFailed(RuntimeError):
    """Some runs of a pack failed for good (each has its own FAILED marker) or are trained by another process."""


class TrainJob:
    def __init__(self, caps: Caps | None = None, pack_mode: str = "sequential", runs_per_gpu: int = 1) -> None:
        self.caps = caps or Caps()
        self.pack_mode = pack_mode
        self.runs_per_gpu = runs_per_gpu

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a SLURM job, before submitit installs its signal handlers: hold the preemption signals
        back from here on, so that one arriving before the stop flag is installed reaches the flag, not them."""
        self.__dict__.update(state)
        if under_slurm():
            signal.pthread_sigmask(signal.SIG_BLOCK, StopFlag.SIGNALS)

    def __call__(self, run_dirs: str | list[str]) -> Any:
        single = isinstance(run_dirs, str)
        rds = [RunDir(Path(p)) for p in ([run_dirs] if isinstance(run_dirs, str) else run_dirs)]
        job_id = current_job_id()
        flag = StopFlag()
        with flag.installed(restore=False) if under_slurm() else contextlib.nullcontext():
            if self.pack_mode == "parallel" and len(rds) > 1:
                outcomes = side_by_side(rds, job_id, flag, self.caps, self.runs_per_gpu)
            else:
                outcomes = self._one_after_another(rds, job_id, flag)
            return self._conclude(outcomes, job_id, flag, single)

    def _one_after_another(self, rds: list[RunDir], job_id: str | None, flag: StopFlag) -> list[Outcome]:
        outcomes = []
        for i, rd in enumerate(rds):
            if (skipped := finished_before(rd, job_id)) is not None:
                outcomes.append(skipped)
                continue
            if flag():  # the signal came between two runs: this one has not started
                outcomes.append(Outcome(rd, End.INTERRUPTED))
                break
            if len(rds) > 1:
                print(f"=== robustmtl run {rd.root.name} (pack member {i + 1}/{len(rds)})", flush=True)
            outcome = attempt(rd, job_id, self.caps, stop_requested=flag)  # BUSY if another process trains it
            outcomes.append(outcome)
            if outcome.end is End.INTERRUPTED:
                break
        return outcomes

    def _conclude(self, outcomes: list[Outcome], job_id: str | None, flag: StopFlag, single: bool) -> Any:
        interrupted = [o.rd for o in outcomes if o.end is End.INTERRUPTED]
        if interrupted:
            self._stop(interrupted, job_id, flag)
        retry = [o.rd for o in outcomes if o.end is End.RETRY]
        if retry:
            reason = requeue_self(job_id)
            if reason is None:
                sys.exit(End.RETRY.value)
            for rd in retry:  # the job cannot requeue itself: these runs end here
                give_up(rd, job_id, RuntimeError(f"could not requeue job {job_id}: {reason}"), "requeue failed")
            outcomes = [dataclasses.replace(o, end=End.FAILED) if o.end is End.RETRY else o for o in outcomes]
        failed = [o for o in outcomes if o.end is End.FAILED]
        busy = [o for o in outcomes if o.end is End.BUSY]  # not counted as crashes: the other trainer goes on
        if failed or busy:
            first = (failed or busy)[0]
            if single and first.error is not None:
                raise first.error
            parts = []
            if failed:
                parts.append(f"{len(failed)} of {len(outcomes)} runs failed: {names(failed)}")
            if busy:
                parts.append(f"{len(busy)} of {len(outcomes)} runs are being trained by another process: {names(busy)}")
            raise PackFailed("; ".join(parts))
        summaries = [o.summary for o in outcomes]
        return summaries[0] if single else summaries

    def _stop(self, rds: list[RunDir], job_id: str | None, flag: StopFlag) -> NoReturn:
        """The loop has checkpointed: record why it stopped, then requeue unless a cap or SLURM says no."""
        event, requeue = interruption(flag)
        sig = "USR2" if flag.signum == signal.SIGUSR2 else "TERM"
        survivors, limits = [], []
        for rd in rds:
            count = record_attempt(rd, event, job_id, signal=sig)
            cap = self.caps.of(event)
            if cap is not None and count > cap[1]:
                limits.append(RequeueLimit(f"{event} {count} times in job {job_id} ({cap[0]} = {cap[1]}); "
                                           "`robustmtl grid resume` continues from the checkpoint"))
                give_up(rd, job_id, limits[-1], None)
            else:
                survivors.append(rd)
        if not requeue:  # SLURM requeues the job itself, or ends it: nothing to do but leave
            sys.exit(End.INTERRUPTED.value)
        if not survivors:
            raise limits[0] if len(limits) == 1 else RequeueLimit(f"job {job_id}: every interrupted run reached its "
                                                                  "cap; see their FAILED markers")
        if os.environ.get("SLURM_PROCID", "0") != "0":  # one requeue per job: its first task's
            sys.exit(End.INTERRUPTED.value)
        reason = requeue_self(job_id)
        if reason is not None:
            for rd in survivors:
                give_up(rd, job_id, RuntimeError(f"could not requeue job {job_id}: {reason}"), "requeue failed")
        sys.exit(End.INTERRUPTED.value)


def names(outcomes: list[Outcome]) -> str:
    return ", ".join(o.rd.root.name for o in outcomes)
