"""TrainJob without a cluster: a signal only sets a flag, the loop checkpoints at a step boundary, and only
then does the job requeue itself (after USR2 or a bare TERM) or leave it to SLURM; submitit's signal handler
never runs; crashes are retried unless they repeat at the same step or pass their cap; packs skip what is
finished."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.grid.executor import executor_settings
from robustmtl.grid.slurm import slurm_parameters
from robustmtl.layout import RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train import job as job_module
from robustmtl.train import loop, signals
from robustmtl.train.attempt_log import read_attempts
from robustmtl.train.job import PackFailed, TrainJob
from robustmtl.train.outcome import Caps, End, RequeueLimit
from robustmtl.train.pack import gpu_shares
from tests.conftest import TINY


class FakeSubmititHandler:
    """Stands in for submitit's SignalHandler, installed for USR2 before the job runs: it must never be called."""

    def __init__(self) -> None:
        self.calls = 0

    def checkpoint_and_try_requeue(self, signum, frame) -> None:
        self.calls += 1
        raise SystemExit(-1)


@pytest.fixture
def slurm_env(monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    for name in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    before = {s: signal.getsignal(s) for s in (signal.SIGUSR2, signal.SIGTERM)}
    yield
    for s, h in before.items():
        signal.signal(s, h)


def signalled_loop(monkeypatch, signum: int, steps_seen: list) -> None:
    """A fake training loop: the signal arrives mid-'step'; the loop stops only at the step boundary."""

    def fake_train_run(rd, progress=None, stop_requested=None):
        os.kill(os.getpid(), signum)
        steps_seen.append("step finished")  # the handler must not have interrupted this
        if stop_requested():
            (rd.root / "checkpoint.pt").write_text("ckpt")
            raise loop.Interrupted("stopped")
        return {"ok": True}

    monkeypatch.setattr(loop, "train_run", fake_train_run)


@pytest.mark.parametrize("near_limit, event", [(False, "preempted"), (True, "timeout"), (None, "preempted")])
def test_usr2_checkpoints_then_the_job_requeues_itself(tmp_path, monkeypatch, slurm_env, near_limit, event):
    """None: SLURM's time limit cannot be read, and the interruption counts as a preemption."""
    handler = FakeSubmititHandler()
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    monkeypatch.setattr(signals, "near_time_limit", lambda: near_limit)
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    steps: list = []
    signalled_loop(monkeypatch, signal.SIGUSR2, steps)
    rd = RunDir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        TrainJob(Caps(preemptions=3, timeouts=3))(str(tmp_path))
    assert exit_info.value.code == End.INTERRUPTED.value
    assert steps == ["step finished"] and rd.checkpoint.exists() and asked == ["77"] and handler.calls == 0
    events = read_attempts(rd)
    assert [e["event"] for e in events] == ["start", event]
    assert events[1]["job_id"] == "77" and events[1]["restart_count"] == 2 and events[1]["signal"] == "USR2"
    os.kill(os.getpid(), signal.SIGUSR2)  # after the runs the flag stays: a late warning asks for nothing
    assert handler.calls == 0 and not rd.failed.exists()


def test_only_the_first_task_of_a_job_requeues_it(tmp_path, monkeypatch, slurm_env):
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setattr(signals, "near_time_limit", lambda: False)
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    signalled_loop(monkeypatch, signal.SIGUSR2, [])
    with pytest.raises(SystemExit):
        TrainJob()(str(tmp_path))
    assert asked == [] and read_attempts(RunDir(tmp_path))[-1]["event"] == "preempted"


@pytest.mark.parametrize("view, event, requeues", [
    (("RUNNING", True), "preempted", []),            # scontrol requeue / PreemptMode=REQUEUE: SLURM restarts it
    (("RUNNING", False), "preempted", ["77"]),       # a bare TERM (scancel --signal=TERM): the job requeues itself
    (("COMPLETING", False), "terminated", []),       # scancel, time limit: stopped, `grid resume` continues it
])
def test_term_checkpoints_then_requeues_only_when_nobody_else_does(tmp_path, monkeypatch, slurm_env, view, event,
                                                                   requeues):
    handler = FakeSubmititHandler()
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    asked: list = []
    monkeypatch.setattr(signals, "slurm_job_view", lambda: view)
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    signalled_loop(monkeypatch, signal.SIGTERM, [])
    with pytest.raises(SystemExit):
        TrainJob()(str(tmp_path))
    assert handler.calls == 0 and RunDir(tmp_path).checkpoint.exists() and asked == requeues
    assert [(e["event"], e.get("signal")) for e in read_attempts(RunDir(tmp_path))] == [
        ("start", None), (event, "TERM")]


def test_preemption_cap_stops_requeueing_and_marks_failed(tmp_path, monkeypatch, slurm_env):
    handler = FakeSubmititHandler()
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    signalled_loop(monkeypatch, signal.SIGUSR2, [])
    rd = RunDir(tmp_path)
    job_module.record_attempt(rd, "preempted", "77")  # one preemption already spent in this job
    job_module.record_attempt(rd, "timeout", "77")    # timeouts have their own cap
    job_module.record_attempt(rd, "preempted", "12")  # another job's interruptions do not count
    with pytest.raises(RequeueLimit, match="max_preemptions = 1"):
        TrainJob(Caps(preemptions=1, timeouts=0))(str(tmp_path))
    assert handler.calls == 0 and "RequeueLimit" in rd.failed.read_text()
    assert read_attempts(rd)[-1]["event"] == "failed"


def crashing_loop(monkeypatch, steps: list[int]) -> None:
    """A fake loop that crashes after the next step count in `steps` (one per start)."""

    def fake_train_run(rd, progress=None, stop_requested=None):
        progress(steps.pop(0), 100)
        raise ValueError("boom")

    monkeypatch.setattr(loop, "train_run", fake_train_run)


def test_crash_at_the_same_step_again_ends_failed_at_once(tmp_path, monkeypatch, slurm_env):
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    crashing_loop(monkeypatch, [7, 7])
    rd = RunDir(tmp_path)
    with pytest.raises(SystemExit):  # first crash: requeued to retry
        TrainJob(Caps(crashes=5))(str(tmp_path))
    assert asked == ["77"] and "requeued to retry" in rd.failed.read_text()
    with pytest.raises(ValueError, match="boom"):  # same step again: no requeue, whatever the cap
        TrainJob(Caps(crashes=5))(str(tmp_path))
    assert asked == ["77"]
    events = read_attempts(rd)
    assert [e["event"] for e in events] == ["start", "crashed", "start", "crashed", "failed"]
    assert events[1]["step"] == 7 and events[-1]["reason"] == "crashed again at step 7: not requeued"
    assert "ValueError: boom" in rd.failed.read_text()


def test_crashes_at_new_steps_are_retried_up_to_the_cap(tmp_path, monkeypatch, slurm_env):
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    crashing_loop(monkeypatch, [3, 5, 9])
    for _ in range(2):
        with pytest.raises(SystemExit):
            TrainJob(Caps(crashes=2))(str(tmp_path))
    with pytest.raises(ValueError):
        TrainJob(Caps(crashes=2))(str(tmp_path))
    assert len(asked) == 2
    assert read_attempts(RunDir(tmp_path))[-1]["reason"] == "crashed 3 times (max_crashes = 2)"


def test_a_diverged_run_under_slurm_ends_failed_at_once_without_requeue(tmp_path, monkeypatch, slurm_env):
    """A real run at lr 1e9: a non-finite loss is no crash to retry, since the same run diverges again."""
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    rd = RunDir(tmp_path / "run")
    prepare_run(rd, build_config("erm", "synthetic", 0, None, {**TINY, "lr": 1e9}, where="test"),
                RunOptions(threads=1))
    with pytest.raises(loop.Diverged) as diverged:
        TrainJob(Caps(crashes=5))(str(rd.root))
    assert asked == [] and not rd.done.exists()
    events = read_attempts(rd)
    assert [e["event"] for e in events] == ["start", "failed"]
    assert events[-1]["diverged_step"] == diverged.value.step
    assert json.loads(rd.failed.read_text())["diverged_step"] == diverged.value.step


def test_crash_outside_slurm_fails_without_retry(tmp_path, monkeypatch):
    crashing_loop(monkeypatch, [3])
    with pytest.raises(ValueError):
        TrainJob()(str(tmp_path))
    assert [e["event"] for e in read_attempts(RunDir(tmp_path))] == ["start", "failed"]


def test_pack_skips_finished_runs_and_stops_at_a_signal(tmp_path, monkeypatch, slurm_env):
    handler = FakeSubmititHandler()
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    for d in dirs:
        d.mkdir()
    (dirs[0] / "DONE").write_text('{"run": "a"}')
    trained: list = []

    def fake_train_run(rd, progress=None, stop_requested=None):
        trained.append(rd.root.name)
        os.kill(os.getpid(), signal.SIGUSR2)
        if stop_requested():
            raise loop.Interrupted("stopped")
        return {}

    monkeypatch.setattr(loop, "train_run", fake_train_run)
    monkeypatch.setattr(signals, "near_time_limit", lambda: False)
    asked: list = []
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: asked.append(job_id))
    with pytest.raises(SystemExit):
        TrainJob()([str(d) for d in dirs])
    assert trained == ["b"] and asked == ["77"] and handler.calls == 0  # a was done before; c never started
    assert read_attempts(RunDir(dirs[0])) == [] and read_attempts(RunDir(dirs[2])) == []
    assert [e["event"] for e in read_attempts(RunDir(dirs[1]))] == ["start", "preempted"]


