"""The callable every executor runs: its argument is a run directory (or a pack of them); all else is on disk.

As a submitit `Checkpointable`, a job that is preempted or times out is requeued with the same run
directories, and the loop resumes from the newest checkpoint there. Under SLURM the preemption
signals (USR2 from submitit's `--signal`, TERM from a requeue, a preemption or `scancel --signal=TERM`)
only raise a flag: the loop checkpoints at the next step boundary, and only then is the job requeued
— never in the middle of an optimiser step. USR2 goes through submitit's own logic (`checkpoint()`,
`scontrol requeue`, exit). After TERM one `scontrol show job` says who sent it: SLURM requeueing the
job (it restarts by itself), SLURM ending it (`scancel`, time limit: the run stops, `grid resume`
continues it), or nobody ending it (a cluster that preempts with a bare TERM, `scancel
--signal=TERM`): then the job requeues itself.

A crash (an exception in the run) under SLURM requeues the job too, unless the run crashed at the
same step as its previous crash (a deterministic failure: requeueing again would loop forever) or has
used up `max_crashes`; then it ends FAILED with its error. Preemptions, timeouts and crashes are capped
separately (`max_preemptions`, `max_timeouts`, `max_crashes`), counted per run within one job id, so a
`grid resume` (a new job) starts a fresh budget.

A pack (`[executor] pack = K`) is one array task running K runs: one after another (`sequential`), or
side by side in child processes with one share of the task's GPUs each (`parallel`). Runs that are
DONE, or that this job already gave up on, are skipped when a requeued pack restarts.

A run is trained under its lock (train/runlock.py): a job that finds another process training it
leaves the run's files alone and counts no crash; it fails with RunBusy once its other runs are through.

Every start, interruption and end is appended to RUN/attempts.jsonl, which `grid status` counts:
`start` (with whether a checkpoint was there), `preempted`, `timeout`, `terminated` (ended by SLURM,
not requeued), `crashed` (with the step and the error), `failed` (given up, with the reason), `done`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NoReturn

import submitit

from robustmtl.layout import RunDir
from robustmtl.train import runlock
from robustmtl.train.attempts import read_attempts, record_attempt, write_failure
from robustmtl.train.signals import StopFlag, interruption, requeue_self, under_slurm

# a parallel pack member's outcome
EXIT_CODES = {"done": 0, "failed": 1, "interrupted": 75, "retry": 76, "busy": 77}
POLL_S = 0.2


class RequeueLimit(RuntimeError):
    """A run was interrupted more often than its cap allows within one job."""


class PackFailed(RuntimeError):
    """Some runs of a pack failed for good (each has its own FAILED marker) or are trained by another process."""


@dataclass(frozen=True)
class Caps:
    """How often one job may requeue a run after each kind of interruption."""

    preemptions: int = 20
    timeouts: int = 3
    crashes: int = 2

    def of(self, event: str) -> tuple[str, int] | None:
        """(setting name, cap) for an event that requeues; None for events that do not."""
        field = {"preempted": "preemptions", "timeout": "timeouts", "crashed": "crashes"}.get(event)
        return (f"max_{field}", getattr(self, field)) if field else None


@dataclass
class Outcome:
    rd: RunDir
    kind: str  # done | interrupted | retry | failed | busy (another process trains the run)
    summary: dict[str, Any] | None = None
    error: BaseException | None = None


class StepTracker:
    """The loop's progress callback: the last step completed, so a crash knows where it happened."""

    def __init__(self) -> None:
        self.step: int | None = None

    def __call__(self, step: int, total: int) -> None:
        self.step = step


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, caps: Caps | None = None, pack_mode: str = "sequential") -> None:
        self.caps = caps or Caps()
        self.pack_mode = pack_mode

    def __call__(self, run_dirs: str | list[str]) -> Any:
        single = isinstance(run_dirs, str)
        rds = [RunDir(Path(p)) for p in ([run_dirs] if single else run_dirs)]
        job_id = current_job_id()
        flag = StopFlag()
        with flag.installed() if under_slurm() else contextlib.nullcontext():
            if self.pack_mode == "parallel" and len(rds) > 1:
                outcomes = self._side_by_side(rds, job_id, flag)
            else:
                outcomes = self._one_after_another(rds, job_id, flag)
        return self._conclude(outcomes, job_id, flag, single)

    def checkpoint(self, run_dirs: str | list[str]) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.caps, self.pack_mode), run_dirs)

    def _one_after_another(self, rds: list[RunDir], job_id: str | None, flag: StopFlag) -> list[Outcome]:
        outcomes = []
        for i, rd in enumerate(rds):
            if (skipped := finished_before(rd, job_id)) is not None:
                outcomes.append(skipped)
                continue
            if flag():  # the signal came between two runs: this one has not started
                outcomes.append(Outcome(rd, "interrupted"))
                break
            if len(rds) > 1:
                print(f"=== robustmtl run {rd.root.name} (pack member {i + 1}/{len(rds)})", flush=True)
            outcome = self.run_one(rd, job_id, flag)
            outcomes.append(outcome)
            if outcome.kind == "interrupted":
                break
        return outcomes

    def _side_by_side(self, rds: list[RunDir], job_id: str | None, flag: StopFlag) -> list[Outcome]:
        """One child process per unfinished run, each seeing its own share of the task's GPUs."""
        outcomes = [o for rd in rds if (o := finished_before(rd, job_id)) is not None]
        todo = [rd for rd in rds if all(o.rd != rd for o in outcomes)]
        shares = gpu_shares(os.environ.get("CUDA_VISIBLE_DEVICES", ""), len(todo))
        children = []
        for rd, share in zip(todo, shares, strict=True):
            env = dict(os.environ) if share is None else {**os.environ, "CUDA_VISIBLE_DEVICES": share}
            cmd = [sys.executable, "-m", "robustmtl.train.job", json.dumps(asdict(self.caps)), str(rd.root)]
            children.append((rd, subprocess.Popen(cmd, env=env)))
        forwarded = False
        while any(p.poll() is None for _, p in children):
            if flag() and not forwarded:  # SLURM signals the whole step, but a forwarded copy costs nothing
                for _, p in children:
                    with contextlib.suppress(ProcessLookupError):
                        p.send_signal(flag.signum or signal.SIGTERM)
                forwarded = True
            time.sleep(POLL_S)
        for rd, p in children:
            outcomes.append(child_outcome(rd, p.returncode, job_id, self.caps))
        return outcomes

    def run_one(self, rd: RunDir, job_id: str | None, flag: StopFlag) -> Outcome:
        """Train one run under its lock; a run another process is training is left untouched ("busy")."""
        try:
            with runlock.holding(rd):
                return self._attempt(rd, job_id, flag)
        except runlock.RunBusy as exc:
            return Outcome(rd, "busy", error=exc)

    def _attempt(self, rd: RunDir, job_id: str | None, flag: StopFlag) -> Outcome:
        """One attempt at a run; a crash is recorded and judged (requeue or give up) here."""
        from robustmtl import provenance, trackers
        from robustmtl.train import loop

        devices = os.environ.get("CUDA_VISIBLE_DEVICES")
        record_attempt(rd, "start", job_id, checkpoint=rd.checkpoint.exists(),
                       **({"cuda_visible_devices": devices} if devices is not None else {}))
        steps = StepTracker()
        try:
            provenance.record(rd, job_id)
            with trackers.mirroring(rd):
                summary = loop.train_run(rd, progress=steps, stop_requested=flag)
        except loop.Interrupted:
            return Outcome(rd, "interrupted")
        except Exception as exc:
            return Outcome(rd, judge_crash(rd, job_id, steps.step, exc, self.caps), error=exc)
        record_attempt(rd, "done", job_id)
        return Outcome(rd, "done", summary)

    def _conclude(self, outcomes: list[Outcome], job_id: str | None, flag: StopFlag, single: bool) -> Any:
        interrupted = [o.rd for o in outcomes if o.kind == "interrupted"]
        if interrupted:
            self._stop(interrupted, job_id, flag)
        retry = [o.rd for o in outcomes if o.kind == "retry"]
        if retry:
            reason = requeue_self(job_id)
            if reason is None:
                sys.exit(EXIT_CODES["retry"])
            for rd in retry:  # the job cannot requeue itself: these runs end here
                give_up(rd, job_id, RuntimeError(f"could not requeue job {job_id}: {reason}"), "requeue failed")
                next(o for o in outcomes if o.rd == rd).kind = "failed"
        failed = [o for o in outcomes if o.kind == "failed"]
        busy = [o for o in outcomes if o.kind == "busy"]  # not counted as crashes: the other trainer goes on
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
        event, how = interruption(flag)
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
        if how is None:  # SLURM requeues the job itself, or ends it: nothing to do but leave
            sys.exit(EXIT_CODES["interrupted"])
        if not survivors:
            raise limits[0] if len(limits) == 1 else RequeueLimit(f"job {job_id}: every interrupted run reached its "
                                                                  "cap; see their FAILED markers")
        if how == "submitit":
            flag.previous[signal.SIGUSR2](signal.SIGUSR2, None)  # submitit: checkpoint(), dump, requeue, exit
            sys.exit(EXIT_CODES["interrupted"])  # it returns only in a task that is not the job's first
        reason = requeue_self(job_id)
        if reason is not None:
            for rd in survivors:
                give_up(rd, job_id, RuntimeError(f"could not requeue job {job_id}: {reason}"), "requeue failed")
        sys.exit(EXIT_CODES["interrupted"])


