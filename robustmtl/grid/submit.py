"""`grid submit`: expand a spec, lay out the grid directory, and execute the runs that are not done.

local/debug: runs execute here (grid/local.py: submitit subprocesses, `parallel` at a time, or in this
process), with a live progress bar, and the command returns when they end. slurm: one array job per
dependency level, submitted through submitit; the command returns once everything is queued.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console

from robustmtl.config import check_local_paths
from robustmtl.errors import UserError
from robustmtl.grid import snapshot
from robustmtl.grid.coverage import write_plan
from robustmtl.grid.executor import ExecutorSettings, data_root_for, with_overrides
from robustmtl.grid.expand import PlannedRun, data_roots, expand
from robustmtl.grid.lock import submit_lock
from robustmtl.grid.spec import GridSpec, load_spec, parse_toml
from robustmtl.layout import DEFAULT_OUT, SUBMIT_LOCK, GridDir, atomic_write_text, claim_dir
from robustmtl.rundir import prepare_run
from robustmtl.trackers import check as check_trackers
from robustmtl.trackers import write_choice as write_trackers


def plan(spec_path: Path) -> tuple[GridSpec, list[PlannedRun]]:
    """The spec and its runs, with the local paths the runs load checked (so a dry run catches them too)."""
    spec = load_spec(spec_path)
    runs = expand(spec)
    check_local_paths((r.config for r in runs), str(spec_path))
    return spec, runs


def check_size(spec: GridSpec, runs: list[PlannedRun], max_runs: int) -> None:
    """Refuse a plan above `max_runs` (0: no limit) until confirmed: one typo'd axis can multiply a grid
    a hundredfold, and thousands of queued GPU jobs are costly to notice late."""
    if max_runs and len(runs) > max_runs:
        axes: dict[str, list[Any]] = {
            "datasets": spec.datasets, "methods": spec.methods, "seeds": spec.seeds, **spec.sweep,
            **{f"{m}.{k}": v for m, t in spec.method_tables.items() for k, v in t.sweep.items()}}
        factors = " × ".join(f"{k} {len(v)}" for k, v in axes.items() if len(v) > 1)
        raise UserError(f"{spec.path} expands to {len(runs)} runs ({factors}), more than --max-runs {max_runs}; "
                        f"check the axes with --dry-run, then submit with --max-runs {len(runs)} (0: no limit)")


def check_out(grid: GridDir) -> None:
    """The grid directory must be new, empty or a grid's (its grid.toml), so no grid spills into another folder."""
    claim_dir(grid.root, "grid directory", grid.spec.name, {SUBMIT_LOCK})


def preflight(grid: GridDir) -> None:
    """Fail before anything is written when the grid directory cannot take files."""
    try:
        grid.root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=grid.root, prefix=".write-check-") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise UserError(f"cannot write to grid directory {grid.root}: {exc.strerror or exc}") from None


def record_spec(grid: GridDir, spec: GridSpec, force: bool) -> None:
    if grid.spec.exists():
        _, old = parse_toml(grid.spec)
        # printed names define no run: renaming them is no new spec
        if _without_display(old) != _without_display(spec.raw) and not force:
            raise UserError(f"{grid.root} was created by a different grid spec (see {grid.spec}); "
                            "use another --out, or --force to extend it with this spec")
    atomic_write_text(grid.spec, spec.text)


def _without_display(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "display"}


def check_clean(source: dict[str, Any], require_clean: bool, console: Console) -> None:
    """A dirty checkout is a warning (the diff is saved with the runs), or refused with `require_clean`."""
    message = snapshot.dirty_message(source)
    if message and require_clean:
        raise UserError(f"--require-clean: the checkout robustmtl runs from has {message}")
    if message:
        console.print(f"[yellow]warning:[/] the checkout robustmtl runs from has {message}", highlight=False)


