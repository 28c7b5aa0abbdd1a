"""The MLP's capacity knobs: the width of `h` on its own (`h_dim`) and its final LayerNorm (`h_norm`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustmtl.config import RunOptions, build_config
from robustmtl.data.base import DataInfo
from robustmtl.layout import RunDir
from robustmtl.models.mlp import MLP
from robustmtl.models.params import MLPParams
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import read_records

INFO = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=["g0", "g1", "g2", "g3"], input_dim=20)


def built(seed: int = 0, **values) -> MLP:
    torch.manual_seed(seed)
    return MLP.build(MLPParams(**values), INFO)


def h_of(model: MLP, x: torch.Tensor) -> torch.Tensor:
    return model.encode({"x": x}).h


def test_h_dim_narrows_h_alone_and_the_decoder_and_head_read_it():
    model = built(h_dim=3)
    linears = [m for m in model.encoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 64), (64, 3)]
    assert model.decoder.in_features == 3 and model.head[-1].in_features == 3
    x = torch.randn(5, 20)
    assert h_of(model, x).shape == (5, 3)
    assert model.classify(model.encode({"x": x})).shape == (5, 2)
    assert model.aux_loss({"x": x}).loss.isfinite()


def test_h_dim_zero_and_the_norm_on_are_the_model_as_it_was():
    """The defaults build the same modules, in the same order, from the same random draws as before the knobs."""
    default, explicit = built(), built(h_dim=64, h_norm=True)
    assert [type(m) for m in default.encoder] == [nn.Linear, nn.ReLU, nn.Linear, nn.LayerNorm]
    assert default.state_dict().keys() == explicit.state_dict().keys()
    pairs = zip(default.state_dict().values(), explicit.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_without_the_norm_h_is_the_last_linear_layers_output():
    normed, raw = built(h_norm=True), built(h_norm=False)
    assert not any(isinstance(m, nn.LayerNorm) for m in raw.encoder)
    x = torch.randn(50, 20)
    with torch.no_grad():
        h_normed, h_raw = h_of(normed, x), h_of(raw, x)
        # same draws, so the unnormalised h is exactly what the LayerNorm would have renormalised
        assert torch.allclose(normed.encoder[-1](h_raw), h_normed, atol=1e-6)
        assert torch.allclose(h_normed.mean(dim=1), torch.zeros(50), atol=1e-5)
        assert not torch.allclose(h_raw.mean(dim=1), torch.zeros(50), atol=1e-2)
        assert not torch.allclose(h_raw.std(dim=1, unbiased=False), torch.ones(50), atol=1e-1)
    # h narrower than the core block, with or without the norm
    assert h_of(built(h_dim=2, h_norm=False), x).shape == (50, 2)


def test_the_knobs_leave_existing_run_ids_alone_and_change_them_when_set():
    default = build_config("l1", "synthetic", 0, None, {}, where="t")
    assert build_config("l1", "synthetic", 0, None, {"h_dim": 0, "h_norm": True}, where="t").run_id == default.run_id
    assert build_config("erm", "synthetic", 0, None, {"h_dim": 0, "h_norm": True}, where="t").run_id == "d24e69726501"
    changed = {build_config("l1", "synthetic", 0, None, values, where="t").run_id
               for values in ({"h_dim": 2}, {"h_norm": False}, {"h_dim": 2, "h_norm": False})}
    assert len(changed) == 3 and default.run_id not in changed
    assert default.hparams()["h_dim"] == 0 and default.hparams()["h_norm"] is True


# A short run at a large L1 weight: enough steps for the penalty to act (lr 0.01, 15 epochs of 400 examples).
SHORT = {"epochs": 15, "n_train": 400, "n_val": 100, "n_test": 100, "eval_train": 0, "lr": 0.01,
         "alpha_reg": 7.389}


def final_active_units(tmp_path, name: str, **values) -> int:
    cfg = build_config("l1", "synthetic", 0, None, {**SHORT, **values}, where="t")
    rd = RunDir(tmp_path / name)
    prepare_run(rd, cfg, RunOptions(threads=1))
    train_run(rd)
    return [r for r in read_records(rd.metrics) if r["split"] == "test"][-1]["active_units"]


def test_without_the_norm_the_l1_penalty_switches_units_off(tmp_path):
    with_norm = final_active_units(tmp_path, "norm")
    without_norm = final_active_units(tmp_path, "raw", h_norm=False)
    no_penalty = final_active_units(tmp_path, "raw0", h_norm=False, alpha_reg=0.0)
    assert with_norm == 64 and no_penalty == 64  # the LayerNorm keeps every unit varying; so does training alone
    assert without_norm < 56, without_norm


@pytest.mark.parametrize("key, value", [("h_dim", -1), ("h_norm", "no")])
def test_bad_values_are_refused(key, value):
    from robustmtl.errors import UserError

    with pytest.raises(UserError, match=key):
        build_config("erm", "synthetic", 0, None, {key: value}, where="t")
