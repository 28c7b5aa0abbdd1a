"""Image splits' files decoded once, at the model's input size, into a memory-mapped uint8 file.

Decoding a full-size JPEG, resizing and cropping it costs a DataLoader worker milliseconds an image, on
every epoch. `cache_images` swaps each split's `FileImages` for `CachedImages`: the same pixels
(`decode.decode_square` wrote them), read as rows of a uint8 .npy file [N, 3, S, S] that every worker
memory-maps, so a batch reads its own rows and nothing is ever loaded whole (CelebA's 162,770 training
images at 224 px are 24 GB).

One file per (files, size, resize ratio, view): `<cache_dir>/images/<key>.npy`, with `<key>.json` describing
it. The key hashes the format version, Pillow's version (its libjpeg decides the decoded pixels), the
size, the resize ratio, the deterministic view (`image_resize`: centre crop or squash) and every file's
path, byte size and modification time (one stat per file at a run's start: less than one epoch of the
per-batch path, which opens every file). A changed file gives
a new key, and so a new cache; old ones stay until deleted.

Runs of a grid that start together share one build: a builder holds an flock on `<key>.lock` (the
kernel drops it if the builder dies), the others wait for it and then read its file. The .npy is
written under a temporary name, renamed into place, and its .json written last (atomically): a .npy
with its .json beside it is complete. A killed builder's temporary file is removed by the next one.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import PIL
import torch

from robustmtl.data.base import Splits
from robustmtl.data.decode import decode_rows
from robustmtl.data.images import FileImages, ImageSplit
from robustmtl.data.text import with_pool
from robustmtl.errors import UserError
from robustmtl.layout import write_json

CACHE_VERSION = 1
CHUNK = 64  # images per task of the build's process pool
REPORT_S = 15.0  # seconds between progress lines of a build


class CachedImages:
    """Rows of a complete cache file; each process maps the file itself on first use (workers included)."""

    def __init__(self, path: Path, n: int, size: int) -> None:
        self.path, self.n, self.size = path, n, size
        self._rows: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_rows": None}  # a worker maps the file again rather than receive a copy

    def rows(self) -> np.ndarray:
        if self._rows is None:
            self._rows = np.load(self.path, mmap_mode="r")
        return self._rows

    def load(self, idx: torch.Tensor, size: int) -> torch.Tensor:
        if size != self.size:
            raise ValueError(f"{self.path} holds images at {self.size} px, not {size}")
        return torch.from_numpy(np.asarray(self.rows()[idx.numpy()]))  # fancy indexing copies just these rows


def cache_key(source: FileImages, size: int) -> str:
    """Hash of what the decoded pixels depend on (see the module doc)."""
    # The centre-crop view hashes as it did before views had a name, so caches built then stay valid.
    view = "" if source.resize == "crop" else f"{source.resize}\0"
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0pillow {PIL.__version__}\0{size}\0{source.resize_ratio!r}\0"
                            f"{view}{len(source.paths)}\0".encode())
    for path in source.paths:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise UserError(f"{source.dataset}: image file {path} is missing (incomplete dataset directory)") from None
        digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:24]


def complete(npy: Path, n: int, size: int) -> bool:
    """Whether a finished build of this shape is there (its .json is written only after the rename)."""
    if not npy.with_suffix(".json").is_file():
        return False
    try:
        return np.load(npy, mmap_mode="r").shape == (n, 3, size, size)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def build_lock(path: Path, npy: Path) -> Iterator[None]:
    """Hold the exclusive lock of one cache file, saying so once when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"image cache: waiting for another process building {npy}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def report(line: str) -> None:
    """One progress line on stderr: readable in a SLURM log, and shown above `robustmtl run`'s progress bar
    (rich's live display redirects stderr), where a second live display would fight the first."""
    print(line, file=sys.stderr, flush=True)


def cached_source(source: FileImages, size: int, cache_dir: Path, processes: int, label: str) -> CachedImages:
    """The cache of these files at this size: read if complete, else built (or awaited from its builder)."""
    folder = cache_dir / "images"
    npy = folder / f"{cache_key(source, size)}.npy"
    n = len(source.paths)
    if not complete(npy, n, size):
        folder.mkdir(parents=True, exist_ok=True)
        with build_lock(npy.with_suffix(".lock"), npy):
            if not complete(npy, n, size):  # another process may have finished it while this one waited
                build(source, size, npy, processes, label)
    return CachedImages(npy, n, size)


def build(source: FileImages, size: int, npy: Path, processes: int, label: str) -> None:
    """Decode every file into a temporary .npy, rename it into place, then write its .json (lock held)."""
    for stale in npy.parent.glob(f".{npy.name}.*.tmp"):  # a killed builder's: nobody else holds the lock
        stale.unlink(missing_ok=True)
    n = len(source.paths)
    need = n * 3 * size * size
    free = shutil.disk_usage(npy.parent).free
    if need > free:
        raise UserError(f"image cache for {label} needs {need / 1e9:.1f} GB in {npy.parent} but {free / 1e9:.1f} GB "
                        "are free; free space, point $ROBUSTMTL_CACHE elsewhere, or set image_cache = false")
    tmp = npy.with_name(f".{npy.name}.{os.getpid()}.tmp")
    started = time.monotonic()
    report(f"image cache: decoding {n} {label} images at {size} px into {npy} ({need / 1e9:.2f} GB, "
           f"{processes} process{'es' if processes > 1 else ''})")
    try:
        rows = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 3, size, size))
        del rows  # the header is written; the decoders fill the rows in place
        decode_all(source, size, str(tmp), processes, label)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    write_json(npy.with_suffix(".json"), {
        "version": CACHE_VERSION, "what": label, "images": n, "size": size, "resize_ratio": source.resize_ratio,
        "resize": source.resize, "pillow": PIL.__version__, "bytes": need,
        "first_file": str(source.paths[0]) if n else None})
    report(f"image cache: {label} done in {time.monotonic() - started:.0f} s")


def decode_all(source: FileImages, size: int, target: str, processes: int, label: str) -> None:
    """Every file into its row of `target`: in this process for a few chunks, else over spawned processes
    (they import Pillow and numpy, not torch; forking a process that holds torch's threads is unsafe)."""
    paths = [str(p) for p in source.paths]
    starts = range(0, len(paths), CHUNK)
    args = [(target, s, paths[s:s + CHUNK], size, source.resize_ratio, source.dataset, source.resize) for s in starts]
    workers = min(processes, len(args))
    if workers <= 1:
        for a in args:
            decode_rows(*a)
        return
    done, last = 0, time.monotonic()
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(decode_rows, *a) for a in args]
        try:
            for future in concurrent.futures.as_completed(futures):
                done += future.result()
                if time.monotonic() - last >= REPORT_S:
                    last = time.monotonic()
                    report(f"image cache: {label} {done}/{len(paths)} ({math.floor(100 * done / len(paths))}%)")
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def cache_images(splits: Splits, cache_dir: Path, processes: int) -> Splits:
    """Every split (and pre-training pool) that decodes files per batch, reading its cache instead."""
    named: dict[str, Any] = {}
    for name, split in with_pool(splits).items():
        if isinstance(split, ImageSplit) and isinstance(split.source, FileImages):
            label = f"{split.source.dataset} {name}"
            split = split.with_source(cached_source(split.source, split.size, cache_dir, processes, label))
        named[name] = split
    return Splits(splits.info, named["train"], named["val"], named["test"], pretrain=named.get("pretrain"))
