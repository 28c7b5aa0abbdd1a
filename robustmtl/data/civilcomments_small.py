"""civilcomments_small: the CivilComments subset the paper's reference code reports, read from the reference's own
files, a metadata table and a text table per granularity (docs/datasets-setup.md#civilcomments_small).

Training examples are the training rows, as the metadata lists them (in `fine`, a comment that mentions two
identities is two examples). Validation and test examples are comments: the files give each (comment, identity)
row its own text row, so a split's rows with the same label and text are one comment (a text listed k times for one
identity is k comments), which counts in the evaluation group of each of its rows. Worst-group accuracy is then
the reference's, average accuracy the plain mean over comments, and `aggregate --metric group_rows_avg_acc` the
reference's average over the rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.civilcomments import IDENTITIES, LABEL_NAMES, eval_group_names
from robustmtl.data.files import SPLIT_NAMES, binary_column, plain, read_table, split_masks
from robustmtl.data.params import CivilCommentsSmallParams
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError

NAME = "civilcomments_small"
FORMAT = "docs/datasets-setup.md#civilcomments_small"
SOURCE = "the reference code's data/civilcomments_small/ (github.com/athrvkk/MTL-group-robustness)"
COLUMNS = ("id", "filename", "split", "y", "a")
TEXT_COLUMN = "comment_text"
SPLIT_CODES = (0, 1, 2)
N_IDENTITIES = len(IDENTITIES)
# coarse training rows: a = 0 when the comment mentions one of the identities, 1 when it mentions none
COARSE_ATTRS = ("any identity", "no identity")
MENTIONS_ONE = COARSE_ATTRS.index("any identity")
TRAIN_ATTRS = {"coarse": COARSE_ATTRS, "fine": IDENTITIES}


def files(granularity: str) -> tuple[str, str]:
    """(metadata file, text file) of a granularity."""
    return f"metadata_{NAME}_{granularity}.csv", f"{NAME}_{granularity}.csv"


def copied_not_prepared() -> str:
    """What `data prepare` says of this dataset: its files are used as the reference ships them."""
    names = " and ".join(name for g in TRAIN_ATTRS for name in files(g))
    return (f"{NAME} is not prepared: copy {names} from {SOURCE} into DATA_ROOT/{NAME}/ as they are "
            f"({FORMAT}); `robustmtl data check {NAME} --data-root DATA_ROOT` checks them")


def subset_dir(granularity: str, data_root: Path | None) -> Path:
    """The directory holding the granularity's metadata: `data_root` or `data_root/civilcomments_small`."""
    metadata = files(granularity)[0]
    if data_root is None:
        raise UserError(f"{NAME} is read from disk: set --data-root (or data_root in the grid's dataset.{NAME} "
                        f"table, or $ROBUSTMTL_DATA) to the directory holding {metadata}, copied from {SOURCE}")
    candidates = [data_root, data_root / NAME]
    found = next((folder for folder in candidates if (folder / metadata).is_file()), None)
    if found is None:
        raise UserError(f"{NAME}: no {metadata} at {candidates[0] / metadata} or {candidates[1] / metadata}; "
                        f"copy it and its text file from {SOURCE} ({FORMAT})")
    return found


