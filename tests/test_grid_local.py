"""Runs executed here. The local executor on a GPU machine: one run per GPU at a time, each seeing only
its own GPU (no GPU needed: the runs record the CUDA_VISIBLE_DEVICES they were started with and, finding
no CUDA device behind it, train on the CPU). Failures are named with their errors, debug runs never open
a debugger, and a submit killed with SIGTERM or SIGHUP stops its runs instead of leaving them training.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.submit import plan
from robustmtl.layout import GridDir
from robustmtl.train.attempt_log import read_attempts
from robustmtl.train.runlock import locked
from tests.conftest import tiny_grid, write_spec


@pytest.mark.slow  # several seconds: left out of make test-fast
@pytest.mark.parametrize("visible", ["3,5", "GPU-1f2e,MIG-9a8b"])
def test_local_runs_get_one_gpu_each_and_never_more_runs_than_gpus(cli, tmp_path, monkeypatch, visible):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    spec = write_spec(tmp_path / "g.toml", tiny_grid("gpus", ["erm"], [0, 1, 2, 3], defaults={"epochs": 1},
                                                     executor={"kind": "local"}))
    cli("grid", "submit", spec, "--out", tmp_path / "grid")
    grid = GridDir(tmp_path / "grid")
    spans, used = [], []
    for run_id in grid.run_ids():
        events = read_attempts(grid.run(run_id))
        start = next(e for e in events if e["event"] == "start")
        spans.append((start["time"], next(e for e in events if e["event"] == "done")["time"]))
        used.append(start["cuda_visible_devices"])
    assert sorted(set(used)) == sorted(visible.split(","))  # every run one GPU, both GPUs used
    for a, b, c in itertools.combinations(spans, 3):  # never three runs at once on two GPUs
        assert max(a[0], b[0], c[0]) >= min(a[1], b[1], c[1])


def test_gpu_shares_follow_the_device_setting(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert ExecutorSettings().local_gpu_shares() == ["0", "2"]
    assert ExecutorSettings().local_parallel(2) == 2 and ExecutorSettings(parallel=4).local_parallel(2) == 4
    assert ExecutorSettings(device="cuda:1").local_gpu_shares() == ["0,2"]  # the index keeps its meaning
    assert ExecutorSettings(device="cpu").local_gpu_shares() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert ExecutorSettings().local_gpu_shares() == []


def test_debug_failure_never_opens_a_debugger_and_names_the_error(cli, tmp_path, monkeypatch):
    import pdb

    from robustmtl.train import loop

    opened: list[int] = []
    monkeypatch.setattr(pdb, "post_mortem", lambda *a, **k: opened.append(1))
    monkeypatch.setattr(loop, "train_run", lambda rd, progress=None, stop_requested=None: 1 / 0)
    spec = write_spec(tmp_path / "g.toml", tiny_grid("dbg", ["erm"], [0], defaults={"epochs": 1}))
    result = cli("grid", "submit", spec, "--out", tmp_path / "grid", ok=False)
    (run_id,) = GridDir(tmp_path / "grid").run_ids()
    assert result.exit_code == 2 and not opened
    assert f"1 run(s) failed: {run_id}: ZeroDivisionError: division by zero" in result.output


def test_setup_failure_names_the_run_and_the_log_with_its_error(cli, tmp_path):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("setup", ["erm"], [0], defaults={"epochs": 1}, executor={
        "kind": "local", "setup": ["echo module python/9 not found >&2", "false"]}))
    result = cli("grid", "submit", spec, "--out", tmp_path / "grid", ok=False)
    (run_id,) = GridDir(tmp_path / "grid").run_ids()
    log = (tmp_path / "grid" / "submitit" / "start" / f"{run_id}.log").resolve()
    assert result.exit_code == 2
    assert f"{run_id}: module python/9 not found (log: {log})" in " ".join(result.output.split())
    assert "module python/9 not found" in cli("grid", "logs", tmp_path / "grid", run_id).output  # the shell log


def test_logs_of_a_local_run_are_found_by_its_id_and_no_stray_folder_is_left(cli, tmp_path):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("logs", ["erm"], [0], defaults={"epochs": 1, "n_train": 100},
                                                     executor={"kind": "local"}))
    cli("grid", "submit", spec, "--out", tmp_path / "grid")
    grid = GridDir(tmp_path / "grid")
    (run_id,) = grid.run_ids()
    assert sorted(p.name for p in grid.submitit.iterdir()) == ["local", "start"]  # no literal `%j` folder
    log = cli("grid", "logs", grid.root, run_id[:6]).output
    assert f"local/{run_id}/" in log and "Job completed successfully" in log
    assert cli("grid", "logs", grid.root, run_id, "--follow").output == log  # its job has ended: no waiting


@pytest.mark.parametrize("interval", [2.0, 10.0])
def test_watch_follows_a_local_grid_until_its_submit_ends(cli, tmp_path, monkeypatch, lock_holder, interval):
    from robustmtl import cli_grid
    from robustmtl.grid.lock import submit_lock

    grid = GridDir(tmp_path / "grid")
    training, next_up = "0123456789ab", "ba9876543210"
    grid.run(next_up).root.mkdir(parents=True)
    trainer = lock_holder(grid.run(training).root)  # the local job training one run
    slept: list[float] = []
    with contextlib.ExitStack() as submit:
        submit.enter_context(submit_lock(grid.root))  # the local `grid submit` executing the grid

        def sleep(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 1:  # the run ends; the submit is about to start the next one
                trainer.stdin.close()
                trainer.wait()
            else:
                submit.close()  # the submit ends

        monkeypatch.setattr(cli_grid._time, "sleep", sleep)
        result = cli("grid", "status", grid.root, "--watch", "--interval", interval)
    assert slept == [interval, interval] and "not submitted" in result.output


# how long a signalled submit may take to stop its jobs and exit: only a guard against a hang, generous for a
# loaded machine (a fresh-clone make test beside two busy loops took over 60 s here)
STOPPED_WITHIN_S = 300


def running_here(marker: str) -> list[int]:
    """Processes whose command line mentions `marker` (this test's folder): the jobs it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "sigint"), [(signal.SIGTERM, signal.SIG_DFL), (signal.SIGHUP, signal.SIG_DFL),
                                                (signal.SIGTERM, signal.SIG_IGN)])