def test_pack_reports_failed_members_after_running_the_others(tmp_path, monkeypatch):
    dirs = [tmp_path / name for name in ("a", "b")]
    for d in dirs:
        d.mkdir()

    def fake_train_run(rd, progress=None, stop_requested=None):
        if rd.root.name == "a":
            raise ValueError("boom")
        return {"run": rd.root.name}

    monkeypatch.setattr(loop, "train_run", fake_train_run)
    with pytest.raises(PackFailed, match="1 of 2 runs failed: a"):
        TrainJob()([str(d) for d in dirs])
    assert [e["event"] for e in read_attempts(RunDir(dirs[1]))] == ["start", "done"]


def test_gpu_shares_split_the_task_devices():
    assert gpu_shares("0,1", 2) == ["0", "1"]
    assert gpu_shares("2,3,4,5", 2) == ["2,3", "4,5"]
    assert gpu_shares("", 3) == [None, None, None]
    with pytest.raises(RuntimeError, match=r"got 1 GPU\(s\) \(0\) for 1 run\(s\) each"):
        gpu_shares("0", 2)
    assert gpu_shares("3,5", 4, runs_per_gpu=2) == ["3", "3", "5", "5"]  # two runs to a GPU
    assert gpu_shares("3,5", 3, runs_per_gpu=2) == ["3", "3", "5"]
    with pytest.raises(RuntimeError, match="for 2 run"):
        gpu_shares("3", 3, runs_per_gpu=2)


