"""The BERT-family encoder (MiniLM offline): MLM masking, masked-only logits, tokenisation cache, offline errors."""

from __future__ import annotations

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data import text as text_module
from robustmtl.errors import UserError
from robustmtl.models.bert import Bert, gather_selected, mask_tokens, selection_bound
from robustmtl.registry import dataset_entry

TINY_TEXT = {"text_n_train": 24, "text_n_val": 8, "text_n_test": 8, "bert_max_length": 32}


def config(**values):
    return build_config("mtl_l1", "text_spurious", 0, None, {**TINY_TEXT, **values}, where="test")


@pytest.fixture(scope="module")
def raw():
    cfg = config()
    return dataset_entry("text_spurious").build(cfg.data_params, None)


@pytest.fixture(scope="module")
def model(raw):
    torch.manual_seed(0)
    return Bert.build(config().model_params, raw.info)


def test_masking_rates_follow_80_10_10():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (128, 512), generator=gen)
    special = torch.zeros_like(ids, dtype=torch.bool)
    special[:, 0] = special[:, -1] = True
    special[:64, 400:] = True  # padding
    corrupted, selected = mask_tokens(ids, special, 0.15, mask_id=103, vocab_size=30522, generator=gen)
    assert not (selected & special).any()
    assert (corrupted[~selected] == ids[~selected]).all()
    assert selected[~special].float().mean() == pytest.approx(0.15, abs=0.003)
    chosen, original = corrupted[selected], ids[selected]
    assert (chosen == 103).float().mean() == pytest.approx(0.8, abs=0.01)
    assert (chosen == original).float().mean() == pytest.approx(0.1, abs=0.01)
    assert ((chosen != original) & (chosen != 103)).float().mean() == pytest.approx(0.1, abs=0.01)


def test_mlm_loss_equals_full_vocabulary_loss_on_masked_positions(model, raw, tmp_path):
    data = model.prepare(raw, tmp_path)
    batch = data.train[torch.arange(8)]
    model.eval()
    torch.manual_seed(3)
    fast = model.aux_loss(batch).loss
    torch.manual_seed(3)
    special = torch.isin(batch["input_ids"], model.special_ids) | (batch["attention_mask"] == 0)
    corrupted, selected = mask_tokens(batch["input_ids"], special, 0.15, model.tokenizer.mask_token_id,
                                      model.mlm.config.vocab_size)
    labels = torch.where(selected, batch["input_ids"], -100)
    full = model.mlm(input_ids=corrupted, attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"], labels=labels).loss
    assert selected.any()
    assert fast.item() == pytest.approx(full.item(), rel=1e-4)


def test_cls_embedding_and_classifier(model, raw, tmp_path):
    data = model.prepare(raw, tmp_path)
    batch = data.val[torch.arange(4)]
    encoded = model.encode(batch)
    assert encoded.h.shape == (4, 384) and encoded.tokens.shape[:2] == batch["input_ids"].shape
    assert model.classify(encoded).shape == (4, 2)
    assert torch.equal(encoded.h, encoded.tokens[:, 0])


def test_tokens_are_padded_per_batch_and_cached(model, raw, tmp_path, monkeypatch):
    data = model.prepare(raw, tmp_path)
    split = data.train
    lengths = split.offsets[1:] - split.offsets[:-1]
    assert lengths.max() <= 32
    idx = torch.tensor([0, 5, 7])
    batch = split[idx]
    assert batch["input_ids"].shape[1] == lengths[idx].max()
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths[idx].tolist()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == model.tokenizer.pad_token_id).all()
    expected = model.tokenizer(raw.train.texts[5], truncation=True, max_length=32)["input_ids"]
    assert batch["input_ids"][1, : len(expected)].tolist() == expected

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again instead of reading the cache")

    monkeypatch.setattr(text_module, "_encode", no_tokenising)
    again = model.prepare(raw, tmp_path)
    assert torch.equal(again.train.ids, split.ids)


def test_build_is_deterministic_under_the_seed(model, raw):
    torch.manual_seed(0)
    other = Bert.build(config().model_params, raw.info)
    assert torch.equal(other.head[1].weight, model.head[1].weight)
    for name, param in other.mlm.cls.named_parameters():
        assert torch.equal(param, dict(model.mlm.cls.named_parameters())[name]), name


