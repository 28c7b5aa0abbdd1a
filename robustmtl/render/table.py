"""The table every format renders: a title, columns, rows of text, notes, and the frame a CSV holds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

MISSING = "\u2013"  # en dash: a value that does not exist (an empty cell, a share of an empty split)


@dataclass(frozen=True)
class Column:
    """`align`: "left" or "right" (Markdown's `:--`/`--:`), or "" for unaligned Markdown, left elsewhere.
    `words`: a text column the terminal may wrap between its words (other values are printed whole)."""

    header: str
    align: str = ""
    words: bool = False


@dataclass(frozen=True)
class Table:
    """`notes`: what reads beneath the table, one paragraph each; a note starting with "- " is a list item
    continuing the paragraph before it. `keep`: the columns that identify a row, repeated where the terminal
    splits a wide table. `label`: LaTeX's. `data`: the rows as a CSV holds them (units in the column names), its
    floats to `float_format` (None: exactly, for values a script matches as keys)."""

    title: str
    columns: Sequence[Column]
    rows: Sequence[Sequence[str]]
    notes: Sequence[str] = ()
    keep: int = 1
    label: str = ""
    data: pd.DataFrame | None = None
    float_format: str | None = "%.10g"

    @property
    def header(self) -> list[str]:
        return [c.header for c in self.columns]


def columns(header: Sequence[str], align: str = "", right_from: int | None = None) -> list[Column]:
    """Columns from their headers: all `align`, or left then right from index `right_from` (labels, then numbers)."""
    if right_from is None:
        return [Column(h, align) for h in header]
    return [Column(h, "left" if i < right_from else "right") for i, h in enumerate(header)]

