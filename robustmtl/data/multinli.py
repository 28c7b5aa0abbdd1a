"""MultiNLI with annotated negation (Sagawa et al., 2020): y = gold label, a = "sentence 2 has a negation word".

Groups are 3 labels × 2 (6). Layout, as group DRO's code expects it:
- `metadata_random.csv` (at the top or under `data/`) with columns gold_label (0 contradiction,
  1 entailment, 2 neutral; the words are accepted too), sentence2_has_negation (0/1) and split
  (0 train / 1 val / 2 test), one row per sentence pair;
- the sentence pairs: either `sentence1` and `sentence2` columns in that same file, or GLUE's MNLI
  files `glue_data/MNLI/{train,dev_matched,dev_mismatched}.tsv`, whose rows, concatenated in that
  order, are the metadata's rows (this is how the published metadata was made).
Pairs are tokenised by the run's tokenizer as (premise, hypothesis).
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.files import SPLIT_NAMES, binary_column, dataset_dir, read_table, split_masks
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError
from robustmtl.params import NoParams

SOURCE = ("metadata_random.csv from github.com/kohpangwei/group_DRO (dataset_metadata/multinli) and GLUE's MNLI "
          "(gluebenchmark.com)")
LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
GLUE_FILES = ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv")
GLUE_DIR = Path("glue_data") / "MNLI"
METADATA = ("metadata_random.csv", "data/metadata_random.csv")  # group DRO keeps it under data/


def glue_pairs(root: Path) -> tuple[list[str], list[str]]:
    """sentence1/sentence2 of GLUE's MNLI files, concatenated in the metadata's order."""
    first: list[str] = []
    second: list[str] = []
    for name in GLUE_FILES:
        path = root / GLUE_DIR / name
        if not path.is_file():
            raise UserError(f"multinli: missing {path} (or put sentence1/sentence2 columns in metadata_random.csv); "
                            f"get the data from {SOURCE}")
        with path.open(encoding="utf-8", newline="") as f:
            rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, [])
            for column in ("sentence1", "sentence2"):
                if column not in header:
                    raise UserError(f"multinli: {path} has no column {column!r}; get the data from {SOURCE}")
            i, j = header.index("sentence1"), header.index("sentence2")
            for row in rows:
                first.append(row[i])
                second.append(row[j])
    return first, second


class MultiNLI:
    @staticmethod
    def build(p: NoParams, data_root: Path | None) -> Splits:
        root, path = dataset_dir("multinli", data_root, METADATA, (), SOURCE)
        table = read_table(path, ["gold_label", "sentence2_has_negation", "split"], "multinli", SOURCE,
                           optional=["sentence1", "sentence2"], dtype={"sentence1": str, "sentence2": str})
        labels = table["gold_label"].replace(LABELS)
        bad = sorted(set(labels.unique()) - {0, 1, 2}, key=str)
        if bad:
            raise UserError(f"multinli: {path} column 'gold_label' has value {bad[0]!r}; expected 0/1/2 or the words")
        if {"sentence1", "sentence2"} <= set(table.columns):
            first, second = table["sentence1"].fillna("").tolist(), table["sentence2"].fillna("").tolist()
        else:
            first, second = glue_pairs(root)
            if len(first) != len(table):
                raise UserError(f"multinli: {len(first)} sentence pairs in {root / GLUE_DIR} but {len(table)} rows "
                                f"in {path}; they must be the same examples in the same order")
        y_all = torch.tensor(labels.astype(int).to_numpy(), dtype=torch.long)
        a_all = binary_column(table["sentence2_has_negation"], path, "sentence2_has_negation", "multinli")
        info = DataInfo(modality="text", n_classes=3, n_attrs=2,
                        group_names=group_names(list(LABELS), ["no negation", "negation"]))
        splits = []
        for split, mask in zip(SPLIT_NAMES, split_masks(table["split"], (0, 1, 2), path, "split", "multinli"),
                               strict=True):
            rows = mask.to_numpy().nonzero()[0]
            y, a = y_all[rows], a_all[rows]
            splits.append(TextSplit(split, [first[i] for i in rows], y, info.n_attrs * y + a, n_groups=info.n_groups,
                                    second=[second[i] for i in rows]))
        return Splits(info, *splits)
