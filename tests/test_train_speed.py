"""Training-speed machinery on CPU: DataLoader workers, one-forward MTL, precision, cost fields, compile."""

from __future__ import annotations

import json
import os

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.methods.erm import ERM
from robustmtl.models.base import Model
from robustmtl.registry import dataset_entry, model_entry
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from robustmtl.train.step import Stepper, resolve_precision
from tests.conftest import TIMING_KEYS, TINY, read_records


def run(tmp_path, name, method="mtl_l1", **options):
    cfg = build_config(method, "synthetic", 0, None, {**TINY, "dropout": 0.1}, where="test")
    rd = RunDir(tmp_path / name)
    prepare_run(rd, cfg, RunOptions(threads=1, keep_checkpoint=True, **options))
    return rd, train_run(rd)


class Stop(Exception):
    pass


def comparable(records):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.mark.parametrize("method", ["mtl_l1", "gdro"])
def test_workers_feed_bitwise_the_same_batches_as_the_main_process(tmp_path, method):
    plain, _ = run(tmp_path, "plain", method)
    workers, _ = run(tmp_path, "workers", method, num_workers=2)
    assert comparable(read_records(workers.metrics)) == comparable(read_records(plain.metrics))
    a, b = (torch.load(rd.checkpoint, weights_only=True)["model"] for rd in (plain, workers))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_with_workers_is_exact(tmp_path):
    reference, _ = run(tmp_path, "ref", num_workers=2)
    cfg = build_config("mtl_l1", "synthetic", 0, None, {**TINY, "dropout": 0.1}, where="test")
    rd = RunDir(tmp_path / "stopped")
    prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=2, num_workers=2))

    def stop(step, total):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(rd, stop)
    wall_at_checkpoint = torch.load(rd.checkpoint, weights_only=True)["wall_s"]
    train_run(rd)
    records = read_records(rd.metrics)
    assert comparable(records) == comparable(read_records(reference.metrics))
    assert records[-3]["wall_s"] >= wall_at_checkpoint > 0


def test_peak_memory_is_the_largest_over_attempts(tmp_path, monkeypatch):
    """A resumed attempt that peaks lower must not overwrite the first attempt's peak (no GPU needed:
    the per-attempt reading is stubbed, the checkpoint round trip is real)."""
    import robustmtl.train.loop as loop

    cfg = build_config("erm", "synthetic", 0, None, TINY, where="test")
    rd = RunDir(tmp_path / "peaks")
    prepare_run(rd, cfg, RunOptions(threads=1, checkpoint_every=2))
    monkeypatch.setattr(loop, "peak_memory_mb", lambda device: 512.0)

    def stop(step, total):
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train_run(rd, stop)
    monkeypatch.setattr(loop, "peak_memory_mb", lambda device: 300.0)
    assert train_run(rd)["peak_mem_mb"] == 512.0
    assert read_records(rd.metrics)[-3]["peak_mem_mb"] == 512.0


def test_cost_fields_on_cpu(tmp_path):
    rd, summary = run(tmp_path, "cost", device="cpu")  # pinned: on a GPU machine auto would pick CUDA
    train = [r for r in read_records(rd.metrics) if r["split"] == "train"]
    for record in [*train, summary, json.loads(rd.done.read_text())]:
        assert record["precision"] == "fp32"
        assert record["peak_mem_mb"] is None and record["gpu_hours"] == 0.0
        assert record["wall_s"] >= record["time_s"] > 0
    assert train[0]["wall_s"] < train[-1]["wall_s"]


def test_precision_resolution_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(UserError, match="precision must be one of"):
        RunOptions(precision="fp8")


def test_a_cpu_run_steps_with_the_fused_adamw(tmp_path):
    """On the CPU, torch's default AdamW is a per-parameter loop several times slower than its fused kernel."""
    rd, _ = run(tmp_path, "fused", device="cpu")
    groups = torch.load(rd.checkpoint, weights_only=True)["optimizer"]["param_groups"]
    assert groups and all(g["fused"] is True for g in groups)


