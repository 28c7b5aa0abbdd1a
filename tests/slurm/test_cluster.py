"""Smoke tests against the real single-node SLURM cluster (no fake sbatch).

Run with:  ROBUSTMTL_REQUIRE_SLURM=1 python -m pytest tests/slurm -q
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("slurm_cluster")]

TERMINAL = (
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "BOOT_FAIL",
    "DEADLINE",
    "REVOKED",
)
JOB_TIMEOUT_S = 30


def add(a, b):
    """Trivial function shipped to a SLURM job by submitit."""
    return a + b


# ----------------------------------------------------------------- helpers
def run(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}", pytrace=False
        )
    return proc


def sbatch(tmp_path: Path, *args: str, wrap: str) -> str:
    out = run(
        "sbatch",
        "--parsable",
        f"--job-name=rmtl-test-{uuid.uuid4().hex[:6]}",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/%x-%A_%a.out",
        "--time=2",
        *args,
        f"--wrap={wrap}",
    ).stdout.strip()
    job_id = out.split(";")[0]
    assert job_id.isdigit(), f"unexpected sbatch output: {out!r}"
    return job_id


def sacct_states(job_id: str) -> dict[str, str]:
    """{JobID: State} for the job allocation(s) (array tasks appear as ID_N)."""
    proc = run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "JobID,State", check=False)
    states = {}
    for line in proc.stdout.splitlines():
        if "|" in line:
            jid, state = line.split("|", 1)
            states[jid] = state.split()[0] if state else state  # "CANCELLED by 0" -> CANCELLED
    return states


def wait_terminal(job_id: str, n_expected: int = 1, timeout: float = JOB_TIMEOUT_S) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = sacct_states(job_id)
        done = {k: v for k, v in states.items() if v.startswith(TERMINAL) and "[" not in k}
        if len(done) >= n_expected and len(done) == len(states):
            return states
        time.sleep(0.5)
    squeue = run("squeue", "-a", "-j", job_id, check=False)
    scontrol = run("scontrol", "show", "job", job_id, check=False)
    pytest.fail(
        f"job {job_id} not finished after {timeout}s: sacct={states}\n"
        f"squeue: {squeue.stdout}{squeue.stderr}\nscontrol: {scontrol.stdout}{scontrol.stderr}",
        pytrace=False,
    )


def wait_running(job_id: str, timeout: float = JOB_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        state = run("squeue", "-h", "-j", job_id, "-o", "%T", check=False).stdout.strip()
        if state == "RUNNING":
            return
        time.sleep(0.3)
    pytest.fail(f"job {job_id} not RUNNING after {timeout}s (squeue state {state!r})", pytrace=False)


# ------------------------------------------------------------------ tests
def test_sbatch_wrap_completes(tmp_path):
    job_id = sbatch(tmp_path, wrap="echo hello-from-slurm")
    states = wait_terminal(job_id)
    assert states == {job_id: "COMPLETED"}
    outs = list(tmp_path.glob("*.out"))
    assert outs and "hello-from-slurm" in outs[0].read_text()


def test_daemons_run_from_the_root_directory():
    """Job steps start in slurmd's working directory: one inside a checkout fails once the checkout is gone."""
    for pid_file in ("/run/slurmd.pid", "/run/slurmctld.pid", "/run/slurmdbd.pid"):
        pid = Path(pid_file).read_text().strip()
        assert Path(f"/proc/{pid}/cwd").readlink() == Path("/"), pid_file


def test_array_with_throttle_completes(tmp_path):
    job_id = sbatch(tmp_path, "--array=0-3%2", wrap="echo task $SLURM_ARRAY_TASK_ID; sleep 1")
    states = wait_terminal(job_id, n_expected=4)
    assert states == {f"{job_id}_{i}": "COMPLETED" for i in range(4)}
    texts = sorted(p.read_text().strip() for p in tmp_path.glob("*.out"))
    assert texts == [f"task {i}" for i in range(4)]


def test_scancel_seen_as_cancelled_by_sacct(tmp_path):
    job_id = sbatch(tmp_path, wrap="sleep 300")
    wait_running(job_id)
    run("scancel", job_id)
    states = wait_terminal(job_id)
    assert states == {job_id: "CANCELLED"}


def test_fake_gpu_is_allocated(tmp_path):
    job_id = sbatch(tmp_path, "--gpus=1", wrap='echo "CUDA=$CUDA_VISIBLE_DEVICES"; echo "GPUS=$SLURM_JOB_GPUS"')
    states = wait_terminal(job_id)
    assert states == {job_id: "COMPLETED"}
    show = run("scontrol", "show", "job", job_id).stdout
    assert "gres/gpu=1" in show, show
    alloc = run("sacct", "-j", job_id, "-X", "-n", "-P", "-o", "AllocTRES").stdout
    assert "gres/gpu=1" in alloc, alloc
    out = next(tmp_path.glob("*.out")).read_text()
    assert "CUDA=0" in out or "CUDA=1" in out, out


def test_submitit_autoexecutor_runs_function(tmp_path):
    submitit = pytest.importorskip("submitit")
    import cloudpickle

    # The job's interpreter cannot import this test module by name, so ship
    # its functions by value.
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
        # submitit's warning signal (USR2, 90 s before the limit) may come up to a minute early: a 2-minute
        # limit let it arrive at the start and kill the job before Python could catch it
        executor.update_parameters(timeout_min=10, slurm_partition="debug")
        job = executor.submit(add, 2, 3)
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while not job.done():
        if time.monotonic() > deadline:
            job.cancel(check=False)
            pytest.fail(
                f"submitit job {job.job_id} not done after {JOB_TIMEOUT_S}s; "
                f"stdout: {job.stdout()}\nstderr: {job.stderr()}",
                pytrace=False,
            )
        time.sleep(0.5)
    assert job.result() == 5
    assert wait_terminal(str(job.job_id)) == {str(job.job_id): "COMPLETED"}


def test_accounting_limits_enforced(tmp_path):
    """AccountingStorageEnforce=associations,limits: a MaxSubmitJobs=1 association rejects job #2."""
    account = "rmtl_limit_test"
    assoc = run("sacctmgr", "-n", "-P", "list", "account", "format=account").stdout.split()
    if account not in assoc:
        run("sacctmgr", "-i", "add", "account", account, "description=limit-test", "organization=robustmtl")
    run("sacctmgr", "-i", "add", "user", "root", f"account={account}", check=False)  # may already exist
    run("sacctmgr", "-i", "modify", "user", "root", "where", f"account={account}", "set", "MaxSubmitJobs=1")
    first = None
    try:
        # slurmdbd pushes association updates to slurmctld asynchronously
        deadline = time.monotonic() + 10
        while True:
            show = run(
                "scontrol", "show", "assoc_mgr", "users=root", f"accounts={account}", "flags=assoc", check=False
            ).stdout
            if "MaxSubmitJobs=1(" in show or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        first = sbatch(tmp_path, f"--account={account}", wrap="sleep 300")
        second = run(
            "sbatch",
            "--parsable",
            f"--account={account}",
            f"--chdir={tmp_path}",
            f"--output={tmp_path}/second.out",
            "--wrap=true",
            check=False,
        )
        assert second.returncode != 0, f"second job was accepted: {second.stdout}"
        assert "AssocMaxSubmitJobLimit" in second.stderr, second.stderr
    finally:
        if first:
            run("scancel", first, check=False)
            wait_terminal(first)
        run("sacctmgr", "-i", "delete", "user", "root", "where", f"account={account}", check=False)
        run("sacctmgr", "-i", "delete", "account", account, check=False)
