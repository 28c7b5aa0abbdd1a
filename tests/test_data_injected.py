"""The offline real-data tasks: Rotten Tomatoes snippets with an injected token, coloured MNIST."""

from __future__ import annotations

import pytest
import torch

from robustmtl.config import build_config
from robustmtl.errors import UserError
from robustmtl.registry import dataset_entry


def build(name: str, **values):
    cfg = build_config("erm", name, 0, None, values, where="test")
    return dataset_entry(name).build(cfg.data_params, None)


def agreement(split) -> float:
    a = split.g % 2
    return float((a == split.y).float().mean())


def test_text_spurious_injects_the_token_exactly_on_a1():
    splits = build("text_spurious", text_n_train=1000, text_n_val=200, text_n_test=800, spurious_token="zq:")
    for split in splits.by_name().values():
        has_token = torch.tensor([t.startswith("zq: ") for t in split.texts])
        assert has_token.tolist() == (split.g % 2).bool().tolist()
    assert agreement(splits.train) == pytest.approx(0.95, abs=0.03)
    assert agreement(splits.test) == pytest.approx(0.5, abs=0.06)
    assert 0.45 < splits.train.y.float().mean() < 0.7  # fresh / rotten, roughly as in the corpus


def test_text_spurious_depends_on_its_data_seed_only():
    a, b = build("text_spurious"), build("text_spurious")
    assert a.train.texts == b.train.texts and torch.equal(a.train.g, b.train.g)
    c = build("text_spurious", text_data_seed=1)
    assert c.train.texts != a.train.texts
    splits = a.by_name().values()
    texts = [t.removeprefix("spoiler: ") for s in splits for t in s.texts]
    assert len(texts) == 3500


def test_mnist_spurious_colours_the_digit_by_the_attribute():
    splits = build("mnist_spurious", mnist_p_train=0.9)
    batch = splits.train[torch.arange(200)]
    x = batch["pixel_values"]
    assert x.shape == (200, 3, 28, 28)
    ink = (x > -1).flatten(2).sum(dim=2)  # normalised: black background is -1
    a = batch["g"] % 2
    assert ((ink[:, 0] > 0) == (a == 0)).all() and ((ink[:, 1] > 0) == (a == 1)).all() and (ink[:, 2] == 0).all()
    assert agreement(splits.train) == pytest.approx(0.9, abs=0.03)
    assert splits.info.extra["image_size"] == 28


def test_sizes_beyond_the_source_are_a_user_error():
    with pytest.raises(UserError, match="mnist_n_train"):
        build("mnist_spurious", mnist_n_train=4500)