@pytest.mark.parametrize(("major", "auto"), [(7, "fp16"), (8, "bf16"), (9, "bf16")])
def test_auto_precision_needs_native_bf16(monkeypatch, major, auto):
    """A V100/T4 (compute capability 7.x) emulates bf16, slowly: auto must pick fp16 + GradScaler there."""
    from types import SimpleNamespace

    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: asked.append(d) or SimpleNamespace(major=major))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d: f"GPU sm{major}0")
    gpu = torch.device("cuda:1")
    assert resolve_precision("auto", gpu) == auto
    assert asked == [gpu]  # the run's own device, not the current one
    if auto == "fp16":
        with pytest.raises(UserError, match="GPU sm70 has no native bf16"):
            resolve_precision("bf16", gpu)
    else:
        assert resolve_precision("bf16", gpu) == "bf16"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_keeps_scaler_state(tmp_path, precision):
    rd, summary = run(tmp_path, precision, precision=precision)
    train = [r for r in read_records(rd.metrics) if r["split"] == "train"]
    assert summary["precision"] == precision and all(r["precision"] == precision for r in train)
    assert all(torch.isfinite(torch.tensor(list(r["terms"].values()))).all() for r in train)
    scaler = torch.load(rd.checkpoint, weights_only=True)["scaler"]
    assert bool(scaler) == (precision == "fp16")


