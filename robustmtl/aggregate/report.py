"""What `aggregate` writes: the main table in one format, and the side tables a user asked for.

Markdown (and the terminal's export) is one document with the side tables appended. CSV and LaTeX
hold one table per file, so each side table (chosen hyperparameters, paired differences, cost) is a
file of its own beside the main one: `table.csv` → `table.differences.csv`, `table.cost.csv`, ...
On standard output a machine format is written raw (never wrapped to the terminal's width), and only
the main table goes there, so `aggregate ... --format csv > table.csv` is a clean CSV.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from robustmtl.aggregate.cost import cost_report
from robustmtl.aggregate.details import coverage_to_markdown, differences_table, hparams_table
from robustmtl.aggregate.export import render_rich, to_csv, to_markdown
from robustmtl.aggregate.latex import to_latex
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.summary import Summary
from robustmtl.errors import UserError
from robustmtl.render import Table, render
from robustmtl.render import documents as table_documents

FORMATS = ("table", "markdown", "csv", "latex")
SUFFIX_FORMATS = {".tex": "latex", ".md": "markdown", ".csv": "csv"}


@dataclass(frozen=True)
class Sides:
    """The side tables asked for; `costs` is the cost frame when --show-cost was given."""

    hparams: bool
    differences: bool
    costs: pd.DataFrame | None


def resolve_format(fmt: str | None, output: Path | None) -> str:
    """--format, else the output file's suffix (.md/.csv/.tex, any case), else the terminal table; a suffix
    that contradicts --format, or one that names no format, is refused rather than guessed."""
    if fmt is not None and fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if output is None:
        return fmt or "table"
    implied = SUFFIX_FORMATS.get(output.suffix.lower())
    if implied is None and fmt is None:
        raise UserError(f"--output {output}: cannot tell the format from its suffix; use .md, .csv or .tex, "
                        "or give --format")
    if implied is not None and fmt not in (None, implied, "table" if implied == "markdown" else None):
        raise UserError(f"--output {output} looks like {implied}, but --format {fmt} was given; make them agree")
    return fmt or implied or "table"


def check_output(output: Path, grid_dirs: list[Path]) -> None:
    """Tables are never written into a grid directory (they could replace a run's files) or over a folder."""
    target = output.resolve()
    for grid in grid_dirs:
        if target.is_relative_to(grid.resolve()):
            raise UserError(f"--output {output} is inside the grid directory {grid}; write tables elsewhere "
                            "(e.g. aggregates/)")
    if target.is_dir():
        raise UserError(f"--output {output} is a directory; give a file name such as {output / 'table.md'}")


def side_tables(summary: Summary, sides: Sides, names: DisplayNames = REGISTRY_NAMES) -> dict[str, Table]:
    """The side tables asked for, by the name of their document."""
    tables = {"hparams": hparams_table(summary, names=names) if sides.hparams else None,
              "differences": differences_table(summary, names) if sides.differences else None,
              "cost": cost_report(sides.costs, names) if sides.costs is not None else None}
    return {name: table for name, table in tables.items() if table is not None}


def screen(summary: Summary, sides: Sides, names: DisplayNames = REGISTRY_NAMES) -> list[Any]:
    """The terminal's tables (rich renderables): the main one, then the side tables asked for."""
    return [render_rich(summary, names), *(render(t, "table") for t in side_tables(summary, sides, names).values())]


def documents(summary: Summary, fmt: str, sides: Sides, small_intervals: bool = False,
              names: DisplayNames = REGISTRY_NAMES) -> dict[str, str]:
    """Document name → text; "" is the main table, the others are the side tables of one-table formats.
    `names`: what every table prints for methods and datasets (a CSV has them beside the keys, for scripts)."""
    docs = table_documents(side_tables(summary, sides, names), fmt)
    if fmt in ("markdown", "table"):
        parts = [to_markdown(summary, names), *docs.values(), coverage_to_markdown(summary)]
        return {"": "\n".join(p for p in parts if p)}
    main = to_csv(summary, names) if fmt == "csv" else to_latex(summary, small_intervals, names)
    return {"": main, **docs}


def side_path(output: Path, name: str) -> Path:
    """`table.csv` + "cost" → `table.cost.csv` (the main document keeps the given path)."""
    return output if not name else output.with_name(f"{output.stem}.{name}{output.suffix}")


def write(docs: dict[str, str], output: Path | None) -> list[Path]:
    """To files (returns their paths), or the main document raw to standard output (returns [])."""
    if output is None:
        sys.stdout.write(docs[""])
        sys.stdout.flush()
        return []
    paths = []
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        for name, text in docs.items():
            path = side_path(output, name)
            path.write_text(text)
            paths.append(path)
    except OSError as exc:
        raise UserError(f"cannot write --output {output}: {exc.strerror or exc}") from None
    return paths
