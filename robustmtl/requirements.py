"""The runs a run needs before it can start, by role: the one planning rule for grids, jobs and `robustmtl run`.

- `pretrain`: with `pretrain_epochs` > 0, a run of method `pretrain` trains the encoder on the model's own
  auxiliary objective alone, and this run fine-tunes from its encoder weights with a fresh classification
  head. Its identity holds only what shapes those weights (the data and model parameters and the
  `pretrain_*` settings, with `pretrain_seed` as its seed), so every run that shares them (all seeds,
  learning rates, methods of a sweep) shares one pre-training run, like one public checkpoint.
- the method's own requirements, named by its registry entry (`requires=`, a rule below: JTT's stage 1),
  which inherit the training parameters and so require the same pre-training run (DFR's and AFR's base runs too).

Torch-free: a grid plans 100,000 runs without importing a model.
"""

from __future__ import annotations

from robustmtl.config import RunConfig, build_config
from robustmtl.errors import UserError
from robustmtl.registry import method_plugin

PRETRAIN_METHOD = "pretrain"


def pretrain_config(config: RunConfig) -> RunConfig:
    """The pre-training run that `config` fine-tunes from."""
    d = config.to_dict()
    t = config.train
    values = {**d["data_params"], **d["model_params"], "epochs": t.pretrain_epochs, "lr": t.pretrain_lr,
              "batch_size": t.pretrain_batch_size}
    return build_config(PRETRAIN_METHOD, config.dataset, t.pretrain_seed, config.model, values,
                        where=f"pre-training run of {config.run_id}")


def required_runs(config: RunConfig) -> dict[str, RunConfig]:
    """Runs that must be done before `config` starts, by role name; each may require runs of its own."""
    required: dict[str, RunConfig] = {}
    if config.train.pretrain_epochs and config.method != PRETRAIN_METHOD:
        required["pretrain"] = pretrain_config(config)
    required.update(method_plugin(config.method).requires(config))
    return required


def encoder_keepers(config: RunConfig) -> set[str]:
    """Run ids among `config`'s requirements (transitively) whose final encoder weights a requiring run loads
    (its method's `reads_encoders` roles): those runs save them at the end (`RunOptions.keep_encoder`)."""
    keep: set[str] = set()
    for cfg in [config, *with_transitive(config)]:
        reads = method_plugin(cfg.method).reads_encoders
        keep.update(needed.run_id for role, needed in required_runs(cfg).items() if role in reads)
    return keep


def with_transitive(config: RunConfig) -> list[RunConfig]:
    """`config`'s required runs and theirs, each once, every run after the runs it needs."""
    ordered: dict[str, RunConfig] = {}

    def visit(cfg: RunConfig) -> None:
        for needed in required_runs(cfg).values():
            if needed.run_id not in ordered:
                visit(needed)
                ordered[needed.run_id] = needed

    visit(config)
    return list(ordered.values())


def jtt_stage1(config: RunConfig) -> dict[str, RunConfig]:
    """JTT's stage-1 run: ERM for `jtt_epochs` epochs, every other training, data and model parameter the same."""
    d = config.to_dict()
    p = config.method_params
    values = {**d["train"], **d["data_params"], **d["model_params"], "epochs": p.jtt_epochs}
    if p.jtt_schedule == "reference":
        if config.trained_epochs < 1:
            raise UserError(f"jtt_schedule = 'reference' trains stage 2 for epochs - jtt_epochs - 1 "
                            f"= {config.trained_epochs} epochs; set epochs to at least jtt_epochs + 2")
        values["schedule_epochs"] = config.train.epochs  # stage 1 stops at T on the E-epoch schedule
    stage1 = build_config("jtt_stage1", config.dataset, config.seed, config.model, values,
                          where=f"jtt stage 1 of {config.run_id}")
    return {"stage1": stage1}


def retrained_base(config: RunConfig) -> dict[str, RunConfig]:
    """The base run of a method that retrains its last layer (DFR, AFR; `methods/dfr.py:OnABase`): the base
    method with every training, data and model parameter the same and the base method's own parameters carried
    by the retraining method's block, so it is the grid's own cell of that method."""
    d = config.to_dict()
    params = config.method_params
    values = {**d["train"], **d["data_params"], **d["model_params"], **params.base_values()}
    base = build_config(params.base_method, config.dataset, config.seed, config.model, values, strict=False,
                        where=f"{config.method} base run of {config.run_id}")
    return {"base": base}
