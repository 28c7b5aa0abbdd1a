"""The L1 `tokens_ref` term against the reference's own computation, on the packaged MiniLM.

The reference pads every text batch to the maximum length, averages |last hidden state| over all
positions (padding included) and divides by the first batch's element count, frozen. Here that is
computed explicitly (the tokenizer's `padding="max_length"`, a plain encoder forward) and compared
with the method's `reg` term: value and gradient on every encoder weight.
"""

from __future__ import annotations

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.methods.base import MethodContext
from robustmtl.methods.mtl import L1, MTLL1, l1_penalty
from robustmtl.models.bert import Bert
from robustmtl.registry import dataset_entry

MAX_LENGTH = 40
SIZES = {"text_n_train": 24, "text_n_val": 8, "text_n_test": 8, "bert_max_length": MAX_LENGTH}


def config(method: str, **values):
    return build_config(method, "text_spurious", 0, None, {**SIZES, "reg_target": "tokens_ref", **values},
                        where="test")


@pytest.fixture(scope="module")
def setup():
    cfg = config("l1")
    raw = dataset_entry("text_spurious").build(cfg.data_params, None)
    torch.manual_seed(0)
    model = Bert.build(cfg.model_params, raw.info)
    model.eval()  # no dropout: the method's forward and the explicit one must see the same network
    return model, raw, model.prepare(raw, None)


def method(cls, cfg, data):
    return cls(cfg.method_params, MethodContext(config=cfg, info=data.info, train=data.train, run_dir=None,
                                                required={}))


def padded_tokens(model: Bert, texts: list[str], input_ids: torch.Tensor | None = None) -> torch.Tensor:
    """The last hidden state of `texts` padded to the maximum length, as the reference's tokenizer call pads."""
    enc = model.tokenizer(texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    if input_ids is not None:
        enc["input_ids"] = input_ids
    return model.mlm.base_model(**enc).last_hidden_state


def encoder_grads(model: Bert, value: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.mlm.base_model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params,
                                                                                              strict=True)])


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_value_and_encoder_gradient_equal_the_padded_to_max_length_computation(setup):
    model, raw, data = setup
    idx = data.train.eval_order()[:8]  # the shortest snippets: mostly padding at the maximum length
    batch = data.train[idx]
    assert batch["input_ids"].shape[1] < MAX_LENGTH  # per-batch padding is shorter: the modes must differ
    l1 = method(L1, config("l1"), data)
    reg = l1.loss(model, batch, None).parts["reg"]
    reference_tokens = padded_tokens(model, [raw.train.texts[i] for i in idx.tolist()])
    reference = reference_tokens.abs().sum() / reference_tokens.numel()
    assert l1.l1_normaliser == 8 * MAX_LENGTH * 384
    assert reg.item() == pytest.approx(reference.item(), rel=1e-5)
    ours, theirs = encoder_grads(model, reg), encoder_grads(model, reference)
    assert theirs.abs().max() > 0
    assert torch.allclose(ours, theirs, rtol=1e-3, atol=1e-7 * float(theirs.abs().max()))
    assert torch.nn.functional.cosine_similarity(ours, theirs, dim=0) > 0.99999

    per_batch = l1_penalty(model.encode(batch), "tokens")  # the default mode: its own padding, its own mean
    assert abs(per_batch.item() - reference.item()) > 1e-3
    other = encoder_grads(model, per_batch)
    assert torch.nn.functional.cosine_similarity(other, theirs, dim=0) < 0.999


def test_the_first_batch_fixes_the_normaliser_for_the_run_and_its_checkpoint(setup):
    model, raw, data = setup
    cfg = config("l1")
    l1 = method(L1, cfg, data)
    with torch.no_grad():
        l1.loss(model, data.train[torch.arange(8)], None)
        small = torch.tensor([8, 9, 10])
        reg = l1.loss(model, data.train[small], None).parts["reg"]
        tokens = padded_tokens(model, [raw.train.texts[i] for i in small.tolist()])
        assert reg.item() == pytest.approx(tokens.abs().sum().item() / (8 * MAX_LENGTH * 384), rel=1e-5)
        resumed = method(L1, cfg, data)
        resumed.load_state_dict(l1.state_dict())
        assert resumed.loss(model, data.train[small], None).parts["reg"].item() == pytest.approx(reg.item(), rel=1e-6)


def test_mtl_l1_adds_the_auxiliary_batch_padded_the_same_way(setup):
    model, raw, data = setup
    cfg = config("mtl_l1")
    mtl_l1 = method(MTLL1, cfg, data)
    end_idx, aux_idx = torch.arange(6), torch.arange(10, 16)
    batch, aux_batch = data.train[end_idx], data.train[aux_idx]
    with torch.no_grad():
        torch.manual_seed(5)
        reg = mtl_l1.loss(model, batch, aux_batch).parts["reg"]
        torch.manual_seed(5)  # the same MLM corruption, drawn over the padded auxiliary batch
        corrupted, _ = model._corrupt(model.at_full_length(aux_batch))
        end = padded_tokens(model, [raw.train.texts[i] for i in end_idx.tolist()])
        aux = padded_tokens(model, [raw.train.texts[i] for i in aux_idx.tolist()], input_ids=corrupted)
    assert corrupted.shape == (6, MAX_LENGTH)
    assert reg.item() == pytest.approx((end.abs().sum() + aux.abs().sum()).item() / end.numel(), rel=1e-5)
