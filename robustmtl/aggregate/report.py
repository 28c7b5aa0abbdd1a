"""What `aggregate` writes: the main table in one format, and the side tables a user asked for.

Markdown (and the terminal's export) is one document with the side tables appended. CSV and LaTeX
hold one table per file, so each side table (chosen hyperparameters, paired differences, cost) is a
file of its own beside the main one: `table.csv` → `table.differences.csv`, `table.cost.csv`, ...
On standard output a machine format is written raw (never wrapped to the terminal's width), and only
the main table goes there, so `aggregate ... --format csv > table.csv` is a clean CSV.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from robustmtl.aggregate.cost import COST_HEADER, COST_NOTE, cost_csv_frame, cost_rows, cost_to_markdown
from robustmtl.aggregate.details import (
    DIFFERENCE_HEADER,
    coverage_to_markdown,
    difference_notes,
    difference_rows,
    difference_title,
    differences_csv_frame,
    differences_to_markdown,
    hparam_header,
    hparam_rows,
    hparams_to_markdown,
    sorted_chosen,
)
from robustmtl.aggregate.export import csv_text, in_units, to_csv, to_markdown
from robustmtl.aggregate.latex import latex_tabular, to_latex
from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames
from robustmtl.aggregate.summary import Summary
from robustmtl.aggregate.units import ACCURACY
from robustmtl.errors import UserError

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


def documents(summary: Summary, fmt: str, sides: Sides, small_intervals: bool = False,
              names: DisplayNames = REGISTRY_NAMES) -> dict[str, str]:
    """Document name → text; "" is the main table, the others are the side tables of one-table formats.
    `names`: what every table prints for methods and datasets (a CSV has them beside the keys, for scripts)."""
    if fmt in ("markdown", "table"):
        parts = [to_markdown(summary, names)]
        parts += [hparams_to_markdown(summary, names=names)] if sides.hparams else []
        parts += [differences_to_markdown(summary, names)] if sides.differences else []
        parts += [cost_to_markdown(sides.costs, names)] if sides.costs is not None else []
        parts += [coverage_to_markdown(summary)] if summary.gaps else []
        return {"": "\n".join(parts)}
    main: Callable[[Summary], str] = functools.partial(to_csv, names=names) if fmt == "csv" else functools.partial(
        to_latex, small_intervals=small_intervals, names=names)
    docs = {"": main(summary)}
    if sides.hparams:
        docs["hparams"] = _hparams_csv(summary, names) if fmt == "csv" else latex_tabular(
            f"Chosen hyperparameters ({summary.selector.label})", hparam_header(summary),
            hparam_rows(summary, names=names), "tab:hparams")
    if sides.differences and summary.differences is not None:
        docs["differences"] = csv_text(differences_csv_frame(summary, names)) if fmt == "csv" else latex_tabular(
            " ".join([difference_title(summary, names) + ".", *difference_notes(summary)]), DIFFERENCE_HEADER,
            difference_rows(summary, names), "tab:differences")
    if sides.costs is not None:
        docs["cost"] = csv_text(cost_csv_frame(sides.costs, names)) if fmt == "csv" else latex_tabular(
            "Cost per cell: " + COST_NOTE, COST_HEADER, cost_rows(sides.costs, names), "tab:cost")
    return docs


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


def _hparams_csv(summary: Summary, names: DisplayNames) -> str:
    """One row per cell: the chosen setting, its score (an accuracy) and seeds, and its hyperparameters as JSON."""
    chosen = sorted_chosen(summary)
    for column in ("hparams", "searched", "epochs"):
        chosen[column] = [json.dumps(v, sort_keys=True) for v in chosen[column]]
    columns = ["dataset", "method", "setting_id", "model", "score", "n_seeds", "n_expected", "epochs", "searched",
               "hparams"]
    return csv_text(in_units(chosen[columns], {"score": ACCURACY}, names))
