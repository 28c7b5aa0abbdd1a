"""Image splits decoded per batch, with Pillow and torch only (torchvision cannot load beside the CPU torch).

A split holds an image *source* (tensors in memory, or files on disk read lazily per batch) plus the
size and normalisation the model wants; the model's `prepare` sets those with `transformed`. Files
are resized so the shorter side is `size * resize_ratio`, then centre-cropped to `size` × `size`: the
usual evaluation transform (Waterbirds: 256/224; CelebA's 178-px-wide faces: 1).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from robustmtl.data.base import DataInfo, Split
from robustmtl.data.files import SPLIT_NAMES
from robustmtl.errors import UserError


class TensorImages:
    """Images already in memory: uint8 [N, C, H, W]."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        x = self.pixels[idx].float() / 255.0
        if x.shape[-1] != size or x.shape[-2] != size:
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                                align_corners=False)
        return x


class FileImages:
    """Image files read when a batch asks for them (never all at once)."""

    def __init__(self, paths: list[Path], resize_ratio: float, dataset: str) -> None:
        self.paths = paths
        self.resize_ratio = resize_ratio
        self.dataset = dataset

    def load_one(self, path: Path, size: int) -> torch.Tensor:
        short = max(size, round(size * self.resize_ratio))
        try:
            with Image.open(path) as opened:
                opened.draft("RGB", (short, short))  # JPEG: decode at a reduced scale when that is enough
                img = opened.convert("RGB")
                w, h = img.size
                scale = short / min(w, h)
                resized = (max(short, round(w * scale)), max(short, round(h * scale)))
                img = img.resize(resized, Image.Resampling.BILINEAR)
                w, h = img.size
                left, top = (w - size) // 2, (h - size) // 2
                img = img.crop((left, top, left + size, top + size))
                array = np.asarray(img, dtype=np.uint8)
        except FileNotFoundError:
            raise UserError(f"{self.dataset}: image file {path} is missing (incomplete dataset directory)") from None
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{self.dataset}: cannot read image {path} ({exc})") from None
        return torch.from_numpy(array.copy()).permute(2, 0, 1)

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        return torch.stack([self.load_one(self.paths[i], size) for i in idx.tolist()]).float() / 255.0


class ImageSplit(Split):
    """Images with labels and groups; a batch is {"pixel_values": float [B, 3, size, size], normalised}."""

    def __init__(self, name: str, source: TensorImages | FileImages, y: torch.Tensor, g: torch.Tensor,
                 size: int, membership: torch.Tensor | None = None, n_groups: int | None = None) -> None:
        super().__init__(name, y, g, membership=membership, n_groups=n_groups)
        self.source = source
        self.size = size
        self.mean = torch.full((3, 1, 1), 0.5)
        self.std = torch.full((3, 1, 1), 0.5)

    def transformed(self, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> ImageSplit:
        """This split at another size and normalisation (what the model was trained with)."""
        clone = copy.copy(self)
        clone.size = size
        clone.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        clone.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        return clone

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": (self.source.load(idx, self.size) - self.mean) / self.std}


def file_image_splits(dataset: str, info: DataInfo, masks: list[pd.Series], files: pd.Series, image_dir: Path,
                      y_all: torch.Tensor, a_all: torch.Tensor, resize_ratio: float, size: int) -> list[ImageSplit]:
    """Train/val/test splits of an on-disk image benchmark: one boolean row mask per split over its table."""
    splits = []
    for name, mask in zip(SPLIT_NAMES, masks, strict=True):
        rows = torch.tensor(mask.to_numpy())
        y, a = y_all[rows], a_all[rows]
        paths = [image_dir / f for f in files[mask]]
        splits.append(ImageSplit(name, FileImages(paths, resize_ratio, dataset), y, info.n_attrs * y + a,
                                 size=size, n_groups=info.n_groups))
    return splits