def names(outcomes: list[Outcome]) -> str:
    return ", ".join(o.rd.root.name for o in outcomes)


def gpu_shares(visible: str, n: int) -> list[str | None]:
    """Split the task's CUDA_VISIBLE_DEVICES into `n` equal shares (None: no GPUs, nothing to set)."""
    devices = [d for d in visible.split(",") if d.strip()]
    if not devices:
        return [None] * n
    per = max(1, len(devices) // n)
    if len(devices) < n:
        raise RuntimeError(f"pack of {n} runs side by side got {len(devices)} GPU(s) ({visible}); "
                           "each run needs at least one")
    return [",".join(devices[i * per:(i + 1) * per]) for i in range(n)]


def finished_before(rd: RunDir, job_id: str | None) -> Outcome | None:
    """A run a restarted pack must not rerun: DONE, or given up on by this job."""
    if rd.done.exists():
        return Outcome(rd, "done", json.loads(rd.done.read_text()))
    events = [e for e in read_attempts(rd) if e.get("job_id") == job_id]
    if job_id is not None and events and events[-1].get("event") == "failed":
        return Outcome(rd, "failed", error=RuntimeError(f"run {rd.root.name} failed earlier in job {job_id}"))
    return None


def judge_crash(rd: RunDir, job_id: str | None, step: int | None, exc: BaseException, caps: Caps) -> str:
    """"retry" (the job requeues) or "failed": never again after a crash at the same step, nor past the cap."""
    error = one_line(exc)
    if not under_slurm():  # no scheduler to requeue with: a crash is the end of this attempt
        give_up(rd, job_id, exc, None)
        return "failed"
    earlier = [e for e in read_attempts(rd) if e.get("event") == "crashed" and e.get("job_id") == job_id]
    record_attempt(rd, "crashed", job_id, step=step, error=error)
    where = f"at step {step}" if step is not None else "before its first step"
    if earlier and earlier[-1].get("step") == step:
        give_up(rd, job_id, exc, f"crashed again {where}: not requeued")
        return "failed"
    if len(earlier) + 1 > caps.crashes:
        give_up(rd, job_id, exc, f"crashed {len(earlier) + 1} times (max_crashes = {caps.crashes})")
        return "failed"
    write_failure(rd, exc, f"crashed {where}; requeued to retry")
    return "retry"


def give_up(rd: RunDir, job_id: str | None, exc: BaseException, reason: str | None) -> None:
    write_failure(rd, exc, reason)
    record_attempt(rd, "failed", job_id, error=one_line(exc), **({"reason": reason} if reason else {}))


def child_outcome(rd: RunDir, code: int, job_id: str | None, caps: Caps) -> Outcome:
    """The outcome of a parallel pack member from its exit code (a killed child counts as a crash)."""
    kind = next((k for k, c in EXIT_CODES.items() if c == code), None)
    if kind == "done":
        return Outcome(rd, "done", json.loads(rd.done.read_text()))
    if kind in ("interrupted", "retry"):
        return Outcome(rd, kind)
    if kind == "failed":
        return Outcome(rd, "failed", error=RuntimeError(f"run {rd.root.name} failed; see its FAILED marker"))
    if kind == "busy":
        return Outcome(rd, "busy", error=runlock.RunBusy(f"run {rd.root} is being trained by another process"))
    exc = RuntimeError(f"the process of run {rd.root.name} exited with code {code}")
    return Outcome(rd, judge_crash(rd, job_id, None, exc, caps), error=exc)


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def current_job_id() -> str | None:
    """`<array>_<task>` for array tasks (as in the manifest), else the executor's job id."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not inside a submitit job (in-process runs)
        return None


def _member(caps_json: str, run_dir: str) -> NoReturn:
    """A parallel pack member's process: one run, its outcome as the exit code."""
    job = TrainJob(Caps(**json.loads(caps_json)))
    flag = StopFlag()
    with flag.installed():
        outcome = job.run_one(RunDir(Path(run_dir)), current_job_id(), flag)
    sys.exit(EXIT_CODES[outcome.kind])


if __name__ == "__main__":
    _member(*sys.argv[1:3])
