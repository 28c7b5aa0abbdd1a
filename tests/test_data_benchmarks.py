"""Benchmark loaders on tiny fixture copies of their on-disk layouts: groups, errors, and end-to-end runs."""

from __future__ import annotations

import csv
import random
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from robustmtl.config import RunOptions, build_config
from robustmtl.data.civilcomments import IDENTITIES
from robustmtl.errors import UserError
from robustmtl.layout import RunDir
from robustmtl.registry import dataset_entry
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import read_records

WORDS = ("the", "a", "film", "movie", "good", "bad", "not", "never", "great", "awful", "plot", "actor", "scene",
         "story", "fun", "dull")
SPLIT_CODES = [0] * 16 + [1] * 8 + [2] * 8  # 32 rows: 16 train, 8 val, 8 test


def sentence(rng: random.Random, n: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_image(path: Path, rng: random.Random, size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = tuple(rng.randrange(256) for _ in range(3))
    Image.new("RGB", size, colour).save(path)


def make_waterbirds(root: Path) -> Path:
    rng = random.Random(0)
    rows = []
    for i, split in enumerate(SPLIT_CODES):
        y, place = i % 2, (i // 2) % 2
        name = f"{1 + y:03d}.Bird/img_{i}.jpg"
        write_image(root / name, rng, (40, 30))
        rows.append({"img_id": i, "img_filename": name, "y": y, "split": split, "place": place,
                     "place_filename": f"/x/place_{i}.jpg"})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def make_celeba(root: Path) -> Path:
    rng = random.Random(1)
    attrs, parts = [], []
    for i, split in enumerate(SPLIT_CODES):
        image_id = f"{i + 1:06d}.jpg"
        write_image(root / "img_align_celeba" / "img_align_celeba" / image_id, rng, (36, 44))
        attrs.append({"image_id": image_id, "Blond_Hair": 1 if i % 2 else -1, "Male": 1 if (i // 2) % 2 else -1,
                      "Smiling": rng.choice([-1, 1])})
        parts.append({"image_id": image_id, "partition": split})
    pd.DataFrame(attrs).to_csv(root / "list_attr_celeba.csv", index=False)
    pd.DataFrame(parts).to_csv(root / "list_eval_partition.csv", index=False)
    return root


def make_multinli(root: Path) -> Path:
    """group DRO's layout: data/metadata_random.csv + GLUE's three MNLI files whose rows it indexes."""
    rng = random.Random(2)
    glue = root / "glue_data" / "MNLI"
    glue.mkdir(parents=True)
    header = ["index", "promptID", "pairID", "genre", "sentence1", "sentence2", "gold_label"]
    meta = []
    for name, count in (("train.tsv", 20), ("dev_matched.tsv", 6), ("dev_mismatched.tsv", 6)):
        with (glue / name).open("w", newline="") as f:
            writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
            writer.writerow(header)
            for _ in range(count):
                i = len(meta)
                negated = (i // 3) % 2
                second = ("not " if negated else "") + sentence(rng, 5)
                writer.writerow([i, i, f"{i}e", "fiction", sentence(rng), second, "neutral"])
                meta.append({"gold_label": i % 3, "sentence2_has_negation": negated, "split": SPLIT_CODES[i]})
    (root / "data").mkdir()
    pd.DataFrame(meta).to_csv(root / "data" / "metadata_random.csv")
    return root


def make_civilcomments(root: Path) -> Path:
    rng = random.Random(3)
    rows = []
    for i, split in enumerate(SPLIT_CODES):
        row = {"id": i, "comment_text": sentence(rng), "split": ["train", "val", "test"][split],
               "toxicity": 0.8 if i % 2 else 0.1}
        row.update({name: 0.0 for name in IDENTITIES})
        if i % 4 == 1:
            row["male"] = row["black"] = 0.9  # two identities at once: counts in both groups
        elif i % 4 == 2:
            row["muslim"] = 0.6
        elif i % 4 == 3:
            row["female"] = 0.4  # below 0.5: no identity
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "all_data_with_identities.csv", index=False)
    return root


MAKERS = {"waterbirds": make_waterbirds, "celeba": make_celeba, "multinli": make_multinli,
          "civilcomments": make_civilcomments}


def make(name: str, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    return MAKERS[name](root)


def build(name: str, root: Path | None, **values):
    cfg = build_config("erm", name, 0, None, values, where="test")
    return dataset_entry(name).build(cfg.data_params, root)


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_layout_builds_the_standard_splits(tmp_path, name):
    root = make(name, tmp_path / name)
    splits = build(name, tmp_path)  # found as <data_root>/<name>
    assert [len(s) for s in splits.by_name().values()] == [16, 8, 8]
    for split in splits.by_name().values():
        assert split.membership.shape == (len(split), splits.info.n_groups)
        assert int(split.g.max()) < splits.info.n_train_groups
    assert build(name, root).info == splits.info  # the dataset's own directory works too


def test_waterbirds_groups_follow_label_and_place(tmp_path):
    splits = build("waterbirds", make_waterbirds(tmp_path))
    table = pd.read_csv(tmp_path / "metadata.csv")
    train = table[table["split"] == 0]
    assert splits.train.g.tolist() == (2 * train["y"] + train["place"]).tolist()
    batch = splits.train[torch.tensor([0, 3])]
    assert batch["pixel_values"].shape == (2, 3, 224, 224)


def test_celeba_target_and_attribute_are_parameters(tmp_path):
    make_celeba(tmp_path)
    splits = build("celeba", tmp_path, celeba_target="Smiling", celeba_attr="Blond_Hair")
    table = pd.read_csv(tmp_path / "list_attr_celeba.csv")[:16]
    assert splits.train.y.tolist() == (table["Smiling"] == 1).astype(int).tolist()
    assert splits.info.group_names[3] == "Smiling/Blond_Hair"
    with pytest.raises(UserError, match="no column 'Bald'"):
        build("celeba", tmp_path, celeba_target="Bald")


def test_multinli_reads_sentence_pairs_in_metadata_order(tmp_path):
    splits = build("multinli", make_multinli(tmp_path))
    assert splits.info.n_groups == 6
    assert splits.train.second is not None and len(splits.train.second) == 16
    negated = [s.startswith("not ") for s in splits.train.second]
    assert (splits.train.g % 2).bool().tolist() == negated


def test_civilcomments_eval_groups_overlap_and_train_groups_are_four(tmp_path):
    splits = build("civilcomments", make_civilcomments(tmp_path))
    info = splits.info
    assert info.n_groups == 16 and info.n_train_groups == 4
    train = splits.train
    members = train.membership.sum(dim=1)
    assert members.max() == 2  # male and black at once
    assert (members[torch.arange(16) % 4 == 0] == 0).all()  # no identity: in no evaluation group
    assert (members[torch.arange(16) % 4 == 3] == 0).all()  # 0.4 is below the threshold
    male_toxic = info.group_names.index("toxic/male")
    assert train.membership[1, male_toxic] and train.membership[1, info.group_names.index("toxic/black")]
    assert train.g.tolist() == [2 * (i % 2) + (i % 4 in (1, 2)) for i in range(16)]


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_missing_data_root_names_what_to_set(name):
    with pytest.raises(UserError, match="--data-root") as err:
        build(name, None)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "remove"), [
    ("waterbirds", "metadata.csv"), ("celeba", "list_eval_partition.csv"),
    ("multinli", "glue_data/MNLI/dev_matched.tsv"), ("civilcomments", "all_data_with_identities.csv"),
])
def test_missing_file_is_named(tmp_path, name, remove):
    MAKERS[name](tmp_path)
    (tmp_path / remove).unlink()
    with pytest.raises(UserError, match=re.escape(remove.split("/")[-1])) as err:
        build(name, tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("name", "file", "column"), [
    ("waterbirds", "metadata.csv", "place"), ("celeba", "list_eval_partition.csv", "partition"),
    ("multinli", "data/metadata_random.csv", "sentence2_has_negation"),
    ("civilcomments", "all_data_with_identities.csv", "LGBTQ"),
])
def test_missing_column_is_named(tmp_path, name, file, column):
    MAKERS[name](tmp_path)
    path = tmp_path / file
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(UserError, match=f"no column '{column}'"):
        build(name, tmp_path)


def test_missing_image_is_a_user_error_at_load_time(tmp_path):
    splits = build("waterbirds", make_waterbirds(tmp_path))
    splits.train.source.paths[0].unlink()
    with pytest.raises(UserError, match=r"img_0\.jpg"):
        splits.train[torch.tensor([0])]


def run_tiny(tmp_path, monkeypatch, method: str, dataset: str, data_root: Path, **values):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    cfg = build_config(method, dataset, 0, None, {"epochs": 1, "batch_size": 8, **values}, where="test")
    run_dir = RunDir(tmp_path / "run")
    prepare_run(run_dir, cfg, RunOptions(data_root=str(data_root), threads=1))
    summary = train_run(run_dir)
    return summary, read_records(run_dir.metrics)


@pytest.mark.parametrize(("name", "method"), [("waterbirds", "mtl_l1"), ("celeba", "erm")])
def test_image_benchmark_trains_end_to_end(tmp_path, monkeypatch, name, method):
    root = make(name, tmp_path / "data")
    summary, records = run_tiny(tmp_path, monkeypatch, method, name, root, vit_image_size=32)
    assert summary["steps"] == 2 and {r["split"] for r in records} == {"train", "val", "test"}


@pytest.mark.parametrize(("name", "method"), [("multinli", "mtl_l1"), ("civilcomments", "erm")])
def test_text_benchmark_trains_end_to_end(tmp_path, monkeypatch, name, method):
    root = make(name, tmp_path / "data")
    summary, records = run_tiny(tmp_path, monkeypatch, method, name, root, bert_max_length=32)
    assert summary["steps"] == 2
    test = next(r for r in records if r["split"] == "test")
    assert sum(test["group_n"].values()) >= 1
    assert any((tmp_path / "cache" / "tokens").iterdir())  # tokenised once, cached
