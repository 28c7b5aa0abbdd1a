"""Submitting a grid to SLURM as array jobs through submitit: submit, record, exit.

Dependencies and job states. A run waits only on the runs it requires (JTT's stage 1, a pre-training
run), by their own array task ids: `--dependency=afterok:<array>_<task>`. A dependency list belongs to a
whole sbatch submission, so the runs of one dependency level are grouped by the set of required jobs
they wait on, one array per group (split where larger than the cluster's MaxArraySize); runs whose
requirements are all done share one array without a dependency. With `--kill-on-invalid-dep=yes`, SLURM
cancels only the arrays whose own requirement failed (accounting records them as CANCELLED, reason
Dependency; `grid status` shows those runs `blocked`, naming the run they wait on, and `grid resume`
submits both again). Why not the alternatives: `afterok` on a whole stage-1 array lets one failed task
cancel every stage-2 run; `aftercorr` needs stage 2 laid out task for task like stage 1, which packs,
chunks and requirements queued by an earlier submission break; a stage-2 job that starts only to find
its stage 1 missing spends an allocation (a GPU, on a busy cluster hours of waiting) on nothing. The
cost: a JTT grid makes one sbatch call per stage-1 run still queued, instead of one per level.

Preemption from the first instruction: a job starts as `/bin/sh -c 'trap "" USR2 TERM; exec "$@"'`
(microseconds), then a bare `python -S` that blocks both signals and execs the job's interpreter, which
inherits the mask: a preemption or time-limit signal while Python starts and imports stays pending until
the job's stop flag is installed, and then stops the loop at its first step boundary (checkpoint,
requeue). With a configured `[executor] python` (a wrapper, a container) only the shell runs first: such
a signal is dropped, never fatal.

Never past a limit: MaxArraySize, MaxJobCount and the association's and QOS's submit limits (with the
jobs already queued) decide how many tasks go in; the rest are recorded as not submitted. With
`pack = K` one array task runs K runs of one level that wait on the same jobs.
"""
from __future__ import annotations

import contextlib
import re
import shlex
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.expand import PlannedRun
from robustmtl.grid.manifest import append_entries
from robustmtl.grid.scheduler import SubmitRoom, cancel, jobs_with_comment, sbatch_message, submit_room
from robustmtl.layout import GridDir
from robustmtl.train.signals import HOLD_SIGNALS, WARNING_ENV

# sbatch errors worth another try: the controller was busy or briefly unreachable
TRANSIENT = re.compile(r"socket timed out|timed out|try again|temporarily unavailable|temporarily unable|"
                       r"unable to contact slurm controller|connection refused|connection reset", re.IGNORECASE)
RETRY_DELAYS_S = (2.0, 5.0, 15.0, 30.0)


def slurm_parameters(settings: ExecutorSettings, job_name: str) -> dict[str, Any]:
    """AutoExecutor parameters from the [executor] settings (with CLI overrides already applied)."""
    side_by_side = settings.pack if settings.pack_mode == "parallel" else 1  # runs of a task at once
    # a short job gets its warning signal early enough to checkpoint; 90 s (submitit's default) otherwise
    warning_s = min(90, max(30, settings.timeout_min * 15))
    params: dict[str, Any] = {
        "timeout_min": settings.timeout_min, "cpus_per_task": settings.cpus * side_by_side, "slurm_job_name": job_name,
        "slurm_signal_delay_s": warning_s,
        # torch would otherwise start one thread per core of the whole node; the job tells a time-limit
        # warning from a preemption by the delay
        "slurm_setup": [f"export OMP_NUM_THREADS={settings.cpus}", f"export {WARNING_ENV}={warning_s}",
                        *settings.setup],
    }
    optional = {"slurm_partition": settings.partition, "slurm_account": settings.account,
                "slurm_qos": settings.qos, "slurm_constraint": settings.constraint,
                "mem_gb": settings.mem_gb * side_by_side if settings.mem_gb else None}
    params.update({k: v for k, v in optional.items() if v is not None})
    if settings.gpus:  # per task would need --ntasks; runs_per_gpu runs of a pack share each GPU
        params["slurm_gpus_per_node"] = settings.gpus * -(-side_by_side // settings.runs_per_gpu)
    if settings.extra:
        params["slurm_additional_parameters"] = dict(_flag(f) for f in settings.extra)
    return params


def _flag(flag: str) -> tuple[str, Any]:
    body = flag.removeprefix("--")
    key, sep, value = body.partition("=")
    if not flag.startswith("--") or not key or (sep and not value):
        raise UserError(f"[executor] extra flag {flag!r} must look like --name=value (or --name)")
    return key.replace("-", "_"), value if sep else True


def levels(todo: list[PlannedRun]) -> list[list[PlannedRun]]:
    """Runs grouped so that every run's requirements are in an earlier group (or not to be submitted)."""
    ids = {r.run_id for r in todo}
    placed: set[str] = set()
    out = []
    remaining = list(todo)
    while remaining:
        level = [r for r in remaining if all(q not in ids or q in placed for q in r.requires)]
        if not level:
            raise UserError("circular run requirements in the grid")
        out.append(level)
        placed |= {r.run_id for r in level}
        remaining = [r for r in remaining if r.run_id not in placed]
    return out


def chunked(tasks: list[Any], max_size: int) -> list[list[Any]]:
    """Arrays of at most `max_size` tasks (indices 0 .. MaxArraySize-1)."""
    size = max(1, max_size)
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]


