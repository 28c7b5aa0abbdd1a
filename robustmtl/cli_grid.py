"""`robustmtl grid ...`: submit, status, resume, cancel, drop, logs (thin: parse, call grid/, render)."""

from __future__ import annotations

import contextlib
import time as _time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from robustmtl.cli_common import console, settings_options, user_errors
from robustmtl.errors import UserError
from robustmtl.grid.executor import ExecutorSettings, with_overrides
from robustmtl.layout import DEFAULT_OUT, GridDir

if TYPE_CHECKING:
    from robustmtl.grid.status import GridStatus

grid_app = typer.Typer(help="Expand, submit and follow grids of runs.", no_args_is_help=True)

GridDirArg = Annotated[Path, typer.Argument(help="Grid directory.")]
# the [executor] keys `grid submit` and `grid resume` take as options, overriding the grid file's
GRID_OVERRIDES = ("kind", "partition", "account", "qos", "gpus", "timeout_min", "array_parallelism", "pack")


DRY_RUN_ROWS = 100  # rich needs ~2.5 ms a row; the per-cell counts below cover the rest
WATCH_MIN_S = 10.0  # a refresh is one squeue + at most one sacct: never more often than this
WATCH_LOCAL_MIN_S = 1.0  # a grid without SLURM jobs: a refresh only reads its run directories
RUN_LINES = 20  # per-run lines shown per section before "... and N more"
MAX_RUNS = 2000  # grid submit's default limit; the paper's largest grid is 520 runs
FAILED_SHOWN = 5  # failed runs named, with their errors, in the one line a failed local grid ends with


def show_plan(spec: Any, runs: list[Any], grid_dir: Path) -> None:
    """The expanded runs (the first DRY_RUN_ROWS of them), the count per dataset and method, and what the
    runs not done yet will cost, estimated from the finished runs in `grid_dir`."""
    from collections import Counter

    from robustmtl.grid.estimate import estimate, render_estimate

    table = Table(title=f"{spec.name}: {len(runs)} runs")
    swept_keys = sorted({k for r in runs for k in r.swept})
    for column in ("run_id", "method", "dataset", "seed", *swept_keys):  # at 80 columns: ids whole, others fold
        table.add_column(column, overflow="fold", no_wrap=column == "run_id",
                         min_width=max(len(r.run_id) for r in runs) if column == "run_id" else None)
    for r in runs[:DRY_RUN_ROWS]:
        c = r.config
        table.add_row(r.run_id, c.method, c.dataset, str(c.seed), *(str(r.swept.get(k, "")) for k in swept_keys))
    console.print(table)
    if len(runs) > DRY_RUN_ROWS:
        console.print(f"... and {len(runs) - DRY_RUN_ROWS} more")
    counts = Counter((r.config.dataset, r.config.method) for r in runs)
    console.print(", ".join(f"{d}/{m}: {n}" for (d, m), n in sorted(counts.items())))
    cells = estimate(GridDir(grid_dir), runs)
    if any(c.sampled for c in cells):
        console.print(render_estimate(cells))
    elif cells:
        console.print(f"no cost estimate: no finished runs in {grid_dir} yet")
    console.print(run_count(spec, runs))
    console.print("(dry run: nothing written)")


def run_count(spec: Any, runs: list[Any]) -> str:
    """'N runs', and where the expander added runs that listed ones require (JTT's stage 1, pre-training), how
    many the grid lists: the count a codebase that trains those stages inside one run would give."""
    from collections import Counter

    required = Counter(r.config.method for r in runs if r.config.method not in spec.methods)
    if not required:
        return f"{len(runs)} runs"
    added = ", ".join(f"{n} {method}" for method, n in sorted(required.items()))
    return f"{len(runs)} runs: {len(runs) - sum(required.values())} listed, and {added} that they require"


def refuse_failures(failed: dict[str, str]) -> None:
    """Runs that failed under a local or debug executor make the command fail, with each one's error."""
    if failed:
        shown = [f"{run_id}: {why}" for run_id, why in list(failed.items())[:FAILED_SHOWN]]
        more = f"; ... and {len(failed) - FAILED_SHOWN} more" if len(failed) > FAILED_SHOWN else ""
        raise UserError(f"{len(failed)} run(s) failed: {'; '.join(shown)}{more}")


