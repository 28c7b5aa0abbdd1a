"""The one training loop: build, resume from the newest checkpoint, train, evaluate, record, finish.

A run is a pure function of its config: the visiting order of every epoch comes from an RNG seeded by
(seed, epoch), the global RNG states travel in the checkpoint, and records already on disk are not
written twice. So a run killed at any point and restarted ends with the same numbers as one that
was never interrupted (bitwise on CPU). Batches are materialised by a DataLoader (`num_workers`) from
a plan computed here, so workers change the speed and never the batches.

Cost is recorded with the metrics: train records and the DONE summary carry the precision used, the
run's wall time across attempts (`wall_s`, evaluation included), `gpu_hours` and the peak GPU
memory of its largest attempt (each attempt's peak travels in the checkpoint).

A run whose training loss, or an evaluation loss, is not finite has diverged: it ends with `Diverged`
naming the first such step, before anything computed from the diverged model is recorded or
checkpointed. The first non-finite training step is tracked on the device and read only where the loop
reads the host anyway (evaluations and checkpoints), so no step waits for the GPU.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmtl import pause
from robustmtl.cpus import job_cpus
from robustmtl.data.image_cache import cache_images
from robustmtl.errors import UserError
from robustmtl.layout import HEAD, PRETRAINED_ENCODER, VAL_CORRECT, VAL_GROUPS, RunDir, read_json, write_json
from robustmtl.methods.base import Method, MethodContext, refuse_empty_groups
from robustmtl.metrics import pack_bools
from robustmtl.models.base import Model
from robustmtl.predictions import PREDICTIONS_DIR, STORED_SPLITS, PredictionStore
from robustmtl.records import MetricsWriter, run_record
from robustmtl.registry import dataset_entry, method_entry, method_plugin, model_entry
from robustmtl.requirements import required_runs
from robustmtl.rng import epoch_generator
from robustmtl.rundir import load_run, required_run_dirs
from robustmtl.train import checkpoint, mechanism
from robustmtl.train.batches import Batch, EpochPlan, PlanSampler, chunks, make_loader, resolve_workers, to_device
from robustmtl.train.evaluate import EvalStopped, Evaluator, Predictions, fixed_subset
from robustmtl.train.optim import make_optimizer, make_scheduler
from robustmtl.train.share import MEMORY_FRACTION_ENV
from robustmtl.train.step import Stepper, enable_tf32, make_scaler, resolve_precision

Progress = Callable[[int, int], None]
StopRequested = Callable[[], bool]
EVAL_BATCH = 512


class Interrupted(Exception):
    """Raised at a step boundary after a requested stop (preemption signal) has been checkpointed."""


class Diverged(Exception):
    """A loss became NaN or infinite: retrying the same run would diverge again at the same step."""

    def __init__(self, step: int, what: str = "loss") -> None:
        super().__init__(f"non-finite {what} at step {step}")
        self.step = step


def data_cache_dir() -> Path:
    """Where slow preprocessing (tokenisation, decoded images) is cached: $ROBUSTMTL_CACHE, else ~/.cache/robustmtl."""
    return Path(os.environ.get("ROBUSTMTL_CACHE", Path.home() / ".cache" / "robustmtl"))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but this torch sees no CUDA GPU (CPU build or no GPU "
                        "visible); use device auto or cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device 'mps' asked for, but Apple's MPS backend is not available here; use auto or cpu")
    return torch.device(name)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak GPU memory allocated since the attempt started; None off CUDA."""
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


