"""Image batches travel as uint8 and the ViT normalises them itself: the same numbers as normalising on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustmtl.config import build_config
from robustmtl.data.images import FileImages, ImageSplit, TensorImages
from robustmtl.models.vit import ViT, simmim_mask
from tests.test_models_vit import vit


def old_style(pixels: torch.Tensor, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """What the split used to serve: float in [0, 1], resized when the size differs, normalised, all on the CPU."""
    x = pixels.float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False)
    return (x - torch.tensor(mean).view(-1, 1, 1)) / torch.tensor(std).view(-1, 1, 1)


def jpegs(folder: Path, n: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 50, 3), dtype=np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def pretrained_vit(tmp_path: Path, **values) -> ViT:
    """A tiny 'checkpoint' whose preprocessor asks for another mean and std than 0.5."""
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config).save_pretrained(tmp_path / "vit")
    (tmp_path / "vit" / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.485, 0.456, 0.406],
                                                                             "image_std": [0.229, 0.224, 0.225]}))
    return vit(vit_pretrained=str(tmp_path / "vit"), **values)


def assert_same_as_cpu_normalisation(model: ViT, batch: dict[str, torch.Tensor]) -> None:
    model.eval()
    before = old_style(batch["pixel_values"], model.size, model.mean, model.std)
    assert torch.equal(model.pixels(batch), before)
    assert torch.equal(model.encode(batch).tokens, model._encode(before, None).tokens)
    torch.manual_seed(3)
    aux = model.aux_loss(batch)
    torch.manual_seed(3)
    mask = simmim_mask(len(before), model.grid, model.mask_scale, model.mask_ratio, before.device)
    assert torch.equal(aux.loss, model.reconstruct(before, mask).loss)  # SimMIM's target: the same pixels


def test_files_served_as_uint8_give_the_model_the_pixels_cpu_normalisation_gave(tmp_path):
    model = pretrained_vit(tmp_path, vit_image_size=32)
    split = ImageSplit("train", FileImages(jpegs(tmp_path / "img", 4), 256 / 224, "test"), torch.zeros(4).long(),
                       torch.zeros(4).long(), size=64, n_groups=4)
    batch = split.at_size(model.size)[torch.arange(4)]
    assert batch["pixel_values"].dtype == torch.uint8 and batch["pixel_values"].shape == (4, 3, 32, 32)
    assert_same_as_cpu_normalisation(model, batch)


def test_in_memory_images_at_another_size_are_resized_by_the_model_as_before():
    model = vit(vit_image_size=32)  # from scratch: mean and std 0.5
    pixels = torch.randint(256, (6, 3, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    split = ImageSplit("train", TensorImages(pixels), torch.zeros(6).long(), torch.zeros(6).long(), size=28,
                       n_groups=4).at_size(model.size)
    batch = split[torch.arange(6)]
    assert torch.equal(batch["pixel_values"], pixels)  # the stored bytes travel, not a float copy
    assert_same_as_cpu_normalisation(model, batch)


def test_normalisation_stays_out_of_checkpoints_and_float_inputs_are_refused(tmp_path):
    model = pretrained_vit(tmp_path)
    assert not any(key.startswith("pixel_") for key in model.state_dict())  # checkpoints keep their keys
    assert {name for name, _ in model.named_buffers()} >= {"pixel_mean", "pixel_std"}  # they move with .to(device)
    with pytest.raises(TypeError, match="uint8"):
        model.encode({"pixel_values": torch.rand(2, 3, 32, 32)})


def test_image_run_ids_are_the_ones_from_before_uint8_batches():
    # image_cache is an execution option: it never enters a run's identity
    assert build_config("mtl", "waterbirds", 0, "vit", {"vit_image_size": 384}, where="test").run_id == "603ae7f71f8e"
    assert build_config("mtl", "mnist_spurious", 0, "vit", {}, where="test").run_id == "158e3aae3b0e"
