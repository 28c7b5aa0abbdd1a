"""The optional timm ViT: a real run and local weights where timm imports (GPU machines), one-line errors elsewhere."""

from __future__ import annotations

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data.base import DataInfo
from robustmtl.errors import UserError
from robustmtl.models.timm_vit import TimmViT, import_timm

INFO = DataInfo(modality="image", n_classes=2, n_attrs=2, group_names=("a", "b", "c", "d"), extra={"image_size": 28})
TINY = {"timm_name": "vit_tiny_patch16_224", "timm_image_size": 32, "mim_mask_scale": 1}


def timm_available() -> tuple[bool, str]:
    try:
        import_timm()
    except UserError as exc:
        return False, str(exc)
    return True, ""


AVAILABLE, WHY_NOT = timm_available()
needs_timm = pytest.mark.skipif(not AVAILABLE, reason=f"timm does not import here: {WHY_NOT}")


def model(**values) -> TimmViT:
    torch.manual_seed(0)
    cfg = build_config("mtl_l1", "mnist_spurious", 0, "timm_vit", {**TINY, **values}, where="test")
    return TimmViT.build(cfg.model_params, INFO)


@pytest.mark.skipif(AVAILABLE, reason="timm imports here; the error path is for machines where it cannot")
def test_without_timm_choosing_the_model_is_one_line_naming_the_extra(cli, tmp_path):
    result = cli("run", "--method", "erm", "--dataset", "mnist_spurious", "--model", "timm_vit",
                 "--out", tmp_path / "r", ok=False)
    assert result.exit_code == 2 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "robustmtl[timm]" in errors[0]
    assert not (tmp_path / "r").exists()


@needs_timm
def test_encoder_gives_the_class_token_and_simmim_sees_only_masked_pixels():
    m = model()
    m.eval()
    pixels = torch.randint(256, (2, 3, 32, 32), dtype=torch.uint8)
    encoded = m.encode({"pixel_values": pixels})
    assert encoded.h.shape == (2, m.vit.embed_dim) and torch.equal(encoded.h, encoded.tokens[:, 0])
    aux = m.aux_loss({"pixel_values": pixels})
    assert aux.loss.ndim == 0 and aux.loss.item() > 0
    aux.loss.backward()
    assert m.mask_token.grad is not None and m.decoder[0].weight.grad is not None


@needs_timm
def test_local_weights_load_through_timm_and_a_missing_file_is_one_line(tmp_path):
    source = model()
    path = tmp_path / "weights.pth"
    torch.save(source.vit.state_dict(), path)
    loaded = model(timm_weights=str(path))
    for name, tensor in source.vit.state_dict().items():
        assert torch.equal(tensor, loaded.vit.state_dict()[name]), name
    with pytest.raises(UserError, match="no such file"):
        model(timm_weights=str(tmp_path / "missing.pth"))


@needs_timm
def test_a_multitask_run_on_coloured_mnist_end_to_end(cli, tmp_path):
    cli("run", "--method", "mtl_l1", "--dataset", "mnist_spurious", "--model", "timm_vit", "--out", tmp_path / "r",
        *[f"--set={k}={v}" for k, v in {**TINY, "epochs": 1, "mnist_n_train": 64, "mnist_n_val": 32,
                                        "mnist_n_test": 32, "batch_size": 16}.items()])
    assert (tmp_path / "r" / "DONE").is_file()
