"""`grid submit/status/cancel/resume/logs` against the real single-node SLURM cluster.

Run with:  ROBUSTMTL_REQUIRE_SLURM=1 python -m pytest tests/slurm -q
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from robustmtl.grid.manifest import latest_entries, manifest_path
from robustmtl.grid.status import grid_status
from robustmtl.layout import GridDir, RunDir
from robustmtl.pause import PAUSE_ENV
from robustmtl.registry import METHODS
from robustmtl.train.attempt_log import read_attempts
from tests.conftest import TIMING_KEYS, read_records, write_spec

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TINY = {"epochs": 3, "n_train": 200, "n_val": 100, "n_test": 100, "batch_size": 32}
SLOW = {"epochs": 6, "n_train": 1000, "n_val": 100, "n_test": 100, "batch_size": 32}
STEPS_PER_EPOCH = -(-SLOW["n_train"] // SLOW["batch_size"])
HELD_STEP = 2 * STEPS_PER_EPOCH + 3  # where a test's pause holds a SLOW run: in its third epoch
PREEMPTIONS = 4
WAIT_S = 300  # only a guard against a hung test: generous, for machines several times slower than this one


def spec_text(name: str, seeds: list[int], params: dict[str, Any], executor: str = "", method: str = "erm",
              extra: str = "", timeout_min: int = 60) -> str:
    defaults = "\n".join(f"{k} = {v}" for k, v in params.items())
    return (f'name = "{name}"\ndatasets = ["synthetic"]\nmethods = ["{method}"]\nseeds = {seeds}\n'
            f"[defaults]\n{defaults}\n{extra}\n"
            f'[executor]\nkind = "slurm"\nthreads = 1\ncheckpoint_every = 5\ntimeout_min = {timeout_min}\n{executor}\n')


def wait_for(what: str, check: Callable[[], Any], out: Path | None = None, timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    details = ""
    if out is not None:
        details = subprocess.run(["squeue", "-a"], capture_output=True, text=True).stdout
        for log in sorted((out / "submitit").glob("*/*_log.err"))[-3:]:
            details += f"\n--- {log}\n" + "\n".join(log.read_text().splitlines()[-15:])
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{details}", pytrace=False)


def val_epochs(rd: RunDir) -> int:
    try:
        return rd.metrics.read_text().count('"split": "val"')
    except FileNotFoundError:
        return 0


def finished(rd: RunDir) -> bool:
    """DONE, and the job has recorded its end (it does so just after the loop writes DONE)."""
    events = read_attempts(rd)
    return rd.done.exists() and bool(events) and events[-1]["event"] == "done"


def all_done(grid: GridDir) -> bool:
    return all(finished(grid.run(r)) for r in grid.run_ids())


def without_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def resumed_not_restarted(rd: RunDir) -> None:
    """Training time only grows: a run that restarted from scratch would write smaller time_s again."""
    times = [r["time_s"] for r in read_records(rd.metrics) if r["split"] == "train"]
    assert times == sorted(times), times


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The SLOW seed-0 run done in one go by `robustmtl run`, started early so it overlaps the SLURM jobs."""
    out = tmp_path_factory.mktemp("reference") / "run"
    sets = [a for k, v in SLOW.items() for a in ("--set", f"{k}={v}")]
    proc = subprocess.Popen([sys.executable, "-m", "robustmtl", "run", "--method", "erm", "--dataset", "synthetic",
                             "--seed", "0", *sets, "--threads", "1", "--checkpoint-every", "5", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=undisturbed())

    def records() -> list[dict]:
        _, err = proc.communicate(timeout=WAIT_S)
        assert proc.returncode == 0, err
        return without_time(read_records(RunDir(out).metrics))

    yield records
    proc.kill()


def undisturbed() -> dict[str, str]:
    """The environment of a reference run, which no test's pause may hold."""
    return {k: v for k, v in os.environ.items() if k != PAUSE_ENV}


def submit(cli, tmp_path: Path, grids: list[Path], text: str, *args: str, name: str = "grid") -> tuple[GridDir, str]:
    out = tmp_path / name
    grids.append(out)
    result = cli("grid", "submit", write_spec(tmp_path / f"{name}.toml", text), "--out", out, *args)
    return GridDir(out), result.output


def test_array_grid_runs_and_a_second_submit_queues_nothing(cli, tmp_path, grids, pause):
    pause.at(1)  # the running tasks wait after their first step, so two are seen running while two wait
    grid, output = submit(cli, tmp_path, grids, spec_text("arr", [0, 1, 2, 3], TINY, "array_parallelism = 2"))
    assert "queued 4 run(s) as job" in output
    jobs = {e["job_id"] for e in latest_entries(grid.root).values()}
    array = next(iter(jobs)).split("_")[0]
    assert jobs == {f"{array}_{i}" for i in range(4)}
    first = grid_status(grid)
    assert first.counts["pending"] + first.counts["running"] == 4 and first.counts["pending"] >= 2
    manifest = manifest_path(grid.root).read_text()
    again = cli("grid", "submit", tmp_path / "grid.toml", "--out", grid.root).output
    assert "4 queued or running, 0 to run" in again and "nothing new to submit" in again
    assert manifest_path(grid.root).read_text() == manifest
    # array_parallelism = 2 holds two of the four tasks back: some instant has runs running and pending at once
    wait_for("a running and a pending run at once",
             lambda: (c := grid_status(grid).counts)["running"] >= 1 and c["pending"] >= 1, grid.root)
    pause.release()
    wait_for("every run DONE", lambda: all_done(grid), grid.root)
    assert grid_status(grid).counts["done"] == 4 and "4 starts" in cli("grid", "status", grid.root).output
    assert "4 already done, 0 queued or running, 0 to run" in cli("grid", "submit", tmp_path / "grid.toml",
                                                                  "--out", grid.root).output
    assert manifest_path(grid.root).read_text() == manifest
    run_id = grid.run_ids()[0]
    log = cli("grid", "logs", grid.root, run_id).output
    assert f"job_id={latest_entries(grid.root)[run_id]['job_id']}" in log and "completed successfully" in log
    assert cli("grid", "logs", grid.root, run_id, "--follow").output == log  # the job has ended: prints and returns
    unknown = cli("grid", "logs", grid.root, "0123456789ab", ok=False)
    assert unknown.exit_code == 2 and "unknown run id" in unknown.output


def test_jobs_start_with_the_configured_python(cli, tmp_path, grids):
    """`[executor] python`: a wrapper that notes its arguments, then runs the real interpreter, starts the job."""
    calls = tmp_path / "python-calls"
    wrapper = tmp_path / "bin" / "python-wrapper"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    grid, _ = submit(cli, tmp_path, grids, spec_text("py", [0], TINY, f'python = "{wrapper}"'))
    wait_for("the run DONE", lambda: all_done(grid), grid.root)
    assert "-m submitit.core._submit" in calls.read_text()
    assert grid_status(grid).counts["done"] == 1


INTERRUPT = {"usr2": ["scancel", "--signal=USR2"], "requeue": ["scontrol", "requeue"],
             "term": ["scancel", "--signal=TERM"]}  # term: a bare TERM, as clusters that preempt without a signal


@pytest.mark.parametrize("how", ["usr2", "requeue", "term"])
def test_interrupted_run_resumes_from_its_checkpoint_with_identical_metrics(cli, tmp_path, grids, reference, pause,
                                                                           how):
    pause.at(HELD_STEP)  # still training when the interruption comes, however fast the machine
    grid, _ = submit(cli, tmp_path, grids, spec_text("slow", [0], SLOW))
    (run_id,) = grid.run_ids()
    rd, job = grid.run(run_id), latest_entries(grid.root)[run_id]["job_id"]
    wait_for("two epochs of training", lambda: val_epochs(rd) >= 2, grid.root)
    subprocess.run([*INTERRUPT[how], job], check=True, capture_output=True)
    event = wait_for("the interruption in attempts.jsonl",
                     lambda: next((e for e in read_attempts(rd) if e["event"] == "preempted"), None), grid.root)
    pause.release()
    assert event["signal"] == ("USR2" if how == "usr2" else "TERM") and not rd.done.exists()
    # between the requeue and the restart: pending again, with a start of this job on record
    wait_for("status `requeued`", lambda: grid_status(grid).counts["requeued"] == 1, grid.root)
    wait_for("DONE after the restart", lambda: finished(rd), grid.root)
    events = read_attempts(rd)
    assert [e["event"] for e in events] == ["start", "preempted", "start", "done"]
    assert events[2]["checkpoint"] and events[2]["restart_count"] == 1 and {e["job_id"] for e in events} == {job}
    resumed_not_restarted(rd)
    assert without_time(read_records(rd.metrics)) == reference()
    assert "1 preempted" in cli("grid", "status", grid.root).output


EVAL_BATCHES = 4  # of a SLOW evaluation at EVAL_BATCH 512: the training split's two, val's, test's


def test_usr2_during_an_evaluation_checkpoints_requeues_and_ends_identical(cli, tmp_path, grids, reference, pause):
    """The preemption warning comes while the run evaluates (inside its validation split): the job checkpoints
    within seconds and requeues; the next attempt redoes the evaluation, writing no record twice."""
    grid, _ = submit(cli, tmp_path, grids, spec_text("evalstop", [0], SLOW, 'extra = ["--hold"]'))
    (run_id,) = grid.run_ids()
    rd, job = grid.run(run_id), latest_entries(grid.root)[run_id]["job_id"]
    held = EVAL_BATCHES + 3  # the second epoch's evaluation, after its training split
    pause.at(held, key=f"{run_id}.eval")
    subprocess.run(["scontrol", "release", job], check=True, capture_output=True)
    pause.waited(f"{run_id}.eval", held)
    assert [r["epoch"] for r in read_records(rd.metrics)] == [1, 1, 1]  # the cut-short evaluation wrote nothing
    subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
    wait_for("the preemption in attempts.jsonl", lambda: any(e["event"] == "preempted" for e in read_attempts(rd)),
             grid.root)
    pause.release()
    wait_for("DONE after the restart", lambda: finished(rd), grid.root)
    assert [e["event"] for e in read_attempts(rd)] == ["start", "preempted", "start", "done"]
    keys = [(r["epoch"], r["step"], r["split"]) for r in read_records(rd.metrics)]
    assert len(keys) == len(set(keys)), "a record was written twice"
    assert without_time(read_records(rd.metrics)) == reference()


def seed_of(grid: GridDir, run_id: str) -> int:
    return json.loads(grid.run(run_id).config.read_text())["seed"]


def test_cancel_then_resume_finishes_the_runs_with_identical_metrics(cli, tmp_path, grids, reference, pause):
    pause.at(HELD_STEP)  # neither run can finish before the cancels reach it
    grid, _ = submit(cli, tmp_path, grids, spec_text("cancel", [0, 1], SLOW, "array_parallelism = 1"))
    first = next(r for r in grid.run_ids() if seed_of(grid, r) == 0)  # the reference's seed; task 0 starts first
    wait_for("seed 0 training", lambda: val_epochs(grid.run(first)) >= 1, grid.root)
    job = latest_entries(grid.root)[first]["job_id"]
    assert f"cancelled 1 job(s): {job}" in cli("grid", "cancel", grid.root, "--run", first[:6]).output
    # slurmdbd records the cancel asynchronously: wait until status has it from sacct, not only from the markers
    status = wait_for("the cancelled run to leave the queue and reach accounting",
                      lambda: (s := grid_status(grid)).runs[first].state != "running"
                      and "cancelled by" in s.runs[first].note and s, grid.root)
    assert status.runs[first].state == "interrupted" and first not in status.active
    assert "CANCELLED" in subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job],
                                         capture_output=True, text=True).stdout
    assert status.runs[first].note == f"job {job} cancelled by root"
    cli("grid", "cancel", grid.root)

    def both_stopped():  # the second run: cancelled while pending, or interrupted if it had started
        status = grid_status(grid)
        return {r.state for r in status.runs.values()} <= {"interrupted", "cancelled"} and status

    status = wait_for("both runs cancelled", both_stopped, grid.root)
    assert status.active == {} and status.runs[first].state == "interrupted"
    pause.release()
    resumed = cli("grid", "resume", grid.root, "--array-parallelism", "2").output
    assert "2 to run on slurm" in resumed and "queued 2 run(s)" in resumed
    assert all(e["job_id"] != job for e in latest_entries(grid.root).values())
    wait_for("both runs DONE", lambda: all_done(grid), grid.root)
    events = read_attempts(grid.run(first))
    assert [e["event"] for e in events] == ["start", "terminated", "start", "done"] and events[2]["checkpoint"]
    resumed_not_restarted(grid.run(first))
    assert without_time(read_records(grid.run(first).metrics)) == reference()  # bitwise, timing fields aside
    assert "nothing new to submit" in cli("grid", "resume", grid.root).output


