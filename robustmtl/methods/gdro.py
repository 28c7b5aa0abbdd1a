"""Group DRO (Sagawa et al., ICLR 2020): online mirror ascent on a distribution q over training groups.

Every step, for the groups g present in the batch, ℓ_g is the mean cross-entropy over the batch's
examples of group g. Those groups' weights are updated multiplicatively and renormalised,

    q_g ← q_g · exp(η · (ℓ_g + C / √n_g))      (present groups only; absent ones keep their q_g)
    q   ← q / Σ_k q_k

and the loss is Σ_g q_g ℓ_g over the present groups with the *updated* q (held constant, as in the
reference, where q is updated from detached losses before the weighted sum). η is `gdro_eta`,
C is `gdro_c` (the generalisation adjustment, 0 = off) and n_g the group's training count. q starts
uniform over all groups of the dataset and is part of the checkpoint (`state_dict`), so a resumed
run continues with the same q. With `gdro_balanced` (the reference's default), each epoch draws
len(train) indices with replacement, with probability ∝ 1/n_g of the example's group; otherwise an
epoch is a plain shuffle. The reference's update includes absent groups with a zero loss (so with
C > 0 their weight still grows by the adjustment term); here absent groups are left alone, as the
issue specifies.

Logged parts: `end` (plain batch-mean cross-entropy, comparable across methods), `robust` (the
weighted loss that is optimised, Σ q_g ℓ_g) and `q_max` (largest group weight). With C > 0 the
reference adds the adjustment into the group losses before weighting them, so the loss it reports
is higher than `robust` by Σ_g q_g · C/√n_g (over all groups, as it adds the adjustment to every
group); the adjustment is a constant, so q and the gradients are the same. That value is logged
too, as `robust_adjusted` (only with C > 0, where it differs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from robustmtl.lazy import torch
from robustmtl.methods.balancing import inverse_frequency_weights
from robustmtl.methods.base import Method, MethodContext, Terms
from robustmtl.params import at_least

if TYPE_CHECKING:
    from robustmtl.models.base import Model


@dataclass(frozen=True)
class GDROParams:
    gdro_eta: float = field(default=0.01, metadata=at_least(0.0))
    gdro_c: float = field(default=0.0, metadata=at_least(0.0))
    gdro_balanced: bool = True


def group_losses(per_example: torch.Tensor, g: torch.Tensor, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of every group over a batch (0 where absent) and the mask of groups present.

    Counted with `index_add` into `n_groups` slots rather than `bincount`, which on a GPU reads the largest
    label back to the host to size its output: every shape here is fixed, so the step never waits."""
    zeros = torch.zeros(n_groups, dtype=per_example.dtype, device=per_example.device)
    counts = zeros.index_add(0, g, torch.ones_like(per_example))  # whole numbers: exact below 2**24 per group
    sums = zeros.index_add(0, g, per_example)
    present = counts > 0
    return sums / counts.clamp(min=1), present


class GroupDRO(Method):
    uses_train_groups = True

    def __init__(self, params: GDROParams, ctx: MethodContext) -> None:
        super().__init__(params, ctx)
        n_groups = ctx.info.n_train_groups
        self.group_counts = torch.bincount(ctx.train.g, minlength=n_groups)
        self.adjustment = params.gdro_c / self.group_counts.clamp(min=1).float().sqrt()
        self.q = torch.full((n_groups,), 1.0 / n_groups)
        self.sample_weights = inverse_frequency_weights(ctx.train.g)

    def epoch_indices(self, epoch: int, gen: torch.Generator) -> torch.Tensor:
        if not self.params.gdro_balanced:
            return super().epoch_indices(epoch, gen)
        return torch.multinomial(self.sample_weights, len(self.ctx.train), replacement=True, generator=gen)

    def update_q(self, losses: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """One exponentiated-gradient step on q from detached group losses; returns the new q.

        q lives on the losses' device, so a GPU step never waits on a copy to the host; the first step's copies
        onto the GPU are asynchronous (a blocking one would wait for the forward queued before it)."""
        self.adjustment = self.adjustment.to(losses.device, non_blocking=True)
        adjusted = losses.detach().float() + self.adjustment
        factor = torch.where(present, torch.exp(self.params.gdro_eta * adjusted), torch.ones_like(adjusted))
        q = self.q.to(losses.device, non_blocking=True) * factor
        self.q = q / q.sum()
        return self.q

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        logits = model(batch).float()
        per_example = torch.nn.functional.cross_entropy(logits, batch["y"], reduction="none")
        losses, present = group_losses(per_example, batch["g"], self.ctx.info.n_train_groups)
        q = self.update_q(losses, present)
        robust = (q * losses).sum()  # absent groups have loss 0
        parts = {"end": per_example.mean(), "robust": robust, "q_max": q.max()}
        if self.params.gdro_c > 0:
            parts["robust_adjusted"] = robust.detach() + (q * self.adjustment).sum()
        return Terms(total=robust, parts=parts)

    def state_dict(self) -> dict[str, Any]:
        return {"q": self.q.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "q" in state:
            self.q = state["q"].clone().float()
