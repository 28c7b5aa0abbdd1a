"""`aggregate --by KEY` and `plot --by KEY`: tables and figures with one row group per condition."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from robustmtl.errors import UserError

FORMATS = {"table", "markdown", "csv"}
SUFFIX_FORMATS = {".md": "markdown", ".csv": "csv"}


def _format(fmt: str | None, output: Path | None) -> str:
    if fmt is None:
        fmt = SUFFIX_FORMATS.get(output.suffix.lower(), "") if output is not None else "table"
        if not fmt:
            raise UserError(f"--output {output}: give a .md or .csv file (or --format) for a --by table")
    if fmt not in FORMATS:
        raise UserError(f"--by tables are table, markdown or csv, not {fmt!r}")
    return fmt


def _check_select(select: str) -> None:
    from robustmtl.aggregate.rules import SELECTORS

    if select == "few-groups":
        others = ", ".join(name for name in SELECTORS if name != select)
        raise UserError(f"--by tables select with {others}; few-groups is for plain tables")


def aggregate_by(grid_dirs: Sequence[Path], by: Sequence[str], select: str, baseline: str | None,
                 include_running: bool, fmt: str | None, output: Path | None, quiet: bool, raw_names: bool,
                 console: Console, err_console: Console) -> None:
    from robustmtl.aggregate.conditions import condition_table, render_rich, to_csv, to_markdown
    from robustmtl.aggregate.names import display_names

    _check_select(select)
    fmt = _format(fmt, output)
    table = condition_table(grid_dirs, by, select=select, baseline=baseline or "erm",
                            include_running=include_running)
    names, name_warnings = display_names(grid_dirs, raw_names)
    for warning in table.warnings + name_warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if not quiet:
        (console if output is not None or fmt == "table" else err_console).print(render_rich(table, names),
                                                                                 highlight=False)
    if fmt == "table":
        return
    text = to_markdown(table, names) if fmt == "markdown" else to_csv(table, names)
    if output is None:
        console.print(text, end="", highlight=False, markup=False, soft_wrap=True)
        return
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
    except OSError as exc:
        raise UserError(f"cannot write --output {output}: {exc.strerror or exc}") from None
    console.print(f"wrote {escape(str(output))}", highlight=False, soft_wrap=True)


def plot_by(grid_dirs: Sequence[Path], by: Sequence[str], out: Path, method: str, select: str,
            include_running: bool, curves: bool, raw_names: bool, console: Console, err_console: Console) -> None:
    from robustmtl.aggregate.conditions import condition_table
    from robustmtl.aggregate.conditions_plot import condition_figures
    from robustmtl.aggregate.conditions_sweep import MIN_KEYS, sweep_figure
    from robustmtl.aggregate.names import display_names

    if curves:
        raise UserError("--curves draws the cells of a table without conditions, so it does not take --by; "
                        "plot the curves of one condition's runs (a grid of their own), or leave out --curves")
    _check_select(select)
    table = condition_table(grid_dirs, by, select=select, baseline="erm", include_running=include_running)
    names, name_warnings = display_names(grid_dirs, raw_names)
    for warning in table.warnings + name_warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for note in table.notes:
        err_console.print(f"[yellow]no Δ:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if len(by) < MIN_KEYS:
        paths = condition_figures(table, out, names)
    elif not (paths := sweep_figure(table, out, method, names)):
        raise UserError(f"no figure: with {len(by)} --by keys plot draws one method's sweep (--method), and "
                        f"{method!r} has no run with {by[0]} set")
    for path in paths:
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
