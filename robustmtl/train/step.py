"""One optimiser step, shared by the training loop and `benchmarks/train_step.py`.

Everything that makes a step fast on a GPU lives here so that the benchmark times the loop's own
code: mixed precision (bf16 autocast, or fp16 with a GradScaler where bf16 is missing), TF32 matmuls,
fused AdamW, `zero_grad(set_to_none=True)`, and optionally a compiled encoder. On a CPU the default
is plain fp32, which keeps runs bitwise reproducible.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from robustmtl.errors import UserError
from robustmtl.methods.base import Method, Terms
from robustmtl.models.base import Model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """bf16 in hardware (Ampere, compute capability 8.0, and later; ROCm GPUs). Not torch's
    `is_bf16_supported()`, which also says yes where bf16 is only emulated (V100, T4) and slow, and
    which asks about the current device rather than the one the run uses."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_properties(device).major >= 8


def resolve_precision(requested: str, device: torch.device) -> str:
    """`auto` is bf16 on a CUDA GPU with native bf16, fp16 on older CUDA GPUs, fp32 elsewhere."""
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if native_bf16(device) else "fp16"
    if requested == "bf16" and device.type == "cuda" and not native_bf16(device):
        raise UserError(f"precision bf16 asked for, but {torch.cuda.get_device_name(device)} has no native bf16 "
                        "(it would be emulated, slowly); use precision auto or fp16")
    return requested


def enable_tf32(device: torch.device) -> None:
    """TF32 matmuls and convolutions: fp32 weights, tensor-core speed (Ampere and later; no-op elsewhere)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """Forward passes at the run's precision (a no-op in fp32)."""
    if precision == "fp32":
        yield
        return
    with torch.autocast(device.type, dtype=DTYPES[precision]):
        yield


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None


@dataclass
class Stepper:
    """Forward under autocast, backward (scaled for fp16), clip, optimiser and scheduler step."""

    model: Model
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    device: torch.device
    precision: str
    grad_clip: float = 0.0
    scaler: torch.amp.GradScaler | None = None

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return autocast(self.device, self.precision)

    def step(self, method: Method, batch: dict[str, torch.Tensor],
             aux_batch: dict[str, torch.Tensor] | None) -> Terms:
        self.model.train()
        with self.autocast():
            terms = method.loss(self.model, batch, aux_batch)
        self.optimizer.zero_grad(set_to_none=True)
        stepped = True
        if self.scaler is None:
            terms.total.backward()
            self._clip()
            self.optimizer.step()
        else:
            self.scaler.scale(terms.total).backward()
            if self.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
            self._clip()
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            # update() lowers the scale exactly when it skipped. Both get_scale() calls read the GPU: fp16 steps
            # wait for the device once a step, the price of a schedule that skips with the scaler (bf16/fp32 never do)
            stepped = self.scaler.get_scale() >= scale
        if self.scheduler is not None and stepped:
            self.scheduler.step()  # a step the scaler skipped (inf/NaN gradients) does not advance the schedule
        return terms

    def _clip(self) -> None:
        if self.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
