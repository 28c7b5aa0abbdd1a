"""Image splits served as uint8 pixels, with Pillow and torch only (torchvision cannot load beside the CPU torch).

A split holds an image *source* (tensors in memory, files on disk read lazily per batch, or the
pre-decoded cache of those files, `image_cache.py`) plus the size the model wants and how its images are
viewed; the model's `prepare` sets both (`at_size`, `with_views`). A batch is {"pixel_values": uint8
[B, 3, H, W]}: a quarter of float32's bytes through worker shared memory, pinning and the copy to the
device. The model turns it into its input on its device (`models/vit.py:ImageInput.pixels`: float, resized to
its size where the source did not, normalised). Files are decoded at the split's size (`decode.py`) by the
split's deterministic view (`image_resize`: centre crop or squash); in-memory images keep their own.

Training batches (`training_batch`) may instead be random resized crops (`image_train_crop`), drawn per
example from (run seed, epoch, position in the epoch's order): the same batches whatever the worker count,
and again on a resumed run. They read the original files (or in-memory images), never the cache of
finished views, which still serves evaluation and the auxiliary batches.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch
from PIL import Image

from robustmtl.data.base import DataInfo, Draw, Split
from robustmtl.data.decode import crop_rng, decode_random_crop, decode_square, random_resized_crop
from robustmtl.data.files import SPLIT_NAMES


class ImageSource(Protocol):
    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        """uint8 [len(idx), 3, H, W]: `size` × `size` where the source resizes, else the images as stored."""
        ...


class OriginalImages(ImageSource, Protocol):
    """A source of the images themselves (not of finished views), which random crops can read."""

    def random_crop(self, i: int, size: int, scale_min: float, rng: np.random.Generator) -> torch.Tensor:
        """uint8 [3, size, size]: a random resized crop of image `i` (`decode.random_resized_crop`)."""
        ...


class TensorImages:
    """Images already in memory: uint8 [N, C, H, W], served as stored (the model resizes them on its device)."""

    def __init__(self, pixels: torch.Tensor) -> None:
        self.pixels = pixels

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        return self.pixels[idx]

    def random_crop(self, i: int, size: int, scale_min: float, rng: np.random.Generator) -> torch.Tensor:
        img = Image.fromarray(self.pixels[i].permute(1, 2, 0).numpy()).convert("RGB")
        return torch.from_numpy(random_resized_crop(img, size, scale_min, rng))


class FileImages:
    """Image files decoded when a batch asks for them (never all at once)."""

    def __init__(self, paths: list[Path], resize_ratio: float, dataset: str, resize: str = "crop") -> None:
        self.paths = paths
        self.resize_ratio = resize_ratio
        self.dataset = dataset
        self.resize = resize  # the deterministic view: "crop" or "squash" (decode.py)

    def with_resize(self, resize: str) -> FileImages:
        return FileImages(self.paths, self.resize_ratio, self.dataset, resize)

    def load_one(self, path: Path, size: int) -> torch.Tensor:
        return torch.from_numpy(decode_square(path, size, self.resize_ratio, self.dataset, self.resize))

    def random_crop(self, i: int, size: int, scale_min: float, rng: np.random.Generator) -> torch.Tensor:
        return torch.from_numpy(decode_random_crop(self.paths[i], size, scale_min, rng, self.dataset))

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        return torch.stack([self.load_one(self.paths[i], size) for i in idx.tolist()])


class ImageSplit(Split):
    """Images with labels and groups; a batch is {"pixel_values": uint8 [B, 3, H, W]} (see the module doc)."""

    def __init__(self, name: str, source: OriginalImages, y: torch.Tensor, g: torch.Tensor,
                 size: int, membership: torch.Tensor | None = None, n_groups: int | None = None) -> None:
        super().__init__(name, y, g, membership=membership, n_groups=n_groups)
        self.source: ImageSource = source
        self.originals: OriginalImages = source  # what random crops read: the files or tensors, never a cache
        self.size = size
        self.crop_scale_min: float | None = None  # set: training batches are random resized crops

    def with_views(self, resize: str, train_crop: str, crop_scale_min: float) -> ImageSplit:
        """This split with its deterministic view `resize` ("crop", "squash"; in-memory images, square here,
        are served as stored either way) and, for `train_crop = "random_resized"`, random crops in training."""
        clone = copy.copy(self)
        if isinstance(self.originals, FileImages):  # a cache of another view is dropped with it
            clone.source = clone.originals = self.originals.with_resize(resize)
        clone.crop_scale_min = crop_scale_min if train_crop == "random_resized" else None
        return clone

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

    def training_batch(self, idx: torch.Tensor, draw: Draw) -> dict[str, torch.Tensor]:
        if self.crop_scale_min is None:
            return self[idx]
        idx = torch.as_tensor(idx, dtype=torch.long)
        seed, epoch, first = draw
        scale_min = self.crop_scale_min
        pixels = torch.stack([self.originals.random_crop(i, self.size, scale_min, crop_rng(seed, epoch, first + k))
                              for k, i in enumerate(idx.tolist())])
        return {**self.labels(idx), "pixel_values": pixels}


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