def integer_columns(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The metadata's columns as integers; the first cell that is not one is named with its line."""
    for column in COLUMNS:
        bad = ~table[column].str.fullmatch(r"\s*-?\d+\s*")
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise UserError(f"{NAME}: {path} column {column!r} has {table[column].iloc[at]!r} on line {at + 2}; "
                            f"every value of {', '.join(COLUMNS)} is an integer ({FORMAT})")
    return table.astype(np.int64)


def attribute(values: pd.Series, allowed: int, path: Path, split: str, granularity: str) -> np.ndarray:
    """The `a` column of one split's rows, each in 0..allowed-1."""
    bad = values[(values < 0) | (values >= allowed)]
    if len(bad):
        raise UserError(f"{NAME}: {path} has a = {plain(bad.iloc[0])} on a {split} row (line {bad.index[0] + 2}); "
                        f"{granularity} {split} rows take 0..{allowed - 1} ({FORMAT})")
    return values.to_numpy(dtype=np.int64, copy=True)  # writable, for torch


def comment_texts(folder: Path, granularity: str, filename: pd.Series, meta_path: Path) -> np.ndarray:
    """Each metadata row's text: row `filename` (0-based) of the text file."""
    path = folder / files(granularity)[1]
    text = read_table(path, [TEXT_COLUMN], NAME, SOURCE, dtype=str, keep_default_na=False)[TEXT_COLUMN].to_numpy()
    for at, why in ((filename.idxmin(), filename.min() < 0), (filename.idxmax(), filename.max() >= len(text))):
        if why:
            raise UserError(f"{NAME}: {meta_path} line {at + 2} names text row {plain(filename[at])} (filename), but "
                            f"{path} has {len(text)} text rows, numbered from 0: these files are not a pair ({FORMAT})")
    return text[filename.to_numpy()]


def train_split(y: np.ndarray, a: np.ndarray, texts: np.ndarray, fine: bool) -> TextSplit:
    """One example per training row. Fine rows name their identity, so they are in its evaluation group; coarse
    rows say only whether the comment mentions one, which places them in no evaluation group."""
    membership = torch.zeros(len(y), 2 * N_IDENTITIES, dtype=torch.bool)
    if fine:
        membership[torch.arange(len(y)), torch.as_tensor(y * N_IDENTITIES + a)] = True
    n_attrs = N_IDENTITIES if fine else len(COARSE_ATTRS)
    return TextSplit("train", texts.tolist(), torch.as_tensor(y), torch.as_tensor(n_attrs * y + a),
                     membership=membership)


def eval_split(name: str, y_rows: np.ndarray, a_rows: np.ndarray, texts: np.ndarray, fine: bool) -> TextSplit:
    """One example per comment (rows with the same label and text), in the evaluation group of each of its rows."""
    rows = pd.DataFrame({"y": y_rows, "text": texts, "a": a_rows})
    rows["occurrence"] = rows.groupby(["y", "text", "a"], sort=False).cumcount()  # k rows of one identity: k comments
    # numbered in the order of their first row
    comment = rows.groupby(["y", "text", "occurrence"], sort=False).ngroup().to_numpy(copy=True)
    first = np.unique(comment, return_index=True)[1]
    y = y_rows[first]
    membership = torch.zeros(len(first), 2 * N_IDENTITIES, dtype=torch.bool)
    membership[torch.as_tensor(comment), torch.as_tensor(y_rows * N_IDENTITIES + a_rows)] = True
    if fine:  # its training group: the label x the first identity it mentions, in IDENTITIES order
        g = N_IDENTITIES * y + pd.Series(a_rows).groupby(comment).min().to_numpy()
    else:  # every evaluated comment mentions an identity
        g = len(COARSE_ATTRS) * y + MENTIONS_ONE
    return TextSplit(name, texts[first].tolist(), torch.as_tensor(y), torch.as_tensor(g), membership=membership)


class CivilCommentsSmall:
    @staticmethod
    def build(p: CivilCommentsSmallParams, data_root: Path | None) -> Splits:
        granularity = p.civil_granularity
        fine = granularity == "fine"
        folder = subset_dir(granularity, data_root)
        path = folder / files(granularity)[0]
        table = integer_columns(read_table(path, COLUMNS, NAME, SOURCE, dtype=str, keep_default_na=False), path)
        masks = split_masks(table["split"], SPLIT_CODES, path, "split", NAME)
        y_all = binary_column(table["y"], path, "y", NAME).numpy()
        texts = comment_texts(folder, granularity, table["filename"], path)
        train_attrs = TRAIN_ATTRS[granularity]
        info = DataInfo(modality="text", n_classes=2, n_attrs=len(train_attrs), group_names=eval_group_names(),
                        train_group_names=group_names(list(LABEL_NAMES), list(train_attrs)))
        splits = []
        for name, mask in zip(SPLIT_NAMES, masks, strict=True):
            rows = mask.to_numpy()
            allowed = len(train_attrs) if name == "train" else N_IDENTITIES
            a = attribute(table["a"][mask], allowed, path, name, granularity)
            splits.append(train_split(y_all[rows], a, texts[rows], fine) if name == "train" else
                          eval_split(name, y_all[rows], a, texts[rows], fine))
        return Splits(info, *splits)
