"""Fault injection: a real `robustmtl run` process is SIGKILLed at random moments, over and over.

Every restart must resume from what is on disk, and the end state must equal an uninterrupted run of
the same config: the same records (bitwise, CPU), no duplicate keys, the same DONE summary, and a
loadable final checkpoint. The run checkpoints every step, so many kills land inside a checkpoint
write (temp file written, not yet renamed) or a JSONL append.
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
import torch

from robustmtl.pause import PAUSE_ENV
from tests.conftest import TIMING_KEYS, read_records

EPOCHS = 4  # 152 steps, more than the KILLS starts reach (at most 3 steps each past the last limit)
ARGS = ["--method", "mtl_l1", "--dataset", "synthetic", "--set", f"epochs={EPOCHS}", "--set", "n_train=600",
        "--set", "n_val=200", "--set", "n_test=200", "--set", "batch_size=16", "--set", "alpha_reg=0.01",
        "--threads", "1", "--checkpoint-every", "1", "--keep-checkpoint"]
KILLS = 20


def command(out: Path) -> list[str]:
    return [sys.executable, "-m", "robustmtl", "run", *ARGS, "--out", str(out)]


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def checkpoint_mtime(out: Path) -> int:
    try:
        return (out / "checkpoint.pt").stat().st_mtime_ns
    except FileNotFoundError:
        return 0


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing(tmp_path, pause):
    reference = tmp_path / "reference"
    subprocess.run(command(reference), check=True, capture_output=True, env=pause.env() | {PAUSE_ENV: ""})

    out = tmp_path / "killed"
    rng = random.Random(1234)
    limit = 0
    for _ in range(KILLS):
        # each start may run a few steps past the last one's limit: the kill lands in a step, a checkpoint
        # write, a record's append, or the wait at the limit, and never after the run's end
        limit += rng.randint(1, 3)
        pause.at(limit)
        before = checkpoint_mtime(out)
        proc = subprocess.Popen(command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while checkpoint_mtime(out) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, f"the run ended (exit {proc.returncode}) before the kill at limit {limit}"
        time.sleep(rng.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    pause.release()
    subprocess.run(command(out), check=True, capture_output=True)

    records = read_records(out / "metrics.jsonl")
    keys = [(r["epoch"], r["step"], r["split"]) for r in records]
    assert len(keys) == len(set(keys))
    assert comparable(records) == comparable(read_records(reference / "metrics.jsonl"))
    done, ref_done = (json.loads((d / "DONE").read_text()) for d in (out, reference))
    assert comparable([done]) == comparable([ref_done])
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == EPOCHS + 1 and state["batch_pos"] == 0
    assert not list(out.glob(".*.tmp")), "temp files of killed writes must be cleared by the next start"
