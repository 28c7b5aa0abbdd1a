"""civilcomments_small on a tiny subset written by the test in the reference's format
(docs/datasets-setup.md#civilcomments_small): metadata rows, each with its own text row, the text repeated for a
comment's identities; rows and groups as the format says, both granularities, the reference's average over identity
rows, the errors."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustmtl.aggregate.prediction_metrics import Inputs, avg_acc, group_rows_avg_acc, weighted_avg_acc
from robustmtl.aggregate.worstclass import labels_from_groups
from robustmtl.config import RunOptions, build_config
from robustmtl.data.civilcomments import IDENTITIES
from robustmtl.data.civilcomments_small import COLUMNS, TEXT_COLUMN, files
from robustmtl.errors import UserError
from robustmtl.layout import GridDir
from robustmtl.predictions import PREDICTIONS_DIR, PredictionStore
from robustmtl.registry import DATASETS, dataset_entry
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import tiny_bert
from tests.test_data_benchmarks import sentence

# (split, y, identities mentioned, text key) per comment; training comments may mention none, evaluated ones never
# do. Comments with the same key share their text: val comments 8 and 13 are two comments with one text and label,
# val comment 14 has that text with the other label.
COMMENTS = [
    ("train", 0, (), 0), ("train", 1, ("male",), 1), ("train", 0, ("male", "black"), 2), ("train", 1, (), 3),
    ("train", 0, ("muslim",), 4), ("train", 1, ("white", "christian", "LGBTQ"), 5), ("train", 0, (), 6),
    ("train", 1, ("female",), 7),
    ("val", 0, ("male", "black"), 8), ("val", 1, ("muslim",), 9), ("val", 0, ("female", "white", "LGBTQ"), 10),
    ("val", 1, ("other_religions", "christian"), 11), ("val", 0, ("black",), 12), ("val", 0, ("male",), 8),
    ("val", 1, ("female",), 8),
    ("test", 1, ("male",), 15), ("test", 0, ("female", "muslim"), 16), ("test", 1, ("black", "white"), 17),
    ("test", 0, ("christian",), 18), ("test", 1, ("LGBTQ", "other_religions", "male"), 19),
]
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}
TEXTS = {key: f"comment {key}: {sentence(random.Random(key))}" for *_, key in COMMENTS}


def subset_rows(granularity: str) -> list[dict]:
    """The metadata's rows with their texts: coarse training rows one per comment (a = 0: mentions an identity,
    1: none), fine training and all evaluated rows one per (comment, identity); shuffled, so a comment's rows are
    not adjacent."""
    rows = []
    for split, y, named, key in COMMENTS:
        base = {"split": SPLIT_CODE[split], "y": y, TEXT_COLUMN: TEXTS[key]}
        if split == "train" and granularity == "coarse":
            rows.append({**base, "a": int(not named)})
        else:
            rows += [{**base, "a": IDENTITIES.index(name)} for name in named]
    random.Random(5).shuffle(rows)
    return rows


def write_subset(root: Path, granularity: str = "coarse", rows: list[dict] | None = None,
                 extra_text_rows: int = 0) -> tuple[Path, Path]:
    """Both files in root/civilcomments_small: the text file in its own (shuffled) order, with an extra column."""
    folder = root / "civilcomments_small"
    folder.mkdir(parents=True, exist_ok=True)
    rows = rows if rows is not None else subset_rows(granularity)
    order = list(range(len(rows) + extra_text_rows))
    random.Random(7).shuffle(order)
    texts = [f"spare row {i}" for i in range(len(order))]
    meta = []
    for i, row in enumerate(rows):
        texts[order[i]] = row[TEXT_COLUMN]
        meta.append({"id": i, "filename": order[i], **{k: row[k] for k in ("split", "y", "a")}})
    meta_path, text_path = (folder / name for name in files(granularity))
    pd.DataFrame(meta, columns=list(COLUMNS)).to_csv(meta_path, index=False)
    pd.DataFrame({"toxicity": 0.5, TEXT_COLUMN: texts}).to_csv(text_path, index=False)
    return meta_path, text_path


def build(root: Path | None, granularity: str = "coarse"):
    cfg = build_config("erm", "civilcomments_small", 0, None, {"civil_granularity": granularity}, where="test")
    return dataset_entry("civilcomments_small").build(cfg.data_params, root)


def named_groups(membership: np.ndarray) -> frozenset[tuple[int, str]]:
    return frozenset((k // len(IDENTITIES), IDENTITIES[k % len(IDENTITIES)]) for k in np.flatnonzero(membership))


def expected_comments(split: str) -> Counter:
    return Counter((TEXTS[key], y, frozenset((y, name) for name in named))
                   for s, y, named, key in COMMENTS if s == split)


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
def test_evaluated_comments_are_one_example_each_in_the_group_of_each_row(tmp_path, granularity):
    write_subset(tmp_path, granularity)
    splits = build(tmp_path, granularity)
    for split in ("val", "test"):
        got = splits.by_name()[split]
        members = got.membership.numpy()
        examples = Counter((text, y, named_groups(m)) for text, y, m in zip(got.texts, got.y.tolist(), members,
                                                                             strict=True))
        assert examples == expected_comments(split)  # comments, not rows; identical ones stay two
        assert members.sum() == sum(r["split"] == SPLIT_CODE[split] for r in subset_rows(granularity))
    assert splits.info.n_groups == 16 and splits.info.group_names[8 + IDENTITIES.index("muslim")] == "toxic/muslim"


def train_rows(granularity: str) -> list[dict]:
    return [r for r in subset_rows(granularity) if r["split"] == 0]


def test_coarse_trains_on_one_row_per_comment_in_four_groups(tmp_path):
    write_subset(tmp_path, extra_text_rows=3)
    splits = build(tmp_path)
    info, train, rows = splits.info, splits.train, train_rows("coarse")
    assert len(train) == sum(c[0] == "train" for c in COMMENTS) and info.n_train_groups == 4 and info.n_attrs == 2
    assert train.texts == [r[TEXT_COLUMN] for r in rows]  # each row's filename names its text row
    assert train.g.tolist() == [2 * r["y"] + r["a"] for r in rows]
    assert info.train_group_names == ("non-toxic/any identity", "non-toxic/no identity", "toxic/any identity",
                                      "toxic/no identity")
    assert not train.membership.any()  # a coarse row does not say which identity
    for evaluated in (splits.val, splits.test):  # every evaluated comment mentions an identity
        assert (evaluated.g == 2 * evaluated.y).all()


def test_fine_trains_on_one_row_per_identity_in_sixteen_groups(tmp_path):
    write_subset(tmp_path, "fine")
    splits = build(tmp_path, "fine")
    info, train, rows = splits.info, splits.train, train_rows("fine")
    assert len(train) == len(rows) == sum(len(c[2]) for c in COMMENTS if c[0] == "train") == 8
    assert info.n_train_groups == 16 and info.n_attrs == 8 and info.train_group_names == info.group_names
    assert train.texts == [r[TEXT_COLUMN] for r in rows]
    assert train.g.tolist() == [8 * r["y"] + r["a"] for r in rows]
    assert train.membership.numpy().tolist() == np.eye(16, dtype=bool)[train.g.numpy()].tolist()
    # validation and test are the coarse file's; their training group is the label x the first identity mentioned
    val = splits.val
    lowest = [min(IDENTITIES.index(name) for _, name in named_groups(m)) for m in val.membership.numpy()]
    assert val.g.tolist() == [8 * y + a for y, a in zip(val.y.tolist(), lowest, strict=True)]


def test_the_worst_class_fallback_reads_classes_from_validation_groups(tmp_path):
    """The registry's n_attrs is what aggregation divides validation membership by: label x 8 identities."""
    write_subset(tmp_path)
    val = build(tmp_path).val
    single = val.membership.sum(dim=1) == 1
    assert 0 < int(single.sum()) < len(val)
    labels = labels_from_groups(val.membership[single].numpy(), DATASETS["civilcomments_small"].n_attrs)
    assert labels.tolist() == val.y[single].tolist()


