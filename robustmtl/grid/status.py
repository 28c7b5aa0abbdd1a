"""Run states of a grid from the sources of truth, cheapest first.

1. The run directories' markers: DONE is final; FAILED, a checkpoint or metrics say how far a run got.
2. One `squeue` call for the manifest's job ids of the runs not done: queued or running right now.
3. At most one `sacct` call for those that left the queue: cancelled, killed, timed out.
4. One read of /proc/locks, when some run not done has a train lock (RUN/.train.lock): which process on
   this machine trains it, also when no job of this grid does (`robustmtl run` by hand into the grid).
5. The configs of the runs whose job ended without starting them: a run whose required run (JTT's stage
   1, a pre-training run) is not done is `blocked`, naming the run it waits on (and what became of it).
Without SLURM (or without accounting) the markers alone still give a coarser answer. Whatever the
grid's size, that is one squeue and at most one sacct call per `grid status` (or per `--watch` refresh).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from robustmtl.errors import UserError
from robustmtl.grid import scheduler
from robustmtl.grid.manifest import latest_entries
from robustmtl.layout import ATTEMPTS, TRAIN_LOCK, GridDir, RunDir, diverged_step, failure_line, marker_state

# Shown always / only when some run is in them; in this order.
CORE_STATES = ("done", "running", "pending", "requeued", "failed", "interrupted", "not submitted")
EXTRA_STATES = ("blocked", "cancelled", "started", "submitted", "unknown")
ACTIVE = frozenset({"running", "pending", "requeued"})
STATE_HELP = {
    "done": "finished (DONE written)",
    "running": "training now",
    "pending": "queued, waiting for resources or for the runs it requires",
    "requeued": "pending again after a preemption, timeout or crash",
    "failed": "stopped for good with an error (the line below); `grid resume` tries again, a diverged run only "
              "with --retry-diverged",
    "interrupted": "started, then stopped without finishing (reason below); `grid resume` continues from its "
                   "checkpoint",
    "not submitted": "never queued, or held back by a cluster limit; `grid resume` submits it",
    "blocked": "waits on a required run that is not done (named below); `grid resume` submits both",
    "cancelled": "its job was cancelled before it started the run (by whom below); `grid resume` submits it",
    "started": "started, not done, trained by no process on this machine; no SLURM job or no squeue to tell "
               "whether it runs elsewhere",
    "submitted": "queued once, not started (no SLURM here to tell whether it still is)",
    "unknown": "submitted, left the queue, and SLURM's accounting holds no record of its job",
}
NOTED_STATES = frozenset(STATE_HELP) - {"done", "failed"}  # states whose runs are listed with their note
STOPS = (("preempted", "preempted"), ("timeout", "timed out"), ("crashed", "crashed"))  # counted per run


@dataclass
class RunStatus:
    run_id: str
    state: str
    job_id: str | None = None
    note: str = ""
    attempts: Counter = field(default_factory=Counter)
    queued: bool = False  # its job is in squeue's answer (a run trained by another process may not be)
    diverged_step: int | None = None  # failed with a non-finite loss at this step: `grid resume` leaves it alone

    def stops(self) -> str:
        """`2 preempted, 1 crashed`: how often this run was stopped before it ended (empty if never)."""
        return ", ".join(f"{self.attempts[e]} {label}" for e, label in STOPS if self.attempts.get(e))


@dataclass
class GridStatus:
    runs: dict[str, RunStatus]
    queue_known: bool
    accounting_known: bool

    @property
    def total(self) -> int:
        return len(self.runs)

    @property
    def counts(self) -> Counter:
        return Counter(r.state for r in self.runs.values())

    @property
    def failed(self) -> list[tuple[str, str]]:
        return [(r.run_id, r.note) for r in self.runs.values() if r.state == "failed"]

    @property
    def active(self) -> dict[str, str]:
        """run id → job id of the runs whose job is queued or running now: what to cancel or wait on."""
        return {r.run_id: r.job_id for r in self.runs.values() if r.queued and r.job_id}

    def attempt_totals(self) -> Counter:
        return sum((r.attempts for r in self.runs.values()), Counter())

    def shown_states(self) -> list[str]:
        counts = self.counts
        return [*CORE_STATES, *(s for s in EXTRA_STATES if counts.get(s))]


def grid_status(grid: GridDir, accounting: bool = True) -> GridStatus:
    """The state of every run of the grid; `accounting=False` skips sacct (enough to know what is queued)."""
    from robustmtl.train.attempt_log import read_attempts

    if not grid.root.is_dir():
        raise UserError(f"no grid directory at {grid.root}")
    run_ids = grid.run_ids()
    if not run_ids:
        raise UserError(f"no runs under {grid.root} (expected {grid.runs}/<run_id>/config.json)")
    entries = latest_entries(grid.root)
    run_dirs = {rid: grid.run(rid) for rid in run_ids}
    listings = {rid: rd.listing() for rid, rd in run_dirs.items()}
    markers = {rid: marker_state(names) for rid, names in listings.items()}
    job_of = {rid: str(e["job_id"]) for rid, e in entries.items() if e.get("job_id")}
    jobs = {rid: job_of[rid] for rid in run_ids if rid in job_of and markers[rid] != "done"}
    locked = [rid for rid in run_ids if markers[rid] != "done" and TRAIN_LOCK in listings[rid]]
    held = lock_holders() if locked else {}
    trainers = {rid: pid for rid in locked if (pid := trainer(run_dirs[rid], held)) is not None}
    queue = scheduler.queue_states(jobs.values())
    gone = [j for j in jobs.values() if queue is not None and j not in queue]
    acct: dict[str, scheduler.JobEnd] | None = None
    if accounting and gone:
        since = min(float(entries[rid].get("submitted_at", 0)) for rid, j in jobs.items() if j in gone)
        acct = scheduler.accounting_states(gone, since)
    runs = {}
    for rid in run_ids:
        rd = run_dirs[rid]
        events = read_attempts(rd) if ATTEMPTS in listings[rid] else []
        job = jobs.get(rid)
        started = any(e.get("event") == "start" and e.get("job_id") == job for e in events)
        outside = not any(e.get("event") == "start" and "via" not in e for e in events)  # grid jobs only
        holder = trainers.get(rid)
        again = events[-1].get("again") if events and events[-1].get("event") == "stopped" else None
        state, note = classify(markers[rid], job, queue, acct, restarted=started, holder=holder, outside=outside,
                               stopped_again=again if isinstance(again, str) else None)
        if state == "running" and holder is None and entries[rid].get("pack") and not started:
            state, note = "pending", f"waiting for its pack mates in task {job}"
        diverged = None
        if state == "failed" and markers[rid] == "failed":
            note, diverged = failure_line(rd), diverged_step(rd)
        if state == "not submitted" and rid in entries:
            note = f"held back: {entries[rid].get('not_submitted', 'no job id recorded')}"
        runs[rid] = RunStatus(rid, state, job or job_of.get(rid), note, Counter(e.get("event") for e in events),
                              queued=queue is not None and job in queue, diverged_step=diverged)
    ended = {rid for rid, r in runs.items() if r.state in UNSTARTED_ENDS
             or (acct is not None and jobs.get(rid) in acct and acct[jobs[rid]].by_dependency)}
    mark_blocked(runs, {rid: run_dirs[rid] for rid in ended})
    return GridStatus(runs=runs, queue_known=queue is not None,
                      accounting_known=acct is not None or not gone)


def classify(marker: str, job: str | None, queue: dict[str, str] | None, acct: dict[str, scheduler.JobEnd] | None,
             restarted: bool = False, holder: int | None = None, outside: bool = False,
             stopped_again: str | None = None) -> tuple[str, str]:
    """(state, note) of one run from its marker (done|failed|started|new), its newest job and what SLURM says.

    `restarted`: that job recorded a start of the run; `holder`: the pid of a process on this machine
    holding the run's train lock; `outside`: no job of this grid ever recorded a start of the run;
    `stopped_again`: the run's newest attempt was stopped with its local grid (Ctrl-C), and this command
    continues it.
    """
    if marker == "done":
        return "done", ""
    queued_state = queue.get(job) if job is not None and queue is not None else None
    queued = queued_state is not None
    if queued_state in scheduler.RUNNING:
        return "running", ""
    if holder is not None:  # trained now, though SLURM shows no job of this grid running it
        return "running", trained_by(holder, job if queue is not None and not restarted else None, queued, outside)
    if queued_state is not None:
        if queued_state.startswith("REQUEUE") or restarted:
            return "requeued", ""
        return "pending", ""
    if marker == "failed":
        return "failed", ""
    if stopped_again is not None:
        return "interrupted", f"its local job was stopped (Ctrl-C, SIGTERM or SIGHUP); `{stopped_again}` continues it"
    final = (acct or {}).get(job) if job is not None else None
    ended = final.describe() if final is not None else "left the queue"
    if outside and marker == "started" and (job is None or queue is not None):
        never = f"; its job {job} {ended} before starting it" if job is not None else ""
        return "interrupted", (f"trained outside this grid's jobs (e.g. `robustmtl run` by hand{never}), by no "
                               "process on this machine now; `grid resume` continues it")
    if job is None:  # never queued on SLURM: a local run, here or elsewhere, possibly still running elsewhere
        return ("started", "") if marker == "started" else ("not submitted", "")
    if queue is None:
        return ("started", "") if marker == "started" else ("submitted", f"job {job}")
    if marker == "started":
        return "interrupted", f"job {job} {ended}"
    if final is None:
        return "unknown", f"job {job}: no accounting record"
    if final.state == "CANCELLED":
        return "cancelled", f"job {job} {ended} before it started"
    if final.state == "FAILED" and final.signal is None:
        return "failed", f"job {job} failed before training started (see `robustmtl grid logs --err`)"
    return "interrupted", f"job {job} {ended} before it started the run"


# states of a run whose job ended without training it: the run may be waiting on a required run
UNSTARTED_ENDS = frozenset({"cancelled", "unknown"})


def mark_blocked(runs: dict[str, RunStatus], candidates: dict[str, RunDir]) -> None:
    """Runs among `candidates` with a required run not done become `blocked`, naming the run they wait on.

    A chain (pre-training → JTT stage 1 → JTT) names the first run of it that is not blocked itself: the
    one whose failure or interruption holds back the rest.
    """
    from robustmtl.requirements import required_runs
    from robustmtl.rundir import load_run

    waits_on: dict[str, str] = {}
    for rid, rd in candidates.items():
        try:
            needed = [c.run_id for c in required_runs(load_run(rd)[0]).values()]
        except (UserError, OSError, ValueError):  # a damaged config: the run keeps the state SLURM gave it
            continue
        missing = [q for q in needed if q in runs and runs[q].state != "done"]
        if missing:
            waits_on[rid] = missing[0]
    for rid, q in waits_on.items():
        root, seen = q, {rid}
        while root in waits_on and root not in seen:
            seen.add(root)
            root = waits_on[root]
        cause = runs[root]
        what = f"{cause.state}: {cause.note}" if cause.note else cause.state
        via = f", itself waiting on run {root}" if root != q else ""
        runs[rid].state, runs[rid].note = "blocked", f"waiting on run {q}{via} ({what})"


def trained_by(pid: int, other_than: str | None, queued: bool, outside: bool) -> str:
    """Who trains a run that no running job of the grid accounts for; `other_than`: a job known not to be it."""
    note = f"trained now by pid {pid} on this machine"
    if outside:
        note += ", outside this grid's jobs"
    elif other_than is not None:
        note += f", not by its job {other_than}"
    if queued and other_than is not None:
        note += f"; its queued job {other_than} will leave the run alone while another process trains it"
    return note


def lock_holders() -> dict[int, set[int]]:
    """inode → pids holding an flock write lock on it on this machine, from one read of /proc/locks.

    Read, never probed: taking the lock to test it, even for an instant, would make a job that starts
    in that instant find its run busy and leave it untrained. Locks held on other machines (a shared
    filesystem) are not listed.
    """
    try:
        text = Path("/proc/locks").read_text(errors="replace")
    except OSError:
        return {}
    held: dict[int, set[int]] = {}
    for line in text.splitlines():
        fields = line.split()  # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:5308638 0 EOF"; waiters have "->" second
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[3] == "WRITE":
            _, _, inode = fields[5].rpartition(":")
            pid = fields[4]
            if inode.isdigit() and pid.isdigit():
                held.setdefault(int(inode), set()).add(int(pid))
    return held


def trainer(rd: RunDir, held: dict[int, set[int]]) -> int | None:
    """The pid of the process on this machine that holds the run's train lock, if any.

    Matched by inode and by the pid the holder wrote into the lock file, not by device number: /proc/locks
    and stat() disagree on it for btrfs subvolumes and some overlay mounts.
    """
    path = rd.root / TRAIN_LOCK
    try:
        pids = held.get(os.stat(path).st_ino)
        written = path.read_bytes()[:32].strip() if pids else b""
    except OSError:
        return None
    return int(written) if written.isdigit() and int(written) in (pids or ()) else None


def queued_runs(grid: GridDir) -> dict[str, str]:
    """run id → job id of the runs queued or running now; refuses to guess when squeue cannot answer."""
    status = grid_status(grid, accounting=False)
    if not status.queue_known:
        raise UserError("squeue did not answer, so which runs are still queued is unknown; nothing was submitted "
                        "(retry when SLURM responds)")
    return status.active
