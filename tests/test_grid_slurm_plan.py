"""SLURM submission planning without a cluster: levels, dependencies, chunks, limits, packs, sbatch retries."""

from __future__ import annotations

import contextlib
import os
import shlex
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.grid import scheduler, slurm
from robustmtl.grid.executor import ExecutorSettings
from robustmtl.grid.manifest import latest_entries
from robustmtl.grid.scheduler import Limit, SubmitRoom, sbatch_message
from robustmtl.layout import GridDir


def run(run_id: str, *requires: str) -> SimpleNamespace:
    return SimpleNamespace(run_id=run_id, requires=list(requires))


def rid(n: int) -> str:
    return f"{n:012x}"


def test_chunks_respect_max_array_size():
    runs = [run(rid(i)) for i in range(2500)]
    sizes = [len(c) for c in slurm.chunked(runs, 1001)]
    assert sizes == [1001, 1001, 498]
    assert [r.run_id for c in slurm.chunked(runs, 1001) for r in c] == [r.run_id for r in runs]


def test_levels_put_requirements_first_and_ignore_done_ones():
    s1, s2 = run(rid(1)), run(rid(2))
    a, b = run(rid(3), rid(1)), run(rid(4), rid(1), rid(2))
    free = run(rid(5), rid(99))  # its requirement is done (not in the plan)
    assert [[r.run_id for r in level] for level in slurm.levels([a, s1, b, free, s2])] == [
        [rid(1), rid(5), rid(2)], [rid(3), rid(4)]]
    with pytest.raises(UserError, match="circular"):
        slurm.levels([run(rid(1), rid(2)), run(rid(2), rid(1))])


def test_dependencies_only_on_jobs_not_done():
    runs = [run(rid(3), rid(1)), run(rid(4), rid(2))]
    assert slurm.dependencies(runs, {rid(1): "7_0", rid(2): "8"}) == ["7_0", "8"]
    assert slurm.dependencies(runs, {rid(1): "7_0"}) == ["7_0"]
    assert slurm.dependencies(runs, {}) == []


def test_with_requirements_adds_unfinished_requirements_once():
    s1, a, b = run(rid(1)), run(rid(2), rid(1)), run(rid(3), rid(1))
    assert [r.run_id for r in slurm.with_requirements([a, b], [s1, a, b], skip=set())] == [rid(1), rid(2), rid(3)]
    assert [r.run_id for r in slurm.with_requirements([a], [s1, a, b], skip={rid(1)})] == [rid(2)]


@pytest.fixture
def fake_sbatch(monkeypatch):
    """Replace the sbatch call: record (run ids, dependencies) and hand out array job ids."""
    calls: list[tuple[list[str], list[str]]] = []
    fail_on: set[int] = set()

    room = SimpleNamespace(jobs=None)

    def sbatch_array(grid, tasks, settings, deps, max_size):
        calls.append(([r.run_id for t in tasks for r in t], deps))
        if len(calls) in fail_on:
            raise UserError("sbatch rejected the job: Invalid partition name specified")
        job = 100 + len(calls)
        return [f"{job}_{i}" for i in range(len(tasks))] if len(tasks) > 1 else [str(job)]

    def submit_room(account, qos):
        limits = [] if room.jobs is None else [Limit("MaxSubmitJobs of association root/lab", 5, 5 - room.jobs)]
        return SubmitRoom(max_array_size=2, limits=limits)

    monkeypatch.setattr(slurm, "sbatch_array", sbatch_array)
    monkeypatch.setattr(slurm, "submit_room", submit_room)
    return SimpleNamespace(calls=calls, fail_on=fail_on, room=room)


