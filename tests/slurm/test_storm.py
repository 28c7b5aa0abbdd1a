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
from robustmtl.train.attempts import read_attempts
from tests.conftest import read_records
from tests.slurm.test_grid_slurm import all_done, submit, wait_for, without_time

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

# ~4 s of training per run on an idle core (a job's start-up takes about as long); stage 1 (jtt_epochs) ~1 s
PARAMS = {"epochs": 14, "n_train": 1500, "n_val": 100, "n_test": 100, "batch_size": 32, "jtt_epochs": 4}
SEEDS = [0, 1, 2]
STORM_S = 80  # events stop after this long, or once the queue is empty
MAX_EVENTS = 16  # the plan's 12 and the early hits
MAX_KILLS = 2
EARLY_HITS = 4  # jobs signalled in their first seconds of RUNNING: batch script, srun, interpreter start-up
EARLY_S = 2.5
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
             "--out", str(root / method)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def records(method: str) -> tuple[str, list[dict]]:
        _, err = procs[method].communicate(timeout=300)
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
    """Random USR2 / `scontrol requeue` / SIGKILL at running jobs; some within their first second."""

    def __init__(self, grid: GridDir, seed: int) -> None:
        self.grid = grid
        self.rng = random.Random(seed)
        self.events: list[tuple[str, str, bool]] = []  # (kind, job, early)
        self.killed: set[str] = set()  # runs whose job was SIGKILLed
        self.first_seen: dict[str, float] = {}
        # every kind, in a seeded order: a storm that happened to draw no SIGKILL would test less
        self.plan = ["kill"] * MAX_KILLS + ["usr2"] * 6 + ["requeue"] * 4
        self.rng.shuffle(self.plan)
        self.early_at: dict[str, float] = {}

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
            if subprocess.run(cmd, capture_output=True).returncode != 0:
                return False
        self.events.append((kind, job, early))
        return True

    def run(self) -> None:
        deadline, next_hit = time.monotonic() + STORM_S, time.monotonic() + 1.0
        while time.monotonic() < deadline and len(self.events) < MAX_EVENTS:
            jobs = {str(e["job_id"]) for e in latest_entries(self.grid.root).values() if e.get("job_id")}
            queue = scheduler.queue_states(jobs)
            if queue == {}:
                return
            now = time.monotonic()
            running = sorted(j for j, state in (queue or {}).items() if state == "RUNNING")
            self.first_seen = {j: self.first_seen.get(j, now) for j in running}  # a restart is seen anew
            early_done = sum(e[2] for e in self.events)
            for j in running:
                if j not in self.early_at and self.first_seen[j] == now and early_done < EARLY_HITS:
                    self.early_at[j] = now + self.rng.uniform(0.0, EARLY_S)
            for j, when in list(self.early_at.items()):
                if when <= now and j in running and now - self.first_seen[j] < EARLY_S:
                    self.hit(self.rng.choice(["usr2", "usr2", "requeue"]), j, early=True)
                    self.early_at[j] = float("inf")  # once per job id
            settled = [j for j in running if now - self.first_seen[j] >= EARLY_S]  # past start-up: training
            due = running and now >= next_hit and self.plan
            if due and self.hit(self.plan[0], self.rng.choice(settled or running), early=False):
                self.plan.pop(0)  # a kill that found no Python process yet is tried again
                next_hit = now + self.rng.uniform(0.3, 1.5)
            time.sleep(0.1)


def raw_keys(rd: RunDir) -> list[tuple]:
    """(epoch, step, split) of every line of metrics.jsonl as written (no reader's deduplication)."""
    return [(r["epoch"], r["step"], r["split"]) for r in read_records(rd.metrics)]


def test_storm_then_one_resume_finishes_every_run_identically(cli, tmp_path, grids, references):
    grid, output = submit(cli, tmp_path, grids, spec(), name="storm")
    run_ids = grid.run_ids()
    configs = {r: json.loads(grid.run(r).config.read_text()) for r in run_ids}
    assert len(run_ids) == 9 and output.count("run(s) as job") == 4  # ERM + stage 1; one per stage-1 run
    storm = Storm(grid, seed=19)
    storm.run()
    kinds = [e[0] for e in storm.events]
    assert kinds.count("usr2") >= 2 and kinds.count("requeue") >= 1 and kinds.count("kill") >= 1, storm.events
    assert sum(e[2] for e in storm.events) >= 2, storm.events  # jobs hit in their first seconds
    print("storm:", storm.events)

    status = wait_for("the queue to drain", lambda: (s := grid_status(grid)).active == {} and s, grid.root,
                      timeout=240)
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
    wait_for("every run DONE after one resume", lambda: all_done(grid), grid.root, timeout=240)
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
