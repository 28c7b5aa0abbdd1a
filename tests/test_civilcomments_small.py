"""civilcomments_small on a tiny subset written by the test in the format of docs/datasets-setup.md#civilcomments_small:
rows and groups as the format says, both granularities, the reference's average over identity rows, the errors."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robustmtl.aggregate.prediction_metrics import Inputs, avg_acc, group_rows_avg_acc, weighted_avg_acc
from robustmtl.config import RunOptions, build_config
from robustmtl.data.civilcomments import IDENTITIES
from robustmtl.data.civilcomments_small import COLUMNS, FILES
from robustmtl.errors import UserError
from robustmtl.layout import GridDir
from robustmtl.predictions import PREDICTIONS_DIR, PredictionStore
from robustmtl.registry import dataset_entry
from robustmtl.rundir import prepare_run
from robustmtl.train.loop import train_run
from tests.conftest import tiny_bert
from tests.test_data_benchmarks import sentence

# (split, y, identities mentioned) per comment; training comments may mention none, evaluated ones never do
COMMENTS = [
    ("train", 0, ()), ("train", 1, ("male",)), ("train", 0, ("male", "black")), ("train", 1, ()),
    ("train", 0, ("muslim",)), ("train", 1, ("white", "christian", "LGBTQ")), ("train", 0, ()),
    ("train", 1, ("female",)),
    ("val", 0, ("male", "black")), ("val", 1, ("muslim",)), ("val", 0, ("female", "white", "LGBTQ")),
    ("val", 1, ("other_religions", "christian")), ("val", 0, ("black",)),
    ("test", 1, ("male",)), ("test", 0, ("female", "muslim")), ("test", 1, ("black", "white")),
    ("test", 0, ("christian",)), ("test", 1, ("LGBTQ", "other_religions", "male")),
]
SPLIT_CODE = {"train": 0, "val": 1, "test": 2}


def subset_rows(granularity: str) -> list[dict]:
    """The file's rows: training rows by the granularity, evaluated ones one per (comment, identity); shuffled, so a
    comment's rows are not adjacent."""
    rng = random.Random(5)
    rows = []
    for i, (split, y, named) in enumerate(COMMENTS):
        base = {"id": f"c{i}", "split": SPLIT_CODE[split], "y": y, "comment_text": f"comment {i}: {sentence(rng)}"}
        if split == "train" and granularity == "coarse":
            rows.append({**base, "a": int(bool(named))})
        elif split == "train" and not named:
            rows.append({**base, "a": len(IDENTITIES)})
        else:
            rows += [{**base, "a": IDENTITIES.index(name)} for name in named]
    rng.shuffle(rows)
    return rows


def write_subset(root: Path, granularity: str = "coarse", rows: list[dict] | None = None) -> Path:
    folder = root / "civilcomments_small"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILES[granularity]
    rows = rows if rows is not None else subset_rows(granularity)
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(path, index=False)
    return path


def build(root: Path | None, granularity: str = "coarse"):
    cfg = build_config("erm", "civilcomments_small", 0, None, {"civil_granularity": granularity}, where="test")
    return dataset_entry("civilcomments_small").build(cfg.data_params, root)


def group_index(y: int, identity: str) -> int:
    return y * len(IDENTITIES) + IDENTITIES.index(identity)


def expected_membership(split: str) -> tuple[np.ndarray, list[str]]:
    """[comments of the split, 16] from COMMENTS, in COMMENTS' order, and the comments' ids."""
    comments = [(f"c{i}", y, named) for i, (s, y, named) in enumerate(COMMENTS) if s == split]
    members = np.zeros((len(comments), 16), dtype=bool)
    for k, (_, y, named) in enumerate(comments):
        for name in named:
            members[k, group_index(y, name)] = True
    return members, [c[0] for c in comments]


def in_file_order(split: str, granularity: str = "coarse") -> list[str]:
    return list(dict.fromkeys(r["id"] for r in subset_rows(granularity) if r["split"] == SPLIT_CODE[split]))


