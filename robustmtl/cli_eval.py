"""`robustmtl eval`: a finished run's kept model evaluated on a split, without training (train/evaluate_kept.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from robustmtl.cli_common import console, parse_sets, user_errors
from robustmtl.grid.executor import data_root_for
from robustmtl.layout import METRICS, RunDir


@user_errors
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A finished run's directory, trained with keep_model.")],
    split: Annotated[list[str] | None, typer.Option(help="val | test | train (repeatable; default: val and test).",
                                                    show_default=False)] = None,
    dataset: Annotated[str | None, typer.Option(help="Another dataset of the same modality and classes "
                                                     "(default: the run's).", show_default=False)] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="A parameter of the evaluated dataset, key=value "
                                                                 "(repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Folder for the records (default: RUN_DIR/eval/<dataset>).",
                                             show_default=False)] = None,
    data_root: Annotated[str | None, typer.Option(help="Dataset directory (default: the run's, else "
                                                       "$ROBUSTMTL_DATA).", show_default=False)] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:1 ... (default: the run's).",
                                               show_default=False)] = None,
) -> None:
    """Evaluate a finished run's kept model on a split of its dataset, or of another dataset of the same modality
    and classes, writing records in the run's format (`robustmtl aggregate FOLDER` reads them)."""
    from robustmtl.aggregate.export import percent_text  # pandas
    from robustmtl.train.evaluate_kept import evaluate_kept  # torch

    folder, results = evaluate_kept(RunDir(run_dir), split or ["val", "test"], dataset, parse_sets(set_ or []), out,
                                    data_root_for(data_root) if data_root else None, device)
    table = Table(title=f"run {run_dir.name}, kept model")
    for column in ("split", "avg acc", "worst-group acc"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for name, metrics in results.items():
        table.add_row(name, percent_text(metrics["avg_acc"]), percent_text(metrics["worst_group_acc"]))
    console.print(table)
    console.print(f"records in {folder / METRICS}", highlight=False, soft_wrap=True)