def test_runs_per_gpu_needs_a_parallel_pack_of_one_gpu_runs():
    for table in ({"runs_per_gpu": 2, "pack": 4, "gpus": 1}, {"runs_per_gpu": 2, "pack": 4, "pack_mode": "parallel"}):
        with pytest.raises(UserError, match=r'runs_per_gpu = 2 shares one GPU.*needs pack_mode = "parallel"'):
            executor_settings(table, "g.toml")
    settings = executor_settings({"runs_per_gpu": 2, "pack": 5, "pack_mode": "parallel", "gpus": 1}, "g.toml")
    assert slurm_parameters(settings, "g")["slurm_gpus_per_node"] == 3  # five runs, two to a GPU


def test_each_interruption_cap_is_its_own_key():
    settings = executor_settings({"max_preemptions": 7, "max_timeouts": 3}, "g.toml")
    assert (settings.max_preemptions, settings.max_timeouts, settings.max_crashes) == (7, 3, 2)
    with pytest.raises(UserError, match=r"unknown \[executor\] key `max_requeue`.*max_preemptions"):
        executor_settings({"max_requeue": 7}, "g.toml")


def test_a_finished_run_returns_its_summary(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_run", lambda rd, progress=None, stop_requested=None: {"ok": True})
    assert TrainJob(Caps(timeouts=4), "parallel")(str(tmp_path)) == {"ok": True}
    assert [e["event"] for e in read_attempts(RunDir(tmp_path))] == ["start", "done"]


def test_torn_attempts_line_is_skipped(tmp_path):
    rd = RunDir(tmp_path)
    job_module.record_attempt(rd, "start", "1")
    with open(tmp_path / "attempts.jsonl", "a") as f:
        f.write('{"event": "sta')
    assert [e["event"] for e in read_attempts(rd)] == ["start"]
    job_module.record_attempt(rd, "done", "1")  # the torn line does not swallow the next event
    assert [e["event"] for e in read_attempts(rd)] == ["start", "done"]


@pytest.mark.parametrize("run_time, limit, event", [
    ("00:50:00", "01:00:00", "preempted"),   # submitit would count anything past 80% of the limit as a timeout
    ("00:58:40", "01:00:00", "timeout"),     # within the 90 s warning (and SLURM's minute of slack)
    ("00:00:40", "00:02:00", "timeout"),     # a 2-minute job: 80 s left, the warning (30 s) may come early
    ("00:00:20", "00:10:00", "preempted"),   # submitit would call every USR2 of a 10-minute job a timeout
    ("1-00:00:00", "2-00:00:00", "preempted"),
])
def test_usr2_is_a_timeout_only_near_slurms_time_limit(tmp_path, monkeypatch, slurm_env, run_time, limit, event):
    monkeypatch.setattr(job_module, "requeue_self", lambda job_id: None)
    delay = "30" if limit == "00:02:00" else "90"
    monkeypatch.setenv(signals.WARNING_ENV, delay)
    monkeypatch.setattr(signals, "_scontrol_job", lambda: f"JobId=77 JobState=RUNNING RunTime={run_time} "
                                                          f"TimeLimit={limit} TimeMin=N/A")
    signalled_loop(monkeypatch, signal.SIGUSR2, [])
    with pytest.raises(SystemExit):
        TrainJob()(str(tmp_path))
    assert [e["event"] for e in read_attempts(RunDir(tmp_path))] == ["start", event]


def test_without_slurms_view_the_time_limit_is_unknown(monkeypatch, slurm_env):
    monkeypatch.setenv(signals.WARNING_ENV, "90")
    monkeypatch.setattr(signals, "_scontrol_job", lambda: "JobId=77 TimeLimit=UNLIMITED RunTime=00:01:00")
    assert signals.near_time_limit() is None
    monkeypatch.delenv(signals.WARNING_ENV)
    assert signals.near_time_limit() is None


def test_a_signal_held_since_start_up_reaches_the_flag_once_it_is_installed(slurm_env):
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
    try:
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)  # pending, as the job's start leaves it
        flag = signals.StopFlag()
        assert not flag()
        with flag.installed():
            assert flag() and flag.signum == signal.SIGUSR2
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    assert signal.SIGUSR2 not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_a_job_loaded_under_slurm_holds_the_preemption_signals_for_its_flag(monkeypatch, slurm_env):
    """submitit loads the job's pickle, then installs its own handlers: a signal between them and the stop
    flag stays pending and reaches the flag (a configured `python` has no start-up hold of its own)."""
    import cloudpickle

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    try:
        job = cloudpickle.loads(cloudpickle.dumps(TrainJob(Caps(timeouts=4), "parallel")))
        assert job.caps.timeouts == 4 and job.pack_mode == "parallel"
        assert {signal.SIGUSR2, signal.SIGTERM} <= signal.pthread_sigmask(signal.SIG_BLOCK, [])
        handler = FakeSubmititHandler()
        signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
        # to this thread: a process-directed signal may go to a thread of an earlier test, which holds nothing
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR2)
        flag = signals.StopFlag()
        with flag.installed():
            pass
        assert flag.signum == signal.SIGUSR2 and handler.calls == 0
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
    monkeypatch.delenv("SUBMITIT_EXECUTOR")
    cloudpickle.loads(cloudpickle.dumps(TrainJob()))  # outside SLURM nothing is held
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before


@pytest.mark.parametrize(("view", "reason"), [(("PENDING", False), None), (("RUNNING", True), None),
                                              (("RUNNING", False), "Job is pending execution for job 77")])
def test_a_refused_requeue_of_a_job_that_is_requeued_already_is_no_failure(monkeypatch, slurm_env, view, reason):
    """`scontrol requeue` is refused while another requeue (a preemption, an operator) has the job pending."""
    import subprocess

    monkeypatch.setattr(signals.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a[0], 1, "", "Job is pending execution for job 77\n"))
    monkeypatch.setattr(signals, "slurm_job_view", lambda: view)
    assert signals.requeue_self("77") == reason