@pytest.mark.parametrize("flag, message", [("--partition", "invalid partition"), ("--account", "invalid account")])
def test_rejected_sbatch_is_one_line_and_records_nothing(cli, tmp_path, grids, flag, message):
    out = tmp_path / "bad"
    grids.append(out)
    spec = write_spec(tmp_path / "bad.toml", spec_text("bad", [0, 1], TINY))
    result = cli("grid", "submit", spec, "--out", out, flag, "nosuch", ok=False)
    assert result.exit_code == 2, result.output
    assert "sbatch rejected the job" in result.output and message in result.output.lower()
    assert "Traceback" not in result.output and latest_entries(out) == {}


@pytest.mark.skipif("jtt" not in METHODS, reason="needs the jtt method")
def test_jtt_stage_two_array_waits_for_stage_one(cli, tmp_path, grids):
    text = spec_text("jtt", [0], TINY, method="jtt", extra="jtt_epochs = 1\n[method.jtt.sweep]\njtt_upweight = [1, 2]")
    grid, output = submit(cli, tmp_path, grids, text)
    assert output.count("run(s) as job") == 2 and "queued 1 run(s)" in output and "queued 2 run(s)" in output
    entries = latest_entries(grid.root)
    stage1 = next(e["job_id"] for r, e in entries.items() if "_" not in e["job_id"])
    stage2 = next(e["job_id"] for e in entries.values() if "_" in e["job_id"])
    show = subprocess.run(["scontrol", "show", "job", stage2], capture_output=True, text=True).stdout
    assert f"Dependency=afterok:{stage1}" in show, show
    wait_for("every run DONE", lambda: all_done(grid), grid.root)
    done_1 = next(e["time"] for r in grid.run_ids() for e in read_attempts(grid.run(r))
                  if e["event"] == "done" and e["job_id"] == stage1)
    starts_2 = [e["time"] for r in grid.run_ids() for e in read_attempts(grid.run(r))
                if e["event"] == "start" and e["job_id"] != stage1]
    assert len(starts_2) == 2 and min(starts_2) > done_1


