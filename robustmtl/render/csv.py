"""CSV: the table's data frame (not its printed text), so a script reads numbers in the units its columns name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from robustmtl.render.table import Table

if TYPE_CHECKING:
    import pandas as pd


def frame_text(frame: pd.DataFrame, float_format: str | None = "%.10g") -> str:
    """Every CSV robustmtl writes: no index, Unix line ends, floats to 10 significant digits unless told."""
    return frame.to_csv(index=False, lineterminator="\n", float_format=float_format)


def render(table: Table) -> str:
    if table.data is None:
        raise ValueError(f"the table {table.title!r} has no data for a CSV")
    return frame_text(table.data, table.float_format)
