"""A Vision Transformer (transformers' ViTModel, no torchvision) with SimMIM as its pre-training objective.

`vit_pretrained` names a checkpoint (a local directory such as a download of
google/vit-base-patch16-224-in21k, or a cached hub id; see `models/hub.py`); empty means a small ViT
from scratch built from `vit_patch_size`, `vit_hidden_dim`, `vit_depth` and `vit_heads` (those four
are ignored for a pretrained checkpoint, which fixes its own architecture). `vit_image_size` 0
means the checkpoint's size, or for a model from scratch the dataset's native size (MNIST 28), else
32. A pretrained model run at another size interpolates its position embeddings (the reference runs
its 224-px checkpoint at 384).

`h` is the last layer's CLS token (after the final LayerNorm); the classifier is linear on it. The
classifier and SimMIM's decoder are new layers: PyTorch's default init, or with `head_init =
"trunc_normal"` the reference's (transformers' ViT init: `trunc_normal_(std=0.02)`, whose bounds of ±2
are absolute, so it truncates nothing in practice, and zero biases).

SimMIM (Xie et al., 2022): square mask patches of `mim_mask_scale` × the model's patch size are
chosen at random, `mim_mask_ratio` of them per image (rounded up); their patch embeddings are
replaced by a learned mask token (ViTModel's `bool_masked_pos`); a light decoder (1×1 conv to
patch²·3 channels + pixel shuffle) reconstructs the image from the patch tokens, and the loss is
the L1 error on the masked pixels only, divided by the channels (`mim_loss = "l2"`: the squared error,
for images that are mostly one background value, such as MNIST, where the L1 optimum of a decoder that
knows nothing is the background itself; docs/vision-study.md measures SimMIM staying there). The
reference also augments the auxiliary view (random resized crop, flip); robustmtl does not: auxiliary
batches get the deterministic view (documented difference).

`prepare` sets how the splits serve images (`ImageViewParams`): the deterministic view (`image_resize`:
centre crop or squash) and, with `image_train_crop = "random_resized"`, random resized crops for the
end-task training batches (`data/images.py`).

Batches carry uint8 pixels (`data/images.py`); `pixels` turns them into the model's input on the
model's device, with the checkpoint's mean/std as non-persistent buffers (constants of the checkpoint,
not state a run's checkpoint should carry). SimMIM's target is that same normalised image.

`encode_pair` runs the end-task images and the masked auxiliary images as one batch: the end-task
half gets an all-False patch mask, which leaves its embeddings exactly as without one.

`aux_task = "simclr"` (or the reference's pairing, `"simclr_ref"`) swaps SimMIM for SimCLR
(`models/simclr.py`): a projection head takes the decoder's place (initialised by `head_init` likewise),
the auxiliary images are augmented views, unmasked, and the loss is NT-Xent on the views' CLS embeddings;
`h` and the classifier are the same. `encode_pair` still runs [end images; views] as one batch.

`vit_from_scratch = true` builds `vit_pretrained`'s architecture (its config) with random weights drawn
from the run's seeded RNG, keeping its image size and normalisation: the image counterpart of
`bert_from_scratch`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from robustmtl.data.base import DataInfo, Split, Splits
from robustmtl.data.images import ImageSplit
from robustmtl.errors import UserError
from robustmtl.models.base import AuxOutput, Encoded, Model
from robustmtl.models.hub import load, resolve
from robustmtl.models.params import ViTParams
from robustmtl.models.simclr import contrastive_loss, projection_head, views

SCRATCH_SIZE = 32
CHANNELS = 3


def simmim_mask(batch: int, grid: int, scale: int, ratio: float, device: torch.device,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, grid, grid] bool over model patches: ceil(ratio · n) random mask patches of scale × scale each.

    When the mask patch does not divide the grid (28 px / 4-px patches = 7), the mask is drawn on the
    next larger grid and cropped, so slightly fewer patches than the ratio may be masked.
    """
    coarse = math.ceil(grid / scale)
    n = coarse * coarse
    count = min(n, math.ceil(ratio * n))
    ranks = torch.rand(batch, n, generator=generator, device=device).argsort(dim=1).argsort(dim=1)
    mask = (ranks < count).view(batch, coarse, coarse)
    return mask.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)[:, :grid, :grid]


def simmim_loss(pixels: torch.Tensor, reconstruction: torch.Tensor, mask: torch.Tensor, patch: int,
                kind: str = "l1") -> torch.Tensor:
    """Mean error over masked pixels, divided by the channels (SimMIM's normalisation): absolute ("l1",
    SimMIM's and the reference's) or squared ("l2")."""
    pixel_mask = mask.repeat_interleave(patch, dim=1).repeat_interleave(patch, dim=2)[:, None].to(pixels.dtype)
    difference = reconstruction.float() - pixels.float()
    error = (difference.abs() if kind == "l1" else difference.square()) * pixel_mask
    return error.sum() / (pixel_mask.sum() + 1e-5) / pixels.shape[1]


