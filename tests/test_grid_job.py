"""TrainJob's preemption handling without a cluster: a signal only sets a flag, the loop checkpoints at a
step boundary, and only then does submitit's USR2 logic run (requeue) or the job exit (TERM)."""

from __future__ import annotations

import os
import signal

import pytest

from robustmtl.layout import RunDir
from robustmtl.train import job as job_module
from robustmtl.train import loop
from robustmtl.train.job import RequeueLimit, TrainJob, read_attempts


class FakeSubmititHandler:
    """Stands in for submitit's SignalHandler: its bound method is what TrainJob finds installed for USR2."""

    def __init__(self, timed_out: bool) -> None:
        self.timed_out = timed_out
        self.calls = 0

    def has_timed_out(self) -> bool:
        return self.timed_out

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


@pytest.mark.parametrize("timed_out, event", [(False, "preempted"), (True, "timeout")])
def test_usr2_checkpoints_then_calls_submitits_requeue(tmp_path, monkeypatch, slurm_env, timed_out, event):
    handler = FakeSubmititHandler(timed_out)
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    steps: list = []
    signalled_loop(monkeypatch, signal.SIGUSR2, steps)
    rd = RunDir(tmp_path)
    with pytest.raises(SystemExit):
        TrainJob(max_requeues=3)(str(tmp_path))
    assert steps == ["step finished"] and handler.calls == 1 and rd.checkpoint.exists()
    events = read_attempts(rd)
    assert [e["event"] for e in events] == ["start", event]
    assert events[1]["job_id"] == "77" and events[1]["restart_count"] == 2 and events[1]["signal"] == "USR2"
    assert signal.getsignal(signal.SIGUSR2) == handler.checkpoint_and_try_requeue  # restored
    assert not rd.failed.exists()


@pytest.mark.parametrize("requeued, event", [(True, "preempted"), (False, "terminated")])
def test_term_checkpoints_and_exits_without_requeueing_itself(tmp_path, monkeypatch, slurm_env, requeued, event):
    handler = FakeSubmititHandler(False)
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    monkeypatch.setattr(job_module, "requeued_by_slurm", lambda: requeued)
    signalled_loop(monkeypatch, signal.SIGTERM, [])
    with pytest.raises(SystemExit):
        TrainJob()(str(tmp_path))
    assert handler.calls == 0 and RunDir(tmp_path).checkpoint.exists()
    assert [(e["event"], e.get("signal")) for e in read_attempts(RunDir(tmp_path))] == [
        ("start", None), (event, "TERM")]


def test_max_requeues_stops_requeueing_and_marks_failed(tmp_path, monkeypatch, slurm_env):
    handler = FakeSubmititHandler(False)
    signal.signal(signal.SIGUSR2, handler.checkpoint_and_try_requeue)
    signalled_loop(monkeypatch, signal.SIGUSR2, [])
    rd = RunDir(tmp_path)
    job_module.record_attempt(rd, "preempted", "77")  # one requeue already spent in this job
    job_module.record_attempt(rd, "preempted", "12")  # another job's interruptions do not count
    with pytest.raises(RequeueLimit, match="max_requeues = 1"):
        TrainJob(max_requeues=1)(str(tmp_path))
    assert handler.calls == 0 and "RequeueLimit" in rd.failed.read_text()
    assert read_attempts(rd)[-1]["event"] == "failed"


def test_done_and_checkpoint_submission(tmp_path, monkeypatch):
    monkeypatch.setattr(loop, "train_run", lambda rd, progress=None, stop_requested=None: {"ok": True})
    job = TrainJob(max_requeues=4)
    assert job(str(tmp_path)) == {"ok": True}
    assert [e["event"] for e in read_attempts(RunDir(tmp_path))] == ["start", "done"]
    delayed = job.checkpoint(str(tmp_path))
    assert delayed.args == (str(tmp_path),) and not delayed.kwargs
    assert isinstance(delayed.function, TrainJob) and delayed.function.max_requeues == 4


def test_torn_attempts_line_is_skipped(tmp_path):
    rd = RunDir(tmp_path)
    job_module.record_attempt(rd, "start", "1")
    with open(tmp_path / "attempts.jsonl", "a") as f:
        f.write('{"event": "sta')
    assert [e["event"] for e in read_attempts(rd)] == ["start"]
    job_module.record_attempt(rd, "done", "1")  # the torn line does not swallow the next event
    assert [e["event"] for e in read_attempts(rd)] == ["start", "done"]