def test_a_killed_local_submit_stops_its_runs(tmp_path, signum, sigint, pause):
    """SIG_IGN: started as `nohup robustmtl grid submit ... &` from a script, which ignores SIGINT in it and in
    every process it starts, unless the command gives its jobs SIGINT back."""
    spec = write_spec(tmp_path / "g.toml", tiny_grid("kill", ["erm"], [0], executor={"kind": "local", "threads": 1}))
    out = tmp_path / "grid"
    pause.at(2)  # the run waits, training, after two steps, until the signal
    proc = subprocess.Popen([sys.executable, "-m", "robustmtl", "grid", "submit", str(spec), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    try:
        pause.waited("*", 2, proc)
        (rd,) = [GridDir(out).run(r) for r in GridDir(out).run_ids()]
        assert locked(rd), "the run should be training"
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=STOPPED_WITHIN_S)
        assert proc.returncode == 2 and "interrupted: running jobs were cancelled" in err, err
        assert len(err.strip().splitlines()) == 1 and not locked(rd)
        written = {p.name: p.stat().st_size for p in rd.root.iterdir() if p.is_file()}
        deadline = time.monotonic() + 60  # the stopped jobs' processes finish exiting
        while running_here(str(tmp_path)):
            assert time.monotonic() < deadline, f"job processes still running: {running_here(str(tmp_path))}"
            time.sleep(0.05)
        assert {p.name: p.stat().st_size for p in rd.root.iterdir() if p.is_file()} == written  # nothing after
        assert not rd.done.exists()
    finally:
        for pid in [proc.pid, *running_here(str(tmp_path))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)



def interrupted_by_ctrl_c(args: list[str], run_id: str, pause) -> str:
    """Start `robustmtl ARGS`, press Ctrl-C once run `run_id` waits after its second step; the one line printed."""
    pause.path.with_name(f"{pause.path.name}.{run_id}").unlink(missing_ok=True)  # where an earlier attempt waited
    proc = subprocess.Popen([sys.executable, "-m", "robustmtl", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        pause.waited(run_id, 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STOPPED_WITHIN_S)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1, err
    return " ".join(err.split())


@pytest.mark.slow  # two local grids started and stopped: left out of make test-fast
def test_ctrl_c_leaves_the_run_interrupted_and_names_the_command_used(tmp_path, pause, cli):
    """`grid status` says interrupted (not started or not submitted), and the message names the command typed."""
    spec = write_spec(tmp_path / "g.toml", tiny_grid("cc", ["erm"], [0], executor={"kind": "local", "threads": 1}))
    out = tmp_path / "grid"
    (run,) = plan(spec)[1]
    pause.at(2)
    for args in (["grid", "submit", str(spec), "--out", str(out)], ["grid", "resume", str(out)]):
        typed = " ".join(["robustmtl", *args])
        err = interrupted_by_ctrl_c(args, run.run_id, pause)
        assert f"interrupted: running jobs were cancelled; their checkpoints stay, and `{typed}` resumes them" in err
        status = " ".join(cli("grid", "status", out).output.split())
        assert f"interrupted {run.run_id}: its local job was stopped (Ctrl-C, SIGTERM or SIGHUP); `{typed}` " \
               "continues it" in status, status
        assert read_attempts(GridDir(out).run(run.run_id))[-1]["event"] == "stopped"
