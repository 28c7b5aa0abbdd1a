"""Text tables in every output format, knowing nothing of runs or results: one `Table` model, one `render`.

A table is built once (its title, columns, text rows, notes and the frame a CSV holds) and `render(table, fmt)`
writes it in any format; each format is one module here exposing `render(table)`, so a new format is one module
and one line in RENDERERS. The data layer (`data check`) and the tables layer (`aggregate`) both print through
this package, so a group table pasted beside a results table reads the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustmtl.errors import UserError
from robustmtl.render import csv, latex, markdown, terminal
from robustmtl.render.table import MISSING, Column, Table, columns

__all__ = ["FORMATS", "MISSING", "Column", "Table", "columns", "documents", "render"]

RENDERERS = {"table": terminal.render, "markdown": markdown.render, "csv": csv.render, "latex": latex.render}
FORMATS = tuple(RENDERERS)


def render(table: Table, fmt: str) -> Any:
    """`table` in `fmt`: text for markdown, csv and latex; for "table", a rich renderable fitted to the terminal."""
    if fmt not in RENDERERS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    return RENDERERS[fmt](table)


def documents(tables: Mapping[str, Table], fmt: str) -> dict[str, str]:
    """Document name -> text for tables named by document ("" the main one): Markdown (and the terminal's export)
    is one document, the tables in order; CSV and LaTeX hold one table per document, and a CSV only the tables
    with data (one whose rows another CSV already holds has none)."""
    if fmt in ("markdown", "table"):
        return {"": "\n".join(markdown.render(t) for t in tables.values())}
    return {name: render(t, fmt) for name, t in tables.items() if fmt != "csv" or t.data is not None}
