"""Decoding one image file to the square uint8 pixels a ViT is fed: Pillow and numpy only, no torch.

Both the per-batch path (`images.FileImages`) and the cache builder's processes (`image_cache`) call
`decode_square`, so a cached image is bitwise the image the per-batch path decodes. The builder's
processes are spawned and import only this module, not torch.

A file is resized so its shorter side is `size * resize_ratio`, then centre-cropped to `size` × `size`:
the usual evaluation transform (Waterbirds: 256/224; CelebA's 178-px-wide faces: 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from robustmtl.errors import UserError


def decode_square(path: Path, size: int, resize_ratio: float, dataset: str) -> np.ndarray:
    """uint8 [3, size, size]; a missing or unreadable file is a one-line UserError naming it."""
    short = max(size, round(size * resize_ratio))
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
        raise UserError(f"{dataset}: image file {path} is missing (incomplete dataset directory)") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{dataset}: cannot read image {path} ({exc})") from None
    return np.ascontiguousarray(array.transpose(2, 0, 1))


def decode_rows(target: str, start: int, paths: list[str], size: int, resize_ratio: float, dataset: str) -> int:
    """Decode `paths` into rows start, start + 1, ... of the .npy file `target` (opened in place, so no
    pixels travel back to the caller); the number of rows written."""
    rows = np.lib.format.open_memmap(target, mode="r+")
    for i, path in enumerate(paths):
        rows[start + i] = decode_square(Path(path), size, resize_ratio, dataset)
    rows.flush()
    del rows
    return len(paths)
