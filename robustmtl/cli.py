"""The robustmtl command line: parse, call one function, render with rich.

Heavy modules (torch, transformers, pandas) are imported inside the commands, so `--help` is instant.
A UserError anywhere becomes one red line and exit code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from robustmtl.cli_common import App, console, err_console, option_for, parse_sets, settings_options, user_errors
from robustmtl.cli_data import data_app
from robustmtl.cli_eval import eval_command
from robustmtl.cli_grid import grid_app
from robustmtl.config import Execution, RunOptions, build_config, check_local_paths
from robustmtl.errors import UserError
from robustmtl.grid.executor import data_root_for
from robustmtl.layout import DEFAULT_OUT

app = App(help="Group-robustness fine-tuning experiments, from grid files to worst-group tables.",
          no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
app.add_typer(grid_app, name="grid")
app.add_typer(data_app, name="data")
app.command("eval")(eval_command)

# The selection options `aggregate` and `plot` share, so a figure can always match a table.
SelectOpt = Annotated[str, typer.Option(help="worst-val | worst-val-patience | avg-val | worst-class | few-groups | "
                                             "oracle")]
IncludeRunningOpt = Annotated[bool, typer.Option(help="Include runs without DONE.")]
CiOpt = Annotated[str, typer.Option(help="t (Student-t) | bootstrap")]
FewGroupsFractionOpt = Annotated[float | None, typer.Option(help="Validation fraction for few-groups [default: 0.05].",
                                                            show_default=False)]
FewGroupsSeedOpt = Annotated[int, typer.Option(help="Seed of the few-groups subset.", min=0)]
BootstrapSeedOpt = Annotated[int, typer.Option(help="Bootstrap seed.", min=0)]
ByOpt = Annotated[list[str] | None, typer.Option(help="A condition parameter (repeatable): one row group per "
                                                      "value, selected within each, e.g. spurious_variance_ratio.")]
LabelBudgetOpt = Annotated[bool, typer.Option("--label-budget", help="Test worst-group accuracy per method under every "
                                              "rule, from no validation group label (avg-val, worst-class) through "
                                              "few-groups at 5-50% to all (worst-val).")]
RawNamesOpt = Annotated[bool, typer.Option("--raw-names", help="Print method and dataset keys (mtl_l1), not display "
                                                               "names (MTL+ℓ1; a grid's \\[display] table overrides).")]

@app.command()
@user_errors
@settings_options(Execution, "execution")
def run(
    method: Annotated[str, typer.Option(help="Method name, e.g. erm, mtl_l1.")],
    dataset: Annotated[str, typer.Option(help="Dataset name, e.g. synthetic.")],
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    model: Annotated[str | None, typer.Option(help="Model name (default: the dataset's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter key=value (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/single/<run_id>).")] = None,
    data_root: Annotated[str | None, typer.Option(help="Dataset directory (else $ROBUSTMTL_DATA).")] = None,
    *,
    execution: dict[str, Any],  # the execution options, generated from Execution's fields
) -> None:
    """Train one run in this process (resumes from its checkpoint; a finished run just reports)."""
    from robustmtl.runner import run_with_requirements

    values = parse_sets(set_ or [])
    if data_root is None:
        data_root = values.pop("data_root", None)
    for key, value in values.items():
        if (option := option_for(run, key, value)) is not None:
            raise UserError(f"--set {key}: {key} is not a run parameter but an option of `robustmtl run`; "
                            f"give {option}")
    cfg = build_config(method, dataset, seed, model, values, where="--set")
    check_local_paths([cfg], "--set")
    opts = RunOptions(**execution, data_root=data_root_for(data_root))
    summary = run_with_requirements(cfg, opts, out or DEFAULT_OUT / "single" / cfg.run_id, console)
    show_summary(summary)


def show_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"run {summary['run_id']}: {summary['method']} on {summary['dataset']}, seed {summary['seed']}")
    for column in ("split", "avg acc", "worst-group acc"):
        table.add_column(column, justify="right" if column != "split" else "left")
    from robustmtl.aggregate.export import percent_text

    for split in ("train", "val", "test"):  # the training split is absent with eval_train = 0, and for DFR
        if (m := summary["final"].get(split)) is not None:
            table.add_row(split, percent_text(m["avg_acc"]), percent_text(m["worst_group_acc"]))
    console.print(table)
    console.print(f"{summary['epochs']} epochs, {summary['steps']} steps, {summary['time_s']:.1f} s of training")


def print_notices(warnings: list[str], summary: Any) -> None:
    """The aggregation's warnings and the cells with runs not done, on stderr (stdout may be a table)."""
    from robustmtl.aggregate.details import coverage_lines

    for warning in warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    for line in coverage_lines(summary):
        err_console.print(f"[yellow]{escape(line)}[/]", highlight=False)


