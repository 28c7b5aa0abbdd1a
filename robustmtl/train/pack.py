"""Packs run side by side (`[executor] pack_mode = "parallel"`): one child process per run of an array
task, each seeing its own share of the task's GPUs, its outcome passed back as its exit code.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import NoReturn

from robustmtl.cpus import CPUS_ENV, job_cpus
from robustmtl.layout import RunDir
from robustmtl.train import runlock
from robustmtl.train.attempt import attempt
from robustmtl.train.outcome import Caps, End, Outcome, finished_before, judge_crash
from robustmtl.train.share import MEMORY_FRACTION_ENV
from robustmtl.train.signals import StopFlag, current_job_id

# a parallel pack member's outcome
POLL_S = 0.2


def side_by_side(rds: list[RunDir], job_id: str | None, flag: StopFlag, caps: Caps,
                 runs_per_gpu: int = 1) -> list[Outcome]:
    """One child process per unfinished run, each seeing its own share of the task's GPUs (`runs_per_gpu`
    children to a GPU, each held to that fraction of its memory) and told its share of the task's CPUs."""
    outcomes = [o for rd in rds if (o := finished_before(rd, job_id)) is not None]
    todo = [rd for rd in rds if all(o.rd != rd for o in outcomes)]
    shares = gpu_shares(os.environ.get("CUDA_VISIBLE_DEVICES", ""), len(todo), runs_per_gpu)
    fraction = {MEMORY_FRACTION_ENV: f"{1 / runs_per_gpu:.6f}"} if runs_per_gpu > 1 else {}
    cpus = {CPUS_ENV: str(max(1, job_cpus() // max(1, len(todo))))}  # each sizes its DataLoader workers by it
    children = []
    for rd, share in zip(todo, shares, strict=True):
        env = {**os.environ, **cpus} if share is None else {**os.environ, "CUDA_VISIBLE_DEVICES": share, **fraction,
                                                             **cpus}
        cmd = [sys.executable, "-m", "robustmtl.train.pack", json.dumps(asdict(caps)), str(rd.root)]
        children.append((rd, subprocess.Popen(cmd, env=env)))
    forwarded = False
    while any(p.poll() is None for _, p in children):
        if flag() and not forwarded:  # SLURM signals the whole step, but a forwarded copy costs nothing
            for _, p in children:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(flag.signum or signal.SIGTERM)
            forwarded = True
        time.sleep(POLL_S)
    for rd, p in children:
        outcomes.append(child_outcome(rd, p.returncode, job_id, caps))
    return outcomes


def gpu_shares(visible: str, n: int, runs_per_gpu: int = 1) -> list[str | None]:
    """Split the task's CUDA_VISIBLE_DEVICES into `n` shares: equal slices of the GPUs, or with `runs_per_gpu`
    > 1 one GPU per `runs_per_gpu` runs (None: no GPUs, nothing to set)."""
    devices = [d for d in visible.split(",") if d.strip()]
    if not devices:
        return [None] * n
    if len(devices) * runs_per_gpu < n:
        raise RuntimeError(f"pack of {n} runs side by side got {len(devices)} GPU(s) ({visible}) for "
                           f"{runs_per_gpu} run(s) each")
    if runs_per_gpu > 1:
        return [devices[i // runs_per_gpu] for i in range(n)]
    per = max(1, len(devices) // n)
    return [",".join(devices[i * per:(i + 1) * per]) for i in range(n)]


def child_outcome(rd: RunDir, code: int, job_id: str | None, caps: Caps) -> Outcome:
    """The outcome of a parallel pack member from its exit code (a killed child counts as a crash)."""
    end = End.from_exit_code(code)
    if end is End.DONE:
        return Outcome(rd, end, json.loads(rd.done.read_text()))
    if end in (End.INTERRUPTED, End.RETRY):
        return Outcome(rd, end)
    if end is End.FAILED:
        return Outcome(rd, end, error=RuntimeError(f"run {rd.root.name} failed; see its FAILED marker"))
    if end is End.BUSY:
        return Outcome(rd, end, error=runlock.RunBusy(f"run {rd.root} is being trained by another process"))
    exc = RuntimeError(f"the process of run {rd.root.name} exited with code {code}")
    return Outcome(rd, judge_crash(rd, job_id, None, exc, caps), error=exc)


def _member(caps_json: str, run_dir: str) -> NoReturn:
    """A parallel pack member's process: one run, its outcome as the exit code."""
    flag = StopFlag()
    with flag.installed():
        outcome = attempt(RunDir(Path(run_dir)), current_job_id(), Caps(**json.loads(caps_json)), stop_requested=flag)
    sys.exit(outcome.end.value)


if __name__ == "__main__":
    _member(*sys.argv[1:3])