@grid_app.command("submit")
@user_errors
@settings_options(ExecutorSettings, "overrides", GRID_OVERRIDES, overrides=True)
def grid_submit(
    spec: Annotated[Path, typer.Argument(help="Grid file (TOML), e.g. jobs/demo.toml.")],
    out: Annotated[Path | None, typer.Option(help="Grid directory (default runs/<name>).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the expanded runs; write nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Reuse a grid directory made by a different spec.")] = False,
    *,
    overrides: dict[str, Any],  # the [executor] options, generated from ExecutorSettings' fields
    require_clean: Annotated[bool, typer.Option(
        "--require-clean", help="Refuse to submit from a checkout with uncommitted changes.")] = False,
    max_runs: Annotated[int, typer.Option(help="Refuse a grid of more runs than this (0: no limit), so a typo'd "
                                               "sweep is caught before it is queued.", min=0)] = MAX_RUNS,
) -> None:
    """Expand a grid file and execute (local) or queue (slurm) every run that is not done or queued."""
    from robustmtl.grid.submit import check_out, plan, submit

    if dry_run:
        grid_spec, runs = plan(spec)
        with_overrides(grid_spec.executor, overrides, str(spec))
        grid_dir = out or DEFAULT_OUT / grid_spec.name
        check_out(GridDir(grid_dir))
        show_plan(grid_spec, runs, grid_dir)
        if max_runs and len(runs) > max_runs:
            console.print(f"[yellow]note:[/] more than --max-runs {max_runs}: submit it with --max-runs {len(runs)}")
        return
    failed = submit(spec, out, overrides["kind"], force, console, overrides, require_clean=require_clean,
                    max_runs=max_runs)
    refuse_failures(failed)


@grid_app.command("status")
@user_errors
def grid_status_cmd(
    grid_dir: GridDirArg,
    watch: Annotated[bool, typer.Option("--watch", help="Refresh until no run is queued or running.")] = False,
    interval: Annotated[float, typer.Option(help=f"Seconds between refreshes with --watch (on a grid with SLURM "
                                                 f"jobs {WATCH_MIN_S:g} at least: each refresh asks the scheduler).",
                                            min=WATCH_LOCAL_MIN_S)] = WATCH_MIN_S,
) -> None:
    """Count runs by state: markers first, then one squeue and at most one sacct call."""
    from rich.live import Live

    from robustmtl.grid.status import grid_status

    grid = GridDir(grid_dir)
    if watch:
        check_interval(grid, interval)
    status = grid_status(grid)
    if not watch:
        console.print(render_status(grid, status))
        return
    with Live(render_status(grid, status), console=console, auto_refresh=False) as live, \
            contextlib.suppress(KeyboardInterrupt):
        while in_progress(grid, status):
            _time.sleep(interval)
            status = grid_status(grid)
            live.update(render_status(grid, status), refresh=True)


def check_interval(grid: GridDir, interval: float) -> None:
    """Refreshes faster than WATCH_MIN_S only where they ask SLURM nothing: a grid none of whose runs has a job."""
    from robustmtl.grid.manifest import latest_entries

    if interval < WATCH_MIN_S and any(e.get("job_id") for e in latest_entries(grid.root).values()):
        raise UserError(f"--interval {interval:g}: {grid.root} has SLURM jobs, and each refresh asks squeue and sacct; "
                        f"give {WATCH_MIN_S:g} or more")


def in_progress(grid: GridDir, status: GridStatus) -> bool:
    """Whether --watch goes on: a run is queued or training (a local run: its process holds the run), or a
    local `grid submit`/`resume` still executes the grid (between two of its runs none may be training)."""
    from robustmtl.grid.lock import submit_running
    from robustmtl.grid.status import ACTIVE

    return any(r.state in ACTIVE for r in status.runs.values()) or submit_running(grid.root)


def render_status(grid: GridDir, status: GridStatus) -> Group:
    """The counts table, attempt totals, per-run interruption counts, failed runs, and the spec's coverage."""
    from robustmtl.grid.coverage import coverage, gap_lines
    from robustmtl.grid.status import NOTED_STATES, STATE_HELP

    grid_dir = grid.root

    counts = status.counts
    table = Table(title=f"{grid_dir}: {status.total} runs")
    table.add_column("state")
    table.add_column("runs", justify="right")
    table.add_column("meaning")
    for state in status.shown_states():
        table.add_row(state, str(counts.get(state, 0)), STATE_HELP[state])
    lines: list[Any] = [table]
    totals = status.attempt_totals()
    if totals:
        stops = ("preempted", "timeout", "terminated")
        hit = sum(1 for r in status.runs.values() if any(r.attempts.get(e) for e in stops))
        lines.append(f"attempts: {totals.get('start', 0)} starts, {totals.get('preempted', 0)} preempted, "
                     f"{totals.get('timeout', 0)} timed out, {totals.get('crashed', 0)} crashed, "
                     f"{totals.get('terminated', 0)} terminated"
                     + (f" ({hit} run(s) interrupted at least once)" if hit else ""))
    stopped = [r for r in status.runs.values() if r.stops()]
    lines += _capped([f"  {r.run_id} ({r.state}): {r.stops()}" for r in stopped])
    lines += _capped([Text.assemble(("failed ", "red"), f"{run_id}: {line}") for run_id, line in status.failed])
    lines += _capped([f"{r.state} {r.run_id}: {r.note}" for r in status.runs.values()
                      if r.note and r.state in NOTED_STATES])
    gaps = coverage(grid, {run_id for run_id, r in status.runs.items() if r.state == "done"})
    if gaps:
        expected, done = sum(g.expected for g in gaps), sum(g.done for g in gaps)
        lines.append(f"coverage: {len(gaps)} cell(s) of {grid.spec.name} incomplete ({done}/{expected} of their "
                     "runs done); missing:")
        lines += _capped([f"  {line}" for line in gap_lines(gaps)])
    if not status.queue_known:
        lines.append("(SLURM's squeue did not answer: states from the run directories only)")
    elif not status.accounting_known:
        lines.append("(no SLURM accounting: runs that left the queue are judged from their markers)")
    return Group(*lines)


