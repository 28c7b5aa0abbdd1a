"""The callable every executor runs: its only argument is the run directory; all else is read from disk.

As a submitit `Checkpointable`, a job that is preempted or times out is requeued with the same run
directory, and the loop resumes from the newest checkpoint there. Under SLURM the preemption
signals (USR2 from submitit's `--signal`, TERM from a requeue or preemption) only raise a flag: the
loop checkpoints at the next step boundary, and only then does submitit's own USR2 logic run
(`checkpoint()`, `scontrol requeue`, exit) — never in the middle of an optimiser step.

Every start, interruption and end is appended to RUN/attempts.jsonl, which `grid status` counts:
`start` (with whether a checkpoint was there), `preempted` (USR2 before the time limit, or TERM while
SLURM requeues), `timeout` (USR2 near the time limit), `terminated` (TERM otherwise: scancel, time
limit), `failed`, `done`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import submitit

from robustmtl.layout import RunDir, atomic_write_text

INTERRUPTIONS = ("preempted", "timeout")  # the ones that requeue


class RequeueLimit(RuntimeError):
    """A run was interrupted more often than `max_requeues` allows within one job."""


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, max_requeues: int | None = None) -> None:
        self.max_requeues = max_requeues

    def __call__(self, run_dir: str) -> dict[str, Any]:
        from robustmtl.train.loop import Interrupted, train_run

        rd = RunDir(Path(run_dir))
        job_id = current_job_id()
        record_attempt(rd, "start", job_id, checkpoint=rd.checkpoint.exists())
        flag = StopFlag()
        try:
            with flag.installed() if under_slurm() else contextlib.nullcontext():
                try:
                    summary = train_run(rd, stop_requested=flag)
                except Interrupted:
                    self._requeue(rd, job_id, flag)
        except Exception as exc:
            write_failure(rd, exc)
            record_attempt(rd, "failed", job_id, error=f"{type(exc).__name__}: {exc}".splitlines()[0])
            raise
        record_attempt(rd, "done", job_id)
        return summary

    def checkpoint(self, run_dir: str) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.max_requeues), run_dir)

    def _requeue(self, rd: RunDir, job_id: str | None, flag: StopFlag) -> NoReturn:
        """The loop has checkpointed: record why it stopped, then let SLURM (TERM) or submitit (USR2) requeue."""
        if flag.signum != signal.SIGUSR2:
            # TERM: SLURM itself requeues (scontrol requeue, PreemptMode=REQUEUE; the next start resumes from
            # the checkpoint on disk), or it cancels the job or ends it at its time limit.
            record_attempt(rd, "preempted" if requeued_by_slurm() else "terminated", job_id, signal="TERM")
            sys.exit(-1)
        handler = flag.previous.get(signal.SIGUSR2)
        has_timed_out = getattr(getattr(handler, "__self__", None), "has_timed_out", None)  # submitit's SignalHandler
        timed_out = bool(has_timed_out and has_timed_out())
        count = record_attempt(rd, "timeout" if timed_out else "preempted", job_id, signal="USR2")
        if self.max_requeues is not None and count > self.max_requeues:
            raise RequeueLimit(f"interrupted {count} times in job {job_id} (max_requeues = {self.max_requeues}); "
                               "`robustmtl grid resume` continues from the checkpoint")
        if callable(handler):
            handler(signal.SIGUSR2, None)  # submitit: checkpoint(), dump, `scontrol requeue`, exit
        sys.exit(-1)


class StopFlag:
    """Callable for the loop's `stop_requested`: true once a preemption signal has arrived."""

    SIGNALS = (signal.SIGUSR2, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.signum is not None

    def _note(self, signum: int, frame: Any) -> None:
        if self.signum is None:
            self.signum = signum

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        self.previous = {s: signal.getsignal(s) for s in self.SIGNALS}
        for s in self.SIGNALS:
            signal.signal(s, self._note)
        try:
            yield
        finally:
            for s, handler in self.previous.items():
                signal.signal(s, handler)


def under_slurm() -> bool:
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and "SLURM_JOB_ID" in os.environ


def requeued_by_slurm() -> bool:
    """Whether SLURM is requeueing this job: its restart count is already past the one this start got."""
    try:
        proc = subprocess.run(["scontrol", "show", "job", os.environ["SLURM_JOB_ID"]], capture_output=True,
                              text=True, timeout=5)
    except (OSError, KeyError, subprocess.TimeoutExpired):
        return False
    match = re.search(r"\bRestarts=(\d+)", proc.stdout)
    return bool(match) and int(match.group(1)) > int(os.environ.get("SLURM_RESTART_COUNT", 0))


def current_job_id() -> str | None:
    """`<array>_<task>` for array tasks (as in the manifest), else the executor's job id."""
    try:
        return str(submitit.JobEnvironment().job_id)
    except Exception:  # not inside a submitit job (in-process runs)
        return None


def record_attempt(rd: RunDir, event: str, job_id: str | None, **extra: Any) -> int:
    """Append one event (fsynced); returns how many interruptions this job has now recorded."""
    entry = {"event": event, "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
             "time": time.time(), "host": socket.gethostname(), **extra}
    append_durably(rd.attempts, json.dumps(entry, sort_keys=True) + "\n")
    return sum(1 for e in read_attempts(rd) if e.get("event") in INTERRUPTIONS and e.get("job_id") == job_id)


def append_durably(path: Path, text: str) -> None:
    """Append whole lines and fsync; a line torn by an earlier kill is closed first so this one stays whole."""
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def read_attempts(rd: RunDir) -> list[dict[str, Any]]:
    """Events of a run, oldest first; a torn last line is skipped."""
    try:
        lines = rd.attempts.read_text().splitlines()
    except FileNotFoundError:
        return []
    events = []
    for line in lines:
        with contextlib.suppress(json.JSONDecodeError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def write_failure(rd: RunDir, exc: BaseException) -> None:
    atomic_write_text(rd.failed, json.dumps({
        "error": f"{type(exc).__name__}: {exc}",
        "traceback": traceback.format_exc(),
        "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
    }, indent=2) + "\n")
