"""Preemption signals inside a SLURM job: note them for the loop, tell what they mean, and requeue.

USR2 (the `--signal` warning before a time limit or a preemption) and TERM only raise a flag (`StopFlag`);
the loop checkpoints at the next step boundary. USR2 always needs the job to requeue itself (SLURM's
warning requeues nothing); whether it was the time limit, SLURM's RunTime and TimeLimit say. After TERM
one `scontrol show job` says whether SLURM is requeueing the job, ending it, or neither (a bare TERM: the
job requeues itself). Requeueing is this module's `scontrol requeue`, never submitit's signal handler, so
one set of caps (train/outcome.py) decides.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

# The job's interpreter runs this first (`python -S -c HOLD_SIGNALS command...`, grid/slurm.py): USR2 and TERM
# blocked at their default action, then exec the real command, which inherits the mask. A signal that comes
# while Python starts and imports stays pending, and StopFlag.installed delivers it to the loop's flag.
HOLD_SIGNALS = ("import os, signal, sys; held = {signal.SIGUSR2, signal.SIGTERM}; "
                "signal.pthread_sigmask(signal.SIG_BLOCK, held); "
                "[signal.signal(s, signal.SIG_DFL) for s in held]; os.execvp(sys.argv[1], sys.argv[1:])")


class StopFlag:
    """Callable for the loop's `stop_requested`: true once a preemption signal has arrived."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self, restore: bool = True) -> Iterator[None]:
        """Note the signals inside the block. `restore=False` leaves the flag's handler in place after it: in a
        job whose runs are then done or checkpointed, a late signal asks for nothing (submitit's own USR2
        handler, restored, would requeue the job)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._note)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, self.SIGNALS)  # one held since start-up arrives now
        try:
            yield
        finally:
            for signum, handler in previous.items() if restore else ():
                signal.signal(signum, handler)


def interruption(flag: StopFlag) -> tuple[str, bool]:
    """(event, whether the job must requeue itself) for the signal that stopped the loop."""
    if flag.signum == signal.SIGUSR2:  # a warning: SLURM ends the job soon and requeues nothing itself
        return ("timeout" if near_time_limit() else "preempted"), True  # unreadable limit: counted as a preemption
    state, requeued = slurm_job_view()
    if requeued:  # scontrol requeue, PreemptMode=REQUEUE: the next start resumes from the checkpoint
        return "preempted", False
    if state == "RUNNING":  # a bare TERM that ends nothing: preemption without a user signal, scancel --signal
        return "preempted", True
    return "terminated", False  # scancel, time limit: `grid resume` continues it


# SLURM sends the warning signal `--signal=USR2@<delay>` up to a minute before that delay; the submitting
# side exports the delay as WARNING_ENV
WARNING_ENV = "ROBUSTMTL_SIGNAL_DELAY_S"
WARNING_EARLY_S = 60


def near_time_limit() -> bool | None:
    """Whether this job is in its time-limit warning window (its remaining time at most the warning delay plus
    a minute), from SLURM's own RunTime and TimeLimit; None when that cannot be read. A preemption at 50
    minutes of a 60-minute job is a preemption, whatever share of the limit it has used."""
    delay = os.environ.get(WARNING_ENV, "")
    if not delay.isdigit():
        return None
    view = _scontrol_job()
    run_time, limit = (_seconds(re.search(rf"\b{key}=(\S+)", view)) for key in ("RunTime", "TimeLimit"))
    if run_time is None or limit is None:
        return None
    return limit - run_time <= int(delay) + WARNING_EARLY_S


def _seconds(match: re.Match[str] | None) -> int | None:
    """`[D-]HH:MM:SS` (or MM:SS) → seconds; None for UNLIMITED or anything else."""
    found = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", match.group(1)) if match else None
    if not found:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in found.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _scontrol_job() -> str:
    try:
        proc = subprocess.run(["scontrol", "show", "job", os.environ["SLURM_JOB_ID"]], capture_output=True,
                              text=True, timeout=5)
    except (OSError, KeyError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout


def under_slurm() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def slurm_job_view() -> tuple[str | None, bool]:
    """(JobState, whether SLURM is requeueing this job: its restart count is past the one this start got)."""
    view = _scontrol_job()
    if not view:
        return None, False
    state = re.search(r"\bJobState=(\S+)", view)
    restarts = re.search(r"\bRestarts=(\d+)", view)
    requeued = restarts is not None and int(restarts.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT", 0))
    return (state.group(1) if state else None), requeued


REQUEUED_STATES = ("PENDING", "REQUEUED")  # the job waits to start again: it will, without our requeue


def requeue_self(job_id: str | None) -> str | None:
    """`scontrol requeue` this job (it keeps its id and restarts from its submission); None when it worked,
    or when it was refused because the job is requeued already (another `scontrol requeue`, a preemption)."""
    target = job_id or os.environ.get("SLURM_JOB_ID")
    if not target:
        return "no SLURM job id"
    try:
        proc = subprocess.run(["scontrol", "requeue", target], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if proc.returncode == 0:
        return None
    state, requeued = slurm_job_view()
    if requeued or state in REQUEUED_STATES:
        return None
    return proc.stderr.strip() or f"exit {proc.returncode}"


def current_job_id() -> str | None:
    """`<array>_<task>` for array tasks (as in the manifest), else the executor's job id."""
    import submitit

    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not inside a submitit job (in-process runs)
        return None
