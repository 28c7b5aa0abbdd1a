"""JTT, Just Train Twice (Liu et al., ICML 2021): find the examples ERM gets wrong, then train again upweighting them.

Two runs, two registry names:

`jtt_stage1` is ERM trained for `jtt_epochs` (T) epochs, every other training, data and model
parameter equal to the stage-2 run's. When training ends it builds the *error set*: the training
examples that the final (epoch T) model misclassifies, from one pass over the training split in
eval mode (no dropout, no feature masking or other augmentation: the loop's ordinary `predict`).
The set is written atomically to `error_set.json` in its run directory (`indices`, sorted; `count`;
`n_train`), and its size is a DONE-summary field (`error_set_size`). It is a helper run
(`report = False`): tables leave it out, so stage-2 model selection never looks at stage-1 epochs.

`jtt` declares the stage-1 run as its requirement (`jtt_stage1` in `requirements.py`), so the
grid expander schedules it first and deduplicates it by run id: every run of a `jtt_upweight` sweep
(and anything else that only changes stage-2 method parameters) shares one stage-1 run. Stage 2 trains from the initial
(pretrained) model again — the loop builds every run's model from its seed, so it starts from the
same weights as stage 1 — on an upsampled training set: each epoch visits every training example
once plus every error-set example `jtt_upweight` more times, i.e. an error example appears
**`1 + jtt_upweight` times per epoch**, in one order shuffled with the epoch's generator. Mapping
settings from other code: the JTT authors' scripts append the error set `--up_weight` extra times to
the training set, the same convention, so their `--up_weight k` is `jtt_upweight = k`; the MTL
paper's reference code repeats an error example λ_up times in all, so its λ_up is
`jtt_upweight + 1` (its text default λ_up = 6 is `jtt_upweight = 5`).
The loss is plain ERM. Neither stage reads training group labels.

`jtt_schedule = "reference"` follows the reference's single E-epoch schedule instead: stage 1 keeps an
E-epoch learning-rate horizon (`schedule_epochs`) and stops at T, so its error set comes from a model whose
learning rate has not annealed, and stage 2 trains E − T − 1 epochs (`RunConfig.trained_epochs`), the
epochs the reference has left after the one that finds the errors. Its learning-rate schedule starts afresh
(warm-up included) but keeps the reference's horizon, E epochs of the plain training split's batches: the upsampled
epochs are longer, so stage 2 ends before the learning rate anneals, as the reference's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustmtl.errors import UserError
from robustmtl.layout import ERROR_SET, corrupt, read_json, write_json
from robustmtl.lazy import torch
from robustmtl.methods.base import MethodContext
from robustmtl.methods.erm import ERM
from robustmtl.params import added_later, at_least, one_of, positive

if TYPE_CHECKING:
    from robustmtl.models.base import Model


@dataclass(frozen=True)
class JTTParams:
    jtt_epochs: int = field(default=2, metadata=positive())
    jtt_upweight: int = field(default=5, metadata=at_least(0))
    # "separate": stage 1 is a T-epoch run with its own schedule and stage 2 runs `epochs`. "reference": the
    # reference's one E-epoch schedule: stage 1's learning rate follows an E-epoch horizon (it stops at T, far
    # from annealed) and stage 2 trains the E - T - 1 epochs the reference has left after the error-set epoch.
    jtt_schedule: str = field(default="separate", metadata=added_later(one_of("separate", "reference")))


class JTTStage1(ERM):
    """ERM for T epochs, then the error set of the final model on the training split."""

    report = False

    def after_training(self, model: Model, predict: Any) -> dict[str, Any]:
        correct = predict("train").correct  # eval mode: no dropout / masking
        errors = [int(i) for i in (~correct).nonzero()[0]]
        write_json(self.ctx.run_dir.artifact(ERROR_SET),
                   {"indices": errors, "count": len(errors), "n_train": len(correct)})
        return {"error_set_size": len(errors)}


class JTT(ERM):
    """Stage 2: ERM on the training set with the stage-1 error set upsampled."""

    def __init__(self, params: JTTParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        path = ctx.required["stage1"].artifact(ERROR_SET)
        saved = read_json(path, "JTT error set")
        indices = saved.get("indices") if isinstance(saved, dict) else None
        if not isinstance(indices, list) or not all(type(i) is int for i in indices):
            raise corrupt("JTT error set", "no list of integer 'indices'", path)
        if saved.get("n_train") != len(ctx.train):
            raise UserError(f"{path}: error set of a {saved.get('n_train')}-example training split, "
                            f"but this run's has {len(ctx.train)}; delete the stage-1 run to redo it")
        self.error_set = torch.tensor(indices, dtype=torch.long)
        self.upsampled = torch.cat([torch.arange(len(ctx.train)), self.error_set.repeat(params.jtt_upweight)])

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        return self.upsampled[torch.randperm(len(self.upsampled), generator=gen)]

    def schedule_steps(self, steps_per_epoch: int, epochs: int) -> int:
        if self.params.jtt_schedule != "reference":
            return super().schedule_steps(steps_per_epoch, epochs)
        # the reference starts a new schedule at stage 2 (warm-up included) whose horizon is still the one it set
        # at the start: E epochs of the plain training split's batches, not of the upsampled set's
        train = self.ctx.config.train
        return math.ceil(len(self.ctx.train) / train.batch_size) * train.epochs
