"""The paper's loss and its ablations, term by term, against hand computations on a model with fixed outputs.

`mtl`: L_end + alpha_aux·L_aux; `mtl_l1`: + alpha_reg·L1; `l1`: L_end + alpha_reg·L1. The L1 term is the batch
mean of ||h||_1 (`reg_target="cls"`) or the mean |activation| of the last hidden state (`"tokens"`), summed over
the end-task and auxiliary batches when there is one.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data.base import DataInfo, VectorSplit
from robustmtl.layout import RunDir
from robustmtl.methods.base import MethodContext
from robustmtl.methods.mtl import L1, MTL, MTLL1, l1_penalty
from robustmtl.models.base import AuxOutput, Encoded, Model
from robustmtl.registry import method_plugin

INFO = DataInfo(modality="vector", n_classes=2, n_attrs=2, group_names=("0", "1", "2", "3"), input_dim=2)


class Fixed(Model):
    """A 'model' whose representations, logits (= h) and auxiliary loss come from the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Identity()

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        return Encoded(h=batch["h"], tokens=batch["tokens"])

    def aux_loss(self, batch: dict[str, torch.Tensor]) -> AuxOutput:
        return AuxOutput(loss=batch["aux_loss"], encoded=self.encode(batch))

    def at_full_length(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One extra position of ones, as padding to the reference's full length would add positions."""
        pad = torch.ones(len(batch["tokens"]), 1, batch["tokens"].shape[-1])
        return {**batch, "tokens": torch.cat([batch["tokens"], pad], dim=1)}


# End-task batch: logits (1, -2) for label 0 and (0.5, 0.5) for label 1.
BATCH = {"h": torch.tensor([[1.0, -2.0], [0.5, 0.5]]), "y": torch.tensor([0, 1]),
         "tokens": torch.tensor([[[1.0, -1.0], [2.0, 0.0], [0.0, -3.0]], [[0.5, 0.5], [-1.0, 1.0], [0.0, 0.0]]])}
AUX = {"h": torch.tensor([[3.0, -1.0]]), "tokens": torch.tensor([[[4.0, 0.0], [0.0, -2.0], [1.0, 1.0]]]),
       "aux_loss": torch.tensor(0.7)}
END = (math.log(1 + math.exp(-3.0)) + math.log(2.0)) / 2  # cross-entropy of the two rows, averaged
CLS_END, CLS_AUX = (3.0 + 1.0) / 2, 4.0  # batch mean of |h|_1
TOKENS_END, TOKENS_AUX = (1 + 1 + 2 + 0 + 0 + 3 + 0.5 + 0.5 + 1 + 1 + 0 + 0) / 12, (4 + 0 + 0 + 2 + 1 + 1) / 6


def method(name: str, **values):
    cfg = build_config(name, "synthetic", 0, None, values, where="test")
    g = torch.tensor([0, 1, 2, 3])
    train = VectorSplit("train", torch.zeros(4, 2), g // 2, g, n_groups=4)
    ctx = MethodContext(config=cfg, info=INFO, train=train, run_dir=RunDir(Path("unused")), required={})
    return method_plugin(name).implementation()(cfg.method_params, ctx)


def terms(name: str, aux: bool, **values) -> tuple[float, dict[str, float]]:
    out = method(name, **values).loss(Fixed(), BATCH, AUX if aux else None)
    return float(out.total), {k: float(v) for k, v in out.parts.items()}


def test_the_registry_builds_these_classes_and_only_the_multitask_ones_ask_for_an_aux_batch():
    assert [type(method(m)) for m in ("mtl", "mtl_l1", "l1")] == [MTL, MTLL1, L1]
    assert MTL.uses_aux_batch and MTLL1.uses_aux_batch and not L1.uses_aux_batch


@pytest.mark.parametrize("name", ["mtl", "mtl_l1", "l1"])
def test_every_epoch_visits_each_training_example_once(name):
    torch.manual_seed(1)
    order = method(name).epoch_indices(0, torch.Generator().manual_seed(0))
    assert sorted(order.tolist()) == [0, 1, 2, 3]
    torch.manual_seed(2)  # the order is the epoch generator's alone, so a resumed run replays it
    assert torch.equal(order, method(name).epoch_indices(0, torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(("target", "end", "aux"), [("cls", CLS_END, CLS_AUX), ("tokens", TOKENS_END, TOKENS_AUX)])
def test_mtl_l1_is_end_plus_weighted_aux_plus_weighted_l1_of_both_batches(target, end, aux):
    total, parts = terms("mtl_l1", True, alpha_aux=0.3, alpha_reg=0.25, reg_target=target)
    assert parts == pytest.approx({"end": END, "aux": 0.7, "reg": end + aux}, rel=1e-6)
    assert total == pytest.approx(END + 0.3 * 0.7 + 0.25 * (end + aux), rel=1e-6)


# tokens_ref: |activation| summed over the full-length batches (each padded row adds 2 ones), divided by the element
# count of the first full-length end-task batch (2 rows x 4 positions x 2 units), frozen for the rest of the run.
REF_NORMALISER = 16
REF_END, REF_AUX = (10 + 4) / REF_NORMALISER, (8 + 2) / REF_NORMALISER
REF_END_ROW0 = (7 + 2) / REF_NORMALISER


def test_reference_tokens_target_divides_by_the_first_full_length_batchs_size_for_the_whole_run():
    m = method("mtl_l1", alpha_aux=0.3, alpha_reg=0.25, reg_target="tokens_ref")
    assert m.state_dict() == {}
    first = m.loss(Fixed(), BATCH, AUX)
    assert float(first.parts["reg"]) == pytest.approx(REF_END + REF_AUX, rel=1e-6)
    assert float(first.total) == pytest.approx(END + 0.3 * 0.7 + 0.25 * (REF_END + REF_AUX), rel=1e-6)
    assert m.state_dict() == {"l1_normaliser": REF_NORMALISER}
    row0 = {k: v[:1] for k, v in BATCH.items()}
    second = m.loss(Fixed(), row0, AUX)  # a smaller last batch keeps the first batch's normaliser
    assert float(second.parts["reg"]) == pytest.approx(REF_END_ROW0 + REF_AUX, rel=1e-6)
    assert m.state_dict() == {"l1_normaliser": REF_NORMALISER}


def test_reference_normaliser_survives_a_resume():
    trained = method("l1", alpha_reg=0.25, reg_target="tokens_ref")
    trained.loss(Fixed(), BATCH, None)
    resumed = method("l1", alpha_reg=0.25, reg_target="tokens_ref")
    resumed.load_state_dict(trained.state_dict())
    reg = float(resumed.loss(Fixed(), {k: v[:1] for k, v in BATCH.items()}, None).parts["reg"])
    assert reg == pytest.approx(REF_END_ROW0, rel=1e-6)  # not row 0's own size (8)
    fresh = method("l1", alpha_reg=0.25, reg_target="tokens_ref")
    fresh.load_state_dict({})
    assert float(fresh.loss(Fixed(), BATCH, None).parts["reg"]) == pytest.approx(REF_END, rel=1e-6)


@pytest.mark.parametrize("target", ["cls", "tokens"])
def test_per_batch_targets_see_the_batch_as_given_and_keep_no_state(target):
    m = method("mtl_l1", reg_target=target)
    m.loss(Fixed(), BATCH, AUX)
    assert m.state_dict() == {}
    m.load_state_dict({"l1_normaliser": 3})
    expected = CLS_END + CLS_AUX if target == "cls" else TOKENS_END + TOKENS_AUX
    assert float(m.loss(Fixed(), BATCH, AUX).parts["reg"]) == pytest.approx(expected, rel=1e-6)


def test_reference_penalty_without_its_normaliser_is_refused():
    with pytest.raises(ValueError, match=r"^tokens_ref needs the frozen normaliser$"):
        l1_penalty(Encoded(h=BATCH["h"], tokens=BATCH["tokens"]), "tokens_ref")


def test_mtl_has_no_l1_term():
    total, parts = terms("mtl", True, alpha_aux=0.3)
    assert parts == pytest.approx({"end": END, "aux": 0.7}, rel=1e-6)
    assert total == pytest.approx(END + 0.3 * 0.7, rel=1e-6)


@pytest.mark.parametrize(("target", "end"), [("cls", CLS_END), ("tokens", TOKENS_END)])
def test_l1_is_end_plus_weighted_l1_of_the_end_batch(target, end):
    total, parts = terms("l1", False, alpha_reg=0.25, reg_target=target)
    assert parts == pytest.approx({"end": END, "reg": end}, rel=1e-6)
    assert total == pytest.approx(END + 0.25 * end, rel=1e-6)


def test_zero_weights_leave_the_end_task_loss_alone():
    total, parts = terms("mtl_l1", True, alpha_aux=0.0, alpha_reg=0.0)
    assert total == pytest.approx(END, rel=1e-6) and parts["reg"] == pytest.approx(TOKENS_END + TOKENS_AUX, rel=1e-6)


def test_default_weights_are_one_and_exp_minus_one_on_the_token_mean():
    total, _ = terms("mtl_l1", True)
    assert total == pytest.approx(END + 0.7 + math.exp(-1) * (TOKENS_END + TOKENS_AUX), rel=1e-6)


def test_the_penalty_is_computed_in_float32_from_low_precision_activations():
    h = torch.full((2, 4), 1.0 + 2**-7, dtype=torch.bfloat16)  # 1.0078125 is exact in bf16
    encoded = Encoded(h=h, tokens=h[:, None, :])
    cls, tokens = l1_penalty(encoded, "cls"), l1_penalty(encoded, "tokens")
    assert cls.dtype == tokens.dtype == torch.float32
    assert float(cls) == 4 * (1.0 + 2**-7) and float(tokens) == 1.0 + 2**-7


def test_the_loss_gradient_reaches_the_representation_through_every_term():
    h = BATCH["h"].clone().requires_grad_()
    aux_loss = torch.tensor(0.7, requires_grad=True)
    batch, aux = {**BATCH, "h": h}, {**AUX, "aux_loss": aux_loss}
    method("mtl_l1", alpha_aux=0.3, alpha_reg=0.25, reg_target="cls").loss(Fixed(), batch, aux).total.backward()
    assert float(aux_loss.grad) == pytest.approx(0.3)
    # d/dh of CE/2 for row 0 (label 0) plus 0.25 * sign(h) / 2 from the L1 mean
    p0 = torch.softmax(torch.tensor([1.0, -2.0]), 0)
    expected = (p0 - torch.tensor([1.0, 0.0])) / 2 + 0.25 * torch.tensor([1.0, -1.0]) / 2
    assert h.grad[0].tolist() == pytest.approx(expected.tolist(), rel=1e-5)
