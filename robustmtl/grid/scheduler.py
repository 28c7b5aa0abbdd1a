"""The SLURM client commands robustmtl calls, one batched call each (never one per task).

Every query returns None when SLURM cannot answer (no binary, no controller), so callers can fall
back to the run directories' markers instead of failing.
"""

from __future__ import annotations

import datetime
import re
import shutil
import subprocess
from collections.abc import Iterable

from robustmtl.errors import UserError

TIMEOUT_S = 60
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
RUNNING = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING", "RESIZING"})


def _call(cmd: list[str]) -> subprocess.CompletedProcess[str] | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None


def array_ids(job_ids: Iterable[str]) -> list[str]:
    """`123_4` → `123`: one id per array covers all its tasks and keeps the command line short."""
    return sorted({j.split("_")[0] for j in job_ids}, key=lambda j: (len(j), j))


def max_array_size() -> int:
    """MaxArraySize of the cluster (an array's indices must stay below it)."""
    proc = _call(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", proc.stdout if proc else "", re.MULTILINE)
    return int(match.group(1)) if match else DEFAULT_MAX_ARRAY_SIZE


def queue_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """job id (`<array>_<task>` or plain) → squeue state, for the queued or running ones among `job_ids`."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    proc = _call(["squeue", "--noheader", "--array", "--format=%i|%T", "--jobs=" + ",".join(array_ids(wanted))])
    if proc is None:
        return None
    if proc.returncode != 0:
        # every id already left the controller's memory: nothing of them is queued
        return {} if "Invalid job id" in proc.stderr else None
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted:
            states[job_id] = state
    return states


def accounting_states(job_ids: Iterable[str], since: float) -> dict[str, str] | None:
    """job id → final sacct state (first word: `CANCELLED by 0` → CANCELLED); None without accounting."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    start = datetime.datetime.fromtimestamp(since - 86400).strftime("%Y-%m-%dT%H:%M:%S")
    proc = _call(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                  f"--starttime={start}", "--jobs=" + ",".join(array_ids(wanted))])
    if proc is None or proc.returncode != 0:
        return None
    states = {}
    for line in proc.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id in wanted and state:
            states[job_id] = state.split()[0]
    return states


def cancel(job_ids: list[str]) -> None:
    if not job_ids:
        return
    proc = _call(["scancel", *job_ids])
    if proc is None:
        raise UserError("`scancel` is not available here; cancel from a machine with the SLURM client tools")
    if proc.returncode != 0:
        raise UserError(f"scancel failed: {sbatch_message(proc.stderr) or proc.returncode}")


def sbatch_message(stderr: str) -> str:
    """The lines of an sbatch/scancel error that say what went wrong, without the `sbatch: error:` prefix."""
    text = stderr.strip()
    if not text:
        return ""
    lines = [re.sub(r"^\w+: error:\s*", "", line).strip() for line in text.splitlines() if "error" in line.lower()]
    return "; ".join(line for line in lines if line) or text.splitlines()[-1]