def test_each_run_waits_only_on_its_own_required_tasks_in_chunked_arrays(tmp_path, fake_sbatch):
    """Stage-2 runs are grouped by the stage-1 tasks they need: one failed task can cancel only its own group."""
    grid = GridDir(tmp_path)
    stage1 = [run(rid(1)), run(rid(2))]
    stage2 = [run(rid(10), rid(1)), run(rid(11), rid(2)), run(rid(12), rid(1)), run(rid(13), rid(1))]
    queued_req = run(rid(20), rid(30))  # requirement already queued as job 99_4
    n = slurm.submit_arrays(grid, [*stage2, *stage1, queued_req], ExecutorSettings(), Console(quiet=True),
                            queued={rid(30): "99_4"})
    assert n == 7
    assert fake_sbatch.calls == [
        ([rid(1), rid(2)], []),
        ([rid(20)], ["99_4"]),
        ([rid(10), rid(12)], ["101_0"]),  # MaxArraySize 2: the group of three is split
        ([rid(13)], ["101_0"]),
        ([rid(11)], ["101_1"]),
    ]
    entries = latest_entries(tmp_path)
    assert entries[rid(1)]["job_id"] == "101_0" and entries[rid(12)]["job_id"] == "103_1"
    assert entries[rid(11)]["job_id"] == "105"
    assert all(isinstance(e["submitted_at"], float) for e in entries.values())


def test_runs_whose_requirements_are_done_share_one_array_without_dependency(tmp_path, fake_sbatch):
    runs = [run(rid(10), rid(1)), run(rid(11), rid(2)), run(rid(12))]  # rid(1), rid(2): done, not in the plan
    slurm.submit_arrays(GridDir(tmp_path), runs, ExecutorSettings(pack=3), Console(quiet=True))
    assert fake_sbatch.calls == [([rid(10), rid(11), rid(12)], [])]


def test_rejected_sbatch_leaves_no_entries_for_runs_not_queued(tmp_path, fake_sbatch):
    fake_sbatch.fail_on.add(2)
    runs = [run(rid(i)) for i in range(4)]
    with pytest.raises(UserError, match=r"Invalid partition.*2 runs were queued before"):
        slurm.submit_arrays(GridDir(tmp_path), runs, ExecutorSettings(), Console(quiet=True))
    assert sorted(latest_entries(tmp_path)) == [rid(0), rid(1)]


def test_parameters_from_settings():
    settings = ExecutorSettings(partition="gpu", account="lab", qos="high", gpus=2, cpus=4, mem_gb=8, timeout_min=2,
                                constraint="a100", extra=("--begin=now+60", "--exclusive"))
    params = slurm.slurm_parameters(settings, "robustmtl-x")
    assert params["slurm_partition"] == "gpu" and params["slurm_account"] == "lab" and params["slurm_qos"] == "high"
    assert params["slurm_gpus_per_node"] == 2 and params["cpus_per_task"] == 4 and params["mem_gb"] == 8
    assert params["slurm_signal_delay_s"] == 30
    assert params["slurm_setup"] == ["export OMP_NUM_THREADS=4", "export ROBUSTMTL_SIGNAL_DELAY_S=30"]
    assert params["slurm_additional_parameters"] == {"begin": "now+60", "exclusive": True}
    assert slurm.slurm_parameters(ExecutorSettings(), "x")["slurm_signal_delay_s"] == 90
    with pytest.raises(UserError, match="--name=value"):
        slurm.slurm_parameters(ExecutorSettings(extra=("begin",)), "x")


def test_sbatch_message_keeps_what_went_wrong():
    stderr = ("sbatch: error: invalid partition specified: nosuch\n"
              "sbatch: error: Batch job submission failed: Invalid partition name specified\n")
    assert sbatch_message(stderr) == ("invalid partition specified: nosuch; "
                                      "Batch job submission failed: Invalid partition name specified")


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _fake_sbatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> None:
    """Put an `sbatch` running the shell lines `body` (and a no-op `srun`) first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _executable(bin_dir / "sbatch", "#!/bin/sh\n" + body)
    _executable(bin_dir / "srun", "#!/bin/sh\nexit 0\n")
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")


def _sbatch_keeping_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake `sbatch` that accepts every job as 4242 and keeps its script in the folder returned."""
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    _fake_sbatch(tmp_path, monkeypatch, f'cp "$1" {scripts}/$$.sh\necho "Submitted batch job 4242"\n')
    return scripts


