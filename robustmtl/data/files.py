"""Finding a benchmark's files under the data root and reading its tables, with one-line errors.

The data root (`--data-root`, a grid's `[dataset.<name>] data_root`, else `$ROBUSTMTL_DATA`) may be
the dataset's own directory or a directory holding one folder per dataset: a loader looks for its
marker file in `data_root`, then `data_root/<name>`, then `data_root/<the folder name the dataset
ships as>` (e.g. `waterbird_complete95_forest2water2`). So one `$ROBUSTMTL_DATA` serves every dataset.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from robustmtl.errors import UserError

SPLIT_NAMES = ("train", "val", "test")


def dataset_dir(name: str, data_root: Path | None, markers: Sequence[str], folders: Sequence[str],
                source: str) -> tuple[Path, Path]:
    """(dataset directory, the marker file found in it): the first candidate holding one of `markers`."""
    if data_root is None:
        raise UserError(f"dataset {name!r} is read from disk: set --data-root (or data_root in the grid's "
                        f"dataset.{name} table, or $ROBUSTMTL_DATA) to the directory holding {markers[0]}; "
                        f"{how_to_prepare(name, source, None)}")
    candidates = [data_root, *(data_root / folder for folder in (name, *folders))]
    for candidate in candidates:
        for marker in markers:
            if (candidate / marker).is_file():
                return candidate, candidate / marker
    raise UserError(f"{name} is not prepared under {data_root}: missing {data_root / markers[0]} (also looked under "
                    f"{', '.join(map(str, candidates[1:]))}); {how_to_prepare(name, source, data_root)}")


def how_to_prepare(name: str, source: str, data_root: Path | None) -> str:
    """The steps that put a benchmark where its loader looks: download, then `data prepare`."""
    root = shlex.quote(str(data_root)) if data_root is not None else "DIR"
    return (f"get the dataset from {source}, then run `robustmtl data prepare {name} --from ... --data-root {root}` "
            "(docs/datasets-setup.md)")


def read_table(path: Path, columns: Iterable[str], dataset: str, source: str, optional: Iterable[str] = (),
               **read_kwargs: Any) -> pd.DataFrame:
    """Read the named columns of a CSV (and those of `optional` that exist); a missing file or column is a UserError."""
    columns = list(columns)
    if not path.is_file():
        raise UserError(f"{dataset}: missing {path}; get the dataset from {source}")
    try:
        header = pd.read_csv(path, nrows=0).columns
        missing = [c for c in columns if c not in header]
        if missing:
            raise UserError(f"{dataset}: {path} has no column {missing[0]!r} (needs {', '.join(columns)}); "
                            f"get the dataset from {source}")
        return pd.read_csv(path, usecols=columns + [c for c in optional if c in header], **read_kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"{dataset}: cannot read {path} ({type(exc).__name__}); "
                        f"get the dataset from {source}") from None


def split_masks(values: pd.Series, codes: Sequence[object], path: Path, column: str, dataset: str) -> list[pd.Series]:
    """Boolean row masks of train/val/test from a split column whose values are `codes` (in that order)."""
    unknown = sorted(set(values.unique()) - set(codes), key=str)
    if unknown:
        raise UserError(f"{dataset}: {path} column {column!r} has value {plain(unknown[0])!r}; expected one of "
                        f"{', '.join(map(str, codes))}")
    masks = [values == code for code in codes]
    for split, mask in zip(SPLIT_NAMES, masks, strict=True):
        if not mask.any():
            raise UserError(f"{dataset}: {path} has no {split} rows ({column} == {codes[SPLIT_NAMES.index(split)]!r})")
    return masks


def plain(value: object) -> object:
    """A table's cell as Python writes it (numpy 2 spells its scalars `np.int64(3)`)."""
    return value.item() if isinstance(value, np.generic) else value


def binary_column(values: pd.Series, path: Path, column: str, dataset: str, negative: int = 0) -> torch.Tensor:
    """A 0/1 tensor from a column holding `negative`/1 (CelebA writes -1/1); other values are refused."""
    bad = sorted(set(values.unique()) - {negative, 1}, key=str)
    if bad:
        raise UserError(f"{dataset}: {path} column {column!r} has value {plain(bad[0])!r}; expected {negative} or 1")
    return torch.tensor((values == 1).to_numpy(), dtype=torch.long)
