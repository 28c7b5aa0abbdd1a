"""The robustmtl command line: parse, call one function, render with rich.

Heavy modules (torch, transformers, pandas) are imported inside the commands, so `--help` is instant.
A UserError anywhere becomes one red line and exit code 2.
"""

from __future__ import annotations

import contextlib
import functools
import time as _time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console, Group
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from robustmtl.errors import UserError

if TYPE_CHECKING:
    from robustmtl.grid.status import GridStatus

app = typer.Typer(help="Group-robustness fine-tuning experiments, from grid files to worst-group tables.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, add_completion=False)
grid_app = typer.Typer(help="Expand, submit and follow grids of runs.", no_args_is_help=True)
app.add_typer(grid_app, name="grid")
console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

FORMATS = ("table", "markdown", "csv", "latex")
SUFFIX_FORMATS = {".tex": "latex", ".md": "markdown", ".csv": "csv"}


def user_errors(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None

    return wrapper  # type: ignore[return-value]


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    from robustmtl.params import parse_cli_value

    values = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key=value, got {pair!r}")
        values[key.strip()] = parse_cli_value(text.strip())
    return values


@app.command()
@user_errors
def run(
    method: Annotated[str, typer.Option(help="Method name, e.g. erm, mtl_l1.")],
    dataset: Annotated[str, typer.Option(help="Dataset name, e.g. synthetic.")],
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    model: Annotated[str | None, typer.Option(help="Model name (default: the dataset's).")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Hyperparameter key=value (repeatable).")] = None,
    out: Annotated[Path | None, typer.Option(help="Run directory (default runs/single/<run_id>).")] = None,
    data_root: Annotated[str | None, typer.Option(help="Dataset directory (else $ROBUSTMTL_DATA).")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0: torch's default).")] = 0,
    checkpoint_every: Annotated[int, typer.Option(help="Also checkpoint every N steps (0: per epoch).")] = 0,
    keep_checkpoint: Annotated[bool, typer.Option(help="Keep the final checkpoint after the run is done.")] = False,
) -> None:
    """Train one run in this process (resumes from its checkpoint; a finished run just reports)."""
    from robustmtl.config import RunOptions, build_config
    from robustmtl.grid.executor import data_root_for
    from robustmtl.runner import run_with_requirements

    values = parse_sets(set_ or [])
    if data_root is None:
        data_root = values.pop("data_root", None)
    cfg = build_config(method, dataset, seed, model, values, where="--set")
    opts = RunOptions(data_root=data_root_for(data_root), device=device, threads=threads,
                      checkpoint_every=checkpoint_every, keep_checkpoint=keep_checkpoint)
    summary = run_with_requirements(cfg, opts, out or Path("runs") / "single" / cfg.run_id, console)
    show_summary(summary)


def show_summary(summary: dict[str, Any]) -> None:
    table = Table(title=f"run {summary['run_id']}: {summary['method']} on {summary['dataset']}, seed {summary['seed']}")
    for column in ("split", "avg acc", "worst-group acc"):
        table.add_column(column, justify="right" if column != "split" else "left")
    for split in ("train", "val", "test"):
        m = summary["final"][split]
        table.add_row(split, f"{100 * m['avg_acc']:.1f}", f"{100 * m['worst_group_acc']:.1f}")
    console.print(table)
    console.print(f"{summary['epochs']} epochs, {summary['steps']} steps, {summary['time_s']:.1f} s of training")


PartitionOpt = Annotated[str | None, typer.Option(help="SLURM partition (overrides the grid file).")]
AccountOpt = Annotated[str | None, typer.Option(help="SLURM account (overrides the grid file).")]
QosOpt = Annotated[str | None, typer.Option(help="SLURM QOS (overrides the grid file).")]
GpusOpt = Annotated[int | None, typer.Option(help="GPUs per run (overrides the grid file).")]
TimeOpt = Annotated[int | None, typer.Option("--time", "--timeout",
                                             help="Job time limit in minutes (overrides the grid file).")]
ParallelismOpt = Annotated[int | None, typer.Option(help="Array tasks running at once (overrides the grid file).")]
ExecutorOpt = Annotated[str | None, typer.Option(help="auto | local | slurm | debug (overrides the file).")]
GridDirArg = Annotated[Path, typer.Argument(help="Grid directory.")]


def slurm_overrides(partition: str | None, account: str | None, qos: str | None, gpus: int | None,
                    time: int | None, array_parallelism: int | None) -> dict[str, Any]:
    return {"partition": partition, "account": account, "qos": qos, "gpus": gpus, "timeout_min": time,
            "array_parallelism": array_parallelism}


DRY_RUN_ROWS = 200


def show_plan(spec: Any, runs: list[Any]) -> None:
    """The expanded runs (the first DRY_RUN_ROWS of them) and the count per dataset and method."""
    from collections import Counter

    table = Table(title=f"{spec.name}: {len(runs)} runs")
    swept_keys = sorted({k for r in runs for k in r.swept})
    for column in ("run_id", "method", "dataset", "seed", *swept_keys):
        table.add_column(column)
    for r in runs[:DRY_RUN_ROWS]:
        c = r.config
        table.add_row(r.run_id, c.method, c.dataset, str(c.seed), *(str(r.swept.get(k, "")) for k in swept_keys))
    console.print(table)
    if len(runs) > DRY_RUN_ROWS:
        console.print(f"... and {len(runs) - DRY_RUN_ROWS} more")
    counts = Counter((r.config.dataset, r.config.method) for r in runs)
    console.print(", ".join(f"{d}/{m}: {n}" for (d, m), n in sorted(counts.items())))
    console.print(f"{len(runs)} runs (dry run: nothing written)")


@grid_app.command("submit")
@user_errors
def grid_submit(
    spec: Annotated[Path, typer.Argument(help="Grid file (TOML), e.g. jobs/demo.toml.")],
    out: Annotated[Path | None, typer.Option(help="Grid directory (default runs/<name>).")] = None,
    executor: ExecutorOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded runs; write nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Reuse a grid directory made by a different spec.")] = False,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    qos: QosOpt = None,
    gpus: GpusOpt = None,
    time: TimeOpt = None,
    array_parallelism: ParallelismOpt = None,
) -> None:
    """Expand a grid file and execute (local) or queue (slurm) every run that is not done or queued."""
    from robustmtl.grid.submit import plan, submit

    if dry_run:
        show_plan(*plan(spec))
        return
    overrides = slurm_overrides(partition, account, qos, gpus, time, array_parallelism)
    result = submit(spec, out, executor, force, console, overrides)
    if result.failed:
        raise UserError(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)}; "
                        "see `robustmtl grid status` for their errors")


@grid_app.command("status")
@user_errors
def grid_status_cmd(
    grid_dir: GridDirArg,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until no run is queued or running.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=0.5)] = 10.0,
) -> None:
    """Count runs by state: markers first, then one squeue and at most one sacct call."""
    from rich.live import Live

    from robustmtl.grid.status import grid_status
    from robustmtl.layout import GridDir

    grid = GridDir(grid_dir)
    status = grid_status(grid)
    if not watch:
        console.print(render_status(grid_dir, status))
        return
    with Live(render_status(grid_dir, status), console=console, auto_refresh=False) as live, \
            contextlib.suppress(KeyboardInterrupt):
        while status.active:
            _time.sleep(interval)
            status = grid_status(grid)
            live.update(render_status(grid_dir, status), refresh=True)


