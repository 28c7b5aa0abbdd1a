"""Code snapshot, provenance, SLURM environment and TensorBoard mirroring against the real cluster.

Grids are submitted by a `robustmtl` process that imports the package from a throwaway git checkout,
so the tests can edit that checkout while the jobs wait in the queue.

Run with:  ROBUSTMTL_REQUIRE_SLURM=1 python -m pytest tests/slurm/test_snapshot_live.py -q
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from robustmtl import trackers
from robustmtl.grid import snapshot
from robustmtl.grid.manifest import latest_entries
from robustmtl.layout import GridDir, RunDir
from robustmtl.provenance import read_provenance
from robustmtl.train.attempt_log import read_attempts
from tests.conftest import committed_package_copy, git, read_records

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TINY = {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100, "batch_size": 32}
SLOW = {"epochs": 6, "n_train": 1000, "n_val": 100, "n_test": 100, "batch_size": 32}
HELD_STEP = 3 * -(-SLOW["n_train"] // SLOW["batch_size"]) + 3  # the test's pause holds the run in epoch 4
WAIT_S = 300  # the 2-core cluster is shared with other test files


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A clean git checkout holding a copy of the robustmtl package."""
    return committed_package_copy(tmp_path)


@pytest.fixture
def jobs() -> Iterator[list[str]]:
    """SLURM job ids a test started; cancelled afterwards, whatever happened."""
    started: list[str] = []
    yield started
    if started:
        subprocess.run(["scancel", *started], capture_output=True)


