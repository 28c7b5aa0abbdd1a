"""benchmarks/gpu_checks.sh's wiring, run on the CPU as its header says: every step runs and writes its file, in
the budget's order, with the budget printed first. The figures mean nothing here; that the GPU run starts right does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_the_gpu_checks_script_runs_every_step_on_a_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "SIZE": "tiny", "BENCH_ARGS": "--steps 2 --warmup 1",
           "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    result = subprocess.run(["bash", "benchmarks/gpu_checks.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-4000:]
    budget = out.splitlines()[0]
    assert budget.startswith("budget: ") and int(budget.split(" s of ")[0].rsplit(" ", 1)[1]) < 540, budget
    names = ["gpu", "gpu_tests", "bert_base", "cuda_runs", "vit_base", "timm_tests"]
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(names)
    assert [line.split()[1] for line in out.splitlines() if line.startswith("== ")] == names
    assert "all GPU checks ran" in out
