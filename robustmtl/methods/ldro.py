"""L-DRO, Lookahead-DRO: our reading of Michel, Ruder & Yogatama, "Balancing Average and Worst-case
Accuracy in Multitask Learning" (2021). No public implementation exists; this is what we implement.

Every group g present in the batch is a task with loss ℓ_g (mean cross-entropy over the batch's
examples of g). Instead of gDRO's running weights, each step picks task weights w on the simplex by
looking one step ahead: if the model took a step of size η (`ldro_lookahead_lr`) along the weighted
gradient Σ_k w_k ∇ℓ_k, to first order every task's loss would become

    ℓ'_g(w) = ℓ_g − η · ⟨∇ℓ_g, Σ_k w_k ∇ℓ_k⟩ = ℓ_g − η · (M w)_g,      M_gk = ⟨∇ℓ_g, ∇ℓ_k⟩,

and w is chosen to minimise the worst predicted loss while keeping weight on many tasks,

    w* = argmin_{w ∈ Δ} max_g ℓ'_g(w) − τ · H(w),      H(w) = −Σ_g w_g log w_g,  τ = `ldro_tau` > 0.

So a group that currently has a *lower* loss but would be hurt by a step that serves the others
(its gradient conflicts with theirs, M_gk < 0) gets weight, which plain gDRO (weights from current
losses only) would not give it. The loss of the step is Σ_g w*_g ℓ_g with w* detached.

Gradients are taken **only with respect to the classifier head's parameters** (`model.head`):
one `torch.autograd.grad(ℓ_g, head, retain_graph=True)` per present group, which only traverses the
head, so the overhead is a few tiny backward passes and a G×G Gram matrix, whatever the encoder.
The head gradients stand in for the full ones in the lookahead (an approximation: the encoder's
interactions between groups are not seen).

Solver (small and deterministic). The objective F(w) is convex on the simplex (a max of linear
functions plus a negative entropy) and tiny (G = groups in the batch). We run `ldro_steps`
iterations of entropic mirror descent (exponentiated gradient) from uniform w with its exact
subgradient ∇F = −η M[g*] + τ (log w + 1), g* = the group with the largest predicted loss (first on
ties), a step normalised by the subgradient's spread, s_t = √(2 log G) / (√(t + 1) · spread), and
return the iterate with the lowest F seen (the standard guarantee for subgradient mirror descent;
on random 2–3 group problems it is within ~0.02 of the brute-force optimum after 100 steps).
Weights are floored at 1e-12 so log w stays finite. The solver runs in float64 numpy on G×G numbers.
So an L-DRO step waits for the GPU (the losses and Gram matrix are read back, and the groups present are
found on the host), unlike the other methods' steps (`train/syncs.py`): the solver's data-dependent
iterations are cheap on the host and would be ~1,000 tiny kernel launches a step on the device.
τ → ∞ gives uniform weights, τ → 0 pure minimax. A single present group gets weight 1.

Default η = 0.01, neither 1.0 nor the training learning rate: the lookahead term is η·(M w)_g, and
M's scale is set by the head-gradient norms. On the synthetic MLP (LayerNorm'd 64-dim h, ‖h‖ ≈ 8)
we measured squared per-group head-gradient norms of 15–65 at initialisation and 20–110 for the
badly fitted minority groups during ERM training (≈ 0.1 for the fitted majority groups), against
losses of 0.02–3 nats. At η = 0.01 a step on one group changes predicted losses by ~0.1–1 nats, the
order of the losses, so current losses and interactions both count (e.g. weights ≈ (0.04, 0.02,
0.89, 0.05) on one batch where group 2 is worst and group 1's gradient conflicts with it). At
η = 1 the first-order model breaks down: the high-gradient minority groups' predicted losses go
far below zero, so the "worst after the step" are the already-fitted majority groups with tiny
gradients, and they got ~85% of the weight (observed) — the opposite of the intent. At η = lr =
1e-3 the lookahead is ~0.01–0.1 nats and L-DRO is close to a softened "weight the currently worst
group". η is scale-dependent (another encoder/head has other gradient norms), so sweep it.
τ = 0.1 keeps some weight on every group while the lookahead still decides.

Logged parts: `end` (plain batch-mean cross-entropy), `robust` (Σ w_g ℓ_g, optimised), `w_max`
(largest weight) and `w_entropy` (H(w), in nats).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from robustmtl.lazy import torch
from robustmtl.methods.base import Method, Terms
from robustmtl.methods.gdro import group_losses
from robustmtl.params import at_least, positive

if TYPE_CHECKING:
    from robustmtl.models.base import Model


@dataclass(frozen=True)
class LDROParams:
    ldro_lookahead_lr: float = field(default=0.01, metadata=at_least(0.0))
    ldro_tau: float = field(default=0.1, metadata=positive())
    ldro_steps: int = field(default=100, metadata=positive())


WEIGHT_FLOOR = 1e-12


def lookahead_weights(losses: torch.Tensor, gram: torch.Tensor, eta: float, tau: float, steps: int) -> torch.Tensor:
    """w ∈ Δ minimising max_g (losses − eta · gram @ w)_g − tau · H(w), by mirror descent (see module)."""
    ell = losses.detach().double().cpu().numpy()
    em = eta * gram.detach().double().cpu().numpy()
    n = len(ell)
    if n == 1:
        return torch.ones(1, dtype=torch.float64)
    w = np.full(n, 1.0 / n)
    log_w = np.log(w)
    best_w, best_f = w, math.inf
    scale = math.sqrt(2 * math.log(n))
    for t in range(steps + 1):
        predicted = ell - em @ w  # the first-order losses after the lookahead step
        worst = int(predicted.argmax())
        f = float(predicted[worst]) + tau * float(w @ log_w)  # F(w) = max_g ℓ'_g − τ H(w)
        if f < best_f:
            best_w, best_f = w, f
        if t == steps:
            break
        grad = tau * log_w - em[worst]  # ∇F up to a constant, which the normalisation removes
        spread = float(grad.max() - grad.min())
        if spread <= 0:  # the subgradient is constant on the simplex: w is optimal
            break
        z = log_w - scale / (math.sqrt(t + 1) * spread) * grad
        w = np.exp(z - z.max())
        w = np.maximum(w / w.sum(), WEIGHT_FLOOR)
        w = w / w.sum()
        log_w = np.log(w)
    return torch.from_numpy(best_w)


def entropy(w: torch.Tensor) -> torch.Tensor:
    return -(w * torch.log(w.clamp(min=1e-300))).sum()


class LookaheadDRO(Method):
    uses_train_groups = True

    def loss(self, model: Model, batch: dict[str, torch.Tensor], aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        logits = model(batch).float()
        per_example = torch.nn.functional.cross_entropy(logits, batch["y"], reduction="none")
        all_losses, present = group_losses(per_example, batch["g"], self.ctx.info.n_train_groups)
        losses = all_losses[present]
        head = [p for p in model.head.parameters() if p.requires_grad]
        grads = []
        for loss_g in losses:
            parts = torch.autograd.grad(loss_g, head, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                    for g, p in zip(parts, head, strict=True)]))
        flat = torch.stack(grads).double()
        p = self.params
        w = lookahead_weights(losses, flat @ flat.T, p.ldro_lookahead_lr, p.ldro_tau, p.ldro_steps)
        robust = (w.to(losses.device, losses.dtype) * losses).sum()
        return Terms(total=robust, parts={"end": per_example.mean(), "robust": robust,
                                          "w_max": w.max().float(), "w_entropy": entropy(w).float()})