def environment(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONSAFEPATH", snapshot.CODE_ENV)}
    return {**env, "PYTHONPATH": str(repo)}


def spec(path: Path, name: str, params: dict[str, Any], executor: dict[str, Any]) -> Path:
    executor = {"kind": "slurm", "threads": 1, "checkpoint_every": 5, **executor}
    path.write_text(f'name = "{name}"\ndatasets = ["synthetic"]\nmethods = ["erm"]\nseeds = [0]\n[defaults]\n'
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in params.items())
                    + "[executor]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in executor.items()))
    return path


def submit(repo: Path, spec_path: Path, out: Path, jobs: list[str]) -> tuple[GridDir, RunDir, str]:
    """`grid submit` by a process that imports robustmtl from `repo`; returns the grid, its run and job id."""
    subprocess.run([sys.executable, "-m", "robustmtl", "grid", "submit", str(spec_path), "--out", str(out)],
                   cwd=repo, env=environment(repo), check=True, capture_output=True, text=True)
    grid = GridDir(out)
    ((run_id, entry),) = latest_entries(grid.root).items()
    jobs.append(entry["job_id"])
    return grid, grid.run(run_id), entry["job_id"]


def wait_for(what: str, check: Callable[[], Any], out: Path) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    logs = "".join(f"\n--- {log}\n{log.read_text()[-2000:]}" for log in sorted(out.rglob("*_log.err"))[-2:])
    queue = subprocess.run(["squeue", "-a"], capture_output=True, text=True).stdout
    pytest.fail(f"timed out after {WAIT_S}s waiting for {what}\n{queue}{logs}", pytrace=False)


def finished(rd: RunDir) -> bool:
    events = read_attempts(rd)
    return rd.done.exists() and bool(events) and events[-1]["event"] == "done"


def test_editing_the_checkout_after_submit_changes_no_queued_run(checkout, tmp_path, jobs):
    out = tmp_path / "grid"
    grid, rd, job_id = submit(checkout, spec(tmp_path / "g.toml", "held", TINY, {"extra": ["--hold"]}), out, jobs)
    commit = git(checkout, "rev-parse", "HEAD").strip()
    # while the job is held in the queue, the checkout breaks: a job importing it could not train at all
    loop_py = checkout / "robustmtl" / "train" / "loop.py"
    loop_py.write_text('raise RuntimeError("edited after submit")\n' + loop_py.read_text())
    subprocess.run(["scontrol", "release", job_id.split("_")[0]], check=True, capture_output=True)
    wait_for("the held run to finish", lambda: finished(rd), out)

    snap = snapshot.current(grid)
    assert snap is not None and snap.source == {"commit": commit, "dirty": False, "untracked": [],
                                                "source_hash": snap.source["source_hash"], "snapshot": snap.root.name}
    assert "edited after submit" not in (snap.root / "robustmtl" / "train" / "loop.py").read_text()
    (entry,) = read_provenance(rd)
    assert Path(entry["source_path"]) == (snap.root / "robustmtl").resolve()
    assert entry["commit"] == commit and entry["dirty"] is False and entry["diff_file"] is None
    assert entry["code"] == commit[:12] and {r["code"] for r in read_records(rd.metrics)} == {commit[:12]}
    assert entry["job_id"] == job_id and entry["slurm_job_id"] == job_id.split("_")[0]
    assert entry["attempt"] == 1 and entry["restart_count"] == 0
    assert entry["hostname"] == socket.gethostname() and entry["python"] == platform.python_version()
    assert entry["python_executable"] == sys.executable and entry["versions"]["torch"] == torch.__version__
    assert entry["cuda"] == torch.version.cuda and entry["gpus"] == [] and entry["driver"] is None


def test_a_grid_submitted_from_inside_a_slurm_job_gets_none_of_its_variables(checkout, tmp_path, jobs):
    out = tmp_path / "grid"
    inner_env = tmp_path / "inner-env.txt"
    spec_path = spec(tmp_path / "g.toml", "nested", TINY,
                     {"setup": [f"env | grep -E '^(SLURM|SRUN)_' | sort > {shlex.quote(str(inner_env))}"]})
    command = shlex.join([sys.executable, "-m", "robustmtl", "grid", "submit", str(spec_path), "--out", str(out)])
    # the outer job asks for memory per node; the inner job gets the cluster's memory per CPU, and srun
    # refuses to start when both variables are set
    outer = subprocess.run(["sbatch", "--parsable", "--mem=300", "--export=ALL,SLURM_ROBUSTMTL_OUTER=1",
                            f"--output={tmp_path / 'outer.log'}", "--wrap", command],
                           cwd=checkout, env=environment(checkout), check=True, capture_output=True, text=True)
    outer_id = outer.stdout.strip().split(";")[0]
    jobs.append(outer_id)
    grid = GridDir(out)
    wait_for("the inner job to be queued", lambda: latest_entries(grid.root), out)
    ((run_id, entry),) = latest_entries(grid.root).items()
    jobs.append(entry["job_id"])
    rd = grid.run(run_id)
    wait_for("the inner run to finish", lambda: finished(rd), out)

    variables = dict(line.split("=", 1) for line in inner_env.read_text().splitlines())
    assert "SLURM_ROBUSTMTL_OUTER" not in variables and "SLURM_MEM_PER_NODE" not in variables
    assert variables["SLURM_JOB_ID"] == entry["job_id"].split("_")[0] != outer_id
    assert read_provenance(rd)[0]["slurm_job_id"] == variables["SLURM_JOB_ID"]


def test_tensorboard_curve_continues_across_a_requeue(checkout, tmp_path, jobs, pause):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "grid"
    pause.at(HELD_STEP)  # still training when the requeue comes, however fast the machine
    _, rd, job_id = submit(checkout, spec(tmp_path / "g.toml", "tb", SLOW, {"trackers": ["tensorboard"]}), out, jobs)
    wait_for("3 epochs", lambda: rd.metrics.exists() and rd.metrics.read_text().count('"split": "val"') >= 3, out)
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    wait_for("the requeue in attempts.jsonl", lambda: any(e["event"] == "preempted" for e in read_attempts(rd)), out)
    pause.release()
    wait_for("the requeued run to finish", lambda: finished(rd), out)

    attempts = read_provenance(rd)
    assert [e["attempt"] for e in attempts] == [1, 2] and attempts[1]["restart_count"] >= 1
    assert {e["job_id"] for e in attempts} == {job_id}
    acc = EventAccumulator(str(rd.root / trackers.TENSORBOARD_DIR))
    acc.Reload()
    got = {tag: [(e.step, pytest.approx(e.value, rel=1e-6)) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in read_records(rd.metrics):
        for tag, value in trackers.scalars(record).items():
            expected.setdefault(tag, []).append((record["step"], value))
    assert len(expected["val/worst_group_acc"]) == SLOW["epochs"]
    assert got == expected
