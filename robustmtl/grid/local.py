"""Runs executed on this machine: `local` (submitit's local executor, `parallel` at a time) and `debug`
(in this process), with a live progress bar; the command returns when they end.

Ctrl-C, SIGTERM and SIGHUP all stop the runs and end the command with one line: a submit killed
quietly would leave its runs training unattended, where `grid resume` would start them a second time.
A local job that fails before the training code runs (its setup lines, an interpreter that does not
start) leaves no FAILED marker: its error is the last line of GRID_DIR/submitit/start/<run_id>.log, where
the job's shell writes, or of submitit's own log of the job.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.expand import PlannedRun
from robustmtl.layout import GridDir, RunDir, failure_line
from robustmtl.records import count_split_records
from robustmtl.train.attempt_log import record_stop
from robustmtl.train.runlock import locked

LOCAL_JOBS = "local"  # GRID_DIR/submitit/local/<run_id>/: the run's local jobs (`job_folder`)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOP_WAIT_S = 15.0  # how long cancelled runs get to let go of their run directories
POLL_S = 0.5


def run_here(grid: GridDir, todo: list[PlannedRun], settings: ExecutorSettings, kind: str,
             console: Console, again: str) -> dict[str, str]:
    """Execute runs on this machine, required runs first, `parallel` at a time; returns failed run id → why.

    On Ctrl-C, the runs stopped are recorded as stopped, with `again`, the command that continues them."""
    import submitit

    from robustmtl.train.job import TrainJob

    shares = settings.local_gpu_shares() if kind == "local" else []
    load = dict.fromkeys(shares, 0)  # runs on each GPU share now
    if kind == "local":
        start_logs(grid).mkdir(parents=True, exist_ok=True)
    parallel = settings.local_parallel(len(shares)) if kind == "local" else 1
    waiting = list(todo)
    running: dict[str, Any] = {}
    share_of: dict[str, str] = {}
    failed: dict[str, str] = {}
    total_epochs = sum(r.config.trained_epochs for r in todo)
    columns = (TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("epochs"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress, stop_signals_interrupt():
        task = progress.add_task("training", total=total_epochs)
        try:
            while waiting or running:
                for run in list(waiting):
                    if len(running) >= parallel:
                        break
                    blockers = [r for r in run.requires if not grid.run(r).done.exists()]
                    if failed_blocker := next((b for b in blockers if b in failed), None):
                        waiting.remove(run)
                        failed[run.run_id] = f"its required run {failed_blocker} failed"
                    elif not blockers:
                        waiting.remove(run)
                        rd = grid.run(run.run_id)
                        if kind == "debug":  # trained right here: show the progress before the next one
                            if (error := train_here(rd)) is not None:
                                failed[run.run_id] = error
                            break
                        setup = (f"exec >{shlex.quote(str(start_log(grid, run.run_id)))} 2>&1", *settings.setup)
                        params: dict[str, Any] = {"setup": list(setup)}
                        if load:
                            share = share_of[run.run_id] = min(load, key=load.__getitem__)
                            load[share] += 1
                            params = gpu_visibility(share, setup)
                        executor = submitit.LocalExecutor(folder=job_folder(grid, run.run_id),
                                                          python=settings.python)
                        executor.update_parameters(timeout_min=settings.timeout_min, **params)
                        with signals_deferred(), sigint_for_children():  # a job started, then lost to a signal,
                            running[run.run_id] = executor.submit(TrainJob(), str(rd.root))  # would train unattended
                for run_id, job in list(running.items()):
                    if job.done():
                        del running[run_id]
                        if run_id in share_of:
                            load[share_of.pop(run_id)] -= 1
                        if (error := job_error(grid, run_id, job)) is not None:
                            failed[run_id] = error
                done_epochs = sum(min(_epochs_done(grid.run(r.run_id)), r.config.trained_epochs) for r in todo)
                finished = sum(grid.run(r.run_id).done.exists() for r in todo)
                progress.update(task, completed=done_epochs,
                                description=f"runs {finished}/{len(todo)} done, {len(running)} running")
                if running:
                    time.sleep(POLL_S)
        except KeyboardInterrupt:
            still = list(running)
            with contextlib.suppress(KeyboardInterrupt):  # a second signal only cuts the wait short
                with signals_deferred():
                    for job in running.values():
                        cancel_local(job)
                still = wait_stopped(grid, still)
                for run_id, job in running.items():
                    if run_id not in still:
                        record_stop(grid.run(run_id), str(job.job_id), again)
            raise UserError(f"interrupted: running jobs were cancelled; their checkpoints stay, and `{again}` "
                            "resumes them"
                            + (f" (still stopping: {', '.join(still)})" if still else "")) from None
    return failed


def train_here(rd: RunDir) -> str | None:
    """Train a debug run in this process; its error line, or None when it finished.

    Not through submitit's DebugExecutor: on a failure that opens pdb, a prompt that hangs the command.
    """
    from robustmtl.train.job import TrainJob
    from robustmtl.train.outcome import one_line

    try:
        TrainJob()(str(rd.root))
    except Exception as exc:
        return failure_line(rd) if rd.failed.exists() else one_line(exc)
    return None


def job_error(grid: GridDir, run_id: str, job: Any) -> str | None:
    """None when the local job succeeded, else one line on why: the run's FAILED marker, or when the job
    failed before training (nothing marked), the last line of the log holding its error, and where that is.

    A finished local job without its result file died before writing it: asking submitit for the result
    then would only wait 15 s for a file that cannot appear."""
    if Path(job.paths.result_pickle).exists():
        try:
            job.result()
        except Exception:
            pass
        else:
            return None
    rd = grid.run(run_id)
    if rd.failed.exists():
        return failure_line(rd)
    for log in (Path(job.paths.stderr), start_log(grid, run_id)):
        if line := last_line(log):
            return f"{line} (log: {log})"
    return f"its setup lines or interpreter failed before training, logging nothing (log: {start_log(grid, run_id)})"


def last_line(path: Path) -> str:
    """The last non-blank line of a log ('' when there is none)."""
    try:
        lines = path.read_bytes().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def job_folder(grid: GridDir, run_id: str) -> Path:
    """submitit's files of the run's local jobs (`<job id>_0_log.out` ...), one folder per run so `grid logs` finds
    a run's log by its id. Named without submitit's `%j`, which its local controller would create literally."""
    return grid.submitit / LOCAL_JOBS / run_id


def newest_log(grid: GridDir, run_id: str, err: bool) -> Path | None:
    """The stdout (stderr with `err`) log of the run's newest local job; else, for a job that failed before
    training, the log of its shell (`start_log`); None when the run has no local job log."""
    logs = job_folder(grid, run_id).glob(f"*_0_log.{'err' if err else 'out'}")
    newest = max(logs, key=lambda p: p.stat().st_mtime, default=None)
    if newest is None and start_log(grid, run_id).exists():
        return start_log(grid, run_id)
    return newest


def show_local_log(path: Path, follow: bool, write: Callable[[str], None]) -> None:
    """Print a local job's log; with `follow`, keep printing what is appended until its job's process ends."""
    job = path.name.split("_")[0]
    offset = write_new(path, 0, write)
    while follow and job.isdigit() and Path(f"/proc/{job}").exists():
        time.sleep(POLL_S)
        offset = write_new(path, offset, write)
    if follow:
        write_new(path, offset, write)


def write_new(path: Path, offset: int, write: Callable[[str], None]) -> int:
    """Write what the file holds past `offset`; the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return offset
    if data:
        write(data.decode(errors="replace"))
    return offset + len(data)


