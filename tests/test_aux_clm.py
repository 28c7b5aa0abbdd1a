"""The causal-LM auxiliary task (`aux_task = "clm"`, the reference's ablation): its loss is the next-token
cross-entropy of transformers' own decoder forward, it is causal, the end task stays bidirectional, it trains
through the loop, and the default's run ids do not move."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from robustmtl.config import RunOptions, build_config
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.models.bert import Bert, attention_bias
from robustmtl.registry import dataset_entry
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import read_records, tiny_bert

TINY_TEXT = {"text_n_train": 24, "text_n_val": 8, "text_n_test": 8, "bert_max_length": 32}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("clm"))


def config(tiny: Path, method: str = "mtl_l1", **values):
    return build_config(method, "text_spurious", 0, None, {**TINY_TEXT, "bert_pretrained": str(tiny), **values},
                        where="test")


@pytest.fixture(scope="module")
def raw(tiny):
    return dataset_entry("text_spurious").build(config(tiny).data_params, None)


def built(tiny: Path, raw, **values) -> Bert:
    torch.manual_seed(0)
    return Bert.build(config(tiny, **values).model_params, raw.info).eval()  # eval: no dropout draws to compare


@pytest.fixture(scope="module")
def train(tiny, raw, tmp_path_factory):
    return built(tiny, raw).prepare(raw, tmp_path_factory.mktemp("cache")).train


def padded_batch(train, rows: int = 8) -> dict[str, torch.Tensor]:
    batch = train[torch.arange(rows)]
    assert (batch["attention_mask"] == 0).any()  # some rows are padded
    return batch


def hand_next_token_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Position t predicts token t + 1, for every t whose next token is real, one by one."""
    terms = [-torch.log_softmax(logits[i, t].double(), dim=-1)[ids[i, t + 1]]
             for i in range(ids.shape[0]) for t in range(ids.shape[1] - 1) if mask[i, t + 1]]
    return torch.stack(terms).mean()


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_clm_loss_is_the_next_token_cross_entropy_of_transformers_decoder_forward(tiny, raw, train,
                                                                                     implementation):
    from transformers import BertConfig, BertLMHeadModel

    model = built(tiny, raw, aux_task="clm")
    model.mlm.set_attn_implementation(implementation)
    decoder = BertLMHeadModel(BertConfig.from_pretrained(tiny, is_decoder=True)).eval()
    decoder.set_attn_implementation(implementation)
    decoder.load_state_dict(model.mlm.state_dict())  # the same weights, run as transformers' causal decoder
    batch = padded_batch(train)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.where(mask == 1, ids, -100)
    out = decoder(input_ids=ids, attention_mask=mask, token_type_ids=batch["token_type_ids"], labels=labels,
                  use_cache=False)
    ours = model.aux_loss(batch)
    expected = hand_next_token_loss(out.logits, ids, mask)
    assert ours.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert ours.loss.item() == pytest.approx(out.loss.item(), rel=1e-5)
    hidden = decoder.bert(input_ids=ids, attention_mask=mask, token_type_ids=batch["token_type_ids"],
                          use_cache=False).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(ours.encoded.tokens[real], hidden[real], atol=1e-5, rtol=1e-4)
    mlm = built(tiny, raw).aux_loss(batch).loss
    assert not math.isclose(mlm.item(), ours.loss.item(), rel_tol=1e-3)  # the switch changed the objective


def test_a_later_token_changes_no_earlier_position_of_the_auxiliary_forward(tiny, raw, train):
    model = built(tiny, raw, aux_task="clm")
    batch = padded_batch(train)
    k = 4
    assert batch["attention_mask"][0, k + 1] == 1  # a real token, with a real one after it
    changed = {**batch, "input_ids": batch["input_ids"].clone()}
    changed["input_ids"][0, k] = (batch["input_ids"][0, k] + 1) % model.mlm.config.vocab_size
    before, after = model.aux_loss(batch).encoded.tokens, model.aux_loss(changed).encoded.tokens
    torch.testing.assert_close(after[0, :k], before[0, :k], atol=1e-6, rtol=0)  # positions before k never see it
    assert not torch.allclose(after[0, k:], before[0, k:], atol=1e-4)
    torch.testing.assert_close(after[1:], before[1:], atol=1e-6, rtol=0)
    # so the predictions made before position k - 1 (of tokens up to k - 1) keep their loss terms
    head = model.mlm.cls
    per_position = [torch.nn.functional.cross_entropy(head(t[0, : k - 1]), b["input_ids"][0, 1:k], reduction="none")
                    for t, b in ((before, batch), (after, changed))]
    torch.testing.assert_close(per_position[1], per_position[0], atol=1e-5, rtol=0)
    # the end-task forward, bidirectional, does see it at every position
    end_before, end_after = model.encode(batch).tokens, model.encode(changed).tokens
    assert not torch.allclose(end_after[0, :k], end_before[0, :k], atol=1e-4)


def test_padding_to_full_length_leaves_the_clm_loss_as_it_was(tiny, raw, train):
    """`reg_target = "tokens_ref"` pads every batch to `bert_max_length`: the padding predicts nothing and is
    never attended to, so the loss and the real positions' outputs stay what they were."""
    model = built(tiny, raw, aux_task="clm")
    batch = train[(train.offsets[1:] - train.offsets[:-1]).argsort()[:8]]  # the shortest rows, padded
    wide = model.at_full_length(batch)
    assert wide["input_ids"].shape[1] == TINY_TEXT["bert_max_length"] > batch["input_ids"].shape[1]
    narrow_out, wide_out = model.aux_loss(batch), model.aux_loss(wide)
    assert wide_out.loss.item() == pytest.approx(narrow_out.loss.item(), rel=1e-5)
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(wide_out.encoded.tokens[:, : real.shape[1]][real], narrow_out.encoded.tokens[real],
                               atol=1e-5, rtol=1e-4)