class Trainer:
    """State of one run in progress; `run()` drives it to DONE."""

    def __init__(self, run_dir: RunDir, progress: Progress | None = None,
                 stop_requested: StopRequested | None = None) -> None:
        self.attempt_started = time.perf_counter()
        self.run_dir = run_dir
        self.cfg, self.opts = load_run(run_dir)
        self.progress = progress
        self.stop_requested = stop_requested
        self.device = pick_device(self.opts.device)
        self.precision = resolve_precision(self.opts.precision, self.device)
        enable_tf32(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            if fraction := os.environ.get(MEMORY_FRACTION_ENV):  # a pack member sharing its GPU with others
                torch.cuda.set_per_process_memory_fraction(float(fraction), self.device)
        if self.opts.threads:
            torch.set_num_threads(self.opts.threads)
        seed = self.cfg.seed
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        data_root = Path(self.opts.data_root) if self.opts.data_root else None
        raw = dataset_entry(self.cfg.dataset).build(self.cfg.data_params, data_root)
        model: Model = model_entry(self.cfg.model).build(self.cfg.model_params, raw.info)
        self.data = model.prepare(raw, data_cache_dir())
        if self.opts.image_cache:  # the same pixels as decoding each batch's files, decoded once
            self.data = cache_images(self.data, data_cache_dir(), job_cpus())
        self.model = model.to(self.device)
        method_cls: type[Method] = method_entry(self.cfg.method)
        pool = self.data.pretrain if method_cls.trains_on_pool and self.data.pretrain is not None else self.data.train
        train = pool if method_cls.uses_train_groups else pool.hide_groups()
        if method_cls.uses_train_groups:
            refuse_empty_groups(self.cfg, train, self.data.info)
        required = required_run_dirs(run_dir, required_runs(self.cfg))
        # the encoder starts from a required run's final weights: pre-training's, or a run the method retrains on
        for role in ("pretrain", *method_plugin(self.cfg.method).reads_encoders):
            if role in required:
                self._load_encoder(role, required[role], with_head=role != "pretrain" and method_cls.reads_head)
        ctx = MethodContext(config=self.cfg, info=self.data.info, train=train, run_dir=run_dir, required=required,
                            splits=self.data.by_name())
        self.method = method_cls(self.cfg.method_params, ctx)
        self.train_split = train
        self.steps_per_epoch = len(chunks(self.method.epoch_indices(1, epoch_generator(seed, 1, 0)),
                                          self.cfg.train.batch_size))
        self.epochs = self.cfg.trained_epochs
        self.total_steps = self.steps_per_epoch * self.epochs
        horizon = self.method.schedule_steps(self.steps_per_epoch, self.cfg.train.schedule_epochs or self.epochs)
        self.optimizer = make_optimizer(self.model, self.cfg, self.device)
        self.scheduler = make_scheduler(self.optimizer, self.cfg, horizon)
        self.stepper = Stepper(self.model, self.optimizer, self.scheduler, self.device, self.precision,
                               self.cfg.train.grad_clip, make_scaler(self.precision, self.device))
        if self.opts.compile:
            self.model.compile_encoder()
        self.sampler = PlanSampler()
        workers = resolve_workers(self.opts.num_workers, self.device)
        self.loader = make_loader(train, self.sampler, workers, pin_memory=self.device.type == "cuda")
        self.evaluator = Evaluator(self.data.by_name(), EVAL_BATCH, self.device, self.stepper.autocast, workers,
                                   stop_requested, pause_key=f"{self.cfg.run_id}.eval")
        self.train_subset = fixed_subset(len(self.data.train), self.cfg.train.eval_train, seed)
        self.writer = MetricsWriter(run_dir.metrics)
        self.val_correct = MetricsWriter(run_dir.artifact(VAL_CORRECT))
        self.val_groups_path = run_dir.artifact(VAL_GROUPS)
        self.predictions = PredictionStore(run_dir.artifact(PREDICTIONS_DIR))
        self.epoch, self.batch_pos, self.step, self.elapsed, self.wall_before = 1, 0, 0, 0.0, 0.0
        self.peak_before: float | None = None
        self.term_sums: dict[str, torch.Tensor] = {}
        self.term_count = 0
        self.first_nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)  # 0: every loss finite
        self.eval_pending = False  # a mid-epoch evaluation a stop cut short: redone before the next step
        self.last_checkpoint = time.monotonic()
        self.final: dict[str, dict[str, Any]] = {}  # the last end-of-epoch metrics, for the DONE summary
        self._restore()

    def _load_encoder(self, role: str, source: RunDir, with_head: bool) -> None:
        role = "pre-training" if role == "pretrain" else role  # as messages name it
        encoder, head = source.artifact(PRETRAINED_ENCODER), source.artifact(HEAD)
        for path, what in ((encoder, "encoder"), *(((head, "head"),) if with_head else ())):
            if not path.exists():
                raise UserError(f"the {role} run {source.root.name} finished without its {what} weights ({path}): "
                                "it was done before a run that loads them was planned on it; `grid drop` it and "
                                "`grid resume` to train it again, keeping them")
        try:
            self.model.load_encoder_state(checkpoint.load_tensors(encoder))
            if with_head:
                checkpoint.load_head(self.model, head)
        except ValueError as exc:
            raise UserError(f"{source.root}: {exc}; delete the {role} run to redo it") from None

    def _restore(self) -> None:
        state = checkpoint.load(self.run_dir.checkpoint)
        if state is None:
            return
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.method.load_state_dict(state["method"])
        checkpoint.set_rng_state(state["rng"])
        self.epoch, self.batch_pos, self.step = state["epoch"], state["batch_pos"], state["step"]
        self.elapsed, self.wall_before = state["elapsed"], state.get("wall_s", 0.0)
        self.peak_before = state.get("peak_mem_mb")
        self.term_sums = {k: torch.tensor(v, dtype=torch.float64, device=self.device)
                          for k, v in state["term_sums"].items()}
        self.term_count = state["term_count"]
        self.eval_pending, self.final = state.get("eval_pending", False), state.get("final", {})
        if self.stepper.scaler is not None and state.get("scaler"):
            self.stepper.scaler.load_state_dict(state["scaler"])

    def check_finite(self) -> None:
        """Raise `Diverged` at the first step whose training loss was not finite (one read of the device)."""
        if step := int(self.first_nonfinite):
            raise Diverged(step)

    def save_checkpoint(self) -> None:
        self.check_finite()  # a diverged model is never checkpointed: a retry resumes from before it
        self.last_checkpoint = time.monotonic()
        checkpoint.save(self.run_dir.checkpoint, {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "method": self.method.state_dict(),
            "rng": checkpoint.rng_state(), "epoch": self.epoch, "batch_pos": self.batch_pos, "step": self.step,
            "elapsed": self.elapsed, "wall_s": self.wall_s(), "peak_mem_mb": self.peak_mem_mb(),
            "term_count": self.term_count,
            "term_sums": {k: float(v) for k, v in self.term_sums.items()},
            "scaler": self.stepper.scaler.state_dict() if self.stepper.scaler is not None else {},
            "eval_pending": self.eval_pending, "final": self.final,
        })

    def wall_s(self) -> float:
        """Wall time of the run so far: earlier attempts (as of their last checkpoint) plus this one."""
        return self.wall_before + time.perf_counter() - self.attempt_started

    def peak_mem_mb(self) -> float | None:
        """The largest peak GPU memory of this attempt and the ones before it (None off CUDA)."""
        peaks = [p for p in (self.peak_before, peak_memory_mb(self.device)) if p is not None]
        return max(peaks) if peaks else None

    def cost(self) -> dict[str, Any]:
        wall = self.wall_s()
        gpus = 1 if self.device.type == "cuda" else 0
        return {"precision": self.precision, "wall_s": round(wall, 3), "gpu_hours": round(wall / 3600 * gpus, 6),
                "peak_mem_mb": self.peak_mem_mb()}

    def epoch_plan(self, epoch: int) -> EpochPlan:
        """The epoch's end-task batches and, for multitask methods, the auxiliary task's independent shuffle."""
        order = self.method.epoch_indices(epoch, epoch_generator(self.cfg.seed, epoch, 0))
        aux_order = None
        if self.method.uses_aux_batch:
            aux_order = torch.randperm(len(self.train_split), generator=epoch_generator(self.cfg.seed, epoch, 1))
        return EpochPlan(chunks(order, self.cfg.train.batch_size), aux_order, self.cfg.train.batch_size,
                         seed=self.cfg.seed, epoch=epoch)

    def train_step(self, batch: Batch, aux_batch: Batch | None) -> None:
        """One step with its bookkeeping; on a GPU it never waits for the device (`train/syncs.py` checks)."""
        batch = to_device(batch, self.device)
        aux_batch = None if aux_batch is None else to_device(aux_batch, self.device)
        terms = self.stepper.step(self.method, batch, aux_batch)
        self.step += 1
        first_here = (self.first_nonfinite == 0) & ~torch.isfinite(terms.total.detach())
        self.first_nonfinite = torch.where(first_here, self.step, self.first_nonfinite)  # on the device: no sync
        for name, value in {"total": terms.total, **terms.parts}.items():  # summed on the device: no sync per step
            previous = self.term_sums.get(name, 0.0)
            self.term_sums[name] = previous + value.detach().to(torch.float64)
        self.term_count += 1

    def predict(self, split_name: str) -> Predictions:
        """A whole split (JTT's error set reads every training example)."""
        return self.evaluator.predict(self.model, split_name)

    def _predict_for_record(self, split_name: str) -> Predictions | None:
        """What a record is computed on: the training split per `eval_train` (None: not evaluated)."""
        if split_name != "train":
            return self.predict(split_name)
        if self.cfg.train.eval_train == 0:
            return None
        return self.evaluator.predict(self.model, split_name, self.train_subset)

    def _evaluate(self) -> dict[str, dict[str, Any]]:
        """One record per split at the current (epoch, step); returns the metrics by split.

        Nothing is written when the model has diverged: every split is predicted, and every loss checked,
        before the first record."""
        self.check_finite()
        splits = self.data.by_name()
        predicted = {name: self._predict_for_record(name) for name in splits}
        for name, predictions in predicted.items():
            if predictions is not None and not math.isfinite(predictions.loss):
                raise Diverged(self.step, f"evaluation loss on {name}")
        base = run_record(self.cfg, uses_train_groups=self.method.uses_train_groups, report=self.method.report,
                          epoch=self.epoch, step=self.step, time_s=self.elapsed)
        results = {}
        for name, split in splits.items():
            predictions = predicted[name]
            metrics = {} if predictions is None else predictions.metrics(split)
            if predictions is not None and predictions.indices is not None:
                metrics["evaluated_on"] = {"examples": len(predictions.indices), "of": len(split)}
            if predictions is not None and name == "val":
                self._write_val_correct(predictions, split)
            if predictions is not None and predictions.probs is not None and name in STORED_SPLITS:
                self.predictions.write(name, self.epoch, self.step, predictions.probs, split.y.numpy(),
                                       split.membership.numpy(), self.train_split.membership.numpy().sum(axis=0))
            record = {**base, "split": name, **metrics}
            record.update(mechanism.record_fields(self.model, self.data, name, self.device))
            if name == "train" and self.term_count:
                record["terms"] = {k: float(v) / self.term_count for k, v in self.term_sums.items()}
            if name == "train":
                record.update(self.cost())
            self.writer.append(record)
            if predictions is not None:
                results[name] = metrics
        return results

    def _evaluate_or_stop(self, mid_epoch: bool) -> dict[str, dict[str, Any]]:
        """`_evaluate`, or on a stop request during it: checkpoint the state from before the evaluation (its
        random state included) and stop; the next attempt redoes the evaluation (which writes its records
        only once every split is predicted, so a cut-short one has written none)."""
        before = checkpoint.rng_state()
        try:
            return self._evaluate()
        except EvalStopped:
            checkpoint.set_rng_state(before)
            self.eval_pending = mid_epoch
            self.save_checkpoint()
            raise Interrupted(f"stopped during the evaluation at step {self.step} after a checkpoint") from None

    def _checkpoint_due(self) -> bool:
        """Every `checkpoint_every` steps, and once `checkpoint_minutes` have passed since the last one."""
        every, minutes = self.opts.checkpoint_every, self.opts.checkpoint_minutes
        return bool(every and self.step % every == 0) or bool(
            minutes and time.monotonic() - self.last_checkpoint >= 60 * minutes)

    def _epoch_checkpoint_due(self) -> bool:
        """At an epoch's end: always with `epoch_checkpoints`, else on the steps/minutes cadence; and after the
        last epoch, the state `after_training` resumes from when a stop cuts it short."""
        return self.opts.epoch_checkpoints or self._checkpoint_due() or self.epoch > self.epochs

    def _write_val_correct(self, predictions: Predictions, split: Any) -> None:
        """Per-example validation correctness, so `few-groups` selection can score any subset later."""
        if not self.val_groups_path.exists():
            membership = split.membership.numpy()
            write_json(self.val_groups_path, {"n": int(membership.shape[0]), "n_groups": int(membership.shape[1]),
                                              "membership": pack_bools(membership)})
        self.val_correct.append({"epoch": self.epoch, "step": self.step, "split": "val",
                                 "correct": pack_bools(predictions.correct)})

    def run(self) -> dict[str, Any]:
        t = self.cfg.train
        while self.method.trains and self.epoch <= self.epochs:
            plan = self.epoch_plan(self.epoch)
            self.sampler.set(plan, self.batch_pos)
            if self.eval_pending:
                self._evaluate_or_stop(mid_epoch=True)
                self.eval_pending = False
            items = iter(self.loader)
            while self.batch_pos < len(plan.batches):
                started = time.perf_counter()
                self.train_step(*next(items))
                self.batch_pos += 1
                self.elapsed += time.perf_counter() - started
                if self.progress:
                    self.progress(self.step, self.total_steps)
                if t.eval_every and self.step % t.eval_every == 0 and self.batch_pos < len(plan.batches):
                    self._evaluate_or_stop(mid_epoch=True)
                if self._checkpoint_due():
                    self.save_checkpoint()
                if pause.wait_here(self.cfg.run_id, self.step, self.stop_requested):
                    self.save_checkpoint()
                    raise Interrupted(f"stopped at step {self.step} after a checkpoint")
            last = self._evaluate_or_stop(mid_epoch=False)
            self.final = {s: {k: m[k] for k in ("avg_acc", "worst_group_acc")} for s, m in last.items()}
            self.epoch, self.batch_pos = self.epoch + 1, 0
            self.term_sums, self.term_count = {}, 0
            stopping = self.stop_requested is not None and self.stop_requested()  # read once: saved, then honoured
            if stopping or self._epoch_checkpoint_due():
                self.save_checkpoint()
            if stopping:
                raise Interrupted(f"stopped at step {self.step} after a checkpoint")
        try:
            extra = self.method.after_training(self.model, self.predict)
        except EvalStopped:  # the end-of-training checkpoint is consistent: the next attempt redoes this
            raise Interrupted("stopped after training, before its last artefacts, after a checkpoint") from None
        # a run another run retrains on, or one kept for `robustmtl eval`, keeps its head too (a few kilobytes);
        # a method that trains no weight has no model of its own to keep
        keeps_model = self.method.trains and (self.opts.keep_encoder or self.opts.keep_model)
        if self.method.leaves_encoder or keeps_model:
            checkpoint.save_final_weights(self.run_dir, self.model, with_head=keeps_model)
        summary = {
            "run_id": self.cfg.run_id, "method": self.cfg.method, "dataset": self.cfg.dataset, "seed": self.cfg.seed,
            "epochs": self.epochs, "steps": self.step, "time_s": round(self.elapsed, 3), **self.cost(),
            "final": self.final, **extra,
        }
        write_json(self.run_dir.done, summary)
        if not self.opts.keep_checkpoint:
            self.run_dir.checkpoint.unlink(missing_ok=True)
        return summary


def train_run(run_dir: RunDir, progress: Progress | None = None,
              stop_requested: StopRequested | None = None) -> dict[str, Any]:
    """Run (or resume, or just report) the run in `run_dir`; returns its DONE summary.

    The caller owns the attempt and the run's lock (train/attempt.py); tests call this directly."""
    if run_dir.done.exists():
        return read_json(run_dir.done, "DONE summary")
    run_dir.failed.unlink(missing_ok=True)
    run_dir.clear_stale_temps()
    return Trainer(run_dir, progress, stop_requested).run()