def dependencies(runs: list[PlannedRun], job_of: dict[str, str]) -> list[str]:
    """Jobs of the required runs still queued or being submitted; a done requirement needs none."""
    return sorted({job_of[q] for r in runs for q in r.requires if q in job_of})


def by_dependencies(runs: list[PlannedRun], job_of: dict[str, str]) -> list[tuple[list[str], list[PlannedRun]]]:
    """Runs grouped by the jobs they wait on (in the order the groups first appear): one array per group."""
    groups: dict[tuple[str, ...], list[PlannedRun]] = {}
    for r in runs:
        groups.setdefault(tuple(dependencies([r], job_of)), []).append(r)
    return [(list(deps), members) for deps, members in groups.items()]


def with_requirements(todo: list[PlannedRun], everything: list[PlannedRun], skip: set[str]) -> list[PlannedRun]:
    """`todo` plus the runs it requires (transitively) that are neither done nor queued (`skip`)."""
    by_id = {r.run_id: r for r in everything}
    chosen = {r.run_id: r for r in todo}
    stack = list(todo)
    while stack:
        for q in stack.pop().requires:
            if q not in chosen and q not in skip and q in by_id:
                chosen[q] = by_id[q]
                stack.append(by_id[q])
    return [r for r in everything if r.run_id in chosen]


def submit_arrays(grid: GridDir, todo: list[PlannedRun], settings: ExecutorSettings, console: Console,
                  queued: dict[str, str] | None = None) -> int:
    """Queue what of `todo` the cluster's limits let in; `queued` maps already queued runs to their job ids.

    Returns the number of runs queued. Each array's manifest entries are written as soon as sbatch
    accepted it, and only then; the runs held back by a limit get an entry without a job id, so
    `grid status` shows them as not submitted and a later `grid submit`/`grid resume` queues them.
    """
    room = submit_room(settings.account, settings.qos)
    left = room.jobs
    job_of = dict(queued or {})
    held: list[PlannedRun] = []
    submitted = 0
    for level in levels(todo):
        held_ids = {r.run_id for r in held}
        blocked = [r for r in level if any(q in held_ids for q in r.requires)]
        groups = [(deps, packed(members, settings.pack))
                  for deps, members in by_dependencies([r for r in level if r not in blocked], job_of)]
        if left is not None:
            fitting = []
            for deps, tasks in groups:
                fitting.append((deps, tasks[:left]))
                blocked += [r for t in tasks[left:] for r in t]
                left -= len(fitting[-1][1])
            groups = [(deps, tasks) for deps, tasks in fitting if tasks]
        held += blocked
        for deps, tasks in groups:
            for chunk in chunked(tasks, room.max_array_size):
                submitted += queue_chunk(grid, chunk, settings, deps, room.max_array_size, job_of, submitted,
                                         console)
    if held:
        report_held(grid, held, room, console)
    return submitted


def queue_chunk(grid: GridDir, chunk: list[list[PlannedRun]], settings: ExecutorSettings, deps: list[str],
                max_size: int, job_of: dict[str, str], submitted: int, console: Console) -> int:
    """One sbatch call for `chunk`; its manifest entries are written at once. Returns the runs queued."""
    runs = [r for task in chunk for r in task]
    try:
        job_ids = sbatch_array(grid, chunk, settings, deps, max_size)
    except UserError as exc:
        if submitted:
            raise UserError(f"{exc} ({submitted} runs were queued before this; they are in "
                            f"{grid.manifest})") from None
        raise
    entries: list[dict[str, Any]] = [
        {"run_id": r.run_id, "job_id": j, **({"pack": [q.run_id for q in task]} if len(task) > 1 else {})}
        for task, j in zip(chunk, job_ids, strict=True) for r in task]
    append_entries(grid.root, entries)
    job_of.update({e["run_id"]: e["job_id"] for e in entries})
    in_tasks = f" in {len(chunk)} task(s)" if settings.pack > 1 else ""
    waits = f", after {', '.join(deps)}" if deps else ""
    console.print(f"queued {len(runs)} run(s){in_tasks} as job {job_ids[0].split('_')[0]}{waits}", highlight=False)
    return len(runs)


