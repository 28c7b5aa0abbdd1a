"""`robustmtl eval`: a finished run's kept model (`keep_model`: encoder.pt and head.pt) evaluated on a split of its
dataset, or of another dataset of the same modality and classes, without training.

The records are the loop's (`records.run_record`, the `Evaluator`, the mechanism fields), at the run's final epoch
and step, so on the run's own data they are the run's own final-epoch records; on other data their `dataset` is
the one evaluated. They go to an evaluation folder (default RUN/eval/<dataset>) beside a copy of the run's
config.json, the evaluation's target (eval.json) and a DONE summary: `robustmtl aggregate FOLDER` reads it as a
run directory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from robustmtl.config import RunConfig
from robustmtl.errors import UserError
from robustmtl.layout import (
    CONFIG,
    EVAL_DIR,
    EVAL_TARGET,
    HEAD,
    METRICS,
    PRETRAINED_ENCODER,
    RunDir,
    atomic_write_bytes,
    claim_dir,
    make_dir,
    read_json,
    write_json,
)
from robustmtl.params import coerce, did_you_mean, field_types
from robustmtl.records import MetricsWriter, run_record
from robustmtl.registry import dataset_entry, dataset_plugin, method_entry, model_entry
from robustmtl.rundir import load_run
from robustmtl.train import checkpoint, mechanism
from robustmtl.train.batches import resolve_workers
from robustmtl.train.evaluate import Evaluator, fixed_subset
from robustmtl.train.loop import EVAL_BATCH, data_cache_dir, pick_device
from robustmtl.train.step import autocast, resolve_precision

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class Target:
    """What an evaluation reads: a dataset and its parameters."""

    dataset: str
    data_params: Any

    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data_params": dataclasses.asdict(self.data_params)}


def resolve_target(cfg: RunConfig, dataset: str | None, sets: dict[str, Any]) -> Target:
    """The dataset evaluated (the run's by default, with the run's parameters; another one with its defaults),
    `sets` overriding its parameters; another modality is refused here, before anything is built."""
    name = dataset or cfg.dataset
    plugin, trained = dataset_plugin(name), dataset_plugin(cfg.dataset)
    if plugin.modality != trained.modality:
        raise UserError(f"run {cfg.run_id} was trained on {cfg.dataset} ({trained.modality} inputs); dataset "
                        f"{name!r} has {plugin.modality} inputs: evaluate on a {trained.modality} dataset with "
                        "the same classes")
    block = plugin.params
    values = dataclasses.asdict(cfg.data_params) if name == cfg.dataset else {}
    known = field_types(block)
    for key, value in sets.items():
        if key not in known:
            raise UserError(f"--set {key}: not a parameter of dataset {name!r}{did_you_mean(key, known)}")
        values[key] = coerce(block, key, value, "--set")
    return Target(name, block(**values))


def default_out(run_dir: RunDir, cfg: RunConfig, target: Target) -> Path:
    """RUN/eval/<dataset>, with a digest of the parameters when they are not the run's (own dataset) or the
    dataset's defaults (another one), so two evaluations never share a folder."""
    plain = target.data_params == (cfg.data_params if target.dataset == cfg.dataset else type(target.data_params)())
    digest = hashlib.sha256(json.dumps(target.to_dict(), sort_keys=True).encode()).hexdigest()[:8]
    return run_dir.root / EVAL_DIR / (target.dataset if plain else f"{target.dataset}-{digest}")


