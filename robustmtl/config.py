"""RunConfig: everything that defines a run's result, hashed into a stable run id.

Users speak in flat keys (`lr`, `alpha_aux`, `p_train`, `hidden_dim`); each key belongs to exactly one
parameter block: training, the method's, the dataset's or the model's. Output paths, executor
settings and the data root live in `RunOptions` and never enter the hash.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from robustmtl.errors import UserError
from robustmtl.params import (
    DEVICE,
    added_later,
    at_least,
    coerce,
    did_you_mean,
    field_types,
    missing_local_path,
    omittable_defaults,
    one_of,
    positive,
)
from robustmtl.registry import DATASETS, METHODS, MODELS, aux_conflict, dataset_plugin, method_plugin, model_plugin

CONFIG_VERSION = 1


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings shared by every method."""

    epochs: int = field(default=20, metadata=positive())
    batch_size: int = field(default=64, metadata=positive())
    lr: float = field(default=1e-3, metadata=positive())
    optimizer: str = field(default="adamw", metadata=one_of("adamw", "sgd"))
    weight_decay: float = field(default=0.0, metadata=at_least(0.0))
    momentum: float = field(default=0.9, metadata=at_least(0.0))
    scheduler: str = field(default="constant", metadata=one_of("constant", "linear", "cosine"))
    warmup_frac: float = field(default=0.0, metadata=at_least(0.0))
    grad_clip: float = field(default=0.0, metadata=at_least(0.0))
    eval_every: int = field(default=0, metadata=at_least(0))
    # Examples of the training split each evaluation scores: a fixed subsample of this many (drawn once from
    # the seed), -1 all, 0 none. The bound keeps evaluation a small share of an epoch on 100k-example sets;
    # a split no larger is scored whole. JTT's error set always reads the whole split.
    eval_train: int = field(default=10_000, metadata=added_later(at_least(-1)))
    # The pre-training stage (0 epochs: none): a shared `pretrain` run trains the encoder on the model's
    # own auxiliary objective, and this run fine-tunes from its weights (see robustmtl/requirements.py).
    pretrain_epochs: int = field(default=0, metadata=added_later(at_least(0)))
    pretrain_lr: float = field(default=1e-3, metadata=added_later(positive()))
    pretrain_batch_size: int = field(default=64, metadata=added_later(positive()))
    pretrain_seed: int = field(default=0, metadata=added_later(at_least(0)))
    # Warm-up as a number of optimiser steps, whatever the batch size and run length (the reference's vision
    # runs warm up for 500 steps); > 0 replaces warmup_frac, and setting both is refused.
    warmup_steps: int = field(default=0, metadata=added_later(at_least(0)))
    # The learning-rate schedule's horizon in epochs (0: `epochs`): a run may stop before its schedule ends, as
    # JTT's stage 1 does in the reference's single schedule (`jtt_schedule = "reference"`).
    schedule_epochs: int = field(default=0, metadata=added_later(at_least(0)))

    def __post_init__(self) -> None:
        if self.pretrain_epochs == 0:  # no stage: its settings mean nothing, so they never split run ids
            for name, default in omittable_defaults(TrainParams).items():
                if name.startswith("pretrain_"):
                    object.__setattr__(self, name, default)


