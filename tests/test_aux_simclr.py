"""SimCLR as the ViT's auxiliary task (`aux_task`, models/simclr.py) and a from-scratch ViT of a checkpoint's
architecture (`vit_from_scratch`)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.models.simclr import contrastive_loss, nt_xent, projection_head, rotate_hue, simclr_view, views
from robustmtl.models.vit import ViT
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from robustmtl.train.step import native_bf16
from robustmtl.train.syncs import train_steps
from tests.conftest import TIMING_KEYS, read_records

INFO = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"), extra={"image_size": 28})
TINY_MNIST = {"epochs": 1, "batch_size": 32, "mnist_n_train": 96, "mnist_n_val": 32, "mnist_n_test": 32}


def vit(seed: int = 0, **values) -> ViT:
    torch.manual_seed(seed)
    cfg = build_config("mtl_l1", "mnist_spurious", 0, None, values, where="test")
    return ViT.build(cfg.model_params, INFO)


def images(n: int, seed: int = 0, size: int = 28) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randint(256, (n, 3, size, size), dtype=torch.uint8, generator=gen)}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """A tiny pretrained-style ViT directory (config, weights, preprocessor config)."""
    from transformers import ViTConfig, ViTModel

    path = tmp_path_factory.mktemp("ckpt") / "vit"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)
    torch.manual_seed(123)
    ViTModel(config, add_pooling_layer=False).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1] * 3, "image_std": [0.2] * 3}))
    return str(path)


@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_nt_xent_is_each_views_cross_entropy_against_its_partner_over_the_other_2n_minus_1(temperature):
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, generator=gen), torch.randn(3, 5, generator=gen)
    z = a.tolist() + b.tolist()
    n2 = len(z)

    def cos(u: list[float], v: list[float]) -> float:
        return sum(x * y for x, y in zip(u, v, strict=True)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))

    losses = []
    for i in range(n2):
        partner = (i + n2 // 2) % n2
        others = sum(math.exp(cos(z[i], z[k]) / temperature) for k in range(n2) if k != i)
        losses.append(-math.log(math.exp(cos(z[i], z[partner]) / temperature) / others))
    assert nt_xent(a, b, temperature).item() == pytest.approx(sum(losses) / n2, rel=1e-5)
    assert nt_xent(b, a, temperature).item() == pytest.approx(sum(losses) / n2, rel=1e-5)  # symmetric in the pair


def test_the_reference_pairing_sends_no_gradient_through_the_end_task_side():
    torch.manual_seed(0)
    projection = projection_head(6)
    aux_h, end_h = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6, requires_grad=True)
    contrastive_loss(projection, aux_h, end_h, "simclr_ref", 1.0).backward()
    assert end_h.grad is None
    assert (aux_h.grad[:3] != 0).any() and (aux_h.grad[3:] == 0).all()  # pairs over the shorter batch


def test_views_are_deterministic_given_the_rng_state_and_the_two_views_differ():
    x = images(16)["pixel_values"].float() / 255

    def drawn(seed: int, task: str = "simclr") -> torch.Tensor:
        return views(x, task, torch.Generator().manual_seed(seed))

    first = drawn(0)
    assert first.shape == (32, 3, 28, 28) and first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, drawn(0)) and not torch.equal(first, drawn(1))
    one, two = first.chunk(2)
    differ = (one - two).flatten(1).abs().amax(dim=1) > 1e-3
    assert differ.sum() >= 12  # both views unaugmented has probability (0.2 · 0.8 · 0.5)² per image
    assert drawn(0, "simclr_ref").shape == (16, 3, 28, 28)
    # through the model: the run's global RNG, as SimMIM's masks draw it
    model = vit(aux_task="simclr")
    torch.manual_seed(5)
    loss = model.aux_loss(images(8)).loss
    torch.manual_seed(5)
    assert torch.equal(model.aux_loss(images(8)).loss, loss)
    assert not torch.equal(model.aux_loss(images(8)).loss, loss)  # the next step draws other views


def test_a_hue_rotation_keeps_the_luma_and_a_full_turn_is_the_identity():
    x = 0.25 + 0.5 * torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))  # far from the clamp
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    rotated = rotate_hue(x, torch.tensor([0.05, 0.1, -0.1, 0.0]))
    assert torch.allclose((rotated * luma).sum(dim=1), (x * luma).sum(dim=1), atol=1e-5)
    assert torch.allclose(rotate_hue(x, torch.ones(4)), x, atol=1e-5)
    assert not torch.allclose(rotated[:3], x[:3], atol=1e-2)
    view = simclr_view(x, torch.Generator().manual_seed(0))
    assert view.shape == x.shape


@pytest.mark.parametrize("task", ["simclr", "simclr_ref"])
def test_the_end_task_h_is_the_same_under_simclr(task):
    mim, simclr = vit(), vit(aux_task=task)
    assert all(torch.equal(v, simclr.vit.state_dict()[k]) for k, v in mim.vit.state_dict().items())
    assert not hasattr(simclr, "decoder") and not hasattr(mim, "projection")
    batch, aux_batch = images(4), images(6, seed=1)
    h = mim.encode(batch).h
    assert torch.equal(simclr.encode(batch).h, h)
    end, aux = simclr.encode_pair(batch, aux_batch)
    assert torch.allclose(end.h, h, atol=1e-5)  # one forward with the views beside it
    assert len(aux.encoded.h) == (12 if task == "simclr" else 6) and aux.loss.isfinite()
    reference = vit(aux_task=task, head_init="trunc_normal").projection[0]
    assert reference.weight.std().item() == pytest.approx(0.02, rel=0.15) and torch.count_nonzero(reference.bias) == 0
    if task == "simclr_ref":
        with pytest.raises(UserError, match="pre-training"):
            simclr.aux_loss(aux_batch)


def make_run(tmp_path, name: str, method: str, **values) -> RunDir:
    cfg = build_config(method, "mnist_spurious", 0, None, {**TINY_MNIST, **values}, where="test")
    run_dir = RunDir(tmp_path / name)
    prepare_run(run_dir, cfg, RunOptions(threads=1, checkpoint_every=2))
    return run_dir


def comparable(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_mtl_l1_with_simclr_trains_through_the_loop_records_its_aux_term_and_resumes_exactly(tmp_path):
    values = {"epochs": 2, "aux_task": "simclr"}
    reference = make_run(tmp_path, "ref", "mtl_l1", **values)
    assert train_run(reference)["steps"] == 6
    train = [r for r in read_records(reference.metrics) if r["split"] == "train"]
    assert len(train) == 2 and all(set(r["terms"]) == {"end", "aux", "reg", "total"} for r in train)
    negatives = 2 * TINY_MNIST["batch_size"] - 2  # cosine similarities in [-1, 1] at temperature 1 bound NT-Xent
    for r in train:
        assert math.log(1 + negatives / math.e**2) <= r["terms"]["aux"] <= math.log(1 + negatives * math.e**2)

    class Stop(Exception):
        pass

    def stop_at_four(step: int, total: int) -> None:
        if step == 4:
            raise Stop

    resumed = make_run(tmp_path, "resumed", "mtl_l1", **values)
    with pytest.raises(Stop):
        train_run(resumed, stop_at_four)
    train_run(resumed)
    assert comparable(read_records(resumed.metrics)) == comparable(read_records(reference.metrics))


@pytest.mark.slow
def test_mtl_with_the_reference_pairing_trains_through_the_loop(tmp_path):
    run_dir = make_run(tmp_path, "ref_pairing", "mtl", aux_task="simclr_ref", simclr_temperature=0.5)
    train_run(run_dir)
    train = [r for r in read_records(run_dir.metrics) if r["split"] == "train"]
    assert set(train[0]["terms"]) == {"end", "aux", "total"} and math.isfinite(train[0]["terms"]["aux"])


CUDA_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA_ONLY)])
@pytest.mark.parametrize("task", ["simclr", "simclr_ref"])
def test_a_simclr_step_never_waits_for_the_gpu(tmp_path, task, device):
    """On a GPU any read of the device inside a step raises (train/syncs.py); on a CPU the check is off and this
    runs its wiring."""
    precision = "bf16" if device == "cuda" and native_bf16(torch.device(device)) else "fp32"
    terms = train_steps(tmp_path, "mtl_l1", "mnist_spurious", {**TINY_MNIST, "aux_task": task}, device=device,
                        precision=precision)
    assert set(terms) >= {"end", "aux", "reg"} and all(math.isfinite(v) for v in terms.values())


def test_from_scratch_keeps_the_checkpoints_architecture_with_new_weights_per_seed(checkpoint):
    pretrained = vit(vit_pretrained=checkpoint)
    scratch = vit(1, vit_pretrained=checkpoint, vit_from_scratch=True)
    theirs, ours = pretrained.vit.state_dict(), scratch.vit.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    weights = [k for k, v in theirs.items() if v.ndim >= 2 and k != "embeddings.mask_token"]  # the matrices
    assert len(weights) > 8 and not any(torch.equal(ours[k], theirs[k]) for k in weights)
    assert (scratch.size, scratch.patch, scratch.mean) == (pretrained.size, pretrained.patch, pretrained.mean)
    again, other = (vit(seed, vit_pretrained=checkpoint, vit_from_scratch=True).vit.state_dict() for seed in (1, 2))
    assert all(torch.equal(again[k], ours[k]) for k in weights)
    assert not any(torch.equal(other[k], ours[k]) for k in weights)
    assert scratch.aux_loss(images(2, size=32)).loss.isfinite()
    with pytest.raises(UserError, match="vit_pretrained") as err:
        vit(vit_from_scratch=True)
    assert "\n" not in str(err.value)


def test_the_switches_leave_existing_run_ids_unchanged():
    def run_id(model: str | None = None, **values) -> str:
        return build_config("mtl_l1", "mnist_spurious", 0, model, values, where="test").run_id

    assert run_id() == "8dd7fe7cc21e"
    assert run_id(aux_task="mim", simclr_temperature=1.0, vit_from_scratch=False) == run_id()
    assert run_id("timm_vit") == "5043c3285004" == run_id("timm_vit", aux_task="mim")
    changed = {run_id(aux_task="simclr"), run_id(aux_task="simclr_ref"), run_id(aux_task="simclr",
                                                                                 simclr_temperature=0.5),
               run_id(vit_pretrained="/nowhere", vit_from_scratch=True), run_id(vit_pretrained="/nowhere")}
    assert len(changed) == 5 and run_id() not in changed
