"""A diverged run (its loss became NaN or infinite): FAILED at its first non-finite step, with its records kept."""

from __future__ import annotations

import json
import math

import pytest

from robustmtl.layout import RunDir
from robustmtl.train.attempts import read_attempts
from robustmtl.train.step import Stepper
from tests.conftest import TINY, read_records

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