def normalisation(source: str, mean: tuple[float, ...] = (0.5,) * CHANNELS,
                  std: tuple[float, ...] = (0.5,) * CHANNELS) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The checkpoint's image mean/std from its preprocessor_config.json; `mean`/`std` when it has none."""
    from transformers.utils import cached_file

    path = cached_file(source, "preprocessor_config.json", local_files_only=True,
                       _raise_exceptions_for_missing_entries=False)
    config = json.loads(Path(path).read_text()) if path else {}
    return tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))


INIT_STD = 0.02  # transformers' ViTConfig.initializer_range, the reference's for every new layer


def init_as_transformers(layer: nn.Linear | nn.Conv2d) -> None:
    """transformers' ViT init of a new linear or convolutional layer: truncated normal weights, zero bias."""
    nn.init.trunc_normal_(layer.weight, std=INIT_STD)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def split_at(both: Encoded, n: int) -> tuple[Encoded, Encoded]:
    """The encoding of one batch of [end-task images; auxiliary images] as its two halves."""
    return Encoded(h=both.h[:n], tokens=both.tokens[:n]), Encoded(h=both.h[n:], tokens=both.tokens[n:])


class ImageInput(Model):
    """What every image encoder here shares: `prepare` serves the splits at the model's size and views, and
    `pixels` turns a batch's uint8 images into the normalised input on the model's device."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor

    def _set_input(self, size: int, p: Any) -> None:
        """The input size, the views (`ImageViewParams` in `p`) and the normalisation (`self.mean`, `self.std`
        set first)."""
        # non-persistent: they move with the model to its device but stay out of state_dict, so checkpoints
        # and pre-trained encoders keep their keys
        for name, values in (("pixel_mean", self.mean), ("pixel_std", self.std)):
            self.register_buffer(name, torch.tensor(values, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.size = size
        self.views = (p.image_resize, p.image_train_crop, p.image_crop_scale_min)

    def prepare(self, splits: Splits, cache_dir: Path | None) -> Splits:
        """Decode every split's files (and the pre-training pool's, if any) at this model's size and views."""
        def served(split: Split) -> ImageSplit:
            if not isinstance(split, ImageSplit):
                raise TypeError(f"{type(self).__name__} needs ImageSplit inputs, got {type(split).__name__}")
            return split.at_size(self.size).with_views(*self.views)

        pool = served(splits.pretrain) if splits.pretrain is not None else None
        return Splits(splits.info, served(splits.train), served(splits.val), served(splits.test), pretrain=pool)

    def pixels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's input from the batch's uint8 pixels, computed where they are (the model's device):
        `unit_pixels`, then (x - mean) / std. The classifier and SimMIM read its result."""
        return self.normalise(self.unit_pixels(batch))

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std of [0, 1] images: the one place images are normalised (SimCLR's views come through)."""
        return (x - self.pixel_mean) / self.pixel_std

    def unit_pixels(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's uint8 pixels as [0, 1] floats at this model's size (antialiased bilinear where the source
        served another)."""
        raw = batch["pixel_values"]
        if raw.dtype != torch.uint8:
            raise TypeError(f"pixel_values must be uint8 images as an ImageSplit serves them, got {raw.dtype}")
        x = raw.float() / 255.0
        if x.shape[-2:] != (self.size, self.size):
            x = nn.functional.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                                          align_corners=False)
        return x


class ViT(ImageInput):
    vit: Any  # transformers' ViTModel (timm's VisionTransformer in TimmViT)

    def __init__(self, p: ViTParams, info: DataInfo) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTModel

        if p.vit_from_scratch and not p.vit_pretrained:
            raise UserError("vit_from_scratch = true builds the architecture vit_pretrained names, and it is empty: "
                            "name a checkpoint, or leave vit_from_scratch unset for the small ViT vit_hidden_dim, "
                            "vit_depth and vit_heads describe")
        if p.vit_pretrained:
            if p.vit_from_scratch:  # random weights drawn from the run's seeded RNG, as every new layer's are
                self.vit = ViTModel(load(ViTConfig, p.vit_pretrained, "vit_pretrained"), add_pooling_layer=False,
                                    use_mask_token=True)
            else:
                self.vit = load(ViTModel, p.vit_pretrained, "vit_pretrained", add_pooling_layer=False,
                                use_mask_token=True)
            self.mean, self.std = normalisation(resolve(p.vit_pretrained, "vit_pretrained"))
            size = p.vit_image_size or self.vit.config.image_size
        else:
            size = p.vit_image_size or info.extra.get("image_size", SCRATCH_SIZE)
            if p.vit_hidden_dim % p.vit_heads:
                raise UserError(f"vit_hidden_dim={p.vit_hidden_dim} must be a multiple of vit_heads={p.vit_heads}")
            config = ViTConfig(image_size=size, patch_size=p.vit_patch_size, num_channels=CHANNELS,
                               hidden_size=p.vit_hidden_dim, num_hidden_layers=p.vit_depth,
                               num_attention_heads=p.vit_heads, intermediate_size=4 * p.vit_hidden_dim,
                               encoder_stride=p.vit_patch_size)
            self.vit = ViTModel(config, add_pooling_layer=False, use_mask_token=True)
            self.mean, self.std = (0.5,) * CHANNELS, (0.5,) * CHANNELS
        config = self.vit.config
        self._add_shared_parts(config.hidden_size, config.patch_size, size, p, info)
        self.interpolate = size != config.image_size

    def _add_shared_parts(self, dim: int, patch: int, size: int, p: Any, info: DataInfo) -> None:
        """What every ViT encoder here shares: the input (`_set_input`), the patch grid, the auxiliary task's
        settings and new layer (SimMIM's decoder or SimCLR's projection head), the classifier."""
        self._set_input(size, p)
        if size % patch:
            raise UserError(f"image size {size} must be a multiple of the patch size {patch}")
        self.patch, self.grid = patch, size // patch
        self.mask_ratio, self.mask_scale, self.mim_loss = p.mim_mask_ratio, p.mim_mask_scale, p.mim_loss
        self.aux_task, self.temperature = p.aux_task, p.simclr_temperature
        new_layer: nn.Linear | nn.Conv2d
        if self.aux_task == "mim":
            new_layer = nn.Conv2d(dim, patch**2 * CHANNELS, kernel_size=1)
            self.decoder = nn.Sequential(new_layer, nn.PixelShuffle(patch))
        else:
            self.projection = projection_head(dim)
            new_layer = cast(nn.Linear, self.projection[0])
        self.head = nn.Linear(dim, info.n_classes)
        if p.head_init == "trunc_normal":
            init_as_transformers(new_layer)
            init_as_transformers(self.head)

    @classmethod
    def build(cls, p: ViTParams, info: DataInfo) -> ViT:
        return cls(p, info)

    def _encode(self, pixels: torch.Tensor, mask: torch.Tensor | None) -> Encoded:
        tokens = self.vit(pixel_values=pixels, bool_masked_pos=mask, interpolate_pos_encoding=self.interpolate)
        tokens = tokens.last_hidden_state
        return Encoded(h=tokens[:, 0], tokens=tokens)

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        return self._encode(self.pixels(batch), None)

    def encoder_module(self) -> nn.Module:
        return self.vit

    def reconstruct(self, pixels: torch.Tensor, mask: torch.Tensor) -> AuxOutput:
        """SimMIM loss of these normalised images (`pixels`' result) under this [B, grid, grid] patch mask."""
        return self._simmim(self._encode(pixels, mask.flatten(1)), pixels, mask)

    def _simmim(self, encoded: Encoded, pixels: torch.Tensor, mask: torch.Tensor) -> AuxOutput:
        """Decode the patch tokens back to pixels; the pixel error (`mim_loss`) on the masked ones."""
        features = encoded.tokens[:, 1:].transpose(1, 2).reshape(len(pixels), -1, self.grid, self.grid)
        loss = simmim_loss(pixels, self.decoder(features), mask, self.patch, self.mim_loss)
        return AuxOutput(loss=loss, encoded=encoded)

    def _draw_mask(self, pixels: torch.Tensor) -> torch.Tensor:
        return simmim_mask(len(pixels), self.grid, self.mask_scale, self.mask_ratio, pixels.device)

    def aux_loss(self, batch: dict[str, torch.Tensor]) -> AuxOutput:
        if self.aux_task == "simclr_ref":
            raise UserError("aux_task = \"simclr_ref\" pairs each end-task image with an auxiliary view, and this "
                            "method has no end-task batch (pre-training): use aux_task = \"simclr\"")
        if self.aux_task != "mim":
            encoded = self._encode(self.normalise(views(self.unit_pixels(batch), self.aux_task)), None)
            return self._contrast(encoded, None)
        pixels = self.pixels(batch)
        return self.reconstruct(pixels, self._draw_mask(pixels))

    def _contrast(self, aux: Encoded, end: Encoded | None) -> AuxOutput:
        """SimCLR's loss of the auxiliary views' encoding (`models/simclr.py`)."""
        loss = contrastive_loss(self.projection, aux.h, None if end is None else end.h, self.aux_task,
                                self.temperature)
        return AuxOutput(loss=loss, encoded=aux)

    def encode_pair(self, batch: dict[str, torch.Tensor],
                    aux_batch: dict[str, torch.Tensor]) -> tuple[Encoded, AuxOutput]:
        """One forward over [end images; aux images]; only the auxiliary half's patches are masked (SimMIM), or
        the auxiliary half is its SimCLR views, unmasked."""
        n = len(batch["pixel_values"])
        if self.aux_task != "mim":
            aux_views = self.normalise(views(self.unit_pixels(aux_batch), self.aux_task))
            end, aux = split_at(self._encode(torch.cat([self.pixels(batch), aux_views]), None), n)
            return end, self._contrast(aux, end)
        end_pixels, aux_pixels = self.pixels(batch), self.pixels(aux_batch)
        mask = self._draw_mask(aux_pixels)
        unmasked = torch.zeros(len(end_pixels), mask.shape[1] * mask.shape[2], dtype=torch.bool, device=mask.device)
        both = self._encode(torch.cat([end_pixels, aux_pixels]), torch.cat([unmasked, mask.flatten(1)]))
        end, aux = split_at(both, n)
        return end, self._simmim(aux, aux_pixels, mask)
