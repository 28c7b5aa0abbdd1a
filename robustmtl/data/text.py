"""Text splits: raw texts from a dataset, token ids after a text model's `prepare`.

Datasets hand out raw strings (`TextSplit`, optionally sentence pairs) because only the model knows
its tokenizer and maximum length. `tokenize_splits` turns them into `TokenSplit`s once per
(tokenizer, max length, texts) and caches the result on disk, so a grid of runs over one dataset
tokenises it once. Token ids are stored flat with offsets and padded per batch to the longest
example in it (dynamic padding), which on short texts is most of the speed.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from robustmtl.data.base import Split, Splits
from robustmtl.layout import atomic_write_bytes

ENCODE_CHUNK = 10_000
CACHE_VERSION = 1


class TextSplit(Split):
    """Raw texts (and the second sentence of each pair, for NLI) with labels and groups."""

    def __init__(self, name: str, texts: list[str], y: torch.Tensor, g: torch.Tensor,
                 membership: torch.Tensor | None = None, n_groups: int | None = None,
                 second: list[str] | None = None) -> None:
        super().__init__(name, y, g, membership=membership, n_groups=n_groups)
        self.texts = texts
        self.second = second

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise RuntimeError(f"split {self.name!r} holds raw text; a text model's prepare() must tokenise it first")


class TokenSplit(Split):
    """Token ids of one split, padded per batch; `token_type_ids` only when the tokenizer makes them."""

    def __init__(self, raw: Split, ids: torch.Tensor, offsets: torch.Tensor, type_ids: torch.Tensor | None,
                 pad_id: int) -> None:
        super().__init__(raw.name, raw.y, raw.g, membership=raw.membership)
        self.ids, self.offsets, self.type_ids, self.pad_id = ids, offsets, type_ids, pad_id

    def eval_order(self) -> torch.Tensor:
        """Shortest first, so each evaluation batch pads to about its own length, not the split's longest."""
        return torch.argsort(self.offsets[1:] - self.offsets[:-1], stable=True)

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        starts = self.offsets[idx]
        lengths = self.offsets[idx + 1] - starts
        width = int(lengths.max()) if len(idx) else 0
        positions = torch.arange(width)
        valid = positions[None, :] < lengths[:, None]
        flat = (starts[:, None] + positions[None, :]).clamp(max=max(len(self.ids) - 1, 0))
        batch = {"input_ids": torch.where(valid, self.ids[flat].long(), self.pad_id),
                 "attention_mask": valid.long()}
        if self.type_ids is not None:
            batch["token_type_ids"] = torch.where(valid, self.type_ids[flat].long(), 0)
        return batch


def _encode(split: TextSplit, tokenizer: Any, max_length: int) -> dict[str, torch.Tensor | None]:
    ids: list[int] = []
    types: list[int] = []
    lengths: list[int] = []
    with_types = "token_type_ids" in tokenizer.model_input_names
    for start in range(0, len(split.texts), ENCODE_CHUNK):
        first = split.texts[start:start + ENCODE_CHUNK]
        second = split.second[start:start + ENCODE_CHUNK] if split.second is not None else None
        enc = tokenizer(first, second, truncation=True, max_length=max_length, return_token_type_ids=with_types,
                        return_attention_mask=False)
        for i, row in enumerate(enc["input_ids"]):
            ids.extend(row)
            lengths.append(len(row))
            if with_types:
                types.extend(enc["token_type_ids"][i])
    offsets = torch.zeros(len(lengths) + 1, dtype=torch.long)
    offsets[1:] = torch.as_tensor(lengths, dtype=torch.long).cumsum(0)
    return {"ids": torch.as_tensor(ids, dtype=torch.int32), "offsets": offsets,
            "type_ids": torch.as_tensor(types, dtype=torch.int8) if with_types else None}


def cache_key(splits: Splits, tokenizer_id: str, max_length: int) -> str:
    """Content hash of everything the token ids depend on (the texts themselves, not dataset params)."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{tokenizer_id}\0{max_length}".encode())
    for name, split in _raw_texts(splits).items():
        digest.update(f"\0split {name} {len(split.texts)} {split.second is not None}\0".encode())
        for text in split.texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
        for text in split.second or ():
            digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:24]


def with_pool(splits: Splits) -> dict[str, Split]:
    """The three splits, and the pre-training pool where the dataset has one (absent: keys stay as they were)."""
    named = splits.by_name()
    if splits.pretrain is not None:
        named["pretrain"] = splits.pretrain
    return named


def _raw_texts(splits: Splits) -> dict[str, TextSplit]:
    """with_pool's splits, each checked to hold raw text (what tokenising reads)."""
    named: dict[str, TextSplit] = {}
    for name, split in with_pool(splits).items():
        if not isinstance(split, TextSplit):
            raise TypeError(f"split {name!r} is a {type(split).__name__}, not raw text")
        named[name] = split
    return named


def tokenize_splits(splits: Splits, tokenizer: Any, tokenizer_id: str, max_length: int,
                    cache_dir: Path | None) -> Splits:
    """TextSplits → TokenSplits; read from / written to `cache_dir/tokens/<hash>.pt` when a cache dir is given."""
    path = cache_dir / "tokens" / f"{cache_key(splits, tokenizer_id, max_length)}.pt" if cache_dir else None
    encoded = torch.load(path, weights_only=True) if path is not None and path.is_file() else None
    if encoded is None:
        encoded = {name: _encode(split, tokenizer, max_length) for name, split in _raw_texts(splits).items()}
        if path is not None:
            buffer = io.BytesIO()
            torch.save(encoded, buffer)
            atomic_write_bytes(path, buffer.getvalue())
    made = {name: TokenSplit(split, pad_id=tokenizer.pad_token_id, **encoded[name])
            for name, split in with_pool(splits).items()}
    return Splits(splits.info, made["train"], made["val"], made["test"], pretrain=made.get("pretrain"))
