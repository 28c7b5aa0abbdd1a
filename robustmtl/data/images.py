"""Image splits served as uint8 pixels, with Pillow and torch only (torchvision cannot load beside the CPU torch).

A split holds an image *source* (tensors in memory, files on disk read lazily per batch, or the
pre-decoded cache of those files, `image_cache.py`) plus the size the model wants; the model's `prepare`
sets it with `at_size`. A batch is {"pixel_values": uint8 [B, 3, H, W]}: a quarter of float32's bytes
through worker shared memory, pinning and the copy to the device. The model turns it into its input on
its device (`models/vit.py:ViT.pixels`: float, resized to its size where the source did not, normalised).
Files are decoded at the split's size (`decode.py`); in-memory images keep their own.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from robustmtl.data.base import DataInfo, Split
from robustmtl.data.decode import decode_square
from robustmtl.data.files import SPLIT_NAMES


class ImageSource(Protocol):
    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        """uint8 [len(idx), 3, H, W]: `size` × `size` where the source resizes, else the images as stored."""
        ...


class TensorImages:
    """Images already in memory: uint8 [N, C, H, W], served as stored (the model resizes them on its device)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        return self.pixels[idx]


class FileImages:
    """Image files decoded when a batch asks for them (never all at once)."""

    def __init__(self, paths: list[Path], resize_ratio: float, dataset: str) -> None:
        self.paths = paths
        self.resize_ratio = resize_ratio
        self.dataset = dataset

    def load_one(self, path: Path, size: int) -> torch.Tensor:
        return torch.from_numpy(decode_square(path, size, self.resize_ratio, self.dataset))

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        return torch.stack([self.load_one(self.paths[i], size) for i in idx.tolist()])


class ImageSplit(Split):
    """Images with labels and groups; a batch is {"pixel_values": uint8 [B, 3, H, W]} (see the module doc)."""

    def __init__(self, name: str, source: ImageSource, y: torch.Tensor, g: torch.Tensor,
                 size: int, membership: torch.Tensor | None = None, n_groups: int | None = None) -> None:
        super().__init__(name, y, g, membership=membership, n_groups=n_groups)
        self.source = source
        self.size = size

    def at_size(self, size: int) -> ImageSplit:
        """This split decoding its files at another size (what the model was built for)."""
        clone = copy.copy(self)
        clone.size = size
        return clone

    def with_source(self, source: ImageSource) -> ImageSplit:
        """This split reading the same images from another source (the decoded cache of its files)."""
        clone = copy.copy(self)
        clone.source = source
        return clone

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.source.load(idx, self.size)}


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
