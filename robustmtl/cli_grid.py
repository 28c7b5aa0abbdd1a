"""`robustmtl grid ...`: submit, status, resume, cancel, logs (thin: parse, call grid/, render)."""

from __future__ import annotations

import contextlib
import time as _time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from robustmtl.cli_common import console, user_errors
from robustmtl.errors import UserError

if TYPE_CHECKING:
    from robustmtl.grid.status import GridStatus

grid_app = typer.Typer(help="Expand, submit and follow grids of runs.", no_args_is_help=True)

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


def refuse_failures(failed: list[str]) -> None:
    """Runs that failed under a local or debug executor make the command fail, pointing at their errors."""
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; "
                        "see `robustmtl grid status` for their errors")


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
    refuse_failures(result.failed)


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
    refuse_failures(result.failed)


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