def report_held(grid: GridDir, held: list[PlannedRun], room: SubmitRoom, console: Console) -> None:
    """Record the runs a limit kept out as not submitted, and say how to submit them later."""
    limit = room.binding
    why = f"{limit.what} = {limit.limit}, {limit.used} job(s) already count against it" if limit else "a limit"
    append_entries(grid.root, [{"run_id": r.run_id, "job_id": None, "not_submitted": why} for r in held])
    console.print(f"[yellow]{len(held)} run(s) not submitted: the cluster's limit is reached ({why}). "
                  f"Run `robustmtl grid resume {grid.root}` (or this `grid submit` again) once jobs have left "
                  "the queue; it submits only what is missing.[/]", highlight=False)


def packed(runs: list[PlannedRun], k: int) -> list[list[PlannedRun]]:
    """Runs in array tasks of `k` (the last one may be smaller)."""
    return [runs[i:i + k] for i in range(0, len(runs), max(1, k))]


def sbatch_array(grid: GridDir, tasks: list[list[PlannedRun]], settings: ExecutorSettings, deps: list[str],
                 max_size: int) -> list[str]:
    """One sbatch call for `tasks` (an array when there are several); returns their job ids in order.

    Transient failures (socket timeouts, "try again") are retried with backoff; before each retry, a job
    that the failed call queued anyway (found by its unique comment) is cancelled, so nothing runs twice.
    A permanent rejection is one UserError with sbatch's own words.
    """
    import submitit
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    from robustmtl.train.job import TrainJob
    from robustmtl.train.outcome import Caps

    params = slurm_parameters(settings, f"robustmtl-{grid.root.resolve().name}")
    params["slurm_array_parallelism"] = settings.array_parallelism or max_size
    token = f"robustmtl-{uuid.uuid4().hex[:12]}"
    extra = {**params.get("slurm_additional_parameters", {}), "comment": token}
    if deps:
        params["slurm_dependency"] = "afterok:" + ":".join(deps)
        # a failed requirement ends the dependants (shown as cancelled) instead of leaving them pending forever
        extra["kill_on_invalid_dep"] = "yes"
    params["slurm_additional_parameters"] = extra
    caps = Caps(preemptions=settings.max_preemptions, timeouts=settings.max_timeouts, crashes=settings.max_crashes)
    args = [str(_absolute(grid, task[0])) if settings.pack == 1 else [str(_absolute(grid, r)) for r in task]
            for task in tasks]
    folder = grid.submitit
    folder.mkdir(parents=True, exist_ok=True)
    before = set(folder.iterdir())
    for attempt in range(len(RETRY_DELAYS_S) + 1):
        try:
            # `python` is the command the sbatch script starts the job with (after the setup lines, which
            # may put it on PATH); None keeps submitit's default, the interpreter submitting
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm",
                                             slurm_python=signal_safe(settings.python))
            executor.update_parameters(**params)
            jobs = executor.map_array(TrainJob(caps, settings.pack_mode, settings.runs_per_gpu), args)
            return [str(j.job_id) for j in jobs]
        except ValueError as exc:
            raise UserError(f"bad SLURM parameter: {str(exc).splitlines()[0]}") from None
        except (FailedJobError, FailedSubmissionError) as exc:
            for leftover in set(folder.iterdir()) - before:  # pickles and scripts of the failed submission
                if leftover.is_file() or leftover.is_symlink():
                    leftover.unlink()
            message = sbatch_message(str(exc)) or str(exc)
            if not TRANSIENT.search(message) or attempt == len(RETRY_DELAYS_S):
                raise UserError(f"sbatch rejected the job: {message}") from None
            with contextlib.suppress(UserError):
                cancel(jobs_with_comment(token))
            time.sleep(RETRY_DELAYS_S[attempt])
    raise AssertionError("unreachable")


# SIGUSR2 (the preemption and time-limit warning) and SIGTERM stay ignored through exec until the job holds
# them back: one arriving while the interpreter starts is dropped, not fatal
SIGNAL_SAFE_START = """/bin/sh -c 'trap "" USR2 TERM; exec "$@"' robustmtl-job"""


def signal_safe(python: str | None) -> str:
    """The command the sbatch script starts the job's interpreter with.

    By default this interpreter, behind a shell that ignores USR2 and TERM for its first microseconds and
    a bare `python -S` that blocks them (held, not lost) and execs the job; the job unblocks them once its
    stop flag is in place. A configured `python` (a wrapper, a container) gets the shell alone: a signal
    while it starts and imports is dropped, never fatal, until the job's pickle is loaded (which blocks
    them: `TrainJob.__setstate__`).
    """
    if python is not None:
        return f"{SIGNAL_SAFE_START} {python}"
    interpreter = shlex.quote(sys.executable)
    return f"{SIGNAL_SAFE_START} {interpreter} -S -c {shlex.quote(HOLD_SIGNALS)} {interpreter}"


def _absolute(grid: GridDir, run: PlannedRun) -> Path:
    return grid.run(run.run_id).root.resolve()
