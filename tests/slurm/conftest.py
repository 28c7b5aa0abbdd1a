"""Fixtures for tests that run against a real single-node SLURM cluster.

The ``slurm_cluster`` fixture brings the cluster up with
``scripts/slurm-cluster.sh up`` (idempotent, cheap when already running) and
leaves it running after the session so other test files can reuse it.

If the cluster cannot be brought up the dependent tests are skipped, unless
``ROBUSTMTL_REQUIRE_SLURM=1`` is set, in which case they fail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from robustmtl.errors import UserError
from robustmtl.grid.control import cancel
from robustmtl.layout import GridDir

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm-cluster.sh"
UP_TIMEOUT_S = 900  # generous: may include apt-get install on a fresh machine
# The tests assume the 2-CPU node is theirs alone; jobs already queued (another test run, or one that was
# killed) would starve theirs into timeouts that look like bugs. Left-over test jobs end within minutes.
FOREIGN_JOBS_WAIT_S = 300


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slurm: needs the real single-node SLURM cluster (scripts/slurm-cluster.sh up)",
    )


def _tail(text: str, n: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


def _unavailable(reason: str) -> None:
    if os.environ.get("ROBUSTMTL_REQUIRE_SLURM") == "1":
        pytest.fail(f"SLURM cluster required (ROBUSTMTL_REQUIRE_SLURM=1) but unavailable: {reason}", pytrace=False)
    pytest.skip(f"SLURM cluster unavailable: {reason}")


@pytest.fixture(scope="session")
def slurm_cluster():
    """Ensure the local SLURM cluster is up; yields the repo root."""
    if not CLUSTER_SCRIPT.is_file():
        _unavailable(f"{CLUSTER_SCRIPT} not found")
    if shutil.which("bash") is None:
        _unavailable("bash not found")
    try:
        proc = subprocess.run(
            ["bash", str(CLUSTER_SCRIPT), "up"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=UP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout if isinstance(exc.stdout, str) else (exc.stdout or b"").decode(errors="replace")
        _unavailable(f"`slurm-cluster.sh up` timed out after {UP_TIMEOUT_S}s\n{_tail(out)}")
    except OSError as exc:
        _unavailable(f"could not run {CLUSTER_SCRIPT}: {exc}")
    else:
        if proc.returncode != 0:
            _unavailable(f"`slurm-cluster.sh up` exited {proc.returncode}\n{_tail(proc.stdout)}")
    for tool in ("sbatch", "squeue", "sacct", "scontrol", "scancel"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} not on PATH after bring-up")
    _wait_for_an_empty_queue()
    yield REPO_ROOT
    # Deliberately left running: other test files reuse it (`slurm-cluster.sh down` stops it).


def _queued_jobs() -> list[str]:
    proc = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, timeout=30)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _wait_for_an_empty_queue() -> None:
    deadline = time.monotonic() + FOREIGN_JOBS_WAIT_S
    while (jobs := _queued_jobs()) and time.monotonic() < deadline:
        time.sleep(5)
    if jobs:
        _unavailable(f"the test cluster's queue still holds {len(jobs)} job(s) this session did not submit after "
                     f"{FOREIGN_JOBS_WAIT_S}s ({'; '.join(jobs[:5])}): another test run is using the cluster; "
                     "let it finish, or scancel its jobs")


@pytest.fixture
def grids():
    """Grid directories of a test; their queued jobs are cancelled afterwards, whatever happened."""
    made: list[Path] = []
    yield made
    for out in made:
        with contextlib.suppress(UserError):
            cancel(GridDir(out))
