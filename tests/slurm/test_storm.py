"""A storm on the live cluster: preemptions, requeues and SIGKILLs at random moments of a JTT + ERM grid.

What a user who walks away expects to find: after one `grid resume`, every run DONE, no metrics record
written twice, and the runs equal (bitwise, timing fields aside) to the same runs trained undisturbed.
On the way: a signal in a job's first second (interpreter start-up) never fails a run; a killed
stage-1 run holds back only its own stage-2 run, which `grid status` shows blocked, naming it.

Run with:  ROBUSTMTL_REQUIRE_SLURM=1 python -m pytest tests/slurm/test_storm.py -q
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustmtl.grid import scheduler
from robustmtl.grid.manifest import latest_entries
from robustmtl.grid.status import grid_status
from robustmtl.layout import GridDir, RunDir
from robustmtl.train.attempt_log import read_attempts
from tests.conftest import Pause, read_records
from tests.slurm.test_grid_slurm import WAIT_S, all_done, submit, undisturbed, wait_for, without_time

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

PARAMS = {"epochs": 14, "n_train": 1500, "n_val": 100, "n_test": 100, "batch_size": 32, "jtt_epochs": 4}
STEPS_PER_EPOCH = -(-PARAMS["n_train"] // PARAMS["batch_size"])
SEEDS = [0, 1, 2]
STORM_LIMIT_S = 600  # a storm that has not found its events by then fails, naming what it did
FIRST_LIMIT = 5  # every run waits at this step until the storm lets it go further
MAX_ADVANCE = 6  # steps the runs may go further before each event: the plan's 12 reach at most 77 steps,
#                  fewer than stage 1's (188) and a stage-2 or ERM run's: no run ends during the storm
STAGE1_FREED_AFTER = 6  # events on ERM and stage-1 jobs; then stage 1 may finish and its stage-2 jobs are hit
MAX_KILLS = 2
EARLY_HITS = 4  # jobs signalled in their first seconds of RUNNING: batch script, srun, interpreter start-up
EARLY_S = 2.5
HIT_TIMEOUT_S = 10
REFERENCE_SEED = 0
def spec() -> str:
    defaults = "\n".join(f"{k} = {v}" for k, v in PARAMS.items())
    return (f'name = "storm"\ndatasets = ["synthetic"]\nmethods = ["erm", "jtt"]\nseeds = {SEEDS}\n'
            f"[defaults]\n{defaults}\n"
            '[executor]\nkind = "slurm"\nthreads = 1\ncheckpoint_every = 5\ntimeout_min = 10\n')


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """ERM and JTT (with its stage 1) at REFERENCE_SEED, trained undisturbed by `robustmtl run`, started early."""
    root = tmp_path_factory.mktemp("storm-reference")
    sets = [a for k, v in PARAMS.items() if k != "jtt_epochs" for a in ("--set", f"{k}={v}")]
    procs = {}
    for method in ("erm", "jtt"):
        extra = ["--set", f"jtt_epochs={PARAMS['jtt_epochs']}"] if method == "jtt" else []
        procs[method] = subprocess.Popen(
            [sys.executable, "-m", "robustmtl", "run", "--method", method, "--dataset", "synthetic", "--seed",
             str(REFERENCE_SEED), *sets, *extra, "--threads", "1", "--checkpoint-every", "5",
             "--out", str(root / method)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=undisturbed())

    def records(method: str) -> tuple[str, list[dict]]:
        _, err = procs[method].communicate(timeout=2 * WAIT_S)
        assert procs[method].returncode == 0, err
        rd = RunDir(root / method)
        return json.loads(rd.config.read_text())["run_id"], without_time(read_records(rd.metrics))

    yield records
    for proc in procs.values():
        proc.kill()


def job_pids(job: str) -> list[int]:
    """The job's Python processes (the submitit runner, once its start-up shell has exec'd into it)."""
    raw = subprocess.run(["squeue", "-h", "-j", job, "-o", "%A"], capture_output=True, text=True).stdout.split()
    if not raw:
        return []
    listing = subprocess.run(["scontrol", "listpids", raw[0]], capture_output=True, text=True).stdout
    pids = []
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0].isdigit():
            try:
                cmdline = Path(f"/proc/{fields[0]}/cmdline").read_bytes()
            except OSError:
                continue
            program = cmdline.split(b"\0")[0].rsplit(b"/", 1)[-1]  # not srun, whose arguments name the same
            if program.startswith(b"python") and b"submitit.core._submit" in cmdline:
                pids.append(int(fields[0]))
    return pids


class Storm:
    """Random USR2 / `scontrol requeue` / SIGKILL at running jobs; some within their first seconds.

    The runs are held by the test's pause and let a few steps further before each event, so every event
    finds jobs at work however fast the machine is: a random moment of a step, a checkpoint, a record's
    append or the wait itself. Halfway, the stage-1 runs are let go, so their stage-2 jobs are hit too."""

    def __init__(self, grid: GridDir, pause: Pause, stage1: list[str], seed: int) -> None:
        self.grid = grid
        self.pause = pause
        self.stage1 = stage1
        self.rng = random.Random(seed)
        self.events: list[tuple[str, str, bool]] = []  # (kind, job, early)
        self.killed: set[str] = set()  # runs whose job was SIGKILLed
        self.first_seen: dict[str, float] = {}
        # every kind, in a seeded order: a storm that happened to draw no SIGKILL would test less
        self.plan = ["kill"] * MAX_KILLS + ["usr2"] * 6 + ["requeue"] * 4
        self.rng.shuffle(self.plan)
        self.early_at: dict[str, float] = {}
        self.struck: set[str] = set()  # jobs hit since they last started RUNNING
        self.limit = FIRST_LIMIT

    def hit(self, kind: str, job: str, early: bool) -> bool:
        if kind == "kill":
            pids = job_pids(job)
            if not pids:
                return False
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            self.killed |= {r for r, e in latest_entries(self.grid.root).items() if e.get("job_id") == job}
        else:
            cmd = ["scancel", "--signal=USR2", job] if kind == "usr2" else ["scontrol", "requeue", job]
            try:  # scancel retries while a job is between states; such a hit is not counted
                if subprocess.run(cmd, capture_output=True, timeout=HIT_TIMEOUT_S).returncode != 0:
                    return False
            except subprocess.TimeoutExpired:
                return False
        self.struck.add(job)
        self.events.append((kind, job, early))
        return True

    def training(self, running: list[str]) -> list[str]:
        """Running jobs not struck since they started, whose run's last attempt event is this job's start."""
        runs = {str(e.get("job_id")): r for r, e in latest_entries(self.grid.root).items()}
        at_work = []
        for job in running:
            events = read_attempts(self.grid.run(runs[job])) if job in runs else []
            if job not in self.struck and events and events[-1]["event"] == "start" and events[-1]["job_id"] == job:
                at_work.append(job)
        return at_work

    def advance(self) -> None:
        """Let every held run go a few steps further; stage 1 runs to its end once half the plan is done."""
        self.limit += self.rng.randint(1, MAX_ADVANCE)
        self.pause.at(self.limit)
        if sum(not e[2] for e in self.events) >= STAGE1_FREED_AFTER:
            for run_id in self.stage1:
                self.pause.at(10**9, key=run_id)

    def run(self) -> None:
        deadline, next_hit = time.monotonic() + STORM_LIMIT_S, time.monotonic() + 1.0
        while self.plan:
            if time.monotonic() > deadline:
                pytest.fail(f"the storm did not find jobs for its events within {STORM_LIMIT_S} s; left "
                            f"{self.plan}, done {self.events}", pytrace=False)
            jobs = {str(e["job_id"]) for e in latest_entries(self.grid.root).values() if e.get("job_id")}
            queue = scheduler.queue_states(jobs)
            if queue == {}:
                pytest.fail(f"the queue drained while the runs were held; left {self.plan}, done {self.events}",
                            pytrace=False)
            now = time.monotonic()
            running = sorted(j for j, state in (queue or {}).items() if state == "RUNNING")
            self.first_seen = {j: self.first_seen.get(j, now) for j in running}  # a restart is seen anew
            self.struck &= set(running)
            early_done = sum(e[2] for e in self.events)
            for j in running:
                if j not in self.early_at and self.first_seen[j] == now and early_done < EARLY_HITS:
                    self.early_at[j] = now + self.rng.uniform(0.0, EARLY_S)
            for j, when in list(self.early_at.items()):
                if when <= now and j in running and j not in self.struck and now - self.first_seen[j] < EARLY_S:
                    self.hit(self.rng.choice(["usr2", "usr2", "requeue"]), j, early=True)
                    self.early_at[j] = float("inf")  # once per job id
            at_work = self.training(running)
            if at_work and now >= next_hit:
                self.advance()
                time.sleep(self.rng.uniform(0.0, 0.5))  # the event lands somewhere in those steps, or after
                if self.hit(self.plan[0], self.rng.choice(at_work), early=False):
                    self.plan.pop(0)  # a kill that found no Python process yet is tried again
                    next_hit = time.monotonic() + self.rng.uniform(0.3, 1.5)
            time.sleep(0.1)
        self.pause.release()


def raw_keys(rd: RunDir) -> list[tuple]:
    """(epoch, step, split) of every line of metrics.jsonl as written (no reader's deduplication)."""
    return [(r["epoch"], r["step"], r["split"]) for r in read_records(rd.metrics)]


def test_storm_then_one_resume_finishes_every_run_identically(cli, tmp_path, grids, references, pause):
    pause.at(FIRST_LIMIT)
    grid, output = submit(cli, tmp_path, grids, spec(), name="storm")
    run_ids = grid.run_ids()
    configs = {r: json.loads(grid.run(r).config.read_text()) for r in run_ids}
    assert len(run_ids) == 9 and output.count("run(s) as job") == 4  # ERM + stage 1; one per stage-1 run
    storm = Storm(grid, pause, [r for r in run_ids if configs[r]["method"] == "jtt_stage1"], seed=19)
    storm.run()
    kinds = [e[0] for e in storm.events]
    assert kinds.count("usr2") >= 6 and kinds.count("requeue") >= 4 and kinds.count("kill") == MAX_KILLS, storm.events
    assert sum(e[2] for e in storm.events) >= 2, storm.events  # jobs hit in their first seconds
    print("storm:", storm.events)

    status = wait_for("the queue to drain", lambda: (s := grid_status(grid)).active == {} and s, grid.root,
                      timeout=2 * WAIT_S)
    # only the killed runs, and the runs waiting on them, are left for `grid resume`; none is `unknown`
    stage1_of = {r: q for r in run_ids for q in run_ids
                 if configs[r]["method"] == "jtt" and configs[q]["method"] == "jtt_stage1"
                 and configs[q]["seed"] == configs[r]["seed"]}
    left = {r for r, s in status.runs.items() if s.state != "done"}
    assert left <= storm.killed | {r for r, q in stage1_of.items() if q in storm.killed}, \
        {r: (status.runs[r].state, status.runs[r].note) for r in left}
    for r in left:
        state, note = status.runs[r].state, status.runs[r].note
        if r in storm.killed:
            assert state == "interrupted" and "killed by signal 9 (SIGKILL)" in note, (state, note)
        elif stage1_of.get(r) in storm.killed and not grid.run(stage1_of[r]).done.exists():
            assert state == "blocked" and f"waiting on run {stage1_of[r]}" in note and "SIGKILL" in note, (state, note)
        else:
            assert state == "cancelled" and "a job it depends on did not succeed" in note, (state, note)

    resumed = cli("grid", "resume", grid.root).output
    assert f"{len(left)} to run on slurm" in " ".join(resumed.split())
    wait_for("every run DONE after one resume", lambda: all_done(grid), grid.root, timeout=2 * WAIT_S)
    assert grid_status(grid).counts["done"] == 9
    stops = [e["event"] for r in run_ids for e in read_attempts(grid.run(r)) if e["event"] not in ("start", "done")]
    # USR2 went through the job's own checkpoint-then-requeue path, as a preemption (10 minutes from the limit)
    assert "preempted" in stops and "timeout" not in stops, stops
    for r in run_ids:
        rd = grid.run(r)
        keys = raw_keys(rd)
        assert len(keys) == len(set(keys)), f"run {r} wrote a metrics record twice"
        assert not rd.failed.exists() and not any(e["event"] == "failed" for e in read_attempts(rd))
    for method in ("erm", "jtt"):
        run_id, expected = references(method)
        assert configs[run_id]["seed"] == REFERENCE_SEED and configs[run_id]["method"] == method
        assert without_time(read_records(grid.run(run_id).metrics)) == expected, method
