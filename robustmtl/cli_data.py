"""`robustmtl data ...`: check a dataset before a grid spends GPU-days on it, and prepare a downloaded archive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from robustmtl.cli_common import console, err_console, user_errors
from robustmtl.errors import UserError

if TYPE_CHECKING:
    from robustmtl.data.check import CheckReport

data_app = typer.Typer(help="Check the datasets runs read, and prepare downloaded archives into their layout.",
                       no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Dataset name, e.g. waterbirds, synthetic.")]
DataRootOpt = Annotated[str | None, typer.Option(help="Data root (else $ROBUSTMTL_DATA).")]


def data_params_from_sets(name: str, pairs: list[str]) -> Any:
    """The dataset's parameter block exactly as a run with these `--set` values gets it; other keys are refused."""
    from robustmtl.cli import parse_sets
    from robustmtl.config import build_config
    from robustmtl.params import field_types
    from robustmtl.registry import dataset_plugin

    values = parse_sets(pairs)
    known = field_types(dataset_plugin(name).params)
    for key in values:
        if key not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise UserError(f"--set: {key!r} is not a parameter of dataset {name!r} (data check reads only dataset "
                            f"parameters; {name}'s: {listed})")
    return build_config("erm", name, 0, None, values, where="--set").data_params


def report_findings(report: CheckReport) -> None:
    """Warnings and problems on stderr, one line each; problems make the command exit 2."""
    for warning in report.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    for problem in report.problems:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False, soft_wrap=True)
    if report.problems:
        raise typer.Exit(2)


def show_report(report: CheckReport, fmt: str) -> None:
    import sys

    from robustmtl.data.check_render import render_rich, render_text

    if fmt == "table":
        console.print(render_rich(report))
    else:
        sys.stdout.write(render_text(report, fmt))
        sys.stdout.flush()
    report_findings(report)


@data_app.command()
@user_errors
def check(
    name: NameArg,
    data_root: DataRootOpt = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Dataset parameter key=value (repeatable).")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | markdown | csv | json")] = "table",
    images: Annotated[int, typer.Option(help="Image files opened per split (0: all).", min=0)] = 64,
) -> None:
    """Load a dataset as a run would (no model), print examples per group and split, and check it.

    Exit 0 when a grid can train on it, 2 with one line per problem otherwise (warnings do not fail).
    """
    from robustmtl.data.check import check_dataset
    from robustmtl.data.check_render import check_format
    from robustmtl.grid.executor import data_root_for

    fmt = check_format(fmt)
    params = data_params_from_sets(name, set_ or [])
    root = data_root_for(data_root)
    show_report(check_dataset(name, params, Path(root) if root else None, images), fmt)
