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


@dataclass(frozen=True)
class JobEnd:
    """How a job (or array task) left the queue, from its accounting record.

    `state`: sacct's first word (CANCELLED, FAILED, PREEMPTED, ...); `reason`: sacct's Reason (Dependency
    for a job SLURM cancelled because its dependency can never be met); `by_uid`: who cancelled it;
    `signal`: the signal that killed its step, if one did; `array_record`: the record is the whole
    array's (tasks cancelled while pending have no record of their own).
    """

    state: str
    reason: str = ""
    by_uid: int | None = None
    signal: int | None = None
    array_record: bool = False

    @property
    def by_dependency(self) -> bool:
        return self.state == "CANCELLED" and self.reason.startswith("Dependency")

    def describe(self) -> str:
        """`cancelled by root`, `killed by signal 9 (SIGKILL)`, `preempted and not requeued`, ..."""
        if self.by_dependency:
            return "cancelled by SLURM: a job it depends on did not succeed"
        if self.state == "CANCELLED":
            if self.signal is not None and self.by_uid is None:
                return f"killed by signal {_signal_name(self.signal)}"
            return f"cancelled by {_user(self.by_uid)}" if self.by_uid is not None else "cancelled by the cluster"
        if self.signal is not None:
            return f"killed by signal {_signal_name(self.signal)}"
        words = {"PREEMPTED": "preempted and not requeued", "TIMEOUT": "reached its time limit",
                 "NODE_FAIL": "lost its node (NODE_FAIL)", "BOOT_FAIL": "could not boot its node (BOOT_FAIL)",
                 "OUT_OF_MEMORY": "ran out of memory", "DEADLINE": "reached its deadline", "FAILED": "failed",
                 "COMPLETED": "completed", "REQUEUED": "was requeued"}
        described = words.get(self.state, f"ended {self.state}")
        return f"{described} ({self.reason})" if self.reason and self.reason != "None" else described


def _user(uid: int | None) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name if uid is not None else "unknown"
    except KeyError:
        return f"uid {uid}"


def _signal_name(number: int) -> str:
    import signal

    try:
        return f"{number} ({signal.Signals(number).name})"
    except ValueError:
        return str(number)


ARRAY_RECORD = re.compile(r"^(\d+)_\[([0-9,\-]+)(?:%\d+)?\]$")


def array_tasks(record_id: str) -> list[str]:
    """`12_[0-2,5%2]` (an array's record for tasks without their own) → `12_0`, `12_1`, `12_2`, `12_5`."""
    match = ARRAY_RECORD.match(record_id)
    if not match:
        return []
    tasks = []
    for part in match.group(2).split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            tasks += [f"{match.group(1)}_{i}" for i in range(int(first), int(last or first) + 1)]
    return tasks


def accounting_states(job_ids: Iterable[str], since: float) -> dict[str, JobEnd] | None:
    """job id → how it ended, from one sacct call; None without accounting.

    Tasks of an array that were cancelled before they started have no record of their own, only the
    array's (`12_[3-9]`): they take its state. A step killed by a signal (exit code `0:9`) names it.
    """
    wanted = set(job_ids)
    if not wanted:
        return {}
    start = datetime.datetime.fromtimestamp(since - 86400).strftime("%Y-%m-%dT%H:%M:%S")
    proc = _call(["sacct", "--noheader", "--parsable2", "--format=JobID,State,Reason,ExitCode",
                  f"--starttime={start}", "--jobs=" + ",".join(array_ids(wanted))])
    if proc is None or proc.returncode != 0:
        return None
    return parse_accounting(proc.stdout, wanted)


def parse_accounting(text: str, wanted: set[str]) -> dict[str, JobEnd]:
    """sacct's `JobID|State|Reason|ExitCode` lines (jobs and their steps) → JobEnd of each wanted job."""
    ends: dict[str, JobEnd] = {}
    signals: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[1]:
            continue
        record, state, reason, exit_code = parts
        job, dot, _step = record.partition(".")
        _, _, sig = exit_code.partition(":")
        if dot:  # a step (`.batch`, `.0`): only its signal matters
            if sig.isdigit() and int(sig) and job not in signals:
                signals[job] = int(sig)
            continue
        words = state.split()
        by = int(words[2]) if len(words) == 3 and words[1] == "by" and words[2].isdigit() else None
        end = JobEnd(words[0], reason, by)
        if record in wanted:
            ends[record] = end
        for task in array_tasks(record):
            if task in wanted and task not in ends:
                ends[task] = JobEnd(end.state, reason, by, array_record=True)
    for job, signum in signals.items():
        if job in ends:
            e = ends[job]
            ends[job] = JobEnd(e.state, e.reason, e.by_uid, signum, e.array_record)
    return ends


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
