"""RUN/attempts.jsonl and RUN/FAILED: every start, interruption and end of a run, written durably.

`grid status` counts these events; the job's retry policy reads them back (caps per job id).
"""

from __future__ import annotations

import json
import os
import socket
import time
import traceback
from typing import Any

from robustmtl.layout import RunDir, append_durably, atomic_write_text, read_jsonl


def record_attempt(rd: RunDir, event: str, job_id: str | None, **extra: Any) -> int:
    """Append one event (fsynced); returns how many events of this kind this job has now recorded for the run."""
    entry = {"event": event, "job_id": job_id, "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", 0)),
             "time": time.time(), "host": socket.gethostname(), **extra}
    append_durably(rd.attempts, json.dumps(entry, sort_keys=True) + "\n")
    return sum(1 for e in read_attempts(rd) if e.get("event") == event and e.get("job_id") == job_id)


def read_attempts(rd: RunDir) -> list[dict[str, Any]]:
    """Events of a run, oldest first; unreadable lines and events without a name are skipped."""
    return read_jsonl(rd.attempts, lambda e: isinstance(e, dict) and isinstance(e.get("event"), str))


def record_stop(rd: RunDir, job_id: str, again: str) -> None:
    """Record that the local job `job_id` was stopped (Ctrl-C of a local grid), with `again`, the command that
    continues the run, when its attempt had started and recorded no end: a job stopped before it began
    trained nothing."""
    events = read_attempts(rd)
    if events and events[-1].get("event") == "start" and events[-1].get("job_id") == job_id:
        record_attempt(rd, "stopped", job_id, again=again)


def write_failure(rd: RunDir, exc: BaseException, reason: str | None = None, **extra: Any) -> None:
    atomic_write_text(rd.failed, json.dumps({
        "error": f"{type(exc).__name__}: {exc}", **({"reason": reason} if reason else {}), **extra,
        "traceback": "".join(traceback.format_exception(exc)),
        "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
    }, indent=2) + "\n")