def test_sbatch_script_has_array_throttle_dependency_and_flags(tmp_path, monkeypatch):
    """Through submitit with a fake `sbatch` that keeps the script: the flags the cluster would see."""
    scripts = _sbatch_keeping_scripts(tmp_path, monkeypatch)
    grid = GridDir(tmp_path / "grid")
    runs = [run(rid(i)) for i in range(3)]
    settings = ExecutorSettings(partition="debug", array_parallelism=2, max_timeouts=5, extra=("--begin=now+60",))
    ids = slurm.sbatch_array(grid, [[r] for r in runs], settings, ["7_1", "8"], 1001)
    assert ids == ["4242_0", "4242_1", "4242_2"]
    text = next(scripts.iterdir()).read_text()
    for flag in ("--array=0-2%2", "--dependency=afterok:7_1:8", "--kill-on-invalid-dep=yes", "--partition=debug",
                 "--begin=now+60", "--job-name=robustmtl-grid", "--signal=USR2@90"):
        assert f"#SBATCH {flag}\n" in text, text
    pickles = sorted(p.name for p in (grid.submitit / "4242_1").iterdir())
    assert "4242_1_submitted.pkl" in pickles


def test_sbatch_script_starts_the_job_with_the_configured_python(tmp_path, monkeypatch):
    """`[executor] python` is the command the script runs after the setup lines; unset, the submitting one."""
    scripts = _sbatch_keeping_scripts(tmp_path, monkeypatch)
    python = "/opt/envs/robust/bin/python3 -X faulthandler"
    settings = ExecutorSettings(python=python, setup=("module load cuda",))
    slurm.sbatch_array(GridDir(tmp_path / "grid"), [[run(rid(0))]], settings, [], 1001)
    slurm.sbatch_array(GridDir(tmp_path / "other"), [[run(rid(0))]], ExecutorSettings(), [], 1001)
    configured, default = sorted((p.read_text() for p in scripts.iterdir()), key=lambda t: "/opt/envs" not in t)
    command = configured.splitlines()[-1]
    assert f" {slurm.SIGNAL_SAFE_START} {python} -u -m submitit.core._submit " in command, configured
    assert configured.index("module load cuda") < configured.index(command)
    assert f" {shlex.quote(sys.executable)} -u -m submitit.core._submit " in default.splitlines()[-1], default


def test_rejected_sbatch_through_submitit_is_one_user_error(tmp_path, monkeypatch):
    _fake_sbatch(tmp_path, monkeypatch, "echo 'sbatch: error: Batch job submission failed: Invalid account or "
                                        "account/partition combination specified' >&2\nexit 1\n")
    grid = GridDir(tmp_path / "grid")
    with pytest.raises(UserError, match=r"^sbatch rejected the job: Batch job submission failed: Invalid account"):
        slurm.sbatch_array(grid, [[run(rid(0))], [run(rid(1))]], ExecutorSettings(account="nosuch"), [], 1001)
    assert list(grid.submitit.iterdir()) == []  # no leftover pickles or scripts
    assert latest_entries(grid.root) == {}


def test_a_submit_limit_queues_what_fits_and_records_the_rest(tmp_path, fake_sbatch):
    """Room for 3 jobs: stage 1 and one stage-2 run fit; the rest wait, and so does what needs a held run."""
    fake_sbatch.room.jobs = 3
    stage1 = [run(rid(1)), run(rid(2))]
    stage2 = [run(rid(10), rid(1)), run(rid(11), rid(2)), run(rid(12), rid(1))]
    out = Console(record=True, width=300)
    assert slurm.submit_arrays(GridDir(tmp_path), [*stage1, *stage2], ExecutorSettings(), out) == 3
    assert [c[0] for c in fake_sbatch.calls] == [[rid(1), rid(2)], [rid(10)]]
    entries = latest_entries(tmp_path)
    assert sorted(r for r, e in entries.items() if e["job_id"] is None) == [rid(11), rid(12)]
    assert "MaxSubmitJobs" in entries[rid(11)]["not_submitted"]
    text = out.export_text()
    assert "2 run(s) not submitted" in text and "MaxSubmitJobs of association root/lab = 5" in text
    assert "grid resume" in text


def test_no_room_at_all_submits_nothing(tmp_path, fake_sbatch):
    fake_sbatch.room.jobs = 0
    held = [run(rid(1)), run(rid(2), rid(1))]
    assert slurm.submit_arrays(GridDir(tmp_path), held, ExecutorSettings(), Console(quiet=True)) == 0
    assert fake_sbatch.calls == [] and all(e["job_id"] is None for e in latest_entries(tmp_path).values())


