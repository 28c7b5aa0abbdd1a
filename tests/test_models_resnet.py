"""The baselines' ResNet (transformers' ResNetModel, no torchvision): loading a local checkpoint, h and tokens,
the image pipeline it shares with the ViT, and the refusal of the methods that train a pre-training objective."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.methods.mtl import l1_penalty
from robustmtl.models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet
from robustmtl.requirements import required_runs
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import dry_run_in_fresh_process, read_records, write_spec

INFO = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"), extra={"image_size": 28})
TINY_MNIST = {"epochs": 1, "batch_size": 32, "mnist_n_train": 96, "mnist_n_val": 32, "mnist_n_test": 32}
WIDTHS = [8, 16]  # two stages: the feature map is 1/8 of the input's side (stem /4, second stage /2)
MEAN, STD = [0.25, 0.5, 0.75], [0.1, 0.2, 0.3]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny ResNet saved the way microsoft/resnet-50 is (an image classifier whose backbone sits under
    `resnet.`), with its own preprocessor_config.json."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=WIDTHS, depths=[1, 1], layer_type="basic", num_labels=3)
    target = tmp_path_factory.mktemp("ckpt") / "tiny-resnet"
    ResNetForImageClassification(config).save_pretrained(target)
    (target / "preprocessor_config.json").write_text(json.dumps({"image_mean": MEAN, "image_std": STD}))
    return target


def resnet(method: str = "erm", seed: int = 0, **values) -> ResNet:
    torch.manual_seed(seed)
    cfg = build_config(method, "mnist_spurious", 0, "resnet", values, where="test")
    return ResNet.build(cfg.model_params, INFO)


def images(n: int, size: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return {"pixel_values": torch.randint(256, (n, 3, size, size), dtype=torch.uint8, generator=gen)}


def test_the_checkpoints_backbone_weights_and_normalisation_are_loaded(checkpoint, tmp_path):
    from safetensors.torch import load_file

    model = resnet(resnet_pretrained=str(checkpoint))
    saved = {k.removeprefix("resnet."): v for k, v in load_file(checkpoint / "model.safetensors").items()
             if k.startswith("resnet.")}
    state = model.resnet.state_dict()
    assert saved and set(saved) == set(state)
    assert all(torch.equal(state[k], v) for k, v in saved.items())
    assert model.mean == tuple(MEAN) and model.std == tuple(STD)
    batch = images(2, 224)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert torch.allclose(model.pixels(batch), (batch["pixel_values"].float() / 255 - mean) / std, atol=1e-6)
    shutil.copytree(checkpoint, tmp_path / "bare", ignore=shutil.ignore_patterns("preprocessor_config.json"))
    bare = resnet(resnet_pretrained=str(tmp_path / "bare"))
    assert (bare.mean, bare.std) == (IMAGENET_MEAN, IMAGENET_STD)


def test_h_is_the_pooled_last_feature_map_and_tokens_are_its_positions(checkpoint):
    model = resnet(resnet_pretrained=str(checkpoint), resnet_image_size=64).eval()
    batch = images(3, 48)  # served at another size: the model resizes to its own
    encoded = model.encode(batch)
    assert encoded.h.shape == (3, WIDTHS[-1]) and encoded.tokens.shape == (3, (64 // 8) ** 2, WIDTHS[-1])
    out = model.resnet(pixel_values=model.pixels(batch))
    assert torch.allclose(encoded.h, out.pooler_output.flatten(1), atol=1e-6)
    assert torch.equal(encoded.tokens[:, 0], out.last_hidden_state[:, :, 0, 0])
    assert model(batch).shape == (3, INFO.n_classes)
    assert l1_penalty(encoded, "tokens") == encoded.tokens.abs().mean()
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


def test_without_a_checkpoint_it_is_the_resnet_of_resnet_depth_with_random_weights():
    # torchvision's resnet18 / resnet50 without their 1000-class fc layer (11,689,512 − 513,000; 25,557,032 − 2,049,000)
    for depth, width, params in ((18, 512, 11_176_512), (50, 2048, 23_508_032)):
        model = resnet(resnet_depth=depth)
        assert sum(p.numel() for p in model.resnet.parameters()) == params
        assert model.head.in_features == width and model.mean == IMAGENET_MEAN and model.std == IMAGENET_STD
    first, again, other = (resnet(seed=seed, resnet_depth=18).resnet.embedder.embedder.convolution.weight
                           for seed in (0, 0, 1))
    assert torch.equal(first, again) and not torch.equal(first, other)  # drawn from the run's seeded RNG


def test_head_init_trunc_normal_initialises_the_classifier(checkpoint):
    reference = resnet(resnet_pretrained=str(checkpoint), head_init="trunc_normal").head
    default = resnet(resnet_pretrained=str(checkpoint)).head  # Kaiming-uniform: std 1/sqrt(3 · 16) ≈ 0.14
    assert torch.count_nonzero(reference.bias) == 0 and reference.weight.std() < 0.05 < default.weight.std()
    assert torch.count_nonzero(default.bias) == INFO.n_classes


def test_a_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(UserError, match="is not a local directory") as err:
        resnet(resnet_pretrained="microsoft/resnet-50")
    assert "\n" not in str(err.value) and "hf download microsoft/resnet-50" in str(err.value)
    with pytest.raises(UserError, match="does not exist") as err:
        resnet(resnet_pretrained=str(tmp_path / "nowhere"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["mtl", "mtl_l1", "pretrain"])
def test_methods_that_train_a_pretraining_objective_refuse_resnet(method):
    with pytest.raises(UserError, match=f"model 'resnet' has no pre-training objective for method '{method}'") as err:
        resnet(method)
    assert "\n" not in str(err.value) and "'vit' or 'timm_vit'" in str(err.value)


def test_a_pretraining_stage_is_refused_with_resnet_when_its_run_is_planned():
    planned = build_config("erm", "mnist_spurious", 0, "resnet", {"pretrain_epochs": 1}, where="t")
    with pytest.raises(UserError, match="method 'pretrain' to train"):
        required_runs(planned)


GRID = """
name = "resnet"
datasets = ["mnist_spurious"]
methods = {methods}
seeds = [0]
model = "resnet"
[defaults]
epochs = 1
[executor]
kind = "debug"
"""


def test_a_grid_with_mtl_on_resnet_fails_when_planned_and_the_baselines_plan_without_torch(cli, tmp_path):
    bad = write_spec(tmp_path / "bad.toml", GRID.format(methods='["erm", "mtl_l1"]'))
    result = cli("grid", "submit", bad, "--dry-run", ok=False)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.output
    assert lines[0].startswith("error: ") and "has no pre-training objective" in lines[0]
    good = write_spec(tmp_path / "good.toml", GRID.format(methods='["erm", "jtt", "gdro", "dfr", "subg", "l1"]'))
    output, heavy = dry_run_in_fresh_process(good, tmp_path)
    assert "7 runs: 6 listed, and 1 jtt_stage1" in output and heavy == []


def test_existing_run_ids_are_unchanged():
    ids = [build_config(m, d, 0, None, {}, where="t").run_id
           for m, d in [("erm", "waterbirds"), ("jtt", "celeba"), ("dfr", "waterbirds"), ("mtl_l1", "waterbirds")]]
    assert ids == ["581813e96ee8", "29fb83bc98a9", "98f9ebc3bc08", "37557e5ffc6c"]


@pytest.mark.slow  # a few seconds: left out of make test-fast
def test_erm_on_coloured_mnist_end_to_end(checkpoint, tmp_path):
    cfg = build_config("erm", "mnist_spurious", 0, "resnet",
                       {**TINY_MNIST, "resnet_pretrained": str(checkpoint), "resnet_image_size": 32}, where="test")
    run_dir = RunDir(tmp_path / "run")
    prepare_run(run_dir, cfg, RunOptions(threads=1))
    summary = train_run(run_dir)
    assert summary["steps"] == 3
    records = read_records(run_dir.metrics)
    assert {r["split"] for r in records} == {"train", "val", "test"}
    assert all(r["hparams"]["resnet_pretrained"] == str(checkpoint) for r in records)
    assert all(0 <= r["worst_group_acc"] <= r["avg_acc"] <= 1 for r in records)
