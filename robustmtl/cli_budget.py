"""`aggregate --label-budget` and `plot --label-budget`: test worst-group accuracy per method under each
selection rule, from no validation group label to all of them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from robustmtl.errors import UserError


def check_options(select: str, few_groups_fraction: float | None, by: Sequence[str] | None, *others: str) -> None:
    """The options a label-budget table decides itself (the rules, few-groups' fractions) or does not take."""
    from robustmtl.aggregate.budget import FRACTIONS

    taken = [*(["--select"] if select != "worst-val" else []),
             *(["--few-groups-fraction"] if few_groups_fraction is not None else []), *(["--by"] if by else []),
             *others]
    if taken:
        raise UserError(f"--label-budget runs every rule (avg-val, worst-class, few-groups at "
                        f"{', '.join(f'{f:.0%}' for f in FRACTIONS)}, worst-val) and takes no {', '.join(taken)}")


def aggregate_budget(grid_dirs: Sequence[Path], include_running: bool, ci: str, baseline: str | None, seed: int,
                     few_groups_seed: int, fmt: str | None, output: Path | None, quiet: bool, raw_names: bool,
                     console: Console, err_console: Console) -> None:
    from robustmtl.aggregate.budget import documents, label_budget_table, render_rich
    from robustmtl.aggregate.names import display_names
    from robustmtl.aggregate.report import check_output, resolve_format, write

    if output is not None:
        check_output(output, list(grid_dirs))
    fmt = resolve_format(fmt, output)
    table = label_budget_table(grid_dirs, include_running, ci, baseline, seed, few_groups_seed)
    names, name_warnings = display_names(grid_dirs, raw_names)
    for warning in table.warnings + name_warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    screen = err_console if output is None and fmt != "table" else console  # stdout stays machine-readable
    if not quiet:
        for part in render_rich(table, names):
            screen.print(part)
    if output is None and fmt == "table":
        return
    docs = documents(table, fmt, names)
    for path in write(docs, output):
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)


def plot_budget(grid_dirs: Sequence[Path], out: Path, include_running: bool, ci: str, seed: int, few_groups_seed: int,
                raw_names: bool, console: Console, err_console: Console) -> None:
    from robustmtl.aggregate.budget import budget_figure, label_budget_table
    from robustmtl.aggregate.names import display_names
    from robustmtl.aggregate.plot import checked_dirs

    dirs = checked_dirs(grid_dirs, out)
    table = label_budget_table(dirs, include_running, ci, None, seed, few_groups_seed)
    names, name_warnings = display_names(dirs, raw_names)
    for warning in table.warnings + name_warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for path in budget_figure(table, out, names):
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