@pytest.mark.parametrize("granularity", ["coarse", "fine"])
def test_evaluated_comments_are_one_example_each_in_the_group_of_each_row(tmp_path, granularity):
    write_subset(tmp_path, granularity)
    splits = build(tmp_path, granularity)
    rows = subset_rows(granularity)
    for split in ("val", "test"):
        members, ids = expected_membership(split)
        order = [ids.index(c) for c in in_file_order(split, granularity)]
        got = splits.by_name()[split]
        assert len(got) == len(ids)  # comments, not rows
        assert got.membership.sum() == sum(r["split"] == SPLIT_CODE[split] for r in rows)  # every identity row
        assert np.array_equal(got.membership.numpy(), members[order])
        assert got.y.tolist() == [COMMENTS[int(c[1:])][1] for c in in_file_order(split, granularity)]
        assert [t.split(":")[0] for t in got.texts] == [f"comment {c[1:]}" for c in in_file_order(split, granularity)]
    assert splits.info.n_groups == 16 and splits.info.group_names[group_index(1, "muslim")] == "toxic/muslim"


def test_coarse_trains_on_one_row_per_comment_in_four_groups(tmp_path):
    write_subset(tmp_path)
    splits = build(tmp_path)
    info, train = splits.info, splits.train
    order = [int(c[1:]) for c in in_file_order("train")]
    assert len(train) == 8 and info.n_train_groups == 4 and info.n_attrs == 2
    assert train.g.tolist() == [2 * COMMENTS[i][1] + bool(COMMENTS[i][2]) for i in order]
    assert info.train_group_names == ("non-toxic/no identity", "non-toxic/any identity", "toxic/no identity",
                                      "toxic/any identity")
    assert not train.membership.any()  # a coarse row does not say which identity
    assert (splits.val.g == 2 * splits.val.y + 1).all() and (splits.test.g == 2 * splits.test.y + 1).all()


def test_fine_trains_on_one_row_per_identity_in_eighteen_groups(tmp_path):
    write_subset(tmp_path, "fine")
    splits = build(tmp_path, "fine")
    info, train = splits.info, splits.train
    rows = [r for r in subset_rows("fine") if r["split"] == 0]
    assert len(train) == len(rows) == sum(max(1, len(c[2])) for c in COMMENTS if c[0] == "train") == 11
    assert info.n_train_groups == 18 and info.n_attrs == 9
    assert info.train_group_names[9 + 8] == "toxic/no identity"
    assert train.g.tolist() == [9 * r["y"] + r["a"] for r in rows]
    named = [r["a"] < 8 for r in rows]
    assert train.membership.sum(dim=1).tolist() == [int(n) for n in named]  # a row names at most one identity
    assert all(train.membership[k, r["y"] * 8 + r["a"]] for k, r in enumerate(rows) if r["a"] < 8)
    # validation and test are the coarse file's; their training group is the label x the first identity mentioned
    lowest = [min(IDENTITIES.index(n) for n in COMMENTS[int(c[1:])][2]) for c in in_file_order("val", "fine")]
    assert splits.val.g.tolist() == [9 * y + a for y, a in zip(splits.val.y.tolist(), lowest, strict=True)]


def rows_average_by_hand(path: Path, split: str, predicted: dict[str, int]) -> float:
    """The reference's average: over the file's rows of the split, each scored by its comment's prediction."""
    rows = [r for r in csv.DictReader(path.open()) if r["split"] == str(SPLIT_CODE[split])]
    return sum(predicted[r["id"]] == int(r["y"]) for r in rows) / len(rows)


def test_the_group_rows_average_is_the_references_average_over_identity_rows(tmp_path):
    path = write_subset(tmp_path)
    test = build(tmp_path).test
    ids = in_file_order("test")
    wrong = {"c14", "c17"}  # one comment of two identities, one of three: rows weigh them 2 and 3
    predicted = {c: COMMENTS[int(c[1:])][1] ^ (c in wrong) for c in ids}
    probs = np.eye(2, dtype=np.float16)[[predicted[c] for c in ids]]
    x = Inputs(probs, test.y.numpy(), test.membership.numpy(), np.zeros(16, dtype=np.int64))
    assert group_rows_avg_acc(x) == pytest.approx(rows_average_by_hand(path, "test", predicted)) == pytest.approx(4 / 9)
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


