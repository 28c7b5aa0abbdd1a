"""The SLURM client commands robustmtl calls, one batched call each (never one per task).

Every query returns None when SLURM cannot answer (no binary, no controller), so callers can fall
back to the run directories' markers instead of failing.
"""

from __future__ import annotations

import datetime
import getpass
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from robustmtl.errors import UserError

TIMEOUT_S = 60
DEFAULT_MAX_ARRAY_SIZE = 1001  # SLURM's own default
DEFAULT_MAX_JOB_COUNT = 10000
# squeue states whose jobs count against submit limits (COMPLETING too: it is still in the controller's count)
SUBMITTED = frozenset({"PENDING", "RUNNING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "CONFIGURING",
                       "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD"})
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


def _config_int(proc: subprocess.CompletedProcess[str] | None, key: str, default: int) -> int:
    match = re.search(rf"^{key}\s*=\s*(\d+)", proc.stdout if proc else "", re.MULTILINE)
    return int(match.group(1)) if match else default


@dataclass(frozen=True)
class Limit:
    """One limit on the jobs this user may have queued, and how many already count against it."""

    what: str
    limit: int
    used: int

    @property
    def room(self) -> int:
        return max(0, self.limit - self.used)


@dataclass(frozen=True)
class SubmitRoom:
    """What the cluster lets this user queue now: the binding limit decides how many jobs fit."""

    max_array_size: int
    limits: list[Limit] = field(default_factory=list)

    @property
    def binding(self) -> Limit | None:
        return min(self.limits, key=lambda lim: lim.room, default=None)

    @property
    def jobs(self) -> int | None:
        """Jobs (array tasks count one each) that may still be submitted; None: no limit known."""
        return self.binding.room if self.binding else None


def submit_room(account: str | None, qos: str | None) -> SubmitRoom:
    """MaxArraySize, MaxJobCount, the association's and QOS's submit limits, and the jobs already queued.

    A handful of calls per `grid submit` (scontrol, sacctmgr twice or three times, squeue once); a limit
    that accounting does not expose is simply not enforced here (sbatch still refuses past it).
    """
    config = _call(["scontrol", "show", "config"])
    user = getpass.getuser()
    held = _controller_jobs()  # finished jobs the controller still holds count against MaxJobCount too
    queued = [j[:3] for j in held if j[3] in SUBMITTED]
    limits = [Limit("MaxJobCount (jobs the controller holds)",
                    _config_int(config, "MaxJobCount", DEFAULT_MAX_JOB_COUNT), len(held))]
    account = (account or _sacctmgr(["show", "user", user, "format=DefaultAccount"]) or "").lower()
    assoc_qos = ""
    if account:
        rows = [r.split("|") for r in _sacctmgr(["show", "assoc", "where", f"account={account}",
                                                 "format=User,MaxSubmit,GrpSubmit,QOS,DefaultQOS"]).splitlines()]
        mine = next((r for r in rows if len(r) == 5 and r[0] == user), None)
        top = next((r for r in rows if len(r) == 5 and r[0] == ""), None)
        in_account = [j for j in queued if j[1] == account]
        if mine and mine[1].isdigit():
            limits.append(Limit(f"MaxSubmitJobs of association {user}/{account}", int(mine[1]),
                                sum(j[0] == user for j in in_account)))
        elif top and top[1].isdigit():
            limits.append(Limit(f"MaxSubmitJobs of account {account} (per user)", int(top[1]),
                                sum(j[0] == user for j in in_account)))
        if mine and mine[2].isdigit():
            limits.append(Limit(f"GrpSubmitJobs of association {user}/{account}", int(mine[2]),
                                sum(j[0] == user for j in in_account)))
        if top and top[2].isdigit():
            limits.append(Limit(f"GrpSubmitJobs of account {account}", int(top[2]), len(in_account)))
        if mine:
            assoc_qos = mine[4] or (mine[3] if "," not in mine[3] else "")
    qos = (qos or assoc_qos).lower()
    if qos:
        row = _sacctmgr(["show", "qos", "where", f"name={qos}", "format=MaxSubmitPU,GrpSubmit"]).split("|")
        in_qos = [j for j in queued if j[2] == qos]
        if len(row) == 2 and row[0].isdigit():
            limits.append(Limit(f"MaxSubmitJobsPerUser of QOS {qos}", int(row[0]), sum(j[0] == user for j in in_qos)))
        if len(row) == 2 and row[1].isdigit():
            limits.append(Limit(f"GrpSubmitJobs of QOS {qos}", int(row[1]), len(in_qos)))
    return SubmitRoom(_config_int(config, "MaxArraySize", DEFAULT_MAX_ARRAY_SIZE), limits)


def _sacctmgr(args: list[str]) -> str:
    """sacctmgr's parsable output, "" without accounting (then its limits cannot be known, nor are enforced)."""
    proc = _call(["sacctmgr", "--noheader", "--parsable2", *args])
    return proc.stdout.strip() if proc is not None and proc.returncode == 0 else ""


def _controller_jobs() -> list[tuple[str, str, str, str]]:
    """(user, account, qos, state) of every job the controller holds, one per array task (as limits count them)."""
    proc = _call(["squeue", "--noheader", "--array", "--states=all", "--format=%u|%a|%q|%T"])
    jobs = []
    for line in proc.stdout.splitlines() if proc is not None and proc.returncode == 0 else []:
        parts = line.strip().split("|")
        if len(parts) == 4:
            jobs.append((parts[0], parts[1].lower(), parts[2].lower(), parts[3]))
    return jobs


def jobs_with_comment(comment: str) -> list[str]:
    """Ids of this user's jobs carrying `comment`: an sbatch that timed out may have queued its job anyway."""
    proc = _call(["squeue", "--noheader", "--user", getpass.getuser(), "--format=%F|%k"])
    if proc is None or proc.returncode != 0:
        return []
    return sorted({line.split("|")[0] for line in proc.stdout.splitlines() if line.strip().endswith("|" + comment)})


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