@dataclass(frozen=True)
class Execution:
    """How a run executes on its machine; never part of a run's identity. The one block behind three things:
    `robustmtl run`'s options (generated from these fields, `help` their text), a grid's [executor] table
    (`ExecutorSettings` adds where the runs execute) and each run's options.json (`RunOptions` adds two facts
    of the run). Whichever of them a run starts from, `RunOptions.of` makes its options."""

    device: str = field(default="auto", metadata={**DEVICE, "help": "auto, cpu, cuda, cuda:1 ..."})
    threads: int = field(default=0, metadata={**at_least(0), "help": "torch CPU threads (0: torch's default)."})
    checkpoint_every: int = field(default=0, metadata={**at_least(0),
                                                       "help": "Also checkpoint every N steps (0: per epoch)."})
    checkpoint_minutes: float = field(default=15.0, metadata={
        **at_least(0.0), "help": "Also checkpoint once this many minutes of the attempt have passed since the last "
                                 "checkpoint: the work a preemption can lose (0: off)."})
    epoch_checkpoints: bool = field(default=True, metadata={
        "help": "Checkpoint at every epoch's end (off: only on the steps/minutes cadence, at a stop and after the "
                "last epoch; for short epochs, where a save would cost a large share of each)."})
    num_workers: int = field(default=-1, metadata={  # -1: see train.batches.resolve_workers
        **at_least(-1), "help": "DataLoader worker processes building batches (-1: on CUDA one fewer than the "
                                "job's CPUs, at most 16; 0 on a CPU)."})
    image_cache: bool = field(default=True, metadata={
        "help": "Decode image files once into a cache at the model's size ($ROBUSTMTL_CACHE), not every epoch."})
    keep_checkpoint: bool = field(default=False, metadata={"help": "Keep the final checkpoint after the run is done."})
    keep_model: bool = field(default=False, metadata={
        "help": "Keep the run's final weights, head included (encoder.pt, head.pt), for `robustmtl eval`."})
    precision: str = field(default="auto", metadata={**one_of("auto", "fp32", "bf16", "fp16"),
                                                     "help": "auto (bf16 on CUDA, fp16 on older GPUs, fp32 on CPU) | "
                                                             "fp32 | bf16 | fp16"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the encoder."})


@dataclass(frozen=True)
class RunOptions(Execution):
    """A run's options.json: how it executes (`Execution`'s keys), where its data is, and whether a run
    planned after it reads its weights; never part of its identity."""

    data_root: str | None = None
    # save the final weights (encoder.pt, and the tiny head.pt): a run another run retrains on (DFR's or AFR's
    # base) is told so when it is planned, so no other run pays for the files
    keep_encoder: bool = False

    def __post_init__(self) -> None:
        for name in field_types(RunOptions):
            coerce(RunOptions, name, getattr(self, name), "run options")

    @classmethod
    def of(cls, how: Execution, data_root: str | None = None, **changes: Any) -> RunOptions:
        """A run's options from any block of the family (`robustmtl run`'s options, a grid's [executor]
        settings): its `Execution` keys, then `changes`; the block's other keys say nothing about one run."""
        keys = {f.name: getattr(how, f.name) for f in dataclasses.fields(Execution)}
        return cls(**{**keys, **changes}, data_root=data_root)


@dataclass(frozen=True)
class RunConfig:
    method: str
    dataset: str
    seed: int
    model: str
    train: TrainParams
    method_params: Any
    data_params: Any
    model_params: Any

    @property
    def trained_epochs(self) -> int:
        """The epochs this run trains: `epochs`, except JTT's stage 2 under the reference's single schedule,
        which trains the E - T - 1 epochs left after stage 1's T and the epoch that found the error set."""
        if getattr(self.method_params, "jtt_schedule", "separate") == "reference":
            return self.train.epochs - self.method_params.jtt_epochs - 1
        return self.train.epochs

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": CONFIG_VERSION,
            "method": self.method,
            "dataset": self.dataset,
            "seed": self.seed,
            "model": self.model,
            "train": _fields(self.train),
            "method_params": _fields(self.method_params),
            "data_params": _fields(self.data_params),
            "model_params": _fields(self.model_params),
        }

    def canonical_json(self, with_seed: bool = True) -> str:
        """`json.dumps(to_dict(), sort_keys=True, separators=(",", ":"))`, built from cached pieces.

        Seeds of one setting share everything but the seed, so a grid builds each setting's JSON once
        (`with_seed` hands the pieces on) and each run only splices its seed in.
        """
        head, tail = self._seedless_json
        return f'{head},"seed":{self.seed},{tail}' if with_seed else f"{head},{tail}"

    @functools.cached_property
    def _seedless_json(self) -> tuple[str, str]:
        """The canonical JSON around the seed: the members sorted before it, and those after it."""
        parts = {"version": str(CONFIG_VERSION), "method": _json(self.method), "dataset": _json(self.dataset),
                 "model": _json(self.model), "train": _block_json(self.train),
                 "method_params": _block_json(self.method_params), "data_params": _block_json(self.data_params),
                 "model_params": _block_json(self.model_params)}
        members = [f"{_json(k)}:{parts[k]}" for k in sorted(parts)]
        cut = sum(k < "seed" for k in parts)
        return "{" + ",".join(members[:cut]), ",".join(members[cut:]) + "}"

    def with_seed(self, seed: int) -> RunConfig:
        """The same setting with another seed, reusing this config's JSON pieces and setting id.

        A plain copy of the instance dict with the new run id set (not `dataclasses.replace`, which
        re-runs `__init__`): a 100,000-run grid calls this once per run.
        """
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UserError(f"seed must be an integer, got {seed!r}")
        head, tail = self._seedless_json  # computed once here, shared by every seed
        other = object.__new__(RunConfig)
        state = other.__dict__
        state.update(self.__dict__)
        state["seed"] = seed
        state["run_id"] = _sha(f'{head},"seed":{seed},{tail}')
        return other

    @functools.cached_property
    def run_id(self) -> str:
        return _sha(self.canonical_json())

    @functools.cached_property
    def setting_id(self) -> str:
        """Identity of the hyperparameter setting: the config without its seed."""
        return _sha(self.canonical_json(with_seed=False))

    def hparams(self) -> dict[str, Any]:
        """Every hyperparameter as one flat dict (for records and tables), defaults of `added_later` fields included."""
        return {**_all_fields(self.train), **_all_fields(self.method_params), **_all_fields(self.data_params),
                **_all_fields(self.model_params)}

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with flat keys changed (e.g. `epochs=5`), validated like user input."""
        return build_config(self.method, self.dataset, self.seed, self.model, {**self.hparams(), **changes},
                            where="internal")


def _all_fields(block: object) -> dict[str, Any]:
    """A parameter block as a dict (fields are scalars or tuples: no deep copy needed)."""
    block_type: type = type(block)
    return {name: getattr(block, name) for name in field_types(block_type)}


def _fields(block: object) -> dict[str, Any]:
    """The block as it enters a run's identity: `added_later` fields only where they differ from their default."""
    block_type: type = type(block)
    omittable = omittable_defaults(block_type)
    return {name: value for name, value in _all_fields(block).items()
            if name not in omittable or value != omittable[name]}


def _json_any(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@functools.lru_cache(maxsize=65536)
def _json(scalar: str | int) -> str:
    return _json_any(scalar)


@functools.lru_cache(maxsize=65536)
def _block_json(block: Any) -> str:
    return _json_any(_fields(block))


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def blocks_for(method: str, dataset: str, model: str) -> dict[str, type]:
    """The parameter blocks of one (method, dataset, model) combination, keyed by section name."""
    return {
        "train": TrainParams,
        "method_params": method_plugin(method).params,
        "data_params": dataset_plugin(dataset).params,
        "model_params": model_plugin(model).params,
    }


def key_owner(key: str, blocks: dict[str, type]) -> str | None:
    return next((section for section, block in blocks.items() if key in field_types(block)), None)


def plugins_with(key: str) -> dict[str, list[str]]:
    """kind (method, dataset, model) → the registered plug-ins of that kind that have parameter `key`, so a key
    given to a run without it can say where it belongs instead of only that it is unknown."""
    tables: dict[str, dict[str, Any]] = {"method": METHODS, "dataset": DATASETS, "model": MODELS}
    found = {kind: [name for name, plugin in table.items() if key in field_types(plugin.params)]
             for kind, table in tables.items()}
    return {kind: names for kind, names in found.items() if names}


def owners_text(owners: dict[str, list[str]]) -> str:
    """`model 'vit' or 'timm_vit'` for plugins_with's answer."""
    return " and ".join(f"{kind} {' or '.join(map(repr, names))}" for kind, names in owners.items())


MAX_SEED = 2**32 - 1


def build_config(method: str, dataset: str, seed: int, model: str | None, values: dict[str, Any],
                 where: str, strict: bool = True) -> RunConfig:
    """Validate flat `values` into a RunConfig.

    With `strict=False`, keys that belong to no block of this combination are ignored: a grid's
    `[defaults]` may set `alpha_aux` for every method, and ERM simply has no such parameter.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UserError(f"{where}: seed must be an integer from 0 to 2**32 - 1 (numpy's range), got {seed!r}")
    data = dataset_plugin(dataset)
    model = model or data.default_model
    modalities = model_plugin(model).modalities
    if data.modality not in modalities:
        raise UserError(f"{where}: model {model!r} takes {'/'.join(modalities)} inputs but dataset "
                        f"{dataset!r} is {data.modality}; pick a {data.modality} model")
    if (conflict := aux_conflict(method, model)) is not None:
        raise UserError(f"{where}: {conflict}")
    blocks = blocks_for(method, dataset, model)
    sections: dict[str, dict[str, Any]] = {name: {} for name in blocks}
    for key, value in values.items():
        owner = key_owner(key, blocks)
        if owner is None:
            if not strict:
                continue
            if owners := plugins_with(key):
                chosen = {"method": method, "dataset": dataset, "model": model}
                raise UserError(f"{where}: {key!r} is a parameter of {owners_text(owners)}, not of "
                                + " or ".join(f"{kind} {chosen[kind]!r}" for kind in owners))
            known = [k for b in blocks.values() for k in field_types(b)]
            raise UserError(f"{where}: {key!r} is not a parameter of method {method!r}, dataset {dataset!r} "
                            f"or model {model!r}{did_you_mean(key, known)}")
        sections[owner][key] = coerce(blocks[owner], key, value, where)
    train = sections["train"]
    if train.get("warmup_steps") and train.get("warmup_frac"):
        raise UserError(f"{where}: warmup_steps = {train['warmup_steps']} and warmup_frac = {train['warmup_frac']} "
                        "both set the warm-up; set one of them")
    if train.get("schedule_epochs") and train["schedule_epochs"] < train.get("epochs", TrainParams.epochs):
        raise UserError(f"{where}: schedule_epochs = {train['schedule_epochs']} is shorter than epochs = "
                        f"{train.get('epochs', TrainParams.epochs)}; the schedule must last the whole run")
    built = {name: blocks[name](**sections[name]) for name in blocks}
    method_params, model_params = built["method_params"], built["model_params"]
    if (getattr(model_params, "aux_task", None) == "clm" and getattr(method_params, "reg_target", None) == "cls"
            and hasattr(method_params, "alpha_aux") and model_params.bert_pool != "mean"):
        raise UserError(f"{where}: with aux_task = \"clm\" the auxiliary forward's CLS position sees only itself, so "
                        f"reg_target = \"cls\" would penalise one constant vector there; use reg_target = \"tokens\" "
                        f"or \"tokens_ref\", or bert_pool = \"mean\"")
    return RunConfig(method=method, dataset=dataset, seed=seed, model=model, **built)


def check_local_paths(configs: Iterable[RunConfig], where: str) -> None:
    """Refuse configs naming a local model file or folder that is not there, before any run is queued: the
    run would otherwise fail only once it loads its model. Relative paths are read from here, as runs
    started from here read them."""
    checked: set[int] = set()
    for cfg in configs:
        for block in (cfg.train, cfg.method_params, cfg.data_params, cfg.model_params):
            if id(block) in checked:  # the seeds of a setting share their blocks
                continue
            checked.add(id(block))
            if (missing := missing_local_path(block)) is not None:
                raise UserError(f"{where}: {missing}, which the runs of {cfg.method} on {cfg.dataset} load")


def config_from_dict(d: dict[str, Any], where: str) -> RunConfig:
    """Inverse of RunConfig.to_dict (reads config.json)."""
    try:
        flat = {**d["train"], **d["method_params"], **d["data_params"], **d["model_params"]}
        return build_config(d["method"], d["dataset"], d["seed"], d["model"], flat, where=where)
    except (KeyError, TypeError) as exc:
        raise UserError(f"{where}: not a robustmtl run config (missing {exc})") from None


def options_from_dict(d: dict[str, Any], where: str) -> RunOptions:
    known = {f.name for f in dataclasses.fields(RunOptions)}
    unknown = set(d) - known
    if unknown:
        raise UserError(f"{where}: unknown run option(s) {sorted(unknown)}; valid: {sorted(known)}")
    return RunOptions(**d)