def test_packs_put_k_runs_in_one_task_and_count_tasks_against_limits(tmp_path, fake_sbatch):
    fake_sbatch.room.jobs = 2
    runs = [run(rid(i)) for i in range(7)]
    assert slurm.submit_arrays(GridDir(tmp_path), runs, ExecutorSettings(pack=3), Console(quiet=True)) == 6
    entries = latest_entries(tmp_path)
    assert {entries[rid(i)]["job_id"] for i in range(3)} == {"101_0"} and entries[rid(3)]["job_id"] == "101_1"
    assert entries[rid(4)]["pack"] == [rid(3), rid(4), rid(5)] and entries[rid(6)]["job_id"] is None


def test_parallel_packs_ask_for_every_members_resources():
    params = slurm.slurm_parameters(ExecutorSettings(pack=2, pack_mode="parallel", gpus=1, cpus=2, mem_gb=4), "x")
    assert params["slurm_gpus_per_node"] == 2 and params["cpus_per_task"] == 4 and params["mem_gb"] == 8
    sequential = slurm.slurm_parameters(ExecutorSettings(pack=2, gpus=1, cpus=2), "x")
    assert sequential["slurm_gpus_per_node"] == 1 and sequential["cpus_per_task"] == 2


def test_submit_room_reads_association_qos_and_queue(monkeypatch):
    """Canned answers of the real commands' parsable formats; the tightest limit binds."""
    answers = {
        "scontrol": "MaxArraySize            = 1001\nMaxJobCount             = 10000\n",
        "show user": "lab\n",
        "show assoc": "|||normal|\nroot|5||normal,high|normal\n",
        "show qos": "4|\n",
        "squeue": "root|lab|normal|PENDING\nroot|lab|normal|RUNNING\nroot|lab|normal|COMPLETED\n"
                  "bob|lab|normal|PENDING\nroot|other|normal|PENDING\n",
    }

    def call(cmd):
        assert all(" " not in arg for arg in cmd), cmd  # sacctmgr takes `where` and each condition as words
        key = next(k for k in answers if k in " ".join(cmd))
        return SimpleNamespace(returncode=0, stdout=answers[key], stderr="")

    monkeypatch.setattr(scheduler, "_call", call)
    monkeypatch.setattr(scheduler.getpass, "getuser", lambda: "root")
    room = scheduler.submit_room(None, None)
    assert room.max_array_size == 1001
    found = {lim.what: (lim.limit, lim.used) for lim in room.limits}
    assert found["MaxSubmitJobs of association root/lab"] == (5, 2)  # root's queued jobs under lab
    assert found["MaxSubmitJobsPerUser of QOS normal"] == (4, 3)  # root's queued jobs under normal, any account
    assert found["MaxJobCount (jobs the controller holds)"] == (10000, 5)
    assert room.jobs == 1 and room.binding.what == "MaxSubmitJobsPerUser of QOS normal"


def test_without_accounting_only_the_controller_limits_apply(monkeypatch):
    def call(cmd):
        if cmd[0] == "sacctmgr":
            return SimpleNamespace(returncode=1, stdout="", stderr="sacctmgr: error: slurmdbd not running")
        return SimpleNamespace(returncode=0, stdout="MaxJobCount = 30\n" if cmd[0] == "scontrol" else "", stderr="")

    monkeypatch.setattr(scheduler, "_call", call)
    room = scheduler.submit_room("lab", None)
    assert [lim.what for lim in room.limits] == ["MaxJobCount (jobs the controller holds)"] and room.jobs == 30


@pytest.mark.parametrize("failures, error, calls", [
    (2, "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", 3),
    (1, "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, "
        "user's size and/or time limits)", 1),
])
def test_transient_sbatch_errors_are_retried_permanent_ones_are_not(tmp_path, monkeypatch, failures, error, calls):
    count = tmp_path / "count"
    _fake_sbatch(tmp_path, monkeypatch, f"""echo x >> {count}
if [ $(wc -l < {count}) -le {failures} ]; then echo "{error}" >&2; exit 1; fi
grep -o 'comment=.*' "$1" > {tmp_path}/comment
echo "Submitted batch job 4242"
""")
    monkeypatch.setattr(slurm, "RETRY_DELAYS_S", (0.0, 0.0, 0.0))
    looked_for: list[str] = []
    monkeypatch.setattr(slurm, "jobs_with_comment", lambda token: looked_for.append(token) or [])
    grid = GridDir(tmp_path / "grid")
    if calls == 1:
        with pytest.raises(UserError, match=r"^sbatch rejected the job: .*job submit limit"):
            slurm.sbatch_array(grid, [[run(rid(0))]], ExecutorSettings(), [], 1001)
        assert looked_for == []
    else:
        assert slurm.sbatch_array(grid, [[run(rid(0))]], ExecutorSettings(), [], 1001) == ["4242"]
        # before each retry: a job the failed call queued anyway would be found by the same comment
        assert len(looked_for) == 2 and (tmp_path / "comment").read_text().strip() == f"comment={looked_for[0]}"
    assert len(count.read_text().splitlines()) == calls


