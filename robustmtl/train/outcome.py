"""What became of a run in a job, and the crash policy that decides between requeueing and giving up.

A crash under SLURM requeues the job unless the run crashed at the same step as its previous crash (a
deterministic failure: requeueing again would loop forever) or has used up `max_crashes`; then the run
ends FAILED with its error. Outside SLURM a crash ends the attempt: there is no scheduler to requeue with.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from robustmtl.layout import RunDir
from robustmtl.train.attempts import read_attempts, record_attempt, write_failure
from robustmtl.train.signals import under_slurm


class RequeueLimit(RuntimeError):
    """A run was interrupted more often than its cap allows within one job."""


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


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
