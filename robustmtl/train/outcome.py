"""What became of a run in a job, and the crash policy that decides between requeueing and giving up.

A crash under SLURM requeues the job unless the run crashed at the same step as its previous crash (a
deterministic failure: requeueing again would loop forever) or has used up `max_crashes`; then the run
ends FAILED with its error. Outside SLURM a crash ends the attempt: there is no scheduler to requeue with.
A diverged run (a non-finite loss) is no crash: it ends FAILED at once, naming the step, and `grid
resume` leaves it alone unless asked (`--retry-diverged`).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from robustmtl.layout import DIVERGED_STEP, RunDir
from robustmtl.train.attempt_log import read_attempts, record_attempt, write_failure
from robustmtl.train.signals import under_slurm

if TYPE_CHECKING:
    from robustmtl.train.loop import Diverged

DIVERGED_REASON = "not retried: the same run diverges again"


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


class End(enum.Enum):
    """How an attempt at a run ended; the value is a pack member process's exit code."""

    DONE = 0
    FAILED = 1
    INTERRUPTED = 75  # checkpointed on a signal: requeue
    RETRY = 76  # crashed, to be retried by requeueing the job
    BUSY = 77  # another process trains the run

    @classmethod
    def from_exit_code(cls, code: int) -> End | None:
        return next((end for end in cls if end.value == code), None)


@dataclass(frozen=True)
class Outcome:
    rd: RunDir
    end: End
    summary: dict[str, Any] | None = None
    error: BaseException | None = None


def finished_before(rd: RunDir, job_id: str | None) -> Outcome | None:
    """A run a restarted pack must not rerun: DONE, or given up on by this job."""
    if rd.done.exists():
        return Outcome(rd, End.DONE, json.loads(rd.done.read_text()))
    events = [e for e in read_attempts(rd) if e.get("job_id") == job_id]
    if job_id is not None and events and events[-1].get("event") == "failed":
        return Outcome(rd, End.FAILED, error=RuntimeError(f"run {rd.root.name} failed earlier in job {job_id}"))
    return None


def judge_crash(rd: RunDir, job_id: str | None, step: int | None, exc: BaseException, caps: Caps) -> End:
    """RETRY (the job requeues) or FAILED: never again after a crash at the same step, nor past the cap."""
    error = one_line(exc)
    if job_id is None or not under_slurm():  # no job to requeue (`robustmtl run`, no SLURM): the attempt ends
        give_up(rd, job_id, exc, None)
        return End.FAILED
    earlier = [e for e in read_attempts(rd) if e.get("event") == "crashed" and e.get("job_id") == job_id]
    record_attempt(rd, "crashed", job_id, step=step, error=error)
    where = f"at step {step}" if step is not None else "before its first step"
    if earlier and earlier[-1].get("step") == step:
        give_up(rd, job_id, exc, f"crashed again {where}: not requeued")
        return End.FAILED
    if len(earlier) + 1 > caps.crashes:
        give_up(rd, job_id, exc, f"crashed {len(earlier) + 1} times (max_crashes = {caps.crashes})")
        return End.FAILED
    write_failure(rd, exc, f"crashed {where}; requeued to retry")
    return End.RETRY


def give_up(rd: RunDir, job_id: str | None, exc: BaseException, reason: str | None, **extra: Any) -> None:
    """FAILED, and a `failed` event; `extra` fields go into both (a diverged run's step)."""
    write_failure(rd, exc, reason, **extra)
    record_attempt(rd, "failed", job_id, error=one_line(exc), **({"reason": reason} if reason else {}), **extra)


def give_up_diverged(rd: RunDir, job_id: str | None, exc: Diverged) -> None:
    """A diverged run ends FAILED at once, under SLURM too: the same config diverges again at the same step."""
    give_up(rd, job_id, exc, DIVERGED_REASON, **{DIVERGED_STEP: exc.step})


def one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