def submit(spec_path: Path, out: Path | None, kind: str | None, force: bool, console: Console,
           overrides: dict[str, Any] | None = None, require_clean: bool = False, max_runs: int = 0) -> dict[str, str]:
    """`overrides`: [executor] values from the command line (None: keep the file's)."""
    spec, runs = plan(spec_path)
    check_size(spec, runs, max_runs)
    settings = with_overrides(spec.executor, {**(overrides or {}), "kind": kind}, str(spec_path))
    resolved = settings.resolved_kind()
    if resolved == "local":
        settings.check_python(str(spec_path))
    check_trackers(settings.trackers, f"{spec_path} [executor] trackers")
    grid = GridDir(out or DEFAULT_OUT / spec.name)
    check_out(grid)
    source = snapshot.source_state()
    check_clean(source, require_clean, console)
    preflight(grid)
    with submit_lock(grid.root):
        try:
            record_spec(grid, spec, force)
            write_plan(grid, runs)
            roots = {d: data_root_for(r) for d, r in data_roots(spec).items()}
            shares = len(settings.local_gpu_shares()) if resolved == "local" else 0
            for run in runs:
                options = settings.run_options(roots[run.config.dataset], resolved, shares)
                if run.keep_encoder:
                    options = dataclasses.replace(options, keep_encoder=True)
                prepare_run(grid.run(run.run_id), run.config, options)
                write_trackers(grid.run(run.run_id), settings.trackers)
        except OSError as exc:
            raise UserError(f"cannot write the grid directory {grid.root}: {exc.strerror or exc}; nothing was "
                            "submitted (free space or fix permissions, then run the same command again)") from None
        todo = [r for r in runs if not grid.run(r.run_id).done.exists()]
        again = command("submit", str(spec_path), *(("--out", str(out)) if out else ()),
                        *(("--executor", kind) if kind else ()))
        return execute(grid, spec.name, runs, todo, settings, resolved, console, again, source=source)


def command(*words: str) -> str:
    """`robustmtl grid WORDS...` as a user would type it again."""
    return shlex.join(("robustmtl", "grid", *words))


def execute(grid: GridDir, title: str, runs: list[PlannedRun], todo: list[PlannedRun], settings: ExecutorSettings,
            kind: str, console: Console, again: str, source: dict[str, Any] | None = None) -> dict[str, str]:
    """Run or queue `todo` (the caller holds the submit lock); on SLURM, runs already queued are left alone.

    SLURM and local jobs run the grid's code snapshot: a new one of the checkout in `source` (what
    `grid submit` runs), else the one the grid already uses (`grid resume`). `again` is the command that
    continues the runs a Ctrl-C of a local grid stops.
    """
    check_trackers(settings.trackers, f"{grid.spec} [executor] trackers")
    active: dict[str, str] = {}  # every queued run of the grid: the runs to submit may depend on any of them
    if kind == "slurm":
        from robustmtl.grid.status import queued_runs

        active = queued_runs(grid)
    to_run = [r for r in todo if r.run_id not in active]
    done = sum(grid.run(r.run_id).done.exists() for r in runs)
    in_queue = f"{sum(r.run_id in active for r in runs)} queued or running, " if kind == "slurm" else ""
    console.print(f"[bold]{title}[/]: {len(runs)} runs, {done} already done, {in_queue}"
                  f"{len(to_run)} to run on [bold]{kind}[/] → {grid.root}")
    failed: dict[str, str] = {}
    if to_run and kind in ("slurm", "local"):
        snap = snapshot.freeze(grid, source) if source else snapshot.for_jobs(grid, new_code=False)
        console.print(f"code {snap.version}: jobs import the snapshot {snap.root}", highlight=False)
        settings = dataclasses.replace(settings, setup=(*settings.setup, *snap.setup_lines()))
    if kind == "slurm" and not to_run:
        console.print("nothing new to submit: every run is done, queued or running")
    elif kind == "slurm":
        from robustmtl.grid.slurm import submit_arrays

        with snapshot.without_slurm_environment():
            submit_arrays(grid, to_run, settings, console, active)
        console.print(f"check on them with `robustmtl grid status {grid.root}`", highlight=False)
    else:
        from robustmtl.grid.local import run_here

        failed = run_here(grid, to_run, settings, kind, console, again)
    return failed