@pytest.mark.parametrize(("name", "message"), [
    ("someone/not-downloaded-model", "is not a local directory"),
    ("/no/such/dir/model", "does not exist"),
])
def test_unavailable_checkpoint_is_a_one_line_user_error(raw, name, message):
    with pytest.raises(UserError, match=message) as err:
        Bert.build(config(bert_pretrained=name).model_params, raw.info)
    assert "\n" not in str(err.value) and "bert_pretrained" in str(err.value)


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_cli_runs_minilm_on_text_spurious(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    sets = [f"--set={k}={v}" for k, v in {**TINY_TEXT, "epochs": 1, "batch_size": 8, "lr": 1e-5}.items()]
    result = cli("run", "--method", "mtl_l1", "--dataset", "text_spurious", "--threads", "1",
                 "--out", tmp_path / "run", *sets)
    assert "3 steps" in result.output
    bad = cli("run", "--method", "erm", "--dataset", "text_spurious", "--set", "bert_pretrained=org/missing",
              "--out", tmp_path / "bad", ok=False)
    assert bad.exit_code == 2


def test_prepare_tokenises_a_pretraining_pool_and_keys_the_cache_by_it(model, raw, tmp_path):
    from robustmtl.data.base import Splits
    from robustmtl.data.text import TextSplit, cache_key

    pool = TextSplit("pretrain", ["an unlabeled snippet", "another one, a little longer"], torch.zeros(2),
                     torch.zeros(2), n_groups=4)
    with_pool = Splits(raw.info, raw.train, raw.val, raw.test, pretrain=pool)
    data = model.prepare(with_pool, tmp_path)
    assert model.prepare(raw, tmp_path).pretrain is None
    assert cache_key(with_pool, "t", 32) != cache_key(raw, "t", 32)
    expected = model.tokenizer(pool.texts[1], truncation=True, max_length=32)["input_ids"]
    assert data.pretrain[torch.tensor([1])]["input_ids"][0].tolist() == expected
    assert model.prepare(with_pool, tmp_path).pretrain.ids.tolist() == data.pretrain.ids.tolist()  # from the cache


def test_mean_pooling_averages_real_tokens_only_and_feeds_the_classifier(raw, tmp_path):
    torch.manual_seed(0)
    model = Bert.build(config(bert_pool="mean").model_params, raw.info)
    model.eval()
    data = model.prepare(raw, tmp_path)
    batch = data.val[torch.arange(4)]
    encoded = model.encode(batch)
    lengths = batch["attention_mask"].sum(dim=1)
    assert lengths.min() < lengths.max()  # some rows are padded
    for row, n in enumerate(lengths.tolist()):
        alone = model.encode(data.val[torch.tensor([row])])
        assert torch.allclose(encoded.h[row], encoded.tokens[row, :n].mean(dim=0), atol=1e-6)
        assert torch.allclose(encoded.h[row], alone.h[0], atol=1e-5)  # padding leaves h as it was
    wide = model.encode(model.at_full_length(batch))
    assert wide.tokens.shape[1] == 32 and torch.allclose(wide.h, encoded.h, atol=1e-5)
    assert torch.allclose(model.classify(encoded), model.head(encoded.h))
    paired, _ = model.encode_pair(batch, data.train[torch.arange(3)])
    assert torch.allclose(paired.h, encoded.h, atol=1e-5)
    assert not torch.allclose(encoded.h, encoded.tokens[:, 0])


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
def test_the_pre_expanded_attention_mask_gives_what_the_2d_mask_gave(model, raw, tmp_path, implementation):
    """The encoder gets its mask 4-D (no `mask.all()` read of the GPU): every output equals transformers' own
    handling of the 2-D mask, bitwise on a CPU, with padding and without."""
    data = model.prepare(raw, tmp_path)
    batch = data.train[torch.arange(8)]
    unpadded = {k: v[:, :5] for k, v in batch.items() if v.ndim == 2}
    unpadded["attention_mask"] = torch.ones_like(unpadded["attention_mask"])
    model.eval()
    model.mlm.set_attn_implementation(implementation)
    try:
        for b in (batch, unpadded):
            assert (b["attention_mask"] == 0).any() == (b is batch)
            ours = model._encoder(b["input_ids"], b["attention_mask"], b["token_type_ids"])
            theirs = model.mlm.base_model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                          token_type_ids=b["token_type_ids"]).last_hidden_state
            assert torch.equal(ours, theirs)
    finally:
        model.mlm.set_attn_implementation("sdpa")


def old_mlm_loss(model, tokens, ids, selected):
    """The formula before the fixed-size gather: logits at `selected.nonzero()`, summed, over the count."""
    at = selected.nonzero(as_tuple=True)
    logits = getattr(model.mlm, model.head_name)(tokens[at])
    return torch.nn.functional.cross_entropy(logits.float(), ids[at], reduction="sum") / selected.sum().clamp(min=1)


