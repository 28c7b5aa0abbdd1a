"""The optimiser and the learning-rate schedule of a run, from its training parameters."""

from __future__ import annotations

import math

import torch

from robustmtl.config import RunConfig
from robustmtl.models.base import Model, param_groups


def make_optimizer(model: Model, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW is fused (one kernel over all parameters) on CUDA and on the CPU, where torch's default is a
    per-parameter loop several times slower. The fused kernel's vectorised arithmetic rounds differently
    from that loop in the last bit, so a run is bitwise reproducible against runs of the same code, not
    against CPU runs made with the loop."""
    t = cfg.train
    groups = param_groups(model, t.weight_decay)
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum)
    return torch.optim.AdamW(groups, lr=t.lr, fused=device.type in ("cuda", "cpu"))


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig,
                   total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the peak over `warmup_steps` (else `warmup_frac` of the run's steps), then the
    `scheduler`'s shape over the remaining steps. The factor at step s < W is (s + 1) / W, so the first step
    already trains (transformers' schedulers give step 0 a learning rate of 0: one step later throughout)."""
    t = cfg.train
    warmup = t.warmup_steps or int(t.warmup_frac * total_steps)
    kind = t.scheduler

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total_steps - warmup, 1)
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
