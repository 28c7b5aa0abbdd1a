"""A timm Vision Transformer with SimMIM as its pre-training objective (optional: `pip install robustmtl[timm]`).

timm imports torchvision, whose PyPI wheels only load beside a CUDA build of torch, so this model
lives outside the core: on a CPU-only install, choosing it fails with one line saying so.

`timm_name` is any timm ViT with a class token (`vit_base_patch16_224`, `vit_small_patch16_224`, ...).
`timm_weights` is a local weights file (.safetensors, .bin, .pth; e.g. a download of the hub model's
`model.safetensors`), loaded through timm's own `pretrained_cfg_overlay=dict(file=...)` so timm adapts
it (position-embedding resampling at another `timm_image_size`, head removal); empty means random
initialisation. Nothing is fetched from a hub.

`h` is the last layer's class token after the final norm; SimMIM is the same as the `vit` model's
(`models/vit.py`): the embeddings of masked patches are replaced by a learned mask token before the
position embeddings are added, and a 1×1-conv + pixel-shuffle decoder reconstructs the masked pixels.
`aux_task = "simclr"` / `"simclr_ref"` swaps SimMIM for SimCLR here too (inherited; `models/simclr.py`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustmtl.data.base import DataInfo
from robustmtl.errors import UserError
from robustmtl.models.base import Encoded, Model
from robustmtl.models.params import TimmViTParams
from robustmtl.models.vit import CHANNELS, ViT

VIT_PARTS = ("cls_token", "patch_embed", "_pos_embed", "patch_drop", "norm_pre", "blocks", "norm")
IMPORT_HELP = ("timm needs torchvision, whose PyPI wheels load only beside a CUDA build of torch: install "
               "`robustmtl[timm]` on a GPU machine, or use the `vit` model (transformers, no torchvision)")


def import_timm() -> Any:
    """timm, or a one-line UserError (its import fails with a RuntimeError when torchvision cannot load)."""
    try:
        import timm
    except Exception as exc:
        first = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UserError(f"model 'timm_vit' cannot import timm ({first}); {IMPORT_HELP}") from None
    return timm


def create_vit(p: TimmViTParams) -> nn.Module:
    timm = import_timm()
    kwargs: dict[str, Any] = {"num_classes": 0}
    if p.timm_image_size:
        kwargs["img_size"] = p.timm_image_size
    if p.timm_weights:
        weights = Path(p.timm_weights).expanduser()
        if not weights.is_file():
            raise UserError(f"timm_weights: no such file {weights} (a local weights file for {p.timm_name!r}; "
                            "nothing is downloaded)")
        kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": str(weights.resolve())})
    try:
        vit = timm.create_model(p.timm_name, **kwargs)
    except RuntimeError as exc:
        reason = str(exc).splitlines()[0]
        raise UserError(f"timm_name={p.timm_name!r}: {reason} (see timm.list_models('vit*'))") from None
    missing = [part for part in VIT_PARTS if getattr(vit, part, None) is None]
    if missing:
        raise UserError(f"timm_name={p.timm_name!r} is not a ViT with a class token (no {', '.join(missing)})")
    return vit


class TimmViT(ViT):
    """The `vit` model with a timm backbone: everything but building and running the backbone is inherited."""

    def __init__(self, p: TimmViTParams, info: DataInfo) -> None:
        Model.__init__(self)  # not ViT.__init__, which builds a transformers backbone
        self.vit = create_vit(p)
        if self.vit.num_prefix_tokens != 1:
            raise UserError(f"timm_name={p.timm_name!r} has {self.vit.num_prefix_tokens} prefix tokens; SimMIM "
                            "here decodes the patch tokens after a single class token")
        cfg = getattr(self.vit, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", (0.5,) * CHANNELS))
        self.std = tuple(cfg.get("std", (0.5,) * CHANNELS))
        dim = self.vit.embed_dim
        self._add_shared_parts(dim, self.vit.patch_embed.patch_size[0], self.vit.patch_embed.img_size[0], p, info)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def encoder_module(self) -> nn.Module:
        return self.vit.blocks

    def _encode(self, pixels: torch.Tensor, mask: torch.Tensor | None) -> Encoded:
        """timm's forward_features, with the embeddings of masked patches swapped for the mask token."""
        vit = self.vit
        x = vit.patch_embed(pixels)
        if mask is not None:
            w = mask.reshape(*x.shape[:-1], 1).to(x.dtype)
            x = x * (1 - w) + self.mask_token.to(x.dtype) * w
        x = vit.norm(vit.blocks(vit.norm_pre(vit.patch_drop(vit._pos_embed(x)))))
        return Encoded(h=x[:, 0], tokens=x)