def test_the_end_task_stays_bidirectional_and_one_forward_equals_two(tiny, raw, train):
    mlm, clm = built(tiny, raw), built(tiny, raw, aux_task="clm")
    by_length = (train.offsets[1:] - train.offsets[:-1]).argsort()
    batch, aux_batch = train[by_length[-3:]], train[by_length[:5]]  # different widths, both halves padded
    assert batch["input_ids"].shape[1] != aux_batch["input_ids"].shape[1]
    end = mlm.encode(batch)
    assert torch.equal(clm.encode(batch).h, end.h) and torch.equal(clm.encode(batch).tokens, end.tokens)
    for first, second in ((batch, aux_batch), (aux_batch, batch)):
        paired_end, paired_aux = clm.encode_pair(first, second)  # one forward, causal rows for the aux half only
        torch.testing.assert_close(paired_end.tokens, clm.encode(first).tokens, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(paired_end.h, clm.encode(first).h, atol=1e-5, rtol=1e-4)
        alone = clm.aux_loss(second)
        torch.testing.assert_close(paired_aux.encoded.tokens, alone.encoded.tokens, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(paired_aux.loss, alone.loss, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(clm.aux_loss(batch).encoded.tokens, end.tokens, atol=1e-4)  # the aux one is causal


def test_an_mtl_l1_run_with_the_clm_task_trains_through_the_loop(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    aux_terms = {}
    for task in ("mlm", "clm"):
        cfg = config(tiny, aux_task=task, epochs=2, batch_size=8, lr=1e-3)
        rd = RunDir(tmp_path / task)
        prepare_run(rd, cfg, RunOptions(threads=1))
        summary = train_run(rd)
        records = [r for r in read_records(rd.metrics) if r["split"] == "train"]
        assert summary["epochs"] == 2 and len(records) == 2
        assert all(r["run_id"] == cfg.run_id for r in records)
        for r in records:
            assert set(r["terms"]) == {"total", "end", "aux", "reg"}
            assert all(math.isfinite(v) for v in r["terms"].values())
        aux_terms[task] = [r["terms"]["aux"] for r in records]
    assert aux_terms["clm"] != aux_terms["mlm"]
    assert aux_terms["clm"][1] < aux_terms["clm"][0]  # the next-token loss is being trained


def test_the_default_keeps_its_run_ids_and_the_switch_is_a_table_column():
    for method, run_id in (("mtl_l1", "085ec17e491f"), ("mtl", "932375f560c0")):
        default = build_config(method, "text_spurious", 0, None, {}, where="test")
        assert default.run_id == run_id  # the ids these configs had before the switch existed
        assert build_config(method, "text_spurious", 0, None, {"aux_task": "mlm"}, where="test").run_id == run_id
        clm = build_config(method, "text_spurious", 0, None, {"aux_task": "clm"}, where="test")
        assert clm.run_id != run_id
        assert default.hparams()["aux_task"] == "mlm" and clm.hparams()["aux_task"] == "clm"  # aggregate --by
    with pytest.raises(UserError, match="aux_task"):
        build_config("mtl", "text_spurious", 0, None, {"aux_task": "simclr"}, where="test")


def test_the_l1_cls_target_on_a_causal_aux_forward_is_refused_in_one_line(tiny, raw, train):
    """A causal forward's CLS position attends to itself only, so its h is one vector for every input."""
    h = built(tiny, raw, aux_task="clm").aux_loss(padded_batch(train)).encoded.h
    torch.testing.assert_close(h, h[:1].expand_as(h), atol=1e-6, rtol=0)
    for pool in ("cls", "pooler"):
        with pytest.raises(UserError, match="reg_target") as err:
            config(tiny, aux_task="clm", reg_target="cls", bert_pool=pool)
        assert "\n" not in str(err.value)
    config(tiny, aux_task="clm", reg_target="cls", bert_pool="mean")  # a mean over causal outputs reads the input
    config(tiny, aux_task="clm", reg_target="tokens_ref")
    config(tiny, method="l1", aux_task="clm", reg_target="cls")  # no auxiliary forward
    config(tiny, aux_task="mlm", reg_target="cls")


def test_clm_from_scratch_trains_its_random_head_and_other_attention_is_refused(tiny, raw, train):
    scratch = built(tiny, raw, aux_task="clm", bert_from_scratch=True)
    loss = scratch.aux_loss(padded_batch(train)).loss
    loss.backward()
    assert math.isfinite(loss.item()) and scratch.mlm.cls.predictions.transform.dense.weight.grad.abs().sum() > 0
    mask = torch.ones(2, 3, dtype=torch.long)
    flash = SimpleNamespace(_attn_implementation="flash_attention_2")
    assert attention_bias(flash, mask, torch.float32) is mask  # the 2-D mask, as before, for the bidirectional one
    with pytest.raises(UserError, match="sdpa or eager") as err:
        attention_bias(flash, mask, torch.float32, causal_from=0)
    assert "\n" not in str(err.value)
