"""Generated image datasets for timing the image path: a Waterbirds-like set of JPEGs and its decode rate.

    python benchmarks/image_files.py [--n 200] [--size 224]

prints the images per second one process decodes (the per-batch path, `image_cache = false`: each
DataLoader worker does this) and the images per second read back from the decoded cache.

`waterbirds_like_jpegs` is meant to be reused by benchmarks of the whole input path: 500×375 JPEGs at
quality 90 with smooth structure plus a little noise, so their byte size (about 55 KB) and decode cost
are near Waterbirds' own images rather than a flat colour's or white noise's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

WATERBIRDS_SIZE = (500, 375)  # most Waterbirds images are this size (width, height)


def waterbirds_like_jpegs(folder: Path, n: int, size: tuple[int, int] = WATERBIRDS_SIZE, seed: int = 0) -> list[Path]:
    """`n` JPEGs `size` (width, height) in `folder`: upsampled low-resolution colour fields plus noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    width, height = size
    for i in range(n):
        coarse = Image.fromarray(rng.integers(0, 256, (height // 25, width // 25, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.int16)
        noisy = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    from robustmtl.data.image_cache import cached_source
    from robustmtl.data.images import FileImages

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images")
    parser.add_argument("--size", type=int, default=224, help="the model's input size")
    parser.add_argument("--batch", type=int, default=32, help="images per cache read")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = waterbirds_like_jpegs(Path(tmp) / "images", args.n)
        kb = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        source = FileImages(paths, 256 / 224, "bench")
        start = time.perf_counter()
        for i in range(len(paths)):
            source.load_one(paths[i], args.size)
        decode = len(paths) / (time.perf_counter() - start)
        cache = cached_source(source, args.size, Path(tmp) / "cache", 1, "bench")
        order = np.random.default_rng(0).permutation(len(paths))
        import torch

        start = time.perf_counter()
        for s in range(0, len(paths), args.batch):
            cache.load(torch.from_numpy(order[s:s + args.batch]), args.size)
        read = len(paths) / (time.perf_counter() - start)
    print(f"{len(paths)} JPEGs {WATERBIRDS_SIZE[0]}x{WATERBIRDS_SIZE[1]} (mean {kb:.0f} KB) at {args.size} px: "
          f"decode {decode:.0f} images/s per process, cache read {read:.0f} images/s (page cache warm)")


if __name__ == "__main__":
    main()
