"""The test-only pause: where an operation waits, what lets it go, and that a stop request ends the wait."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from robustmtl import pause as run_pause
from robustmtl.config import RunOptions, build_config
from robustmtl.layout import RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import Interrupted, Trainer
from tests.conftest import TINY, Pause, read_records


def in_thread(*args) -> tuple[threading.Thread, list[bool]]:
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(run_pause.wait_here(*args)), daemon=True)
    thread.start()
    return thread, result


def test_unset_or_below_the_limit_never_waits(monkeypatch, tmp_path):
    monkeypatch.delenv(run_pause.PAUSE_ENV, raising=False)
    assert run_pause.wait_here("run", 10**9) is False
    assert run_pause.wait_here("run", 1, lambda: True) is True  # a stop request still reads through
    held = Pause(tmp_path / "pause")
    monkeypatch.setenv(run_pause.PAUSE_ENV, str(held.path))
    assert run_pause.wait_here("run", 10**9) is False  # no file: no pause
    held.at(5)
    assert run_pause.wait_here("run", 4) is False and held.held_at("run") is None


def test_waits_at_the_limit_until_raised_or_removed(pause):
    pause.at(3)
    thread, result = in_thread("run", 3)
    assert pause.waited("run", 3) == 3
    pause.at(3, key="other")  # another run's limit leaves this one held
    thread.join(0.2)
    assert thread.is_alive()
    pause.at(4, key="run")
    thread.join(10)
    assert result == [False]
    thread, result = in_thread("run", 7)
    assert pause.waited("run", 7) == 7
    pause.release()
    thread.join(10)
    assert result == [False] and not thread.is_alive()


def test_a_stop_request_ends_the_wait(pause):
    pause.at(1)
    asked = threading.Event()
    thread, result = in_thread("run", 2, asked.is_set)
    pause.waited("run", 2)
    asked.set()
    thread.join(10)
    assert result == [True]


def test_a_malformed_file_holds_nothing(pause):
    pause.path.write_text("soon\n")
    assert run_pause.wait_here("run", 100) is False


@pytest.mark.parametrize("limit", [1, 4])
def test_a_run_waits_after_the_step_it_was_held_at_and_stops_there_with_a_checkpoint(pause, tmp_path: Path, limit):
    """Through the real loop: held after step `limit`, a stop request checkpoints that very step."""
    rd = RunDir(tmp_path / "run")
    cfg = build_config("erm", "synthetic", 0, None, TINY, where="test")
    prepare_run(rd, cfg, RunOptions(threads=1))
    pause.at(limit)
    stop = threading.Event()
    failure: list[BaseException] = []

    def train() -> None:
        try:
            Trainer(rd, stop_requested=stop.is_set).run()
        except BaseException as exc:  # handed to the test's thread
            failure.append(exc)

    thread = threading.Thread(target=train, daemon=True)
    thread.start()
    assert pause.waited(cfg.run_id, limit, timeout=120) == limit
    time.sleep(0.1)
    assert pause.held_at(cfg.run_id) == limit and not rd.metrics.exists()  # still there: nothing recorded yet
    stop.set()
    thread.join(60)
    assert len(failure) == 1 and isinstance(failure[0], Interrupted)
    pause.release()
    assert Trainer(rd).step == limit  # resumes from the step it was held at
    Trainer(rd).run()
    assert [r["epoch"] for r in read_records(rd.metrics) if r["split"] == "val"] == [1, 2, 3]
