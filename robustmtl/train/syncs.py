"""A check that the training step never makes the host wait for the GPU (a host-device synchronisation).

A step that reads a value back from the GPU (`.item()`, `float(tensor)`, `if tensor`, `nonzero`, boolean
indexing, `bincount`, a blocking copy) stalls the host until every kernel queued before it has run, so the
next batch's kernels are queued late and the GPU idles between steps. `train_steps` runs steps of the loop's
own `Trainer.train_step` with `torch.cuda.set_sync_debug_mode("error")` around each, so any such read raises.
Off CUDA the mode does nothing and the function just runs the steps (its tests run it on a CPU for the wiring).

What stays outside the check, on purpose: fetching the batch (the DataLoader pins memory on the host), the
first step of a run (one-time set-up: the optimiser's state, gDRO's q moved onto the GPU), and logging and
evaluation, which read the device at their intervals only. fp16 runs sync once per step by design: the
GradScaler's `get_scale()` tells the host whether the step was skipped, which the schedule must know; bf16
and fp32 steps have no such read, so the check runs them. Lookahead-DRO (`ldro`) syncs by design too: its
weights come from a small iterative solver on the host (see `methods/ldro.py`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import ERROR_SET, RunDir, write_json
from robustmtl.registry import dataset_entry
from robustmtl.requirements import required_runs
from robustmtl.rundir import prepare_run

CHECKED_METHODS = ("erm", "mtl", "mtl_l1", "jtt", "gdro")


@contextlib.contextmanager
def fail_on_sync(device: torch.device) -> Iterator[None]:
    """Every host-device synchronisation on `device` raises inside this block (CUDA only; elsewhere nothing)."""
    if device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def fake_requirements(run_dir: RunDir, method: str, dataset: str, values: dict[str, Any]) -> None:
    """Finished stand-ins for the runs `method` needs first: JTT's stage 1 with every fifth example in its error set."""
    cfg = build_config(method, dataset, 0, None, values, where="sync check")
    for cfg_needed in required_runs(cfg).values():
        other = RunDir(run_dir.root.parent / cfg_needed.run_id)
        other.root.mkdir(parents=True, exist_ok=True)
        if cfg_needed.method == "jtt_stage1":
            n = len(dataset_entry(dataset).build(cfg.data_params, None).train)
            errors = list(range(0, n, 5))
            write_json(other.artifact(ERROR_SET), {"indices": errors, "count": len(errors), "n_train": n})
        write_json(other.done, {})


def train_steps(work: Path, method: str, dataset: str = "synthetic", values: dict[str, Any] | None = None,
                device: str = "cuda", precision: str = "bf16", steps: int = 2) -> dict[str, float]:
    """Build `method`'s run in `work` and train `steps` steps, every one after the first under `fail_on_sync`;
    returns the mean of each loss term over them (read afterwards, outside the check)."""
    from robustmtl.train.loop import Trainer

    values = {"epochs": 1, "batch_size": 32, **(values or {})}
    cfg = build_config(method, dataset, 0, None, values, where="sync check")
    run_dir = RunDir(work / cfg.run_id)
    fake_requirements(run_dir, method, dataset, values)
    prepare_run(run_dir, cfg, RunOptions(device=device, precision=precision, threads=1, num_workers=0))
    trainer = Trainer(run_dir)
    plan = trainer.epoch_plan(1)
    if len(plan.batches) < steps:
        raise ValueError(f"{len(plan.batches)} batches in an epoch, {steps} steps asked for")
    trainer.sampler.set(plan, 0)
    items = iter(trainer.loader)
    for i in range(steps):
        batch, aux_batch = next(items)
        with fail_on_sync(trainer.device) if i > 0 else contextlib.nullcontext():
            trainer.train_step(batch, aux_batch)
    trainer.check_finite()
    return {name: float(total) / trainer.term_count for name, total in trainer.term_sums.items()}
