"""The decoded-image cache: bitwise the per-batch decode, built once per (files, size, ratio), shared safely."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo, Splits
from robustmtl.data.image_cache import CHUNK, CachedImages, cache_images, cached_source
from robustmtl.data.images import FileImages, ImageSplit, TensorImages
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import TIMING_KEYS, read_records
from tests.test_data_benchmarks import make_waterbirds

INFO = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"))


def jpegs(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """Noisy JPEGs of assorted sizes and aspect ratios (some smaller than the size they are served at)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        height, width = 20 + int(rng.integers(0, 60)), 20 + int(rng.integers(0, 60))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, quality=85)
        paths.append(path)
    return paths


def files(tmp_path: Path, n: int = 12) -> FileImages:
    return FileImages(jpegs(tmp_path / "img", n), 256 / 224, "test")


def images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_cached_batches_are_bitwise_the_decoded_ones(tmp_path):
    source = files(tmp_path)
    cache = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    idx = torch.tensor([5, 0, 11, 5, 3])
    assert torch.equal(cache.load(idx, 32), source.load(idx, 32))
    assert cache.load(idx, 32).dtype == torch.uint8
    assert images(tmp_path / "cache" / "images") == sorted(
        f"{cache.path.stem}{suffix}" for suffix in (".json", ".lock", ".npy"))
    with pytest.raises(ValueError, match="at 32 px"):
        cache.load(idx, 64)


def test_a_build_over_spawned_processes_writes_every_row(tmp_path):
    source = files(tmp_path, 2 * CHUNK + 5)  # three chunks: two processes share them
    cache = cached_source(source, 16, tmp_path / "cache", 2, "test train")
    everything = torch.arange(len(source.paths))
    assert torch.equal(cache.load(everything, 16), source.load(everything, 16))


def test_built_once_then_read_and_rebuilt_when_size_ratio_or_a_file_changes(tmp_path, capsys):
    source = files(tmp_path)
    first = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    assert "decoding 12 test train images" in capsys.readouterr().err
    inode = first.path.stat().st_ino
    again = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    assert again.path == first.path and again.path.stat().st_ino == inode and capsys.readouterr().err == ""
    other_size = cached_source(source, 16, tmp_path / "cache", 1, "test train")
    other_ratio = cached_source(FileImages(source.paths, 1.0, "test"), 32, tmp_path / "cache", 1, "test train")
    assert len({first.path, other_size.path, other_ratio.path}) == 3
    Image.new("RGB", (40, 40), (1, 2, 3)).save(source.paths[4])
    os.utime(source.paths[4], ns=(time.time_ns(), time.time_ns() + 10**9))  # a later mtime even on coarse clocks
    changed = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    assert changed.path != first.path
    assert torch.equal(changed.load(torch.tensor([4]), 32), source.load(torch.tensor([4]), 32))


def test_an_unfinished_build_is_redone_and_its_leftovers_removed(tmp_path):
    source = files(tmp_path)
    cache = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    cache.path.with_suffix(".json").unlink()  # as if killed between the rename and the .json
    leftover = cache.path.with_name(f".{cache.path.name}.12345.tmp")
    leftover.write_bytes(b"half a build")
    rebuilt = cached_source(source, 32, tmp_path / "cache", 1, "test train")
    assert rebuilt.path.with_suffix(".json").is_file() and not leftover.exists()
    assert torch.equal(rebuilt.load(torch.arange(12), 32), source.load(torch.arange(12), 32))


def test_a_missing_file_is_one_line_naming_it(tmp_path):
    source = files(tmp_path)
    source.paths[2].unlink()
    with pytest.raises(UserError, match=r"0002\.jpg is missing"):
        cached_source(source, 32, tmp_path / "cache", 1, "test train")


def test_workers_map_the_file_themselves(tmp_path):
    cache = cached_source(files(tmp_path), 32, tmp_path / "cache", 1, "test train")
    cache.load(torch.tensor([1]), 32)
    copy = pickle.loads(pickle.dumps(cache))  # what a spawned DataLoader worker receives
    assert isinstance(copy, CachedImages) and copy._rows is None
    assert len(pickle.dumps(cache)) < 1000  # the path, not the pixels
    assert torch.equal(copy.load(torch.tensor([1, 2]), 32), cache.load(torch.tensor([1, 2]), 32))


BUILD = """
import sys, torch
from pathlib import Path
from robustmtl.data.image_cache import cached_source
from robustmtl.data.images import FileImages
paths = sorted(Path(sys.argv[1]).glob("*.jpg"))
cache = cached_source(FileImages(paths, 256 / 224, "test"), 32, Path(sys.argv[2]), 1, "test train")
sys.stdout.buffer.write(cache.load(torch.arange(len(paths)), 32).numpy().tobytes())
"""


def test_two_processes_building_the_same_cache_end_with_one_valid_file(tmp_path):
    source = files(tmp_path, 40)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", BUILD, str(tmp_path / "img"), str(tmp_path / "cache")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err.decode() for _, err in outputs]
    expected = source.load(torch.arange(40), 32).numpy().tobytes()
    assert outputs[0][0] == outputs[1][0] == expected
    folder = tmp_path / "cache" / "images"
    assert [name.rsplit(".", 1)[1] for name in images(folder)] == ["json", "lock", "npy"]  # no temporary left
    assert sum("decoding" in err.decode() for _, err in outputs) == 1  # one built, the other read its file


def test_cache_images_swaps_only_file_sources(tmp_path):
    source = files(tmp_path)
    y = torch.zeros(12, dtype=torch.long)
    file_split = ImageSplit("train", source, y, y, size=32, n_groups=4)
    memory = ImageSplit("val", TensorImages(torch.zeros(4, 3, 8, 8, dtype=torch.uint8)), y[:4], y[:4], 8, n_groups=4)
    splits = cache_images(Splits(INFO, file_split, memory, file_split.at_size(16)), tmp_path / "cache", 1)
    assert isinstance(splits.train.source, CachedImages) and splits.val.source is memory.source
    assert isinstance(splits.test.source, CachedImages) and splits.test.source.size == 16
    assert torch.equal(splits.train[torch.arange(12)]["pixel_values"], file_split[torch.arange(12)]["pixel_values"])
    assert isinstance(file_split.source, FileImages)  # the original split is left as it was


def test_a_run_from_the_cache_records_bitwise_what_decoding_every_batch_does(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    root = make_waterbirds(tmp_path / "data")
    cfg = build_config("mtl", "waterbirds", 0, None, {"epochs": 1, "batch_size": 8, "vit_image_size": 32},
                       where="test")
    records = {}
    for image_cache in (False, True):
        run_dir = RunDir(tmp_path / f"run_{image_cache}")
        prepare_run(run_dir, cfg, RunOptions(data_root=str(root), threads=1, image_cache=image_cache, num_workers=1))
        assert train_run(run_dir)["steps"] == 2
        records[image_cache] = [{k: v for k, v in r.items() if k not in TIMING_KEYS}
                                for r in read_records(run_dir.metrics)]
        built = sorted((tmp_path / "cache" / "images").glob("*.npy")) if image_cache else []
        assert len(built) == (3 if image_cache else 0)  # train, val and test; none without the cache
    assert records[True] == records[False]
