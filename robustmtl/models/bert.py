"""A BERT-family encoder (transformers) with masked language modelling as its pre-training objective.

`bert_pretrained` names the checkpoint (see `models/hub.py`; default `minilm`, which runs offline
on a CPU). The model is loaded with its MLM head (`AutoModelForMaskedLM`), so MLM starts from the
pretrained head where the checkpoint has one (all-MiniLM-L6-v2 has none: its head is newly
initialised, with the decoder tied to the word embeddings).

`h` is the CLS embedding (last hidden state at position 0) with `bert_pool = "cls"`, or with
`"mean"` the mean of the last hidden state over the real tokens (attention mask 1, [CLS] and [SEP]
included, padding never), as sentence-transformers pools all-MiniLM-L6-v2, whose CLS embedding was
never trained as a sentence representation, or with `"pooler"` the checkpoint's pooler output (its
dense + tanh layer on the CLS embedding), which is what the reference classifies. The classifier is
dropout + linear on `h`, and the L1 `cls` target reads the same `h`. "cls" stays the default because
that is the representation the paper's L1 penalty is described on. The masked-LM loader leaves the
pooler out, so "pooler" reads its weights from the checkpoint's weight files (`pooler_weights`), and a
checkpoint without them is refused in one line rather than given a random pooler.

Batches are padded to their own longest example; `at_full_length` pads one to `bert_max_length`, as
the reference pads every batch, for the L1 term that averages over padding too (`reg_target =
"tokens_ref"`). Padding changes no real token's output (the attention mask hides it), so `h` and both
losses are the same either way; only the padding positions' outputs are added.

MLM follows the standard collator: each non-special, non-padding token is selected with probability
`mlm_probability`; of those, 80% become [MASK], 10% a random token, 10% stay; cross-entropy on the
selected positions only. Vocabulary logits are computed only at gathered positions (hidden states
through the MLM head): same loss, a fraction of the cost. How many positions are selected is random, and
a gather sized by that count would make the host wait for the GPU every step; so a fixed number is
gathered instead (`selection_bound`: the expected count plus 8 standard deviations and 16, from the
batch's shape alone), the selected ones first and in order, the rest ignored by the loss. By Bernstein's
inequality a step selects more than that with probability below e^-32 (about 1e-14); it would then leave
the positions past the bound out of that step's loss.

No step waits for the GPU: the encoder gets its attention mask already expanded to 4-D
(`attention_bias`), because given the 2-D mask transformers asks whether it has any padding (`mask.all()`,
a read of the GPU) on every forward, to skip the mask when there is none.

`aux_task = "clm"` swaps MLM for the reference's causal-LM ablation: the auxiliary forward reads the ids
uncorrupted under a causal attention mask (each position attends to itself and earlier real tokens), and
position t predicts token t + 1 through the same LM head, cross-entropy averaged over every position whose
next token is real (padding and the last position predict nothing). The checkpoint itself stays an encoder
(`is_decoder` off): the causal mask is passed 4-D, which transformers takes as given, and the layers' own
`is_causal` flag is read only when no mask is passed, so this is transformers' `is_decoder=True` forward
without its cache. The end-task forward (`encode`) stays bidirectional. Other attention implementations than
sdpa and eager take a 2-D padding mask only, so they are refused for "clm".

`encode_pair` runs the end-task batch and the auxiliary batch (masked, or as it is for "clm") through the
encoder as one batch, both padded to the longer width; the attention mask, built per example (bidirectional
rows for the end-task half, causal rows for a "clm" auxiliary half), keeps every real token's output what it
would be alone, and each half is cut back to its own width, so only dropout draws differ from two separate
forwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustmtl.data.base import DataInfo, Splits
from robustmtl.data.text import tokenize_splits
from robustmtl.errors import UserError
from robustmtl.models.base import AuxOutput, Encoded, Model
from robustmtl.models.hub import load, resolve
from robustmtl.models.params import BertParams

MLM_HEADS = ("cls", "lm_head")  # where BertForMaskedLM and RobertaForMaskedLM (and their kin) keep it


def pad_to(batch: dict[str, torch.Tensor], ids: torch.Tensor, width: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Encoder inputs (`ids` replacing the batch's input ids) right-padded to `width` columns."""
    extra = width - ids.shape[1]
    padded = {"input_ids": nn.functional.pad(ids, (0, extra), value=pad_id)}
    for key in ("attention_mask", "token_type_ids"):
        if key in batch:
            padded[key] = nn.functional.pad(batch[key], (0, extra), value=0)
    return padded


POOLER_KEYS = ("pooler.dense.weight", "pooler.dense.bias")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # each also as a sharded checkpoint's index


