"""A diverged run (its loss became NaN or infinite): FAILED at its first non-finite step, with its records
kept, shown failed by `grid status`, left out of every table, and retried by `grid resume` only when asked."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from robustmtl.layout import GridDir, RunDir
from robustmtl.train.attempt_log import read_attempts
from robustmtl.train.step import Stepper
from tests.conftest import TINY, read_records, tiny_grid, write_spec

STEPS_PER_EPOCH = -(-TINY["n_train"] // TINY["batch_size"])
DIVERGING = {"adamw-lr-1e9": {"lr": 1e9}, "sgd-lr-10": {"optimizer": "sgd", "lr": 10}}


@pytest.fixture
def losses(monkeypatch) -> list[float]:
    """The loss of every training step, read on the host as the step returns: where the first non-finite one
    is, found apart from the loop's own bookkeeping on the device."""
    seen: list[float] = []
    real_step = Stepper.step

    def step(self, method, batch, aux_batch):
        terms = real_step(self, method, batch, aux_batch)
        seen.append(float(terms.total.detach()))
        return terms

    monkeypatch.setattr(Stepper, "step", step)
    return seen


def run_args(out, params: dict) -> list:
    sets = [a for k, v in {**TINY, **params}.items() for a in ("--set", f"{k}={v}")]
    return ["run", "--method", "erm", "--dataset", "synthetic", "--threads", "1", "--out", out, *sets]


def one_error_line(output: str) -> str:
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in output, output
    return errors[0]


@pytest.mark.parametrize("params", DIVERGING.values(), ids=DIVERGING.keys())
def test_a_diverged_run_fails_at_its_first_non_finite_step_and_keeps_its_records(cli, tmp_path, losses, params):
    out = tmp_path / "run"
    result = cli(*run_args(out, params), ok=False)
    first = next(i + 1 for i, loss in enumerate(losses) if not math.isfinite(loss))
    assert result.exit_code == 2
    assert f"diverged: non-finite loss at step {first};" in one_error_line(result.output)
    rd = RunDir(out)
    assert not rd.done.exists()
    failed = json.loads(rd.failed.read_text())
    assert failed["error"] == f"Diverged: non-finite loss at step {first}" and failed["diverged_step"] == first
    event = read_attempts(rd)[-1]
    assert (event["event"], event["diverged_step"]) == ("failed", first)
    # no step waited for the host: the loop ran on to the epoch's end, where it reads the device anyway
    assert len(losses) == -(-first // STEPS_PER_EPOCH) * STEPS_PER_EPOCH
    written = {r["step"] for r in read_records(rd.metrics)} if rd.metrics.exists() else set()
    assert written == set(range(STEPS_PER_EPOCH, first, STEPS_PER_EPOCH))  # every evaluation before it, none after


def test_a_non_finite_evaluation_loss_fails_the_run_before_any_record_of_it(cli, tmp_path, losses):
    """Step 1's loss is the initial model's, finite; its update at lr 1e9 leaves a model whose evaluation is not."""
    out = tmp_path / "run"
    result = cli(*run_args(out, {"lr": 1e9, "eval_every": 1}), ok=False)
    assert len(losses) == 1 and math.isfinite(losses[0])
    assert "diverged: non-finite evaluation loss on train at step 1;" in one_error_line(result.output)
    rd = RunDir(out)
    assert json.loads(rd.failed.read_text())["diverged_step"] == 1
    assert not rd.done.exists() and not rd.metrics.exists()


def test_status_aggregate_and_resume_treat_a_diverged_run_as_failed(cli, tmp_path):
    """The diverged setting (SGD at lr 10) has records of its first epoch: they never compete in selection."""
    spec = write_spec(tmp_path / "g.toml", tiny_grid("div", ["erm"], [0], defaults={**TINY, "optimizer": "sgd"},
                                                    sweeps={"erm": {"lr": [0.1, 10]}}, executor={"threads": 1}))
    out = tmp_path / "grid"
    submitted = cli("grid", "submit", spec, "--out", out, ok=False)
    grid = GridDir(out)
    (diverged,) = [r for r in grid.run_ids() if grid.run(r).failed.exists()]
    rd = grid.run(diverged)
    step = json.loads(rd.failed.read_text())["diverged_step"]
    line = f"{diverged}: Diverged: non-finite loss at step {step}"
    assert submitted.exit_code == 2 and line in submitted.output and not rd.done.exists()
    assert read_records(rd.metrics), "the diverged run should have records to leave out"

    status = " ".join(cli("grid", "status", out).output.split())
    assert f"failed {line} (not retried: the same run diverges again)" in status

    note = f"1 diverged run(s) left out ({diverged}): their loss became non-finite"
    for extra in ([], ["--include-running"]):
        table = cli("aggregate", out, "--format", "markdown", "--show-hparams", *extra)
        assert "| 1/1 | 0:" in table.stdout and "| (one setting) |" in table.stdout  # the diverged one competed in none
        assert note in " ".join(table.output.split())

    starts = sum(e["event"] == "start" for e in read_attempts(rd))
    for extra in ([], ["--failed-only"]):
        resumed = cli("grid", "resume", out, *extra)
        assert "left out 1 diverged run(s)" in " ".join(resumed.output.split())
        assert sum(e["event"] == "start" for e in read_attempts(rd)) == starts and rd.failed.exists()
    retried = cli("grid", "resume", out, "--retry-diverged", ok=False)
    assert retried.exit_code == 2 and line in retried.output  # tried again, and diverged again at the same step
    assert sum(e["event"] == "start" for e in read_attempts(rd)) == starts + 1

    for other in grid.run_ids():
        if other != diverged:
            shutil.rmtree(grid.run(other).root)
    alone = cli("aggregate", out, ok=False)
    assert alone.exit_code == 2 and "every run under" in one_error_line(alone.output)
