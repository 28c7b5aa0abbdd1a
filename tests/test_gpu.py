"""The CUDA paths a CPU cannot run: precision under autocast, TF32, fused AdamW, peak memory, GPU assignment.

Marked `gpu` and skipped without a CUDA GPU; benchmarks/gpu_checks.sh runs exactly these (`pytest -m gpu`) on the
first machine that has one. Each test trains or steps the real code on the GPU and reads what a user reads: the
records and DONE a run writes, the optimiser and autocast the loop builds.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import GridDir, RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import peak_memory_mb
from robustmtl.train.optim import make_optimizer
from robustmtl.train.step import Stepper, enable_tf32, make_scaler, native_bf16, resolve_precision
from robustmtl.train.syncs import CHECKED_METHODS, train_steps
from tests.conftest import TINY, read_records, tiny_bert, tiny_grid, write_spec

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_checks.sh)")]
CUDA = torch.device("cuda")


def train(tmp_path, method: str, precision: str) -> tuple[RunDir, list[dict], dict]:
    from robustmtl.train.loop import train_run

    cfg = build_config(method, "synthetic", 0, None, dict(TINY), where="test")
    rd = RunDir(tmp_path / f"{method}-{precision}")
    prepare_run(rd, cfg, RunOptions(device="cuda", precision=precision, threads=1))
    train_run(rd)
    return rd, read_records(rd.metrics), json.loads(rd.done.read_text())


@pytest.mark.parametrize(("method", "precision"), [("mtl_l1", "bf16"), ("gdro", "bf16"), ("ldro", "bf16"),
                                                   ("erm", "fp16"), ("mtl_l1", "fp32"), ("mtl_l1", "auto")])
def test_a_cuda_run_records_its_precision_gpu_hours_and_peak_memory(tmp_path, method, precision):
    _, records, done = train(tmp_path, method, precision)
    expected = resolve_precision(precision, CUDA)
    assert expected in ("bf16", "fp16", "fp32")
    train_records = [r for r in records if r["split"] == "train"]
    for record in [*train_records, done]:
        assert record["precision"] == expected
        assert record["gpu_hours"] > 0 and record["peak_mem_mb"] > 0
    evals = [r for r in records if r["split"] == "test"]
    assert len(evals) == TINY["epochs"] and all(0 <= r["worst_group_acc"] <= r["avg_acc"] <= 1 for r in evals)


def test_auto_precision_is_bf16_on_an_ampere_or_later_gpu():
    major = torch.cuda.get_device_properties(CUDA).major
    assert resolve_precision("auto", CUDA) == ("bf16" if major >= 8 else "fp16")


def test_tf32_is_switched_on_for_cuda_only():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    enable_tf32(torch.device("cpu"))
    assert not torch.backends.cuda.matmul.allow_tf32
    enable_tf32(CUDA)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_adamw_is_fused_on_cuda_and_steps_there():
    from robustmtl.registry import model_entry

    cfg = build_config("erm", "synthetic", 0, None, dict(TINY), where="test")
    from robustmtl.data.synthetic import Synthetic

    info = Synthetic.build(cfg.data_params, None).info
    model = model_entry(cfg.model).build(cfg.model_params, info).to(CUDA)
    optimizer = make_optimizer(model, cfg, CUDA)
    assert optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    assert all(p.is_cuda and torch.isfinite(p).all() and not torch.equal(p, b)
               for p, b in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16),
                                                  ("fp32", torch.float32)])
def test_autocast_runs_matmuls_in_the_runs_precision_and_fp16_alone_scales_the_loss(precision, dtype):
    layer = torch.nn.Linear(8, 8).to(CUDA)
    stepper = Stepper(model=None, optimizer=None, scheduler=None, device=CUDA, precision=precision)  # type: ignore[arg-type]
    with stepper.autocast():
        out = layer(torch.randn(4, 8, device=CUDA))
    assert out.dtype == dtype
    scaler = make_scaler(precision, CUDA)
    assert (scaler is not None and scaler.is_enabled()) == (precision == "fp16")


def test_peak_memory_counts_what_was_allocated():
    torch.cuda.reset_peak_memory_stats(CUDA)
    block = torch.empty(64 * 2**20, dtype=torch.uint8, device=CUDA)  # 64 MiB
    assert peak_memory_mb(CUDA) >= 64
    del block


def test_a_local_grid_hands_its_runs_the_gpus(cli, tmp_path, monkeypatch):
    """submitit's local executor hides GPUs unless told; every run of a local grid must still train on one."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    spec = write_spec(tmp_path / "g.toml", tiny_grid("gpu", ["erm", "mtl_l1"], [0], executor={"kind": "local"}))
    cli("grid", "submit", spec, "--out", tmp_path / "grid")
    grid = GridDir(tmp_path / "grid")
    assert len(grid.run_ids()) == 2
    for run_id in grid.run_ids():
        done = json.loads(grid.run(run_id).done.read_text())
        assert done["gpu_hours"] > 0 and done["peak_mem_mb"] > 0, done


@pytest.mark.parametrize("model", ["mlp", "bert"])
@pytest.mark.parametrize("method", CHECKED_METHODS)
def test_a_training_step_never_waits_for_the_gpu(tmp_path, method, model):
    """Sync debug mode "error" around each step after the first (train/syncs.py): `.item()`, `nonzero`, `bincount`,
    a blocking copy or transformers' `mask.all()` inside the step would raise. bf16, or fp32 without native bf16:
    fp16's GradScaler reads the scale back every step by design."""
    precision = "bf16" if native_bf16(CUDA) else "fp32"
    if model == "mlp":
        terms = train_steps(tmp_path, method, device="cuda", precision=precision)
    else:
        values = {"text_n_train": 64, "text_n_val": 8, "text_n_test": 8, "bert_max_length": 32, "batch_size": 8,
                  "bert_pretrained": str(tiny_bert(tmp_path))}
        terms = train_steps(tmp_path, method, "text_spurious", values, device="cuda", precision=precision)
    assert terms and all(math.isfinite(v) for v in terms.values())