def pooler_weights(source: str) -> dict[str, torch.Tensor] | None:
    """The checkpoint's pooler tensors by their `POOLER_KEYS` suffix (`pooler.dense.*` in a saved BertModel,
    `bert.pooler.dense.*` in a saved BertForPreTraining), read from its weight files without loading the rest;
    None when it has no pooler."""
    import json

    from safetensors import safe_open
    from transformers.utils import cached_file

    def local(name: str) -> str | None:
        return cached_file(source, name, local_files_only=True, _raise_exceptions_for_missing_entries=False)

    def read(path: str, names: list[str]) -> dict[str, torch.Tensor]:
        if path.endswith(".safetensors"):
            with safe_open(path, "pt") as f:
                return {n: f.get_tensor(n) for n in names}
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {n: state[n] for n in names}

    for file in WEIGHT_FILES:
        if (index := local(file + ".index.json")) is not None:
            shard_of: dict[str, str] = json.loads(Path(index).read_text())["weight_map"]
        elif (path := local(file)) is not None:
            if file.endswith(".safetensors"):
                with safe_open(path, "pt") as f:
                    keys = list(f.keys())
            else:
                keys = list(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
            shard_of = {k: Path(path).name for k in keys}
            index = path
        else:
            continue
        names = [next((k for k in shard_of if k == s or k.endswith("." + s)), None) for s in POOLER_KEYS]
        if None in names:
            return None
        return {suffix: read(str(Path(index).with_name(shard_of[name])), [name])[name]
                for suffix, name in zip(POOLER_KEYS, names, strict=True) if name is not None}
    return None


def pool(tokens: torch.Tensor, attention_mask: torch.Tensor, how: str) -> torch.Tensor:
    """`h` from the last hidden state: the CLS position, or the mean over real (unmasked) tokens ("pooler" models
    pass the CLS position through their pooler afterwards)."""
    if how in ("cls", "pooler"):
        return tokens[:, 0]
    weights = attention_mask.to(tokens.dtype)[:, :, None]
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)


def attention_bias(config: object, attention_mask: torch.Tensor, dtype: torch.dtype,
                   causal_from: int | None = None) -> torch.Tensor:
    """The 2-D padding mask expanded as the encoder's attention would expand it, so that transformers takes it as
    given. Built by transformers' own functions with the no-padding shortcuts off: that shortcut's `mask.all()`
    reads the GPU. Rows from `causal_from` on (a causal-LM auxiliary batch) get transformers' causal mask, the
    rows before it the bidirectional one. Implementations other than sdpa and eager get the 2-D mask unchanged
    (they expand it their own way, and so cannot be given causal rows)."""
    if getattr(config, "_attn_implementation", None) not in ("sdpa", "eager"):
        if causal_from is not None:
            raise UserError(f"aux_task = \"clm\" needs the sdpa or eager attention, not "
                            f"{getattr(config, '_attn_implementation', None)!r}: only those take a causal 4-D mask")
        return attention_mask
    from transformers.masking_utils import create_bidirectional_mask, create_causal_mask

    def expanded(mask: torch.Tensor, causal: bool) -> torch.Tensor:
        shape_only = mask.new_empty((*mask.shape, 0), dtype=dtype)  # batch, length, dtype, device
        if causal:
            return create_causal_mask(config=config, inputs_embeds=shape_only, attention_mask=mask, cache=None,
                                      allow_is_causal_skip=False)
        return create_bidirectional_mask(config=config, inputs_embeds=shape_only, attention_mask=mask,
                                         allow_is_bidirectional_skip=False)

    if causal_from is None:
        return expanded(attention_mask, causal=False)
    if causal_from == 0:
        return expanded(attention_mask, causal=True)
    return torch.cat([expanded(attention_mask[:causal_from], causal=False),
                      expanded(attention_mask[causal_from:], causal=True)])


def selection_bound(positions: int, probability: float) -> int:
    """How many positions the MLM head reads for a batch of `positions` tokens (see the module docstring)."""
    spread = math.sqrt(positions * probability * (1 - probability))
    return min(positions, math.ceil(positions * probability + 8 * spread + 16))


def gather_selected(selected: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat positions, which are selected, how many are selected): the first `bound` selected positions of the
    flattened `selected` in order, then filler positions; every shape is fixed by `bound`, none by the data."""
    running = selected.flatten().cumsum(0)
    ranks = torch.arange(1, bound + 1, device=selected.device)
    positions = torch.searchsorted(running, ranks).clamp(max=running.numel() - 1)  # the k-th selected position
    count = running[-1]
    return positions, ranks <= count, count


def mask_tokens(input_ids: torch.Tensor, special: torch.Tensor, probability: float, mask_id: int, vocab_size: int,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(corrupted ids, selected positions): BERT's 80/10/10 masking, never on `special` positions."""

    def draw(p: float) -> torch.Tensor:
        return torch.rand(input_ids.shape, generator=generator, device=input_ids.device) < p

    selected = draw(probability) & ~special
    to_mask = selected & draw(0.8)
    to_random = selected & ~to_mask & draw(0.5)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    corrupted = torch.where(to_mask, mask_id, input_ids)
    return torch.where(to_random, random_ids, corrupted), selected


