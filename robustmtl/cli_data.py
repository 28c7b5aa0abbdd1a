"""`robustmtl data ...`: check a dataset before a grid spends GPU-days on it, and prepare a downloaded archive."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from robustmtl.cli_common import console, err_console, parse_sets, user_errors
from robustmtl.errors import UserError
from robustmtl.grid.executor import data_root_for

if TYPE_CHECKING:
    from robustmtl.data.check import CheckReport

data_app = typer.Typer(help="Check the datasets runs read, and prepare downloaded archives into their layout.",
                       no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Dataset name, e.g. waterbirds, synthetic.")]
DataRootOpt = Annotated[str | None, typer.Option(help="Data root (else $ROBUSTMTL_DATA).")]
FROM_HELP = "The downloaded archive, folder or file (repeatable; with --url: where to save the download)."
URL_HELP = "Download this first (resumable), to --from or DATA_ROOT/downloads/."
IMAGE_SAMPLE = 64  # image files `data check` opens per split unless told otherwise
ImagesOpt = Annotated[int, typer.Option(help="Image files opened per split (0: all).", min=0)]


def data_params_from_sets(name: str, pairs: list[str]) -> Any:
    from robustmtl.data.check import dataset_params

    return dataset_params(name, parse_sets(pairs))


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
    images: ImagesOpt = IMAGE_SAMPLE,
) -> None:
    """Load a dataset as a run would (no model), print examples per group and split, and check it.

    Exit 0 when a grid can train on it, 2 with one line per problem otherwise (warnings do not fail).
    """
    from robustmtl.data.check import check_dataset
    from robustmtl.data.check_render import check_format

    fmt = check_format(fmt)
    params = data_params_from_sets(name, set_ or [])
    root = data_root_for(data_root)
    show_report(check_dataset(name, params, Path(root) if root else None, images), fmt)


@data_app.command()
@user_errors
def prepare(
    name: NameArg,
    from_: Annotated[list[Path] | None, typer.Option("--from", help=FROM_HELP)] = None,
    url: Annotated[str | None, typer.Option(help=URL_HELP)] = None,
    data_root: DataRootOpt = None,
    sha256: Annotated[str | None, typer.Option(help="Refuse the archive unless its SHA-256 is this.")] = None,
    images: ImagesOpt = IMAGE_SAMPLE,
) -> None:
    """Unpack what you downloaded into DATA_ROOT/NAME, the layout the loader reads, then run `data check`.

    Atomic: an interrupted prepare leaves no folder that looks complete. Idempotent: preparing the same
    files again does nothing. Where each archive comes from: docs/datasets-setup.md.
    """
    from robustmtl.data.check import check_dataset
    from robustmtl.data.prepare import prepare_dataset

    root = data_root_for(data_root)
    if root is None:
        raise UserError("data prepare needs a data root: give --data-root DIR or set $ROBUSTMTL_DATA")
    prepared = prepare_dataset(name, from_ or [], Path(root), url=url, sha256=sha256,
                               say=lambda line: console.print(escape(line), highlight=False, soft_wrap=True))
    if prepared.fresh:
        console.print(f"prepared {escape(name)} in {escape(str(prepared.target))}", highlight=False, soft_wrap=True)
    show_report(check_dataset(name, data_params_from_sets(name, []), Path(root), images), "table")
