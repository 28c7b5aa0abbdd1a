"""How image splits are viewed: the deterministic view (centre crop or squash) and training's random resized
crops, drawn from (seed, epoch, position) so any worker count and a resume give the same batches."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo, Splits
from robustmtl.data.decode import crop_box, crop_rng
from robustmtl.data.image_cache import cached_source
from robustmtl.data.images import FileImages, ImageSplit, TensorImages
from robustmtl.layout import RunDir
from robustmtl.models.params import ViTParams
from robustmtl.models.vit import ViT
from robustmtl.rundir import prepare_run
from robustmtl.train.batches import EpochPlan, PlanSampler, make_loader
from robustmtl.train.loop import train_run
from tests.conftest import TIMING_KEYS, read_records
from tests.test_data_benchmarks import make_waterbirds

INFO = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"))
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
COLOURS = {0: RED, 1: GREEN, 2: BLUE}


def banded(path: Path, width: int = 64, height: int = 32) -> Path:
    """A lossless image wider than tall: its left quarter red, middle half green, right quarter blue."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 4] = RED
    pixels[:, width // 4: 3 * width // 4] = GREEN
    pixels[:, 3 * width // 4:] = BLUE
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def noisy(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (30 + i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def split_of(paths: list[Path], size: int) -> ImageSplit:
    n = len(paths)
    return ImageSplit("train", FileImages(paths, 1.0, "test"), torch.zeros(n), torch.arange(n) % 4, size=size,
                      n_groups=4)


def colour_at(image: torch.Tensor, column: int) -> tuple[int, ...]:
    """The band a column of the image's middle row shows (its strongest channel: edges blend bilinearly)."""
    return COLOURS[int(image[:, image.shape[1] // 2, column].argmax())]


def test_crop_box_keeps_torchvisions_area_and_aspect_ranges_inside_the_image():
    for k in range(300):
        left, top, w, h = crop_box(500, 375, 0.05, crop_rng(0, 1, k))
        assert 0 <= left <= 500 - w and 0 <= top <= 375 - h
        assert 0.05 * 0.9 <= w * h / (500 * 375) <= 1.0  # rounding w and h moves the area a little
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_crop_box_falls_back_to_a_centre_crop_at_the_nearest_allowed_aspect_ratio():
    # 1000 × 10: every try needs a height of at least sqrt(0.05 · 10,000 · 3/4) ≈ 19 px > 10, so none fits
    assert crop_box(1000, 10, 0.05, crop_rng(0, 1, 0)) == ((1000 - 13) // 2, 0, 13, 10)
    assert crop_box(10, 1000, 0.05, crop_rng(0, 1, 0)) == (0, (1000 - 13) // 2, 10, 13)


def test_squash_keeps_the_whole_width_where_the_centre_crop_cuts_it(tmp_path):
    path = banded(tmp_path / "wide.png")
    split = split_of([path], 16)
    crop = split.with_views("crop", "none", 0.05)[[0]]["pixel_values"][0]
    squash = split.with_views("squash", "none", 0.05)[[0]]["pixel_values"][0]
    assert crop.shape == squash.shape == (3, 16, 16)
    assert colour_at(crop, 0) == colour_at(crop, 15) == GREEN  # the centre square: the middle half only
    assert colour_at(squash, 0) == RED and colour_at(squash, 15) == BLUE and colour_at(squash, 8) == GREEN


def test_the_models_image_resize_reaches_the_served_pixels(tmp_path):
    path = banded(tmp_path / "wide.png")
    splits = Splits(INFO, split_of([path], 0), split_of([path], 0), split_of([path], 0))
    for resize, left in (("crop", GREEN), ("squash", RED)):
        p = ViTParams(vit_image_size=16, vit_hidden_dim=16, vit_depth=1, vit_heads=2, image_resize=resize)
        served = ViT(p, INFO).prepare(splits, None)
        for split in (served.train, served.val, served.test):
            assert colour_at(split[[0]]["pixel_values"][0], 0) == left


def test_the_cache_keys_the_view_and_holds_bitwise_the_squashed_decode(tmp_path):
    paths = noisy(tmp_path / "img", 5)
    source = FileImages(paths, 256 / 224, "test")
    crop = cached_source(source, 16, tmp_path / "cache", 1, "crop")
    squash = cached_source(source.with_resize("squash"), 16, tmp_path / "cache", 1, "squash")
    assert crop.path != squash.path
    everything = torch.arange(5)
    assert torch.equal(squash.load(everything, 16), source.with_resize("squash").load(everything, 16))
    assert not torch.equal(squash.load(everything, 16), crop.load(everything, 16))


def test_random_crops_depend_on_seed_epoch_and_position_only(tmp_path):
    split = split_of(noisy(tmp_path / "img", 6), 16).with_views("crop", "random_resized", 0.05)
    idx = torch.tensor([3, 1, 4])
    batch = split.training_batch(idx, (0, 1, 0))
    assert torch.equal(batch["idx"], idx) and torch.equal(batch["y"], split.y[idx])
    pixels = batch["pixel_values"]
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 3, 16, 16)
    assert torch.equal(split.training_batch(idx, (0, 1, 0))["pixel_values"], pixels)  # a pure function
    assert not torch.equal(split[idx]["pixel_values"], pixels)  # not the centre crop
    for other in ((1, 1, 0), (0, 2, 0), (0, 1, 3)):  # another seed, epoch, or place in the epoch
        assert not torch.equal(split.training_batch(idx, other)["pixel_values"], pixels)
    twice = split.training_batch(torch.tensor([2, 2]), (0, 1, 0))["pixel_values"]  # an upweighted repeat
    assert not torch.equal(twice[0], twice[1])
    plain = split.with_views("crop", "none", 0.05)
    assert torch.equal(plain.training_batch(idx, (0, 1, 0))["pixel_values"], plain[idx]["pixel_values"])


def test_in_memory_images_are_cropped_at_random_too():
    pixels = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    split = ImageSplit("train", TensorImages(pixels), torch.zeros(4), torch.arange(4), size=28, n_groups=4)
    cropped = split.with_views("crop", "random_resized", 0.05).training_batch(torch.arange(4), (0, 1, 0))
    assert cropped["pixel_values"].shape == (4, 3, 28, 28)
    assert not torch.equal(cropped["pixel_values"], pixels)


def loader_batches(split: ImageSplit, workers: int) -> list:
    sampler = PlanSampler()
    plan = EpochPlan(list(torch.arange(6).flip(0).split(4)), torch.arange(6), 4, seed=3, epoch=2)
    sampler.set(plan, 0)
    return list(make_loader(split, sampler, workers, pin_memory=False))


def test_a_worker_builds_bitwise_the_crops_of_the_main_process_and_auxiliary_batches_stay_plain(tmp_path):
    split = split_of(noisy(tmp_path / "img", 6), 16).with_views("crop", "random_resized", 0.05)
    main, worker = loader_batches(split, 0), loader_batches(split, 1)
    for (end, aux), (end_w, aux_w) in zip(main, worker, strict=True):
        assert torch.equal(end["pixel_values"], end_w["pixel_values"])
        assert torch.equal(aux["pixel_values"], aux_w["pixel_values"])
        assert torch.equal(aux["pixel_values"], split[aux["idx"]]["pixel_values"])  # the deterministic view
    first_end = main[0][0]
    assert torch.equal(first_end["pixel_values"], split.training_batch(torch.tensor([5, 4, 3, 2]), (3, 2, 0))
                       ["pixel_values"])
    assert torch.equal(main[1][0]["pixel_values"], split.training_batch(torch.tensor([1, 0]), (3, 2, 4))
                       ["pixel_values"])


@pytest.mark.parametrize("key, value", [("image_resize", "crop"), ("image_train_crop", "none"),
                                        ("image_crop_scale_min", 0.05)])
def test_the_view_keys_leave_run_ids_alone_at_their_defaults(key, value):
    plain = build_config("erm", "waterbirds", 0, None, {}, where="t")
    assert build_config("erm", "waterbirds", 0, None, {key: value}, where="t").run_id == plain.run_id


def test_a_run_with_random_crops_trains_on_them_whatever_the_worker_count(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    root = make_waterbirds(tmp_path / "data")
    rng = np.random.default_rng(0)
    for path in root.rglob("*.jpg"):  # textured, so that a crop differs from the centre square
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(path)
    base = {"epochs": 1, "batch_size": 8, "vit_image_size": 32, "eval_train": 0}
    records = {}
    for name, values, workers in (("plain", {}, 0), ("crops", {"image_train_crop": "random_resized"}, 0),
                                  ("crops_workers", {"image_train_crop": "random_resized"}, 1)):
        cfg = build_config("erm", "waterbirds", 0, None, {**base, **values}, where="test")
        run_dir = RunDir(tmp_path / name)
        prepare_run(run_dir, cfg, RunOptions(data_root=str(root), threads=1, num_workers=workers))
        train_run(run_dir)
        records[name] = [{k: v for k, v in r.items() if k not in {*TIMING_KEYS, "run_id", "setting_id", "hparams"}}
                         for r in read_records(run_dir.metrics)]
    assert records["crops"] == records["crops_workers"]
    terms = [[r["terms"]["total"] for r in records[name] if r["split"] == "train"] for name in ("plain", "crops")]
    assert not math.isclose(terms[0][0], terms[1][0], rel_tol=1e-9)  # the training loss saw other pixels