def render_status(grid_dir: Path, status: GridStatus) -> Group:
    """The counts table, attempt totals, and one line per failed or interrupted run."""
    from robustmtl.grid.status import STATE_HELP

    counts = status.counts
    table = Table(title=f"{grid_dir}: {status.total} runs")
    table.add_column("state")
    table.add_column("runs", justify="right")
    table.add_column("meaning")
    for state in status.shown_states():
        table.add_row(state, str(counts.get(state, 0)), STATE_HELP.get(state, "") if counts.get(state) else "")
    lines: list[Any] = [table]
    totals = status.attempt_totals()
    if totals:
        stops = ("preempted", "timeout", "terminated")
        hit = sum(1 for r in status.runs.values() if any(r.attempts.get(e) for e in stops))
        lines.append(f"attempts: {totals.get('start', 0)} starts, {totals.get('preempted', 0)} preempted, "
                     f"{totals.get('timeout', 0)} timed out, {totals.get('terminated', 0)} terminated"
                     + (f" ({hit} run(s) interrupted at least once)" if hit else ""))
    for run_id, line in status.failed:
        lines.append(Text.assemble(("failed ", "red"), f"{run_id}: {line}"))
    for run in status.runs.values():
        if run.state == "interrupted" and run.note:
            lines.append(f"interrupted {run.run_id}: {run.note}")
    if not status.queue_known:
        lines.append("(SLURM's squeue did not answer: states from the run directories only)")
    elif not status.accounting_known:
        lines.append("(no SLURM accounting: runs that left the queue are judged from their markers)")
    return Group(*lines)


@grid_app.command("resume")
@user_errors
def grid_resume(
    grid_dir: GridDirArg,
    failed_only: Annotated[bool, typer.Option("--failed-only", help="Only the runs that failed.")] = False,
    executor: ExecutorOpt = None,
    partition: PartitionOpt = None,
    account: AccountOpt = None,
    qos: QosOpt = None,
    gpus: GpusOpt = None,
    time: TimeOpt = None,
    array_parallelism: ParallelismOpt = None,
) -> None:
    """Run again every run not done and not queued: failed, cancelled, killed or never submitted."""
    from robustmtl.grid.control import resume
    from robustmtl.layout import GridDir

    overrides = slurm_overrides(partition, account, qos, gpus, time, array_parallelism)
    result = resume(GridDir(grid_dir), executor, failed_only, overrides, console)
    if result.failed:
        raise UserError(f"{len(result.failed)} run(s) failed: {', '.join(result.failed)}; "
                        "see `robustmtl grid status` for their errors")


