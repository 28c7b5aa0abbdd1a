"""Decoding one image file to the square uint8 pixels a ViT is fed: Pillow and numpy only, no torch.

Both the per-batch path (`images.FileImages`) and the cache builder's processes (`image_cache`) call
`decode_square`, so a cached image is bitwise the image the per-batch path decodes. The builder's
processes are spawned and import only this module, not torch.

The deterministic view (`resize`): "crop" resizes a file so its shorter side is `size * resize_ratio`,
then centre-crops `size` × `size` (the usual evaluation transform; Waterbirds: 256/224; CelebA's
178-px-wide faces: 1); "squash" resizes it to `size` × `size`, aspect ratio not kept (torchvision's
`Resize((S, S))`, the reference's evaluation transform).

Training's random view (`random_resized_crop`) is torchvision's `RandomResizedCrop(size, scale=(scale_min, 1))`:
an area fraction in [scale_min, 1] and an aspect ratio in [3/4, 4/3] (log-uniform), ten tries at a box that
fits, else a centre crop of the whole image clamped to those ratios; the box is resized bilinearly. Its
draws come from `crop_rng`, a numpy stream of (run seed, epoch, position in the epoch's order), so a crop
depends on nothing a worker holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustmtl.errors import UserError

RESIZES = ("crop", "squash")
CROP_RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect ratios, the reference's
CROP_TRIES = 10
CROP_STREAM = 0x43524F50  # keeps these draws apart from any other numpy stream seeded by (seed, epoch, ...)


@contextmanager
def _opened(path: Path, dataset: str) -> Iterator[Image.Image]:
    """The file opened with Pillow; a missing or unreadable file is a one-line UserError naming it."""
    try:
        with Image.open(path) as opened:
            yield opened
    except FileNotFoundError:
        raise UserError(f"{dataset}: image file {path} is missing (incomplete dataset directory)") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{dataset}: cannot read image {path} ({exc})") from None


def _channels_first(img: Image.Image) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def _crop_view(opened: Image.Image, size: int, resize_ratio: float) -> Image.Image:
    short = max(size, round(size * resize_ratio))
    opened.draft("RGB", (short, short))  # JPEG: decode at a reduced scale when that is enough
    img = opened.convert("RGB")
    w, h = img.size
    scale = short / min(w, h)
    resized = (max(short, round(w * scale)), max(short, round(h * scale)))
    img = img.resize(resized, Image.Resampling.BILINEAR)
    w, h = img.size
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def _squash_view(opened: Image.Image, size: int) -> Image.Image:
    opened.draft("RGB", (size, size))  # both sides stay at least `size`
    return opened.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def decode_square(path: Path, size: int, resize_ratio: float, dataset: str, resize: str = "crop") -> np.ndarray:
    """uint8 [3, size, size], the deterministic view `resize` (see the module doc)."""
    view: Callable[[Image.Image], Image.Image] = (
        (lambda opened: _squash_view(opened, size)) if resize == "squash"
        else (lambda opened: _crop_view(opened, size, resize_ratio)))
    with _opened(path, dataset) as opened:
        return _channels_first(view(opened))


def crop_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The random crop's stream for the example at `position` of an epoch's visiting order."""
    return np.random.default_rng([CROP_STREAM, seed, epoch, position])


def crop_box(width: int, height: int, scale_min: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(left, top, w, h) of a random resized crop, by torchvision's `RandomResizedCrop.get_params` rule."""
    area = width * height
    log_low, log_high = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, w, h
    ratio = width / height  # no try fitted: a centre crop at the nearest allowed aspect ratio
    if ratio < CROP_RATIO[0]:
        w, h = width, round(width / CROP_RATIO[0])
    elif ratio > CROP_RATIO[1]:
        w, h = round(height * CROP_RATIO[1]), height
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def random_resized_crop(img: Image.Image, size: int, scale_min: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 [3, size, size]: a random box of the RGB image (`crop_box`), resized bilinearly."""
    left, top, w, h = crop_box(*img.size, scale_min, rng)
    box = img.crop((left, top, left + w, top + h))
    return _channels_first(box.resize((size, size), Image.Resampling.BILINEAR))


def decode_random_crop(path: Path, size: int, scale_min: float, rng: np.random.Generator, dataset: str) -> np.ndarray:
    """The file at full resolution (the box is drawn in its own pixels), then `random_resized_crop`."""
    with _opened(path, dataset) as opened:
        return random_resized_crop(opened.convert("RGB"), size, scale_min, rng)


def decode_rows(target: str, start: int, paths: list[str], size: int, resize_ratio: float, dataset: str,
                resize: str = "crop") -> int:
    """Decode `paths` into rows start, start + 1, ... of the .npy file `target` (opened in place, so no
    pixels travel back to the caller); the number of rows written."""
    rows = np.lib.format.open_memmap(target, mode="r+")
    for i, path in enumerate(paths):
        rows[start + i] = decode_square(Path(path), size, resize_ratio, dataset, resize)
    rows.flush()
    del rows
    return len(paths)