def test_a_job_queued_by_an_sbatch_that_timed_out_is_cancelled_before_the_retry(tmp_path, monkeypatch):
    """The first sbatch queues its job (4241) and then reports a socket timeout: the retry's job (4242) is the
    only one left queued, found through the real squeue call (by the submission's comment) and scancel."""
    queue, cancelled, count = tmp_path / "queue", tmp_path / "cancelled", tmp_path / "count"
    queue.touch()
    _fake_sbatch(tmp_path, monkeypatch, f"""echo x >> {count}
comment=$(sed -n 's/^#SBATCH --comment=//p' "$1")
if [ $(wc -l < {count}) -eq 1 ]; then
  echo "4241|$comment" >> {queue}
  echo "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation" >&2; exit 1
fi
echo "4242|$comment" >> {queue}
echo "Submitted batch job 4242"
""")
    bin_dir = tmp_path / "bin"
    _executable(bin_dir / "squeue", f"#!/bin/sh\ncat {queue}\n")
    _executable(bin_dir / "scancel", f"""#!/bin/sh
echo "$@" >> {cancelled}
for j in "$@"; do grep -v "^$j|" {queue} > {queue}.new; mv {queue}.new {queue}; done
""")
    monkeypatch.setattr(slurm, "RETRY_DELAYS_S", (0.0, 0.0))
    assert slurm.sbatch_array(GridDir(tmp_path / "grid"), [[run(rid(0))]], ExecutorSettings(), [], 1001) == ["4242"]
    assert cancelled.read_text().split() == ["4241"]
    assert [line.split("|")[0] for line in queue.read_text().splitlines()] == ["4242"]  # nothing queued twice


@pytest.mark.parametrize("safe", [True, False])
def test_a_preemption_signal_while_the_interpreter_starts_does_not_kill_the_job(safe):
    """USR2 and TERM every 20 ms from the job's first milliseconds on, as srun would start its command."""
    import signal
    import subprocess
    import time

    program = ["-c", "import time; time.sleep(0.6); print('alive')"]
    argv = [*shlex.split(slurm.signal_safe(None)), *program] if safe else [sys.executable, *program]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    time.sleep(0.005)  # the shell's first instruction (its trap) runs within a millisecond
    while proc.poll() is None:
        for sig in (signal.SIGUSR2, signal.SIGTERM):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
        time.sleep(0.02)
    out = proc.stdout.read() if proc.stdout else ""
    if safe:
        assert (proc.returncode, out.strip()) == (0, "alive")
    else:  # the control: without it, the first signal kills the interpreter
        assert proc.returncode in (-signal.SIGUSR2, -signal.SIGTERM)


HANDLER_AFTER_START_UP = """
import signal, sys, time
held = signal.SIGUSR2 in signal.pthread_sigmask(signal.SIG_BLOCK, [])
time.sleep(0.8)  # start-up and imports: the signal comes now
got = []
signal.signal(signal.SIGUSR2, lambda s, f: got.append(s))
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})  # what the job's stop flag does
print(held, bool(got))
"""


@pytest.mark.parametrize("configured, seen", [(None, "True True"), (sys.executable, "False False")])
def test_a_signal_during_start_up_is_held_for_the_job_unless_python_is_configured(configured, seen):
    """The default start holds the signal until the job's handler is in place; a configured python drops it."""
    import signal
    import subprocess
    import time

    argv = [*shlex.split(slurm.signal_safe(configured)), "-c", HANDLER_AFTER_START_UP]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    time.sleep(0.4)
    proc.send_signal(signal.SIGUSR2)
    out, _ = proc.communicate(timeout=30)
    assert (proc.returncode, out.strip()) == (0, seen)
