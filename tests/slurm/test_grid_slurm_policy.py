"""Cluster limits, crash policy, packing and scheduler load, against the real single-node SLURM cluster.

Run with:  ROBUSTMTL_REQUIRE_SLURM=1 python -m pytest tests/slurm -q
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustmtl.grid.manifest import latest_entries
from robustmtl.grid.status import grid_status
from robustmtl.layout import GridDir, RunDir
from robustmtl.train.attempt_log import read_attempts
from tests.conftest import read_records
from tests.slurm.test_grid_slurm import (
    HELD_STEP,
    SLOW,
    TINY,
    WAIT_S,
    all_done,
    finished,
    resumed_not_restarted,
    spec_text,
    submit,
    undisturbed,
    wait_for,
)

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

LIMIT_ACCOUNT = "robustmtl-limit"


def sh(*cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr}", pytrace=False)
    return proc


@pytest.fixture
def limited_account():
    """An account of its own where root may have 5 jobs queued, so other tests on the cluster are not throttled."""
    sh("sacctmgr", "-i", "add", "account", LIMIT_ACCOUNT, "description=limit-test", "organization=robustmtl",
       check=False)
    sh("sacctmgr", "-i", "add", "user", "root", f"account={LIMIT_ACCOUNT}", check=False)
    sh("sacctmgr", "-i", "modify", "user", "root", "where", f"account={LIMIT_ACCOUNT}", "set", "MaxSubmitJobs=5")
    wait_for("slurmctld to know the limit", lambda: "MaxSubmitJobs=5(" in sh(
        "scontrol", "show", "assoc_mgr", "users=root", f"accounts={LIMIT_ACCOUNT}", "flags=assoc", check=False).stdout,
        timeout=30)
    yield LIMIT_ACCOUNT
    sh("scancel", "--account", LIMIT_ACCOUNT, check=False)
    deadline = time.monotonic() + 60  # an association with jobs in the queue cannot be removed
    while sh("squeue", "-h", "--account", LIMIT_ACCOUNT, check=False).stdout.strip() and time.monotonic() < deadline:
        time.sleep(1)
    sh("sacctmgr", "-i", "delete", "user", "root", "where", f"account={LIMIT_ACCOUNT}", check=False)
    sh("sacctmgr", "-i", "delete", "account", LIMIT_ACCOUNT, check=False)


def job_entries(grid: GridDir) -> list[tuple[str, str]]:
    """(run id, job id) of every manifest line that queued something."""
    import json

    lines = (grid.root / "manifest.jsonl").read_text().splitlines()
    return [(e["run_id"], e["job_id"]) for e in map(json.loads, lines) if e.get("job_id")]


def test_submit_limit_submits_what_fits_and_later_submits_finish_the_grid(cli, tmp_path, grids, limited_account):
    text = spec_text("limit", list(range(12)), TINY, f'account = "{limited_account}"')
    grid, output = submit(cli, tmp_path, grids, text)
    output = " ".join(output.split())  # rich wraps long lines
    assert "queued 5 run(s)" in output and "7 run(s) not submitted" in output, output
    assert "MaxSubmitJobs of association root/robustmtl-limit = 5" in output and "grid resume" in output
    status = grid_status(grid)
    assert status.counts["not submitted"] == 7 and len(job_entries(grid)) == 5
    assert "sbatch rejected" not in output  # never tried past the limit

    def room_and_work() -> bool:
        status = grid_status(grid)
        return status.counts["not submitted"] > 0 and len(status.active) < 5

    rounds = 1
    while grid_status(grid).counts["not submitted"]:
        wait_for("a queued run to finish", room_and_work, grid.root)
        again = cli("grid", "submit", tmp_path / "grid.toml", "--out", grid.root).output
        assert "sbatch rejected" not in again and "queued" in again, again
        rounds += 1
        queued = len(grid_status(grid).active)
        assert queued <= 5, f"{queued} jobs queued past MaxSubmitJobs=5"
    wait_for("every run DONE", lambda: all_done(grid), grid.root)
    entries = job_entries(grid)
    assert sorted(r for r, _ in entries) == sorted(grid.run_ids()) and len(entries) == 12  # nothing twice
    for run_id in grid.run_ids():
        assert [e["event"] for e in read_attempts(grid.run(run_id))] == ["start", "done"]
    assert rounds >= 3  # 12 runs through a limit of 5 need at least three submits


def test_crash_at_a_fixed_step_ends_failed_without_looping(cli, tmp_path, grids):
    """A run that cannot start (its validation-record file is a directory) crashes at the same point twice."""
    grid, output = submit(cli, tmp_path, grids, spec_text("crash", [0], TINY, 'max_crashes = 5\nextra = ["--hold"]'))
    (run_id,) = grid.run_ids()
    rd = grid.run(run_id)
    assert "queued 1 run(s)" in output
    (rd.root / "val_correct.jsonl").mkdir()  # every start now crashes before its first step
    sh("scontrol", "release", latest_entries(grid.root)[run_id]["job_id"])
    events = wait_for("the run to be given up", lambda: (ev := read_attempts(rd)) and ev[-1]["event"] in
                      ("failed", "done") and ev, grid.root, timeout=WAIT_S)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "failed" and kinds.count("crashed") == 2 and kinds.count("start") == 2, kinds
    assert events[-1]["reason"].startswith("crashed again") and "IsADirectoryError" in events[-1]["error"]
    job = latest_entries(grid.root)[run_id]["job_id"]
    wait_for("the job to leave the queue", lambda: job not in (grid_status(grid).active.values()), grid.root)
    # a job that requeues itself stays in the queue (REQUEUED, PENDING): one that left it and ended in
    # accounting can start no third time
    final = wait_for("the job's end in accounting", lambda: (state := sh("sacct", "-X", "-n", "-P", "-o", "State", "-j",
                     job).stdout.strip()) in ("COMPLETED", "FAILED") and state, grid.root)
    assert job not in grid_status(grid).active.values(), final
    assert [e["event"] for e in read_attempts(rd)].count("start") == 2
    status = grid_status(grid)
    assert status.runs[run_id].state == "failed" and "crashed again" in status.runs[run_id].note
    out = cli("grid", "status", grid.root).output
    assert "2 crashed" in out and "IsADirectoryError" in out


def unpacked_references(tmp_path: Path, seeds: list[int]) -> dict[int, list[dict]]:
    """The SLOW runs done in one go each by `robustmtl run` (two at a time on this 2-core machine)."""
    sets = [a for k, v in SLOW.items() for a in ("--set", f"{k}={v}")]
    out = {}
    for group in (seeds[:2], seeds[2:]):
        procs = {s: subprocess.Popen([sys.executable, "-m", "robustmtl", "run", "--method", "erm", "--dataset",
                                      "synthetic", "--seed", str(s), *sets, "--threads", "1", "--checkpoint-every", "5",
                                      "--out", str(tmp_path / f"ref{s}")], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=undisturbed()) for s in group}
        for s, proc in procs.items():
            _, err = proc.communicate(timeout=WAIT_S * 2)
            assert proc.returncode == 0, err
            out[s] = results(RunDir(tmp_path / f"ref{s}"))
    return out


def results(rd: RunDir) -> list[dict]:
    """What training computed, without what records say about where and how long (time, code version)."""
    keys = ("epoch", "step", "split", "avg_acc", "worst_group_acc", "group_acc", "group_n", "loss", "terms")
    return [{k: r.get(k) for k in keys} for r in read_records(rd.metrics)]


def test_pack_of_three_preempted_midway_ends_equal_to_unpacked_runs(cli, tmp_path, grids, pause):
    pause.at(HELD_STEP)  # each member waits in its third epoch until the test lets it go
    grid, output = submit(cli, tmp_path, grids, spec_text("pack", [0, 1, 2], SLOW, "pack = 3"))
    assert "queued 3 run(s) in 1 task(s)" in output
    entries = latest_entries(grid.root)
    assert len({e["job_id"] for e in entries.values()}) == 1
    job = next(iter(entries.values()))["job_id"]
    order = next(iter(entries.values()))["pack"]
    first, second, third = (grid.run(r) for r in order)
    pause.waited(order[0], HELD_STEP)
    pause.at(10**9, key=order[0])  # the first member finishes; the second is held where the first was
    pause.waited(order[1], HELD_STEP)
    assert finished(first) and not third.metrics.exists()
    states = {r: s.state for r, s in grid_status(grid).runs.items()}
    assert states == {order[0]: "done", order[1]: "running", order[2]: "pending"}
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    wait_for("the second member's preemption", lambda: any(e["event"] == "preempted" for e in read_attempts(second)),
             grid.root)
    pause.release()
    wait_for("every pack member DONE", lambda: all_done(grid), grid.root, timeout=WAIT_S * 2)
    assert [e["event"] for e in read_attempts(first)] == ["start", "done"]  # finished before: not rerun
    assert [e["event"] for e in read_attempts(second)] == ["start", "preempted", "start", "done"]
    assert read_attempts(second)[2]["checkpoint"] and read_attempts(second)[2]["restart_count"] == 1
    assert [e["event"] for e in read_attempts(third)] == ["start", "done"]
    resumed_not_restarted(second)
    refs = unpacked_references(tmp_path, [0, 1, 2])
    for rd in (first, second, third):
        seed = read_records(rd.metrics)[0]["seed"]
        assert results(rd) == refs[seed], f"seed {seed} differs from its unpacked run"
    log = cli("grid", "logs", grid.root, order[1]).output
    assert f"=== robustmtl run {order[1]} (pack member 2/3)" in log


def test_parallel_pack_gives_each_run_its_own_gpu(cli, tmp_path, grids):
    text = spec_text("gpus", [0, 1], TINY, 'pack = 2\npack_mode = "parallel"\ngpus = 1\ndevice = "cpu"')
    grid, output = submit(cli, tmp_path, grids, text)
    assert "queued 2 run(s) in 1 task(s)" in output
    job = next(iter(latest_entries(grid.root).values()))["job_id"]
    show = sh("scontrol", "show", "job", job).stdout
    assert "gres/gpu=2" in show, show
    wait_for("both runs DONE", lambda: all_done(grid), grid.root)
    devices = sorted(read_attempts(grid.run(r))[0]["cuda_visible_devices"] for r in grid.run_ids())
    assert devices == ["0", "1"]


def test_parallel_pack_places_two_runs_on_one_gpu(cli, tmp_path, grids):
    """runs_per_gpu = 2: a pack of two asks SLURM for one GPU and gives it to both runs (the test node's two
    CPUs hold one such pack)."""
    text = spec_text("shared", [0, 1], TINY, 'pack = 2\npack_mode = "parallel"\ngpus = 1\nruns_per_gpu = 2\n'
                                             'device = "cpu"')
    grid, output = submit(cli, tmp_path, grids, text)
    assert "queued 2 run(s) in 1 task(s)" in output
    job = next(iter(latest_entries(grid.root).values()))["job_id"]
    assert "gres/gpu=1" in sh("scontrol", "show", "job", job).stdout
    wait_for("both runs DONE", lambda: all_done(grid), grid.root)
    devices = [read_attempts(grid.run(r))[0]["cuda_visible_devices"] for r in grid.run_ids()]
    assert len(devices) == 2 and len(set(devices)) == 1 and devices[0] in ("0", "1")  # one GPU, both runs


def test_status_watch_on_200_runs_makes_one_squeue_and_one_sacct_per_refresh(cli, tmp_path, grids):
    """The real squeue/sacct behind logging shims; the held array never runs, a quarter of it is cancelled."""
    grid, output = submit(cli, tmp_path, grids, spec_text("big", list(range(200)), TINY, 'extra = ["--hold"]'))
    assert "queued 200 run(s)" in output
    job = next(iter(latest_entries(grid.root).values()))["job_id"].split("_")[0]
    cancelled = {f"{job}_{i}" for i in range(50)}
    sh("scancel", f"{job}_[0-49]")  # these left the queue: each refresh needs sacct for them
    wait_for("the cancelled tasks to leave the queue", lambda: len(grid_status(grid, accounting=False).active) == 150,
             timeout=30)
    shims, log = tmp_path / "shims", tmp_path / "calls.log"
    shims.mkdir()
    for tool in ("squeue", "sacct", "scontrol", "sacctmgr", "scancel", "sbatch"):
        real = shutil.which(tool)
        (shims / tool).write_text(f'#!/bin/sh\necho {tool} >> {log}\nexec {real} "$@"\n')
        (shims / tool).chmod(0o755)
    env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}"}
    started = time.monotonic()
    # output to a file, not a pipe: a live display nobody reads would block on a full pipe and never stop
    with (tmp_path / "watch.out").open("w") as sink:
        # a test run in the background (CI) inherits SIGINT ignored; the user's Ctrl-C must reach the watch
        proc = subprocess.Popen([sys.executable, "-m", "robustmtl", "grid", "status", str(grid.root), "--watch"],
                                env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for("three refreshes of the watch", lambda: log.exists() and log.read_text().split().count("squeue") >= 3,
                 timeout=120)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    elapsed = time.monotonic() - started
    out = (tmp_path / "watch.out").read_text()
    calls = log.read_text().split()
    refreshes = int(elapsed // 10) + 1  # the first look, then one every 10 s
    assert calls.count("squeue") <= refreshes and calls.count("sacct") <= calls.count("squeue"), (calls, elapsed)
    assert calls.count("squeue") >= 2 and calls.count("sacct") >= 2  # it did refresh, and did need accounting
    assert set(calls) == {"squeue", "sacct"}, (calls, out)
    status = grid_status(grid)
    assert status.counts["pending"] == 150 and not any(status.runs[r].state in ("running", "pending")
                                                       for r in status.runs if status.runs[r].job_id in cancelled)