@app.command()
@user_errors
def aggregate(
    grid_dirs: Annotated[list[Path], typer.Argument(help="Grid directories (or run directories, or folders of them).")],
    select: SelectOpt = "worst-val",
    fmt: Annotated[str | None, typer.Option("--format", help="table | markdown | csv | latex")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the table to this file.")] = None,
    include_running: IncludeRunningOpt = False,
    ci: CiOpt = "t",
    baseline: Annotated[str | None, typer.Option(help="Paired difference of every method to this one.")] = None,
    show_hparams: Annotated[bool, typer.Option(help="Show the chosen hyperparameters per cell.")] = False,
    show_cost: Annotated[bool, typer.Option(help="Show wall time, GPU-hours and peak GPU memory per cell.")] = False,
    few_groups_fraction: FewGroupsFractionOpt = None,
    few_groups_seed: FewGroupsSeedOpt = 0,
    seed: BootstrapSeedOpt = 0,
    small_intervals: Annotated[bool, typer.Option(help="LaTeX: set intervals in \\scriptsize.")] = False,
    raw_names: RawNamesOpt = False,
    quiet: Annotated[bool, typer.Option(help="Do not print the terminal table.")] = False,
    by: ByOpt = None,
    label_budget: LabelBudgetOpt = False,
    metric: Annotated[str, typer.Option(help="Test metric beside average accuracy: worst_group_acc (from the "
                                             "records), or from the stored predictions avg_acc, balanced_acc, "
                                             "worst_group_auroc, worst_group_ece, weighted_avg_acc, "
                                             "group_rows_avg_acc.")]
    = "worst_group_acc",
) -> None:
    """Worst-group tables with confidence intervals over seeds.

    CSV and LaTeX to standard output carry the main table only (the terminal tables go to stderr); with
    --output, each side table asked for is a file beside it (table.csv -> table.differences.csv).
    """
    if metric != "worst_group_acc" and (label_budget or by):
        raise UserError(f"--metric is for the main table; --{'label-budget' if label_budget else 'by'} reports "
                        "worst-group accuracy from the records")
    if label_budget:
        from robustmtl.cli_budget import aggregate_budget, check_options

        check_options(select, few_groups_fraction, by, *(["--show-hparams"] if show_hparams else []),
                      *(["--show-cost"] if show_cost else []), *(["--small-intervals"] if small_intervals else []))
        return aggregate_budget(grid_dirs, include_running, ci, baseline, seed, few_groups_seed, fmt, output, quiet,
                                raw_names, console, err_console)
    few_groups_fraction = 0.05 if few_groups_fraction is None else few_groups_fraction
    if by:
        from robustmtl.cli_conditions import aggregate_by

        if ci != "t" or show_hparams or show_cost:
            raise UserError("--by tables take Student-t intervals and no --show-hparams/--show-cost")
        return aggregate_by(grid_dirs, by, select, baseline, include_running, fmt, output, quiet, raw_names,
                            console, err_console)
    from robustmtl.aggregate import aggregate as run_aggregate
    from robustmtl.aggregate.cost import cost_table
    from robustmtl.aggregate.names import display_names
    from robustmtl.aggregate.report import Sides, check_output, documents, resolve_format, screen, write

    if output is not None:
        check_output(output, grid_dirs)
    fmt = resolve_format(fmt, output)
    summary = run_aggregate(grid_dirs, select=select, include_running=include_running, ci=ci, baseline=baseline,
                            seed=seed, few_groups_fraction=few_groups_fraction, few_groups_seed=few_groups_seed,
                            metric=metric)
    names, name_warnings = display_names(grid_dirs, raw_names)
    print_notices(summary.warnings + name_warnings, summary)
    costs = cost_table(summary.runs) if show_cost and summary.runs is not None else None
    sides = Sides(show_hparams, baseline is not None, costs)
    terminal = err_console if output is None and fmt != "table" else console  # stdout stays machine-readable
    if not quiet:
        for table in screen(summary, sides, names):
            terminal.print(table)
    docs = documents(summary, fmt, sides, small_intervals, names)
    if output is None and fmt == "table":
        return
    for path in write(docs, output):
        console.print(f"wrote {path}", highlight=False)
    if output is None and len(docs) > 1:
        err_console.print(f"[yellow]note:[/] only the main table went to standard output; give --output FILE "
                          f"to also write {', '.join(n for n in docs if n)} as files beside it", highlight=False)


@app.command()
@user_errors
def plot(
    grid_dirs: Annotated[list[Path], typer.Argument(help="One or more grid directories.")],
    out: Annotated[Path | None, typer.Option(help="Folder for the figures (default: GRID_DIR-figures beside the "
                                                  "first grid).")] = None,
    method: Annotated[str, typer.Option(help="Method whose alpha_aux x alpha_reg sweep to map; with three or more "
                                             "--by keys, the method whose condition sweep to draw.")] = "mtl_l1",
    select: SelectOpt = "worst-val",
    include_running: IncludeRunningOpt = False,
    ci: CiOpt = "t",
    few_groups_fraction: FewGroupsFractionOpt = None,
    few_groups_seed: FewGroupsSeedOpt = 0,
    seed: BootstrapSeedOpt = 0,
    by: ByOpt = None,
    curves: Annotated[bool, typer.Option("--curves", help="Learning curves instead: per cell at its selected "
                                                          "setting, val/test accuracy by epoch over seeds.")] = False,
    raw_names: RawNamesOpt = False,
    label_budget: LabelBudgetOpt = False,
) -> None:
    """PNG/PDF figures: average vs worst-group trade-off, and worst-group accuracy across the alpha sweep;
    with --curves, one figure per dataset of each method's accuracy by epoch (plus its numbers as CSV); with
    --label-budget, test worst-group accuracy per method against the validation labels selection reads.

    Takes aggregate's selection options, so a figure shows exactly the numbers of the same aggregate table.
    """
    from robustmtl.aggregate.plot import default_figures_dir

    out = out or default_figures_dir(grid_dirs)
    if label_budget:
        from robustmtl.cli_budget import check_options, plot_budget

        check_options(select, few_groups_fraction, by, *(["--curves"] if curves else []))
        return plot_budget(grid_dirs, out, include_running, ci, seed, few_groups_seed, raw_names, console,
                           err_console)
    few_groups_fraction = 0.05 if few_groups_fraction is None else few_groups_fraction
    if by:
        from robustmtl.cli_conditions import plot_by

        return plot_by(grid_dirs, by, out, method, select, include_running, curves, raw_names, console, err_console)
    from robustmtl.aggregate.names import display_names
    from robustmtl.aggregate.plot import SelectOptions, plot_curves, plot_grids

    opts = SelectOptions(select=select, include_running=include_running, ci=ci, seed=seed,
                         few_groups_fraction=few_groups_fraction, few_groups_seed=few_groups_seed)
    names, name_warnings = display_names(grid_dirs, raw_names)
    figures = plot_curves(grid_dirs, out, opts, names) if curves else plot_grids(grid_dirs, out, method, opts,
                                                                                   names=names)
    print_notices(figures.warnings + name_warnings, figures.summary)
    if figures.no_heatmap:
        err_console.print(f"[yellow]no sweep heatmap:[/] {escape(figures.no_heatmap)}", highlight=False,
                          soft_wrap=True)
    for path in figures.paths:
        console.print(f"wrote {escape(str(path))}", highlight=False, soft_wrap=True)
