"""`robustmtl data check`: the group table from the dataset as a run loads it, and one line per problem."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from robustmtl.data.check import TINY_GROUP
from robustmtl.data.params import SyntheticParams
from robustmtl.data.regime import describe, variance_ratio
from tests.test_data_benchmarks import make, make_celeba, make_civilcomments, make_waterbirds

SPLIT_NAMES = {0: "train", 1: "val", 2: "test"}


def check(cli, *args: str, ok: bool = True):
    return cli("data", "check", *args, ok=ok)


def as_json(result) -> dict:
    return json.loads(result.stdout)


def counts(report: dict, table: int = 0) -> dict[str, dict[str, int]]:
    """split -> group -> n, from the JSON report."""
    t = report["tables"][table]
    return {split: dict(zip(t["names"], ns, strict=True)) for split, ns in t["counts"].items()}


def one_line_errors(result) -> list[str]:
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.output
    return [line for line in lines if line.startswith("error:")]


def test_synthetic_counts_and_regime(cli):
    report = as_json(check(cli, "synthetic", "--set", "n_train=300", "--format", "json"))
    table = counts(report)
    assert sum(table["train"].values()) == 300 and set(table) == {"train", "val", "test"}
    minority = table["train"]["y=0/a=1"] + table["train"]["y=1/a=0"]
    assert report["agreement"]["equal_rate"] == pytest.approx(1 - minority / 300)
    p = SyntheticParams(n_train=300)
    assert report["regime"]["variance_ratio"] == pytest.approx(variance_ratio(p))
    assert [b["leading_variance"] for b in report["regime"]["blocks"]] == [b.leading_variance for b in describe(p)]
    assert "> 1" in report["regime"]["line"] and report["ok"]


def test_synthetic_table_names_the_regime(cli):
    shown = check(cli, "synthetic", "--set", "spurious_variance_ratio=0.5").stdout
    for column in ("leading", "separability", "train label"):
        assert column in shown
    assert "0.50 <= 1: the paper's regime" in " ".join(shown.split())
    assert "y=1/a=0" in shown and "a = y for" in shown


@pytest.mark.parametrize(("name", "prefix"), [("text_spurious", "text_"), ("mnist_spurious", "mnist_")])
def test_packaged_datasets_are_checked(cli, name, prefix):
    sizes = {"train": 400, "val": 100, "test": 100}
    sets = [arg for split, n in sizes.items() for arg in ("--set", f"{prefix}n_{split}={n}")]
    report = as_json(check(cli, name, *sets, "--format", "json"))
    assert {split: sum(groups.values()) for split, groups in counts(report).items()} == sizes
    assert report["ok"] and report["agreement"]["equal_rate"] > 0.8  # p_train = 0.95 by default


def test_synthetic_pretrain_pool_is_a_column(cli):
    report = as_json(check(cli, "synthetic", "--set", "pretrain_n=50", "--format", "json"))
    assert sum(counts(report)["pretrain"].values()) == 50


@pytest.mark.parametrize("name", ["waterbirds", "celeba", "multinli"])
def test_benchmark_group_counts_match_its_files(cli, tmp_path, name):
    make(name, tmp_path / name)
    report = as_json(check(cli, name, "--data-root", tmp_path, "--format", "json"))
    assert report["ok"]
    assert any(f"fewer than {TINY_GROUP} train examples" in w for w in report["warnings"])  # a tiny fixture
    table = counts(report)
    assert {s: sum(g.values()) for s, g in table.items()} == {"train": 16, "val": 8, "test": 8}
    if name == "waterbirds":
        meta = pd.read_csv(tmp_path / name / "metadata.csv")
        expected = meta.groupby(["split", "y", "place"]).size()
        names = ["landbird/land", "landbird/water", "waterbird/land", "waterbird/water"]
        for (split, y, place), n in expected.items():
            assert table[SPLIT_NAMES[split]][names[2 * y + place]] == n


def test_civilcomments_shows_training_and_overlapping_evaluation_groups(cli, tmp_path):
    make_civilcomments(tmp_path)
    result = check(cli, "civilcomments", "--data-root", tmp_path, "--format", "json", ok=False)
    report = as_json(result)
    train_groups, eval_groups = counts(report, 0), counts(report, 1)
    assert sum(train_groups["train"].values()) == 16
    assert eval_groups["train"]["toxic/male"] == eval_groups["train"]["toxic/black"] == 4  # i % 4 == 1
    # The fixture names three identities only: the others are empty in val and test, so no grid should start.
    errors = one_line_errors(result)
    assert result.exit_code == 2 and len(errors) == len(report["problems"]) > 0
    assert any("'non-toxic/LGBTQ' has no val examples" in e for e in errors)


def test_csv_and_markdown_carry_the_same_counts(cli, tmp_path):
    make_waterbirds(tmp_path)
    report = as_json(check(cli, "waterbirds", "--data-root", tmp_path, "--format", "json"))
    frame = pd.read_csv(io.StringIO(check(cli, "waterbirds", "--data-root", tmp_path, "--format", "csv").stdout))
    got = {(r.split, r.group): r.n for r in frame.itertuples()}
    assert got == {(s, g): n for s, groups in counts(report).items() for g, n in groups.items()}
    markdown = check(cli, "waterbirds", "--data-root", tmp_path, "--format", "markdown").stdout
    assert "| group | train n | train % |" in markdown and "| waterbird/water |" in markdown


def test_missing_and_unreadable_images_fail_with_one_line_each(cli, tmp_path):
    make_waterbirds(tmp_path)
    meta = pd.read_csv(tmp_path / "metadata.csv")
    gone, broken = meta["img_filename"][0], meta["img_filename"][2]
    (tmp_path / gone).unlink()
    (tmp_path / broken).write_bytes(b"not a jpeg")
    result = check(cli, "waterbirds", "--data-root", tmp_path, "--images", "0", ok=False)
    errors = one_line_errors(result)
    assert result.exit_code == 2 and len(errors) == 2
    assert "1 of 16 train images are missing" in errors[0] and gone in errors[0]
    assert "cannot be read" in errors[1] and broken in errors[1]
    assert "landbird/land" in result.stdout  # the table still shows what is there


def test_empty_group_single_label_and_repeated_files_are_problems(cli, tmp_path):
    make_waterbirds(tmp_path)
    path = tmp_path / "metadata.csv"
    meta = pd.read_csv(path)
    val = meta["split"] == 1
    meta = meta[~(val & (meta["y"] == 1) & (meta["place"] == 0))]  # no waterbird on land in val
    meta.loc[meta["split"] == 2, "y"] = 0  # test: landbirds only
    meta.loc[1, "img_filename"] = meta.loc[0, "img_filename"]  # one image listed twice
    meta.to_csv(path, index=False)
    result = check(cli, "waterbirds", "--data-root", tmp_path, ok=False)
    errors = " | ".join(one_line_errors(result))
    assert result.exit_code == 2
    assert "'waterbird/land' has no val examples" in errors
    assert "the test split has a single label value (0)" in errors
    assert "1 image files are listed more than once" in errors and meta.loc[0, "img_filename"] in errors


def test_repeated_texts_are_a_warning(cli, tmp_path):
    make_civilcomments(tmp_path)
    table = pd.read_csv(tmp_path / "all_data_with_identities.csv")
    table.loc[20, "comment_text"] = table.loc[0, "comment_text"]  # a training comment again in val
    table.to_csv(tmp_path / "all_data_with_identities.csv", index=False)
    report = as_json(check(cli, "civilcomments", "--data-root", tmp_path, "--format", "json", ok=False))
    assert any("1 texts occur more than once (1 of them in more than one split)" in w for w in report["warnings"])


@pytest.mark.parametrize(("args", "fragment"), [
    (["synthetic", "--set", "lr=0.1"], "'lr' is not a parameter of dataset 'synthetic' (its parameters: core_dim"),
    (["synthetic", "--set", "n_train=-3"], "n_train must be > 0"),
    (["synthetic", "--format", "latex"], "--format must be one of table, markdown, csv, json"),
    (["imagenet"], "unknown dataset 'imagenet'"),
    (["waterbirds"], "set --data-root"),
])
def test_user_mistakes_are_one_line(cli, monkeypatch, args, fragment):
    monkeypatch.delenv("ROBUSTMTL_DATA", raising=False)
    result = check(cli, *args, ok=False)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == one_line_errors(result)
    assert len(one_line_errors(result)) == 1 and fragment in result.stderr


def test_repeated_celeba_ids_are_one_line(cli, tmp_path):
    make_celeba(tmp_path)
    parts = pd.read_csv(tmp_path / "list_eval_partition.csv")
    parts.loc[1, "image_id"] = parts.loc[0, "image_id"]
    parts.to_csv(tmp_path / "list_eval_partition.csv", index=False)
    result = check(cli, "celeba", "--data-root", tmp_path, ok=False)
    assert result.exit_code == 2 and "lists 1 image ids more than once (e.g. '000001.jpg')" in result.stderr
    assert len(one_line_errors(result)) == 1


def test_layout_errors_come_from_the_loader(cli, tmp_path):
    make_waterbirds(tmp_path)
    (tmp_path / "metadata.csv").unlink()
    result = check(cli, "waterbirds", "--data-root", tmp_path, ok=False)
    assert result.exit_code == 2 and "missing" in result.stderr and len(one_line_errors(result)) == 1