def _capped(lines: list[Any]) -> list[Any]:
    return lines[:RUN_LINES] + ([f"  ... and {len(lines) - RUN_LINES} more"] if len(lines) > RUN_LINES else [])


@grid_app.command("resume")
@user_errors
@settings_options(ExecutorSettings, "overrides", GRID_OVERRIDES, overrides=True)
def grid_resume(
    grid_dir: GridDirArg,
    failed_only: Annotated[bool, typer.Option("--failed-only", help="Failed runs and those they block.")] = False,
    retry_diverged: Annotated[bool, typer.Option("--retry-diverged", help="Retry diverged runs too (a non-finite "
                                                 "loss; left out otherwise, as they diverge again).")] = False,
    *,
    overrides: dict[str, Any],  # the [executor] options, generated from ExecutorSettings' fields
    new_code: Annotated[bool, typer.Option("--new-code", help="Run the checkout's code now, not the snapshot "
                                                             "taken at submit time.")] = False,
) -> None:
    """Run again every run not done and not queued: failed, cancelled, killed or never submitted."""
    from robustmtl.grid.control import resume
    from robustmtl.grid.snapshot import renew

    if new_code:
        renew(GridDir(grid_dir), console)
    refuse_failures(resume(GridDir(grid_dir), overrides["kind"], failed_only, overrides, console, retry_diverged))


@grid_app.command("cancel")
@user_errors
def grid_cancel(
    grid_dir: GridDirArg,
    run: Annotated[str | None, typer.Option(help="Only this run (id or unique prefix).")] = None,
) -> None:
    """Cancel the grid's queued and running SLURM jobs (one scancel call); checkpoints stay for `grid resume`."""
    from robustmtl.grid.control import cancel, pack_mates

    grid = GridDir(grid_dir)
    jobs = cancel(grid, run)
    console.print(f"cancelled {len(jobs)} job(s): {' '.join(jobs)}" if jobs else "no queued or running job to cancel",
                  highlight=False)
    mates = pack_mates(grid, run) if run and jobs else []
    if mates:
        console.print(f"run {run} shares its array task with {', '.join(mates)} (pack): they were cancelled too; "
                      f"`robustmtl grid resume {grid_dir}` requeues them from their checkpoints", highlight=False)


@grid_app.command("drop")
@user_errors
def grid_drop(
    grid_dir: GridDirArg,
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes).")],
) -> None:
    """Take runs out of the grid: status, resume, coverage and aggregate stop counting them; their files move
    to GRID_DIR/dropped/, nothing is deleted."""
    from robustmtl.grid.drop import drop

    for run_id, target in drop(GridDir(grid_dir), run_ids):
        console.print(f"dropped run {run_id}: its files are in {target}", highlight=False, soft_wrap=True)


@grid_app.command("logs")
@user_errors
def grid_logs(
    grid_dir: GridDirArg,
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    err: Annotated[bool, typer.Option("--err", help="stderr instead of stdout.")] = False,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
) -> None:
    """Print submitit's log of a run's newest job (SLURM or local)."""
    from robustmtl.grid.control import find_run, show_log
    from robustmtl.grid.local import newest_log, show_local_log
    from robustmtl.grid.manifest import latest_entries

    def write(text: str) -> None:
        typer.echo(text, nl=False)

    grid = GridDir(grid_dir)
    run_id = find_run(grid, run_id)
    entry = latest_entries(grid.root).get(run_id) or {}
    local = newest_log(grid, run_id, err)
    with contextlib.suppress(KeyboardInterrupt):
        if local is not None and (not entry.get("job_id") or local.stat().st_mtime >= entry.get("submitted_at", 0)):
            show_local_log(local, follow, write)
        elif entry.get("job_id"):
            show_log(grid, run_id, err, follow, write)
        else:
            raise UserError(f"run {run_id} has no job log: it has not started, or it was trained in the submitting "
                            f"process (executor debug) or by `robustmtl run`; its files are in {grid.run(run_id).root}")