def test_missing_data_root_or_file_is_one_line_naming_where(tmp_path):
    with pytest.raises(UserError, match="--data-root") as err:
        build(None)
    assert "civilcomments_coarse.csv" in one_line(err)
    write_subset(tmp_path, "coarse")
    with pytest.raises(UserError) as err:
        build(tmp_path, "fine")  # only the coarse file is there
    assert str(tmp_path / "civilcomments_small" / "civilcomments_fine.csv") in one_line(err)
    assert "datasets-setup.md#civilcomments_small" in str(err.value)
    assert len(build(tmp_path / "civilcomments_small").train) == 8  # the folder itself as the data root


@pytest.mark.parametrize("column", COLUMNS)
def test_a_missing_column_is_named(tmp_path, column):
    path = write_subset(tmp_path)
    pd.read_csv(path).drop(columns=[column]).to_csv(path, index=False)
    with pytest.raises(UserError, match=f"no column '{column}'") as err:
        build(tmp_path)
    one_line(err)


def changed(granularity: str, where: dict, **values) -> list[dict]:
    """The subset's rows with `values` set on the first row matching `where`."""
    rows = subset_rows(granularity)
    at = next(i for i, r in enumerate(rows) if all(r[k] == v for k, v in where.items()))
    rows[at] = {**rows[at], **values}
    return rows


@pytest.mark.parametrize(("granularity", "rows", "message"), [
    ("coarse", changed("coarse", {"split": 0}, a=2), r"a = 2 on a train row \(line \d+\); coarse train rows take 0"),
    ("fine", changed("fine", {"split": 0}, a=9), r"a = 9 on a train row .*fine train rows take 0\.\.8"),
    ("fine", changed("fine", {"split": 1}, a=8), r"a = 8 on a val row .*fine val rows take 0\.\.7"),
    ("coarse", changed("coarse", {"split": 2}, a="male"), r"a = 'male' on a test row"),
    ("coarse", changed("coarse", {"id": "c8", "a": 6}, y=1), r"gives val comment id 'c8' two labels y"),
    ("coarse", changed("coarse", {"id": "c8", "a": 6}, a=0), r"lists val comment id 'c8' twice with a = 0"),
    ("coarse", changed("coarse", {"split": 1}, id=None), r"a val row without an id"),
    ("coarse", changed("coarse", {"split": 1}, split=3), r"column 'split' has value 3"),
    ("coarse", changed("coarse", {"split": 1}, y=2), r"column 'y' has value 2"),
    ("coarse", [r for r in subset_rows("coarse") if r["split"] != 2], r"has no test rows"),
])
def test_rows_against_the_format_are_one_line_each(tmp_path, granularity, rows, message):
    write_subset(tmp_path, granularity, rows)
    with pytest.raises(UserError, match=message) as err:
        build(tmp_path, granularity)
    one_line(err)


@pytest.mark.slow
def test_a_run_reports_both_averages_and_the_group_rows_one_is_the_references(tmp_path, monkeypatch, cli):
    monkeypatch.setenv("ROBUSTMTL_CACHE", str(tmp_path / "cache"))
    path = write_subset(tmp_path / "data")
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
    ids = in_file_order("test")
    by_hand, plain = [], []
    for r in summary.per_seed.itertuples():
        store = PredictionStore(grid.run(r.run_id).artifact(PREDICTIONS_DIR))
        predicted = dict(zip(ids, store.read_probs("test", r.epoch, r.step).argmax(axis=1).tolist(), strict=True))
        by_hand.append(rows_average_by_hand(path, "test", predicted))
        plain.append(np.mean([predicted[c] == COMMENTS[int(c[1:])][1] for c in ids]))
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
                rows += [{"id": f"{split}-{y}-{first}", "split": SPLIT_CODE[split], "y": y, "comment_text": "more",
                          "a": a} for a in range(first, first + 4)]
    write_subset(tmp_path, "coarse", rows)
    report = json.loads(cli("data", "check", "civilcomments_small", "--data-root", tmp_path, "--format", "json").stdout)
    assert report["problems"] == []
    evaluation = report["tables"][1]
    for split in ("val", "test"):
        identity_rows = sum(r["split"] == SPLIT_CODE[split] for r in rows)
        assert min(evaluation["counts"][split]) >= 1 and sum(evaluation["counts"][split]) == identity_rows