def test_a_step_the_fp16_scaler_skips_leaves_weights_and_schedule_alone(tmp_path):
    """An overflowing first scale makes the scaler skip the step: the LR schedule must not move either."""
    model, train = built("synthetic", {"n_train": 64, "n_val": 8, "n_test": 8}, tmp_path)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1.0, end_factor=0.0, total_iters=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)  # the scaled fp16 gradients overflow
    stepper = Stepper(model, optimizer, scheduler, torch.device("cpu"), "fp16", scaler=scaler)
    method, batch = ERM(None, None), train[torch.arange(32)]
    before = [p.detach().clone() for p in model.parameters()]
    stepper.step(method, batch, None)
    assert scaler.get_scale() < 2.0**100 and scheduler.last_epoch == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    scaler.update(new_scale=1.0)
    stepper.step(method, batch, None)
    assert scheduler.last_epoch == 1
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def assert_pair_matches_separate(model: Model, batch: dict, aux_batch: dict) -> None:
    model.eval()  # no dropout: the two paths then differ only by float rounding
    torch.manual_seed(7)
    encoded, aux = model.encode_pair(batch, aux_batch)
    torch.manual_seed(7)
    separate_encoded, separate_aux = model.encode(batch), model.aux_loss(aux_batch)
    torch.testing.assert_close(encoded.tokens, separate_encoded.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(encoded.h, separate_encoded.h, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(aux.encoded.tokens, separate_aux.encoded.tokens, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(aux.loss, separate_aux.loss, atol=1e-5, rtol=1e-4)


def built(dataset: str, values: dict, tmp_path) -> tuple[Model, object]:
    cfg = build_config("mtl_l1", dataset, 0, None, values, where="test")
    raw = dataset_entry(dataset).build(cfg.data_params, None)
    torch.manual_seed(0)
    model = model_entry(cfg.model).build(cfg.model_params, raw.info)
    return model, model.prepare(raw, tmp_path).train


def test_one_forward_mtl_equals_two_forwards_mlp(tmp_path):
    model, train = built("synthetic", {"n_train": 64, "n_val": 8, "n_test": 8}, tmp_path)
    assert_pair_matches_separate(model, train[torch.arange(16)], train[torch.arange(16, 40)])


def test_one_forward_mtl_equals_two_forwards_bert_with_different_widths(tmp_path):
    values = {"text_n_train": 24, "text_n_val": 8, "text_n_test": 8, "bert_max_length": 64}
    model, train = built("text_spurious", values, tmp_path)
    by_length = (train.offsets[1:] - train.offsets[:-1]).argsort()
    batch, aux_batch = train[by_length[:3]], train[by_length[-5:]]
    assert batch["input_ids"].shape[1] != aux_batch["input_ids"].shape[1]
    assert_pair_matches_separate(model, batch, aux_batch)
    assert_pair_matches_separate(model, aux_batch, batch)


def test_one_forward_mtl_equals_two_forwards_vit():
    info = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"),
                    extra={"image_size": 28})
    cfg = build_config("mtl_l1", "mnist_spurious", 0, None, {}, where="test")
    torch.manual_seed(0)
    model = model_entry("vit").build(cfg.model_params, info)
    gen = torch.Generator().manual_seed(0)
    batch, aux_batch = ({"pixel_values": torch.randint(256, (n, 3, 28, 28), generator=gen, dtype=torch.uint8)}
                        for n in (3, 5))
    assert_pair_matches_separate(model, batch, aux_batch)


@pytest.mark.slow
def test_compiled_encoder_trains_to_the_same_numbers(tmp_path):
    from torch._dynamo.utils import counters

    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported by this torch build")
    eager, _ = run(tmp_path, "eager")
    counters.clear()
    compiled, _ = run(tmp_path, "compiled", compile=True)
    assert counters["frames"]["ok"] > 0
    # Inductor fuses kernels and reorders float reductions, so losses and weights agree to float32 rounding (seen:
    # 1e-7 relative), not bitwise; that is far from flipping a prediction here, so every accuracy is equal exactly.
    accuracies = ("avg_acc", "worst_group_acc", "group_acc", "group_n")
    for a, b in zip(comparable(read_records(eager.metrics)), comparable(read_records(compiled.metrics)), strict=True):
        rounded = [k for k, v in a.items() if k not in accuracies and (isinstance(v, float) or (
            isinstance(v, dict) and v and all(isinstance(x, float) for x in v.values())))]  # losses, loss terms
        assert a.keys() == b.keys() and {k: v for k, v in a.items() if k not in rounded} == {
            k: v for k, v in b.items() if k not in rounded}
        for key in rounded:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    eager_weights, compiled_weights = (torch.load(rd.checkpoint, weights_only=True)["model"]
                                       for rd in (eager, compiled))
    assert eager_weights.keys() == compiled_weights.keys()
    for name, weight in eager_weights.items():
        torch.testing.assert_close(compiled_weights[name], weight, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["bert", "vit"])
def test_benchmark_runs_on_cpu_at_a_tiny_size(model):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "train_step.py"
    args = ["--model", model, "--size", "tiny", "--batch", "2", "--length", "32", "--steps", "1", "--warmup", "0",
            "--device", "cpu", "--profile"]
    done = subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"})
    out = done.stdout
    assert "profiler_start" not in done.stderr  # the profiler's own C++ chatter stays out of the report
    for row in ("erm (batch 4)", "mtl_l1", "jtt", "gdro", "reference-style", "mtl_l1 step / erm step"):
        assert row in out
    assert ("HF Trainer" in out and "erm step / HF Trainer step" in out) == (model == "bert")
    # the profile charges time to every phase of a real step, for the package's loop and for the peer's
    profile = out[out.index("where a step goes"):]
    for step in ("erm", "mtl_l1", *(["HF Trainer"] if model == "bert" else [])):
        line = next(line for line in profile.splitlines() if line.strip("│ ").startswith(f"{step} "))
        forward, backward, optimizer = (float(cell) for cell in line.split("│")[2:5])
        assert forward > 0 and backward > 0 and optimizer > 0, line
    # where mtl_l1's extra time goes, op by op, against erm at twice the batch
    differences = out[out.index("mtl_l1 against erm (batch 4)"):].split("└")[0]
    rows = [line.split("│") for line in differences.splitlines() if line.startswith("│ ")]
    assert len(rows) == 12 and all(": " in row[1] for row in rows)
    assert all(abs(float(row[3]) - float(row[2]) - float(row[4])) < 0.11 for row in rows)


def test_auto_workers_only_on_cuda_and_only_from_spare_cpus():
    from robustmtl.train.batches import resolve_workers

    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert [resolve_workers(-1, cuda, cpus) for cpus in (1, 2, 3, 8, 17, 64)] == [0, 1, 2, 7, 16, 16]
    assert resolve_workers(-1, cpu, 16) == 0
    assert resolve_workers(3, cpu, 1) == 3  # an explicit count is kept
    assert RunOptions().num_workers == -1
    with pytest.raises(UserError, match="num_workers must be >= -1"):
        RunOptions(num_workers=-2)


def test_auto_workers_follow_the_cpus_the_job_was_given(monkeypatch):
    from robustmtl.cpus import CPUS_ENV, job_cpus
    from robustmtl.train.batches import resolve_workers

    monkeypatch.delenv(CPUS_ENV, raising=False)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    assert job_cpus() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "12")  # the job's `cpus`, whatever the affinity mask says
    assert job_cpus() == 12 and resolve_workers(-1, torch.device("cuda")) == 11
    assert resolve_workers(-1, torch.device("cpu")) == 0
    monkeypatch.setenv(CPUS_ENV, "3")  # a parallel pack member's share of the task's CPUs comes first
    assert job_cpus() == 3 and resolve_workers(-1, torch.device("cuda")) == 2
    monkeypatch.setenv(CPUS_ENV, "")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "garbage")
    assert job_cpus() == len(os.sched_getaffinity(0))