def start_logs(grid: GridDir) -> Path:
    return grid.submitit / "start"


def start_log(grid: GridDir, run_id: str) -> Path:
    """What a local job's shell prints (setup lines, submitit's controller), rewritten at each start of the run."""
    return start_logs(grid).resolve() / f"{run_id}.log"


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP (kill, a closed terminal) end this command as Ctrl-C does: KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP back for a block that must not be cut in half; delivered after it."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextlib.contextmanager
def sigint_for_children() -> Iterator[None]:
    """Processes started in this block get SIGINT at its default action, even where this command ignores it.

    A script's `robustmtl grid submit ... &` (and `nohup` from one) starts the command with SIGINT ignored,
    which every process it starts inherits: submitit's controller would then never hear the SIGINT that
    cancels a local job (`cancel_local`), and its run would train on after the command stopped. Hold the
    stop signals (`signals_deferred`) around it: this process is briefly at SIGINT's default too.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def cancel_local(job: Any) -> None:
    """Stop a local job. submitit sends SIGINT only to the process it started, here the shell of the setup
    lines, which dies without passing it on: its child, submitit's controller (which stops the run's
    process), gets SIGINT directly."""
    children = child_pids(int(job.job_id))
    job.cancel(check=False)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)


def child_pids(pid: int) -> list[int]:
    """The children of a process, as Linux lists them (none where /proc does not say)."""
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        return []


def wait_stopped(grid: GridDir, run_ids: list[str]) -> list[str]:
    """Wait until no process trains these runs any more (at most STOP_WAIT_S); the runs still held."""
    deadline = time.monotonic() + STOP_WAIT_S
    while (held := [r for r in run_ids if locked(grid.run(r))]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return held


def _epochs_done(rd: RunDir) -> int:
    return count_split_records(rd.metrics, "val")


def gpu_visibility(share: str, setup: tuple[str, ...]) -> dict[str, Any]:
    """submitit LocalExecutor parameters that give one run CUDA_VISIBLE_DEVICES=`share`.

    submitit sets the variable from integer `visible_gpus` only; GPU UUIDs and MIG ids are exported by
    a setup line instead (it runs after submitit's own setting, in the job's shell).
    """
    ids = share.split(",")
    if all(i.isdigit() for i in ids):
        return {"visible_gpus": tuple(int(i) for i in ids), "gpus_per_node": len(ids), "setup": list(setup)}
    return {"visible_gpus": (), "gpus_per_node": 0,
            "setup": [*setup, f"export CUDA_VISIBLE_DEVICES={shlex.quote(share)}"]}
