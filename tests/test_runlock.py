"""One trainer per run directory: a second `robustmtl run` or job on a run another live process trains
leaves it alone (one line, exit 2; a job counts no crash), and a SIGKILLed trainer leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train import loop
from robustmtl.train.attempt_log import read_attempts
from robustmtl.train.job import PackFailed, TrainJob
from robustmtl.train.outcome import Caps, End
from robustmtl.train.pack import child_outcome
from robustmtl.train.runlock import RunBusy, holding, locked
from tests.conftest import REPO


def snapshot_files(root: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(root.iterdir()) if p.is_file()}


def test_lock_is_exclusive_across_processes_and_freed_when_the_holder_dies(tmp_path, lock_holder):
    rd = RunDir(tmp_path / "run")
    proc = lock_holder(rd.root)
    assert locked(rd)
    with pytest.raises(RunBusy, match=f"pid {proc.pid}"), holding(rd):
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not locked(rd)
    with holding(rd):
        assert (rd.root / ".train.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RunBusy), holding(rd):  # one holder per attempt, within one process too
            pass


def test_run_on_a_run_another_process_trains_is_one_line_and_touches_nothing(tmp_path, lock_holder):
    args = ["--method", "erm", "--dataset", "synthetic", "--set", "epochs=1", "--set", "n_train=100"]
    out = tmp_path / "run"
    cfg = build_config("erm", "synthetic", 0, None, {"epochs": 1, "n_train": 100}, where="--set")
    prepare_run(RunDir(out), cfg, RunOptions())
    proc = lock_holder(out)
    before = snapshot_files(out)
    result = subprocess.run([sys.executable, "-m", "robustmtl", "run", *args, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stdout + result.stderr
    assert f"being trained by another process (pid {proc.pid})" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr + result.stdout
    assert snapshot_files(out) == before


def test_a_job_on_a_run_another_process_trains_records_nothing(tmp_path, lock_holder, monkeypatch):
    trained: list[str] = []
    monkeypatch.setattr(loop, "train_run", lambda rd, progress=None, stop_requested=None: trained.append(
        rd.root.name) or {"run": rd.root.name})
    busy, free = tmp_path / "a", tmp_path / "b"
    free.mkdir()
    lock_holder(busy)
    with pytest.raises(RunBusy):
        TrainJob()(str(busy))
    with pytest.raises(PackFailed, match="1 of 2 runs are being trained by another process: a"):
        TrainJob()([str(busy), str(free)])
    assert trained == ["b"]
    assert sorted(p.name for p in busy.iterdir()) == [".train.lock"]  # no attempt, no FAILED, no crash counted
    outcome = child_outcome(RunDir(busy), 77, "9_1", Caps())  # a parallel pack member that found it busy
    assert outcome.end is End.BUSY and read_attempts(RunDir(busy)) == []


@pytest.mark.slow
def test_second_trainer_refused_while_the_first_runs_and_none_after_its_sigkill(tmp_path, pause):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "robustmtl", "run", "--method", "erm", "--dataset", "synthetic", "--threads", "1",
           "--out", str(out)]
    pause.at(1)  # the first trainer waits after its first step, holding the lock, until killed
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pause.waited("*", 1, first)
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        assert second.returncode == 2 and f"(pid {first.pid})" in second.stderr, second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert not locked(RunDir(out))  # the kernel dropped the dead trainer's lock: nothing stale to clear
