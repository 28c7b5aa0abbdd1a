"""SimCLR as the image encoders' auxiliary objective (`aux_task = "simclr"` or `"simclr_ref"`), in torch alone.

Views: the reference's three augmentations, applied to [0, 1] images on the model's device, every draw per
image: colour jitter with probability 0.8 (brightness, contrast and saturation factors in [0.2, 1.8], a hue
shift of up to ±0.2 of a turn, in that fixed order, each clamped to [0, 1]; the hue is rotated in YIQ space,
a linear stand-in for torchvision's HSV shift), greyscale with probability 0.2 (ITU-R 601 luma), and a
Gaussian blur with probability 0.5 (σ in [0.1, 2], a kernel of about a tenth of the side, reflected at the
borders). The strengths are SimCLR's (Chen et al., 2020; colour strength 1). No crop: the reference's
SimCLR views have none. Every draw comes from one RNG, the run's seeded global one by default (on the
model's device, as SimMIM's masks), whose state a checkpoint keeps: the same views again on a resume; no
draw reads the device back, so a step still never waits for the GPU.

Loss: NT-Xent (normalised-temperature cross-entropy) over 2N projections: each one's positive is its
partner, the other 2N − 2 are its negatives, cosine similarity over the temperature (the reference's 1.0 by
default). The projection head is Linear(d, d) + GELU on the CLS embedding `h`, the reference's.

Pairings. "simclr" is SimCLR: two independent views of each auxiliary image are a positive pair. "simclr_ref"
is the reference's: the i-th end-task image's CLS, detached (no gradient reaches the encoder through it),
paired with one view of the i-th auxiliary image, which comes from an independently shuffled pass, so it is
another image; a positive pair of two different images asks the encoder to map unrelated images together,
which is no contrast between views of one image. It needs an end-task batch, so pre-training refuses it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

JITTER_P, GREY_P, BLUR_P = 0.8, 0.2, 0.5
JITTER = 0.8  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]
HUE = 0.2  # the hue shift, in turns
SIGMA = (0.1, 2.0)
LUMA = (0.299, 0.587, 0.114)
RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
YIQ_TO_RGB: tuple[tuple[float, ...], ...] = tuple(map(tuple, torch.linalg.inv(torch.tensor(RGB_TO_YIQ,
                                                                                          dtype=torch.float64)).tolist()))
TASKS = ("simclr", "simclr_ref")  # the `aux_task` values this module serves


def projection_head(dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim), nn.GELU())


def mix(matrix: tuple[tuple[float, ...], ...], channels: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each row's weighted sum of the channels. Python floats, never tensors copied to the device each step."""
    return [sum(w * c for w, c in zip(row, channels, strict=True)) for row in matrix]  # type: ignore[misc]


def grey(x: torch.Tensor) -> torch.Tensor:
    """[B, 1, H, W] luma of [B, 3, H, W] RGB."""
    return mix((LUMA,), list(x.split(1, dim=1)))[0]


def blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor · x + (1 − factor) · other, clamped to [0, 1]; `factor` is one value per image."""
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp(0, 1)


def rotate_hue(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image's chroma (I, Q of YIQ) by its angle (`turns` of a full turn), keeping its luma."""
    y, i, q = mix(RGB_TO_YIQ, list(x.split(1, dim=1)))
    angle = (2 * math.pi * turns).view(-1, 1, 1, 1)
    cos, sin = angle.cos(), angle.sin()
    return torch.cat(mix(YIQ_TO_RGB, [y, cos * i - sin * q, sin * i + cos * q]), dim=1).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Each image blurred by its own σ: a separable kernel of odd size about a tenth of the side."""
    b, c, h, w = x.shape
    size = max(3, int(0.1 * min(h, w)) | 1)
    offsets = torch.arange(size, device=x.device, dtype=x.dtype) - size // 2
    kernel = torch.exp(-offsets.square() / (2 * sigma.view(-1, 1).square()))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # [B·C, size]
    flat = nn.functional.pad(x.reshape(1, b * c, h, w), (size // 2,) * 4, mode="reflect")
    flat = nn.functional.conv2d(flat, kernel.view(b * c, 1, size, 1), groups=b * c)
    flat = nn.functional.conv2d(flat, kernel.view(b * c, 1, 1, size), groups=b * c)
    return flat.view(b, c, h, w)


def simclr_view(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each [0, 1] image of [B, 3, H, W] (the module docstring's augmentations)."""
    n = len(x)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator, device=x.device, dtype=x.dtype)

    def chosen(p: float) -> torch.Tensor:
        return torch.rand(n, generator=generator, device=x.device) < p

    jitter = chosen(JITTER_P)
    brightness, contrast, saturation = (torch.where(jitter, uniform(1 - JITTER, 1 + JITTER), 1.0) for _ in range(3))
    hue = torch.where(jitter, uniform(-HUE, HUE), 0.0)
    x = (x * brightness.view(-1, 1, 1, 1)).clamp(0, 1)
    x = blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), contrast)
    x = blend(x, grey(x), saturation)
    x = rotate_hue(x, hue)
    x = torch.where(chosen(GREY_P).view(-1, 1, 1, 1), grey(x).expand_as(x), x)
    blurred = gaussian_blur(x, uniform(*SIGMA))
    return torch.where(chosen(BLUR_P).view(-1, 1, 1, 1), blurred, x)


def views(x: torch.Tensor, task: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """The auxiliary batch's views: [view 1; view 2] of every image for "simclr", one view for "simclr_ref";
    in float32 under any autocast (the blur is a convolution)."""
    with torch.autocast(x.device.type, enabled=False):
        return torch.cat([simclr_view(x.float(), generator) for _ in range(2 if task == "simclr" else 1)])


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent of the N pairs (a_i, b_i): cross-entropy of each of the 2N over its similarities to the other 2N − 1,
    its partner the target; computed in float32 outside autocast."""
    with torch.autocast(a.device.type, enabled=False):
        z = nn.functional.normalize(torch.cat([a, b]).float(), dim=1)
        n = len(a)
        logits = (z @ z.T / temperature).fill_diagonal_(-math.inf)
        partner = torch.arange(2 * n, device=z.device).roll(n)  # i's partner: i + n, and n + i's: i
        return nn.functional.cross_entropy(logits, partner)


def contrastive_loss(projection: nn.Module, aux_h: torch.Tensor, end_h: torch.Tensor | None, task: str,
                     temperature: float) -> torch.Tensor:
    """NT-Xent of the auxiliary views' CLS embeddings `aux_h` (as `views` stacks them); for "simclr_ref" against
    the detached end-task CLS `end_h`, pair by pair over the shorter of the two batches."""
    z = projection(aux_h)
    if task == "simclr":
        first, second = z.chunk(2)
        return nt_xent(first, second, temperature)
    if end_h is None:
        raise ValueError("the reference's pairing needs the end-task batch")
    n = min(len(end_h), len(z))
    return nt_xent(projection(end_h[:n].detach()), z[:n], temperature)