def wrong_on(text: str) -> bool:
    """The test's model: wrong on these texts, right on the others."""
    return text in (TEXTS[16], TEXTS[19])  # one comment of two identities, one of three: rows weigh them 2 and 3


def rows_average_by_hand(meta_path: Path, text_path: Path, split: str, predict) -> float:
    """The reference's average: over the metadata's rows of the split, each scored by its text row's prediction."""
    texts = pd.read_csv(text_path)[TEXT_COLUMN].tolist()
    rows = [r for r in csv.DictReader(meta_path.open()) if r["split"] == str(SPLIT_CODE[split])]
    return sum(predict(texts[int(r["filename"])]) == int(r["y"]) for r in rows) / len(rows)


def test_the_group_rows_average_is_the_references_average_over_identity_rows(tmp_path):
    meta_path, text_path = write_subset(tmp_path)
    test = build(tmp_path).test
    label = {TEXTS[key]: y for s, y, _, key in COMMENTS if s == "test"}

    def predict(text: str) -> int:
        return label[text] ^ wrong_on(text)

    probs = np.eye(2, dtype=np.float16)[[predict(t) for t in test.texts]]
    x = Inputs(probs, test.y.numpy(), test.membership.numpy(), np.zeros(16, dtype=np.int64))
    by_hand = rows_average_by_hand(meta_path, text_path, "test", predict)
    assert group_rows_avg_acc(x) == pytest.approx(by_hand) == pytest.approx(4 / 9)
    assert avg_acc(x) == pytest.approx(3 / 5)  # the plain mean over comments
    with pytest.raises(UserError, match="civilcomments_small's coarse training rows name no identity"):
        weighted_avg_acc(x)