def test_small_timeout_requeues_until_the_run_finishes(cli, tmp_path, grids, pause):
    pause.at(3)  # the run waits at step 3 until its 2-minute limit has come, however fast the machine
    grid, _ = submit(cli, tmp_path, grids, spec_text("timeout", [0], TINY, "max_timeouts = 20", timeout_min=2))
    run = grid.run(grid.run_ids()[0])
    wait_for("the run to reach its time limit", lambda: any(e["event"] == "timeout" for e in read_attempts(run)),
             grid.root, timeout=300)
    pause.release()
    wait_for("the run to requeue and finish", lambda: finished(run), grid.root, timeout=300)
    events = read_attempts(run)
    assert [e["event"] for e in events] == ["start", "timeout", "start", "done"], events
    assert events[2]["checkpoint"]  # the restart resumed from the checkpoint the time-out wrote
    resumed_not_restarted(run)
    assert "timed out" in cli("grid", "status", grid.root).output


def test_repeated_usr2_at_random_moments_ends_identical(cli, tmp_path, grids, reference, pause):
    """Preempted through USR2 (the job's own checkpoint-then-requeue path) again and again, each time at a
    random moment soon after fresh progress; the pause keeps the run from finishing before the last one."""
    rng = random.Random(7)
    limit = rng.randint(5, 12)
    pause.at(limit)
    grid, _ = submit(cli, tmp_path, grids, spec_text("many", [0], SLOW, "max_preemptions = 10"))
    (run_id,) = grid.run_ids()
    rd, job = grid.run(run_id), latest_entries(grid.root)[run_id]["job_id"]
    for preempted in range(PREEMPTIONS):
        wait_for(f"start {preempted + 1}", lambda p=preempted: sum(e["event"] == "start" for e in read_attempts(rd))
                 > p, grid.root)
        before = rd.checkpoint.stat().st_mtime_ns if rd.checkpoint.exists() else 0
        # each limit is at least 5 steps past the last: a checkpoint (every 5 steps) always comes before it
        wait_for("fresh progress", lambda b=before: rd.checkpoint.exists() and rd.checkpoint.stat().st_mtime_ns != b,
                 grid.root)
        time.sleep(rng.uniform(0.0, 0.5))
        subprocess.run(["scancel", "--signal=USR2", job], check=True, capture_output=True)
        wait_for("the preemption in attempts.jsonl", lambda p=preempted: sum(e["event"] == "preempted"
                                                                             for e in read_attempts(rd)) > p, grid.root)
        limit += rng.randint(5, 12)
        pause.at(limit)
    pause.release()
    wait_for("DONE after the restarts", lambda: finished(rd), grid.root, timeout=300)
    events = [e["event"] for e in read_attempts(rd)]
    assert events == ["start", "preempted"] * PREEMPTIONS + ["start", "done"], events
    resumed_not_restarted(rd)
    assert without_time(read_records(rd.metrics)) == reference()