@grid_app.command("cancel")
@user_errors
def grid_cancel(
    grid_dir: GridDirArg,
    run: Annotated[str | None, typer.Option(help="Only this run (id or unique prefix).")] = None,
) -> None:
    """Cancel the grid's queued and running SLURM jobs (one scancel call); checkpoints stay for `grid resume`."""
    from robustmtl.grid.control import cancel
    from robustmtl.layout import GridDir

    jobs = cancel(GridDir(grid_dir), run)
    console.print(f"cancelled {len(jobs)} job(s): {' '.join(jobs)}" if jobs else "no queued or running job to cancel",
                  highlight=False)


@grid_app.command("logs")
@user_errors
def grid_logs(
    grid_dir: GridDirArg,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    err: Annotated[bool, typer.Option("--err", help="stderr instead of stdout.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print submitit's log of a run's newest SLURM job."""
    from robustmtl.grid.control import show_log
    from robustmtl.layout import GridDir

    def write(text: str) -> None:
        typer.echo(text, nl=False)

    with contextlib.suppress(KeyboardInterrupt):
        show_log(GridDir(grid_dir), run_id, err, follow, write)


@app.command()
@user_errors
def aggregate(
    grid_dirs: Annotated[list[Path], typer.Argument(help="One or more grid directories.")],
    select: Annotated[str, typer.Option(help="worst-val | avg-val | few-groups | oracle")] = "worst-val",
    fmt: Annotated[str | None, typer.Option("--format", help="table | markdown | csv | latex")] = None,
    output: Annotated[Path | None, typer.Option(help="Write the table to this file.")] = None,
    include_running: Annotated[bool, typer.Option(help="Include runs without DONE.")] = False,
    ci: Annotated[str, typer.Option(help="t (Student-t) | bootstrap")] = "t",
    baseline: Annotated[str | None, typer.Option(help="Paired difference of every method to this one.")] = None,
    show_hparams: Annotated[bool, typer.Option(help="Show the chosen hyperparameters per cell.")] = False,
    few_groups_fraction: Annotated[float, typer.Option(help="Validation fraction for few-groups.")] = 0.05,
    few_groups_seed: Annotated[int, typer.Option(help="Seed of the few-groups subset.")] = 0,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
    small_intervals: Annotated[bool, typer.Option(help="LaTeX: set intervals in \\scriptsize.")] = False,
    quiet: Annotated[bool, typer.Option(help="Do not print the terminal table.")] = False,
) -> None:
    """Worst-group tables with confidence intervals over seeds."""
    from robustmtl.aggregate import aggregate as run_aggregate
    from robustmtl.aggregate.export import (
        differences_to_markdown,
        hparams_to_markdown,
        render_differences_rich,
        render_hparams_rich,
        render_rich,
        to_csv,
        to_latex,
        to_markdown,
    )

    fmt = fmt or (SUFFIX_FORMATS.get(output.suffix, "table") if output else "table")
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    summary = run_aggregate(grid_dirs, select=select, include_running=include_running, ci=ci, baseline=baseline,
                            seed=seed, few_groups_fraction=few_groups_fraction, few_groups_seed=few_groups_seed)
    for warning in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if not quiet:
        console.print(render_rich(summary))
        if show_hparams:
            console.print(render_hparams_rich(summary))
        if baseline:
            console.print(render_differences_rich(summary))
    latex = functools.partial(to_latex, small_intervals=small_intervals)
    writers = {"markdown": to_markdown, "csv": to_csv, "latex": latex, "table": to_markdown}
    text = writers[fmt](summary)
    if show_hparams and fmt in ("markdown", "table"):
        text += "\n" + hparams_to_markdown(summary)
    if baseline and fmt in ("markdown", "table"):
        text += "\n" + differences_to_markdown(summary)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(text)
        console.print(f"wrote {output}")
    elif fmt != "table":
        console.print(text, markup=False, highlight=False)


@app.command()
@user_errors
def plot(
    grid_dirs: Annotated[list[Path], typer.Argument(help="One or more grid directories.")],
    out: Annotated[Path, typer.Option(help="Folder for the figures.")] = Path("aggregates/figures"),
    select: Annotated[str, typer.Option(help="worst-val | avg-val | oracle")] = "worst-val",
    method: Annotated[str, typer.Option(help="Method whose alpha_aux x alpha_reg sweep to map.")] = "mtl_l1",
) -> None:
    """PNG/PDF figures: average vs worst-group trade-off, and worst-group accuracy across the alpha sweep."""
    from robustmtl.aggregate.plot import sweep_heatmap, tradeoff_figure

    paths = tradeoff_figure(grid_dirs, select, out, ("png", "pdf"))
    try:
        paths += sweep_heatmap(grid_dirs, select, out, ("png", "pdf"), method=method)
    except UserError as exc:
        err_console.print(f"[yellow]no sweep heatmap:[/] {escape(str(exc))}", highlight=False)
    for path in paths:
        console.print(f"wrote {path}")