def test_the_group_rows_average_is_the_plain_average_where_every_example_is_in_one_group():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    membership = np.eye(4, dtype=bool)[rng.integers(0, 4, 50)]
    probs = rng.dirichlet([1, 1], 50)
    x = Inputs(probs, y, membership, np.ones(4, dtype=np.int64))
    assert group_rows_avg_acc(x) == pytest.approx(avg_acc(x))


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_missing_data_root_or_files_are_one_line_naming_where(tmp_path):
    with pytest.raises(UserError, match="--data-root") as err:
        build(None)
    assert "metadata_civilcomments_small_coarse.csv" in one_line(err)
    _, text_path = write_subset(tmp_path, "coarse")
    with pytest.raises(UserError) as err:
        build(tmp_path, "fine")  # only the coarse files are there
    assert str(tmp_path / "civilcomments_small" / "metadata_civilcomments_small_fine.csv") in one_line(err)
    assert "athrvkk/MTL-group-robustness" in str(err.value)
    assert len(build(tmp_path / "civilcomments_small").train) == 8  # the folder itself as the data root
    text_path.unlink()
    with pytest.raises(UserError, match=rf"missing {re.escape(str(text_path))};") as err:
        build(tmp_path)
    one_line(err)


@pytest.mark.parametrize("column", [*COLUMNS, TEXT_COLUMN])
def test_a_missing_column_is_named(tmp_path, column):
    paths = write_subset(tmp_path)
    path = paths[1] if column == TEXT_COLUMN else paths[0]
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(UserError, match=f"has no column '{column}'") as err:
        build(tmp_path)
    one_line(err)


def edit_metadata(path: Path, line: int, column: str, value: object) -> None:
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    fields = lines[line - 1].split(",")
    fields[header.index(column)] = str(value)
    lines[line - 1] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")


def first_line(path: Path, split: int) -> int:
    """The file line of the first metadata row of a split (line 1 is the header)."""
    return next(i for i, r in enumerate(csv.DictReader(path.open())) if r["split"] == str(split)) + 2


@pytest.mark.parametrize(("granularity", "split", "column", "value", "message"), [
    ("coarse", 0, "a", 2, r"a = 2 on a train row \(line {line}\); coarse train rows take 0\.\.1"),
    ("fine", 0, "a", 8, r"a = 8 on a train row \(line {line}\); fine train rows take 0\.\.7"),
    ("fine", 1, "a", 8, r"a = 8 on a val row \(line {line}\); fine val rows take 0\.\.7"),
    ("coarse", 2, "a", "male", r"column 'a' has 'male' on line {line}; every value .* is an integer"),
    ("coarse", 1, "filename", 2.0, r"column 'filename' has '2.0' on line {line}"),
    ("coarse", 1, "y", "", r"column 'y' has '' on line {line}"),
    ("coarse", 1, "filename", -1, r"line {line} names text row -1 \(filename\), but .* has {n} text rows"),
    ("coarse", 1, "filename", "{n}", r"line {line} names text row {n} \(filename\), but .* has {n} text rows"),
    ("coarse", 1, "split", 3, r"column 'split' has value 3"),
    ("coarse", 1, "y", 2, r"column 'y' has value 2"),
])
def test_values_against_the_format_are_one_line_each(tmp_path, granularity, split, column, value, message):
    meta_path, _ = write_subset(tmp_path, granularity)
    line, n = first_line(meta_path, split), len(subset_rows(granularity))
    edit_metadata(meta_path, line, column, str(value).format(n=n))
    with pytest.raises(UserError, match=message.format(line=line, n=n)) as err:
        build(tmp_path, granularity)
    one_line(err)


