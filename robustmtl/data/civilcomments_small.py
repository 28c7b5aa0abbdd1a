"""civilcomments_small: the CivilComments subset the paper's reference code reports, read from the subset's
metadata files; their format is defined in docs/datasets-setup.md#civilcomments_small.

Training examples are the training rows, as the file lists them (in `fine`, a comment that mentions two
identities is two examples). Validation and test examples are comments: the rows sharing an `id` are one
comment, which counts in the evaluation group of each row, so worst-group accuracy is the reference's and
average accuracy is the plain mean over comments; `aggregate --metric group_rows_avg_acc` gives the
reference's average over the rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.civilcomments import IDENTITIES, LABEL_NAMES, MENTIONS, eval_group_names
from robustmtl.data.files import SPLIT_NAMES, binary_column, plain, read_table, split_masks
from robustmtl.data.params import CivilCommentsSmallParams
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError

NAME = "civilcomments_small"
FORMAT = "docs/datasets-setup.md#civilcomments_small"
SOURCE = f"the reference code's data/civilcomments_small/ (athrvkk/MTL-group-robustness), in the format of {FORMAT}"
FILES = {"coarse": "civilcomments_coarse.csv", "fine": "civilcomments_fine.csv"}
COLUMNS = ("id", "split", "y", "a", "comment_text")
SPLIT_CODES = (0, 1, 2)
N_IDENTITIES = len(IDENTITIES)
NO_IDENTITY = N_IDENTITIES  # `a` of a fine training row whose comment mentions none
# `a` values each split's rows may take: the training attribute (coarse: any identity; fine: an identity or none)
TRAIN_ATTRS = {"coarse": tuple(range(len(MENTIONS))), "fine": tuple(range(N_IDENTITIES + 1))}
EVAL_ATTRS = tuple(range(N_IDENTITIES))


def subset_file(granularity: str, data_root: Path | None) -> Path:
    """The granularity's metadata file in `data_root` or `data_root/civilcomments_small`; one line when absent."""
    file = FILES[granularity]
    if data_root is None:
        raise UserError(f"{NAME} is read from disk: set --data-root (or data_root in the grid's dataset.{NAME} "
                        f"table, or $ROBUSTMTL_DATA) to the directory holding {file} ({SOURCE})")
    candidates = [data_root / file, data_root / NAME / file]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise UserError(f"{NAME}: no {file} at {candidates[0]} or {candidates[1]}; put {SOURCE} there")
    return found


def attribute(values: pd.Series, allowed: tuple[int, ...], path: Path, split: str, granularity: str) -> np.ndarray:
    """The `a` column of one split's rows as integers, each one of `allowed`."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = values[~numbers.isin(allowed)]
    if len(bad):
        raise UserError(f"{NAME}: {path} has a = {plain(bad.iloc[0])!r} on a {split} row (line {bad.index[0] + 2}); "
                        f"{granularity} {split} rows take {allowed[0]}..{allowed[-1]} ({FORMAT})")
    return numbers.to_numpy(dtype=np.int64)


def eval_split(name: str, rows: pd.DataFrame, y_rows: np.ndarray, a_rows: np.ndarray, path: Path,
               fine: bool) -> TextSplit:
    """One example per comment (rows sharing an id), in the evaluation group of each of its rows."""
    if rows["id"].isna().any():
        raise UserError(f"{NAME}: {path} has a {name} row without an id (line {rows.index[rows['id'].isna()][0] + 2})")
    comment, ids = pd.factorize(rows["id"])  # comments in the order of their first row
    repeated = pd.Series(list(zip(comment, a_rows, strict=True))).duplicated()
    if repeated.any():
        at = int(np.flatnonzero(repeated)[0])
        raise UserError(f"{NAME}: {path} lists {name} comment id {ids[comment[at]]!r} twice with a = "
                        f"{plain(a_rows[at])} (line {rows.index[at] + 2}); each identity a comment mentions is one row")
    first = np.unique(comment, return_index=True)[1]
    y = y_rows[first]
    if (y[comment] != y_rows).any():
        at = int(np.flatnonzero(y[comment] != y_rows)[0])
        raise UserError(f"{NAME}: {path} gives {name} comment id {ids[comment[at]]!r} two labels y (line "
                        f"{rows.index[at] + 2}); all rows of a comment have its one label")
    membership = torch.zeros(len(ids), 2 * N_IDENTITIES, dtype=torch.bool)
    membership[torch.as_tensor(comment), torch.as_tensor(y_rows * N_IDENTITIES + a_rows)] = True
    if fine:  # its training group: the label x the first identity it mentions, in IDENTITIES order
        lowest = pd.Series(a_rows).groupby(comment).min().to_numpy()
        g = (N_IDENTITIES + 1) * y + lowest
    else:  # every evaluated comment mentions an identity
        g = len(MENTIONS) * y + 1
    texts = rows["comment_text"].to_numpy()[first].tolist()
    return TextSplit(name, texts, torch.as_tensor(y), torch.as_tensor(g), membership=membership)


def train_split(rows: pd.DataFrame, y: np.ndarray, a: np.ndarray, fine: bool) -> TextSplit:
    """One example per training row. Fine rows name their identity, so they are in its evaluation group; coarse
    rows say only whether the comment mentions one, which places them in no evaluation group."""
    membership = torch.zeros(len(rows), 2 * N_IDENTITIES, dtype=torch.bool)
    if fine:
        named = np.flatnonzero(a != NO_IDENTITY)
        membership[torch.as_tensor(named), torch.as_tensor(y[named] * N_IDENTITIES + a[named])] = True
    n_attrs = N_IDENTITIES + 1 if fine else len(MENTIONS)
    return TextSplit("train", rows["comment_text"].tolist(), torch.as_tensor(y), torch.as_tensor(n_attrs * y + a),
                     membership=membership)


class CivilCommentsSmall:
    @staticmethod
    def build(p: CivilCommentsSmallParams, data_root: Path | None) -> Splits:
        granularity = p.civil_granularity
        fine = granularity == "fine"
        path = subset_file(granularity, data_root)
        table = read_table(path, COLUMNS, NAME, SOURCE, dtype={"id": str, "comment_text": str})
        table["comment_text"] = table["comment_text"].fillna("")
        masks = split_masks(table["split"], SPLIT_CODES, path, "split", NAME)
        y_all = binary_column(table["y"], path, "y", NAME).numpy()
        train_attrs = (*IDENTITIES, "no identity") if fine else MENTIONS
        info = DataInfo(modality="text", n_classes=2, n_attrs=len(train_attrs), group_names=eval_group_names(),
                        train_group_names=group_names(list(LABEL_NAMES), list(train_attrs)))
        splits = []
        for name, mask in zip(SPLIT_NAMES, masks, strict=True):
            rows = table[mask]
            allowed = TRAIN_ATTRS[granularity] if name == "train" else EVAL_ATTRS
            a = attribute(rows["a"], allowed, path, name, granularity)
            y = y_all[mask.to_numpy()]
            splits.append(train_split(rows, y, a, fine) if name == "train" else
                          eval_split(name, rows, y, a, path, fine))
        return Splits(info, *splits)