def kept_weights(run_dir: RunDir, cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The run's kept model as one state dict; one line when the run kept none."""
    if not run_dir.done.exists():
        raise UserError(f"run {cfg.run_id} is not done ({run_dir.done} missing): nothing to evaluate yet")
    if not method_entry(cfg.method).trains:
        raise UserError(f"method {cfg.method!r} fits its last layer outside the network: run {cfg.run_id} has no "
                        "model to evaluate; its records are its evaluation")
    files = [run_dir.artifact(PRETRAINED_ENCODER), run_dir.artifact(HEAD)]
    if not all(f.exists() for f in files):
        raise UserError(f"run {cfg.run_id} kept no final model ({', '.join(f.name for f in files)}): train it with "
                        "the execution option keep_model (`robustmtl run --keep-model`, or `keep_model = true` in "
                        "a grid's [executor] table; a done grid run: `grid drop` it and `grid resume`)")
    return {**checkpoint.load_tensors(files[0]), **checkpoint.load_tensors(files[1])}


def load_into(model: torch.nn.Module, kept: dict[str, torch.Tensor], cfg: RunConfig, target: Target,
              n_classes: int) -> None:
    """The kept weights into a model built for the target's data; a model that does not fit them is one line."""
    own = model.state_dict()
    wrong = [k for k in own if k in kept and own[k].shape != kept[k].shape]
    if head := [k for k in wrong if k.startswith("head.")]:
        raise UserError(f"run {cfg.run_id} predicts {kept[head[-1]].shape[0]} classes; dataset {target.dataset!r} "
                        f"has {n_classes}: evaluate on a dataset with the same classes")
    if wrong:
        raise UserError(f"run {cfg.run_id}'s model does not take dataset {target.dataset!r}'s inputs ({wrong[0]}: "
                        f"{tuple(kept[wrong[0]].shape)} kept, {tuple(own[wrong[0]].shape)} needed)")
    if missing := sorted(set(own) ^ set(kept)):
        raise UserError(f"run {cfg.run_id}'s kept model does not fit model {cfg.model!r} ({missing[0]}): it was kept "
                        "by another robustmtl version; train it again")
    model.load_state_dict(kept)


def evaluate_kept(run_dir: RunDir, splits: list[str], dataset: str | None = None,
                  sets: dict[str, Any] | None = None, out: Path | None = None, data_root: str | None = None,
                  device: str | None = None) -> tuple[Path, dict[str, dict[str, Any]]]:
    """Evaluate the run's kept model on `splits`, write their records; returns the folder and the metrics."""
    for name in splits:
        if name not in SPLITS:
            raise UserError(f"--split {name!r}: one of {', '.join(SPLITS)}")
    cfg, opts = load_run(run_dir)
    target = resolve_target(cfg, dataset, sets or {})
    out = out or default_out(run_dir, cfg, target)
    claim_dir(out, "evaluation folder", EVAL_TARGET)
    described = {"run_id": cfg.run_id, "run_dir": str(run_dir.root.resolve()), **target.to_dict()}
    if (out / EVAL_TARGET).exists() and read_json(out / EVAL_TARGET, "evaluation target") != described:
        raise UserError(f"{out} holds another evaluation ({out / EVAL_TARGET}); choose another --out")
    kept = kept_weights(run_dir, cfg)
    done = read_json(run_dir.done, "DONE summary")

    opts = dataclasses.replace(opts, device=device or opts.device)
    dev = pick_device(opts.device)
    precision = resolve_precision(opts.precision, dev)
    if opts.threads:
        torch.set_num_threads(opts.threads)
    root = data_root or opts.data_root
    raw = dataset_entry(target.dataset).build(target.data_params, Path(root) if root else None)
    model = model_entry(cfg.model).build(cfg.model_params, raw.info)
    data = model.prepare(raw, data_cache_dir())
    load_into(model, kept, cfg, target, raw.info.n_classes)
    model = model.to(dev)
    evaluator = Evaluator(data.by_name(), EVAL_BATCH, dev, lambda: autocast(dev, precision),
                          resolve_workers(opts.num_workers, dev))
    method = method_entry(cfg.method)
    base = {**run_record(cfg, uses_train_groups=method.uses_train_groups, report=method.report,
                         epoch=done["epochs"], step=done["steps"], time_s=done["time_s"]), "dataset": target.dataset}
    results: dict[str, dict[str, Any]] = {}
    records = []
    for name in splits:  # every split predicted before the first record is written
        split = data.by_name()[name]
        subset = fixed_subset(len(split), cfg.train.eval_train, cfg.seed) if name == "train" and \
            cfg.train.eval_train else None
        predictions = evaluator.predict(model, name, subset)
        metrics = predictions.metrics(split)
        if predictions.indices is not None:  # the training examples the run's own train records are computed on
            metrics["evaluated_on"] = {"examples": len(predictions.indices), "of": len(split)}
        results[name] = metrics
        records.append({**base, "split": name, **metrics, **mechanism.record_fields(model, data, name, dev)})

    make_dir(out, "evaluation folder")
    write_json(out / EVAL_TARGET, described)
    atomic_write_bytes(out / CONFIG, run_dir.config.read_bytes())  # what the aggregator names the run by
    writer = MetricsWriter(out / METRICS)
    for record in records:
        writer.append(record)
    summary = RunDir(out).done
    before = read_json(summary, "evaluation summary") if summary.exists() else {"final": {}}
    final = {**before["final"], **{s: {k: m[k] for k in ("avg_acc", "worst_group_acc")} for s, m in results.items()}}
    write_json(summary, {"run_id": cfg.run_id, "method": cfg.method, "dataset": target.dataset, "seed": cfg.seed,
                         "epochs": done["epochs"], "steps": done["steps"], "time_s": done["time_s"], "final": final,
                         "evaluated": described})
    return out, results