@pytest.mark.parametrize("probability", [0.15, 0.5, 1.0])
def test_mlm_loss_over_a_fixed_size_gather_equals_the_loss_over_the_selected_positions(model, probability):
    from robustmtl.models.base import Encoded

    gen = torch.Generator().manual_seed(1)
    tokens = torch.randn(6, 20, 384, generator=gen)
    ids = torch.randint(1000, 30000, (6, 20), generator=gen)
    for selected in (torch.rand(6, 20, generator=gen) < probability, torch.zeros(6, 20, dtype=torch.bool)):
        model.params = config(mlm_probability=probability).model_params
        new = model._mlm_loss(Encoded(h=tokens[:, 0], tokens=tokens), ids, selected).loss
        assert new.item() == pytest.approx(old_mlm_loss(model, tokens, ids, selected).item(), rel=1e-6, abs=1e-7)
    model.params = config().model_params


def test_the_gather_takes_the_selected_positions_in_order_up_to_its_bound():
    gen = torch.Generator().manual_seed(2)
    selected = torch.rand(7, 13, generator=gen) < 0.3
    count = int(selected.sum())
    for bound in (count + 5, count, count - 3):
        positions, valid, n = gather_selected(selected, bound)
        assert positions.shape == valid.shape == (bound,) and int(n) == count
        kept = min(bound, count)
        assert positions[:kept].tolist() == selected.flatten().nonzero().flatten()[:kept].tolist()
        assert valid.tolist() == [True] * kept + [False] * (bound - kept)
        assert int(positions.max()) < selected.numel()


def test_the_gather_bound_is_never_below_a_likely_count():
    assert selection_bound(40, 0.15) == 40  # small batches: every position, exact
    assert selection_bound(8192, 1.0) == 8192
    n, p = 32 * 256, 0.15
    bound = selection_bound(n, p)
    assert n * p + 8 * (n * p * (1 - p)) ** 0.5 <= bound < 1.25 * n * p


def test_the_pooler_pooling_classifies_the_checkpoints_dense_and_tanh_over_cls(raw, tmp_path):
    from safetensors import safe_open
    from transformers import AutoModel

    from robustmtl.models.hub import quiet_transformers, resolve

    torch.manual_seed(0)
    model = Bert.build(config(bert_pool="pooler").model_params, raw.info)
    model.eval()
    source = resolve("minilm", "bert_pretrained")
    with safe_open(f"{source}/model.safetensors", "pt") as f:
        assert torch.equal(model.pooler.weight, f.get_tensor("pooler.dense.weight"))
        assert torch.equal(model.pooler.bias, f.get_tensor("pooler.dense.bias"))
    data = model.prepare(raw, tmp_path)
    batch = data.val[torch.arange(4)]
    encoded = model.encode(batch)
    with quiet_transformers():
        reference = AutoModel.from_pretrained(source, local_files_only=True).eval()  # BertModel, with its pooler
    expected = reference(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).pooler_output
    assert torch.allclose(encoded.h, expected, atol=1e-5)
    assert torch.allclose(encoded.h, torch.tanh(model.pooler(encoded.tokens[:, 0])))
    assert not torch.allclose(encoded.h, encoded.tokens[:, 0], atol=1e-3)
    assert torch.allclose(model.classify(encoded), model.head(encoded.h))
    torch.manual_seed(0)
    plain = Bert.build(config().model_params, raw.info)
    assert torch.equal(plain.head[1].weight, model.head[1].weight)  # loading the pooler draws no random numbers
    assert not hasattr(plain, "pooler")


def test_the_pooler_pooling_refuses_a_checkpoint_without_a_pooler_in_one_line(raw, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from robustmtl.models.hub import resolve

    source = resolve("minilm", "bert_pretrained")
    copy = tmp_path / "no-pooler"
    shutil.copytree(source, copy)
    state = load_file(copy / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("pooler.")}, copy / "model.safetensors")
    Bert.build(config(bert_pretrained=str(copy)).model_params, raw.info)  # the other poolings do not need one
    with pytest.raises(UserError, match="has no pooler weights") as err:
        Bert.build(config(bert_pretrained=str(copy), bert_pool="pooler").model_params, raw.info)
    assert "\n" not in str(err.value) and "bert_pool" in str(err.value)


def test_from_scratch_keeps_the_checkpoints_architecture_with_new_weights_and_run_ids(raw):
    pretrained = Bert.build(config().model_params, raw.info)
    torch.manual_seed(0)
    scratch = Bert.build(config(bert_from_scratch=True).model_params, raw.info)
    theirs, ours = pretrained.mlm.state_dict(), scratch.mlm.state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    weights = [k for k in theirs if k.endswith("query.weight")]
    assert weights and not any(torch.equal(ours[k], theirs[k]) for k in weights)
    assert scratch.tokenizer.vocab == pretrained.tokenizer.vocab  # the checkpoint's tokenizer all the same
    assert config().run_id == config(bert_from_scratch=False).run_id != config(bert_from_scratch=True).run_id
    with pytest.raises(UserError, match="pooler"):
        Bert.build(config(bert_from_scratch=True, bert_pool="pooler").model_params, raw.info)