class Bert(Model):
    special_ids: torch.Tensor  # a buffer: the tokenizer's special token ids

    def __init__(self, p: BertParams, info: DataInfo) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer

        key = "bert_pretrained"
        if p.bert_from_scratch and p.bert_pool == "pooler":
            raise UserError("bert_pool = \"pooler\" reads the checkpoint's pooler weights, which bert_from_scratch "
                            "= true does not use; choose bert_pool = \"cls\" or \"mean\" for a from-scratch model")
        if p.bert_from_scratch:  # random weights drawn from the run's seeded RNG, as every new layer's are
            self.mlm = AutoModelForMaskedLM.from_config(load(AutoConfig, p.bert_pretrained, key))
        else:
            self.mlm = load(AutoModelForMaskedLM, p.bert_pretrained, key)
        self.tokenizer = load(AutoTokenizer, p.bert_pretrained, key)
        head_name = next((n for n in MLM_HEADS if hasattr(self.mlm, n)), None)
        if head_name is None:
            raise UserError(f"{key}={p.bert_pretrained!r}: {type(self.mlm).__name__} has no MLM head named "
                            f"{' or '.join(MLM_HEADS)}; use a BERT-family checkpoint")
        self.head_name = head_name
        config = self.mlm.config
        if p.bert_max_length > config.max_position_embeddings:
            raise UserError(f"bert_max_length={p.bert_max_length} exceeds the {config.max_position_embeddings} "
                            f"positions of {p.bert_pretrained!r}")
        self.params = p
        self.causal_aux = p.aux_task == "clm"
        self.source = resolve(p.bert_pretrained, key)
        classifier = nn.Linear(config.hidden_size, info.n_classes)
        nn.init.normal_(classifier.weight, std=getattr(config, "initializer_range", 0.02))
        nn.init.zeros_(classifier.bias)
        self.head = nn.Sequential(nn.Dropout(p.bert_dropout), classifier)
        if p.bert_pool == "pooler":
            self.pooler = self._pretrained_pooler(config.hidden_size)
        self.register_buffer("special_ids", torch.tensor(self.tokenizer.all_special_ids), persistent=False)

    def _pretrained_pooler(self, width: int) -> nn.Linear:
        """The checkpoint's pooler dense layer (the tanh is applied in `_encoded`); built without drawing random
        numbers, so the rest of the model initialises as under the other poolings."""
        weights = pooler_weights(self.source)
        if weights is None:
            raise UserError(f"bert_pool='pooler': {self.params.bert_pretrained!r} has no pooler weights "
                            f"({', '.join(POOLER_KEYS)}); use bert_pool='cls' or 'mean'")
        dense = nn.utils.skip_init(nn.Linear, width, width)
        with torch.no_grad():
            dense.weight.copy_(weights["pooler.dense.weight"])
            dense.bias.copy_(weights["pooler.dense.bias"])
        return dense

    @classmethod
    def build(cls, p: BertParams, info: DataInfo) -> Bert:
        return cls(p, info)

    def prepare(self, splits: Splits, cache_dir: Path | None) -> Splits:
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        identity = backend.to_str() if backend is not None else f"{type(self.tokenizer).__name__}:{self.source}"
        return tokenize_splits(splits, self.tokenizer, identity, self.params.bert_max_length, cache_dir)

    def _encoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 token_type_ids: torch.Tensor | None = None, causal_from: int | None = None) -> torch.Tensor:
        """The last hidden state (the encoder's own forward, given its attention mask pre-expanded; rows from
        `causal_from` on attend causally)."""
        dtype = self.mlm.get_input_embeddings().weight.dtype  # the embeddings' output, what the mask is added to
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        bias = attention_bias(self.mlm.config, attention_mask, dtype, causal_from)
        return self.mlm.base_model(input_ids=input_ids, attention_mask=bias, **extra).last_hidden_state

    def _encode_ids(self, batch: dict[str, torch.Tensor], input_ids: torch.Tensor) -> Encoded:
        tokens = self._encoder(input_ids, batch["attention_mask"], batch.get("token_type_ids"))
        return self._encoded(tokens, batch["attention_mask"])

    def _encoded(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> Encoded:
        h = pool(tokens, attention_mask, self.params.bert_pool)
        if self.params.bert_pool == "pooler":
            h = torch.tanh(self.pooler(h))
        return Encoded(h=h, tokens=tokens)

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        return self._encode_ids(batch, batch["input_ids"])

    def at_full_length(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch right-padded to `bert_max_length` columns, as the reference pads every batch."""
        return {**batch, **pad_to(batch, batch["input_ids"], self.params.bert_max_length, self.tokenizer.pad_token_id)}

    def encoder_module(self) -> nn.Module:
        return self.mlm.base_model

    def _corrupt(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch["input_ids"]
        # compared one by one, not `torch.isin`, which sorts (and reads the GPU) once a tokenizer has many specials
        special = (ids[..., None] == self.special_ids).any(dim=-1) | (batch["attention_mask"] == 0)
        return mask_tokens(ids, special, self.params.mlm_probability, self.tokenizer.mask_token_id,
                           self.mlm.config.vocab_size)

    def _mlm_loss(self, encoded: Encoded, ids: torch.Tensor, selected: torch.Tensor) -> AuxOutput:
        """Cross-entropy of the vocabulary logits at the selected positions, averaged over them: logits only at a
        fixed number of gathered positions, the unselected among them ignored (see the module docstring)."""
        bound = selection_bound(selected.numel(), self.params.mlm_probability)
        positions, valid, count = gather_selected(selected, bound)
        hidden = encoded.tokens.flatten(0, 1).index_select(0, positions)
        targets = torch.where(valid, ids.flatten().index_select(0, positions), -100)
        logits = getattr(self.mlm, self.head_name)(hidden)
        loss = nn.functional.cross_entropy(logits.float(), targets, ignore_index=-100, reduction="sum")
        return AuxOutput(loss=loss / count.clamp(min=1), encoded=encoded)

    def _clm_loss(self, encoded: Encoded, batch: dict[str, torch.Tensor]) -> AuxOutput:
        """Next-token cross-entropy: position t's vocabulary logits against token t + 1, averaged over the positions
        whose next token is real (padding and the last position are ignored)."""
        targets = torch.where(batch["attention_mask"][:, 1:] == 1, batch["input_ids"][:, 1:], -100)
        logits = getattr(self.mlm, self.head_name)(encoded.tokens[:, :-1])
        loss = nn.functional.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100,
                                           reduction="sum")
        return AuxOutput(loss=loss / (targets != -100).sum().clamp(min=1), encoded=encoded)

    def _aux_input(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Callable[[Encoded], AuxOutput]]:
        """The ids the auxiliary forward reads and the loss of its output: MLM's corrupted ids and its loss on the
        selected positions, or the ids as they are and the next-token loss (a causal forward)."""
        if self.causal_aux:
            return batch["input_ids"], lambda encoded: self._clm_loss(encoded, batch)
        corrupted, selected = self._corrupt(batch)
        return corrupted, lambda encoded: self._mlm_loss(encoded, batch["input_ids"], selected)

    def aux_loss(self, batch: dict[str, torch.Tensor]) -> AuxOutput:
        """The auxiliary objective on this batch in one encoder forward (MLM: vocabulary logits at selected
        positions only)."""
        ids, loss = self._aux_input(batch)
        tokens = self._encoder(ids, batch["attention_mask"], batch.get("token_type_ids"),
                               causal_from=0 if self.causal_aux else None)
        return loss(self._encoded(tokens, batch["attention_mask"]))

    def encode_pair(self, batch: dict[str, torch.Tensor],
                    aux_batch: dict[str, torch.Tensor]) -> tuple[Encoded, AuxOutput]:
        """One encoder forward over [end batch; aux batch as the objective reads it], padded to the wider of the
        two; a causal objective's rows alone attend causally."""
        aux_ids, aux_loss = self._aux_input(aux_batch)
        n, end_width, aux_width = len(batch["input_ids"]), batch["input_ids"].shape[1], aux_ids.shape[1]
        width = max(end_width, aux_width)
        pad_id = self.tokenizer.pad_token_id
        halves = pad_to(batch, batch["input_ids"], width, pad_id), pad_to(aux_batch, aux_ids, width, pad_id)
        inputs = {k: torch.cat([halves[0][k], halves[1][k]]) for k in halves[0]}
        tokens = self._encoder(inputs["input_ids"], inputs["attention_mask"], inputs.get("token_type_ids"),
                               causal_from=n if self.causal_aux else None)
        end, aux = tokens[:n, :end_width], tokens[n:, :aux_width]
        return self._encoded(end, batch["attention_mask"]), aux_loss(self._encoded(aux, aux_batch["attention_mask"]))