def test_a_text_file_shorter_than_the_filenames_or_an_empty_split_is_one_line(tmp_path):
    meta_path, text_path = write_subset(tmp_path)
    largest, n = int(pd.read_csv(meta_path)["filename"].idxmax()) + 2, len(subset_rows("coarse"))
    pd.read_csv(text_path).iloc[:-1].to_csv(text_path, index=False)
    with pytest.raises(UserError, match=rf"line {largest} names text row {n - 1} \(filename\), but .* has {n - 1} "):
        build(tmp_path)
    write_subset(tmp_path, rows=[r for r in subset_rows("coarse") if r["split"] != 2])
    with pytest.raises(UserError, match=r"has no test rows") as err:
        build(tmp_path)
    one_line(err)


def test_prepare_says_the_files_are_copied_and_nothing_is_prepared(tmp_path, cli):
    result = cli("data", "prepare", "civilcomments_small", "--from", tmp_path, "--data-root", tmp_path / "d", ok=False)
    assert result.exit_code == 2
    message = result.stderr.strip()
    assert "\n" not in message and "not prepared: copy" in message and "athrvkk/MTL-group-robustness" in message
    assert all(name in message for g in ("coarse", "fine") for name in files(g))
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_run_reports_both_averages_and_the_group_rows_one_is_the_references(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    meta_path, text_path = write_subset(tmp_path / "data")
    grid = GridDir(tmp_path / "grid")
    for seed in (0, 1):
        cfg = build_config("erm", "civilcomments_small", seed, None, {
            "epochs": 2, "batch_size": 4, "bert_max_length": 16, "bert_pretrained": str(tiny_bert(tmp_path))},
            where="test")
        prepare_run(grid.run(cfg.run_id), cfg, RunOptions(data_root=str(tmp_path / "data"), threads=1))
        train_run(grid.run(cfg.run_id))
    out = cli("aggregate", grid.root, "--metric", "group_rows_avg_acc", "--format", "csv").stdout
    rows = {r["metric"]: r for r in csv.DictReader(io.StringIO(out))}
    assert set(rows) == {"avg_acc", "group_rows_avg_acc"}

    from robustmtl.aggregate import aggregate

    summary = aggregate([grid.root], metric="group_rows_avg_acc")
    test = build(tmp_path / "data").test
    by_hand, plain = [], []
    for r in summary.per_seed.itertuples():
        store = PredictionStore(grid.run(r.run_id).artifact(PREDICTIONS_DIR))
        predicted = store.read_probs("test", r.epoch, r.step).argmax(axis=1)
        by_text = dict(zip(test.texts, predicted.tolist(), strict=True))  # one text, one label in the test split
        by_hand.append(rows_average_by_hand(meta_path, text_path, "test", by_text.__getitem__))
        plain.append(np.mean(predicted == test.y.numpy()))
    cells = summary.cells.set_index("metric")
    assert cells.loc["group_rows_avg_acc", "mean"] == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert cells.loc["avg_acc", "mean"] == pytest.approx(np.mean(plain), abs=1e-12)
    assert float(rows["group_rows_avg_acc"]["mean_pct"]) == pytest.approx(100 * np.mean(by_hand), abs=0.06)


def test_data_check_passes_a_subset_whose_evaluated_comments_all_mention_identities(tmp_path, cli):
    """Validation and test hold no comment without an identity by construction: not a problem for a dataset that
    evaluates on its identity groups; every one of those 16 groups is there."""
    rows = subset_rows("coarse")
    for split in ("val", "test"):
        for y in (0, 1):
            for first in (0, 4):
                text = f"more {split} {y} {first}"
                rows += [{"split": SPLIT_CODE[split], "y": y, TEXT_COLUMN: text, "a": a}
                         for a in range(first, first + 4)]
    write_subset(tmp_path, "coarse", rows)
    report = json.loads(cli("data", "check", "civilcomments_small", "--data-root", tmp_path, "--format", "json").stdout)
    assert report["problems"] == []
    evaluation = report["tables"][1]
    for split in ("val", "test"):
        identity_rows = sum(r["split"] == SPLIT_CODE[split] for r in rows)
        assert min(evaluation["counts"][split]) >= 1 and sum(evaluation["counts"][split]) == identity_rows
