"""Read GRID_DIR/runs/*/metrics.jsonl into flat tables: which run directories count, and their records (a
folder of results that is no grid directory, such as `robustmtl run`'s, is read by layout.result_run_dirs).

The scan decides which files the tables use (DONE runs, or all with --include-running; a copy of another
run's directory and a diverged run, whose loss became non-finite, are left out) and reads them; parse.py
turns their bytes into records, on a worker thread while the scan reads on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from robustmtl.aggregate.parse import (
    KEY,
    META_TYPES,
    PARSE_SCHEMA,
    RunFile,
    drop_torn_tail,
    first_meta,
    iter_lines,
    own_records,
    parse_files,
)
from robustmtl.errors import UserError
from robustmtl.grid.coverage import end_task_seeds, read_plan
from robustmtl.layout import DONE_MARKER, FAILED_MARKER, GridDir, RunDir, diverged_step, result_run_dirs

_CHUNK_BYTES = 64 << 20  # parse in slices so peak memory stays ~2x a slice, not 2x the whole sweep
RUN_COLUMNS = [*META_TYPES, "complete", "included", "run_dir", "grid_dir", "n_expected"]


@dataclass(frozen=True)
class RunCounts:
    """How many runs were seen and why some are not in the tables (reported so nothing vanishes silently)."""

    found: int
    complete: int
    excluded_incomplete: int
    helper: int  # report=False runs (e.g. JTT stage 1): used by other runs, never shown
    excluded_diverged: int = 0  # FAILED with a non-finite loss: never in a table, not even with --include-running


@dataclass
class Loaded:
    """records: one row per (run_id, epoch, step, split), last duplicate wins. runs: one row per run."""

    records: pd.DataFrame
    runs: pd.DataFrame
    counts: RunCounts
    warnings: list[str]


def _in_scope(f: RunFile, include_running: bool) -> bool:
    return f.meta is not None and (f.complete or include_running)


def _scan_and_parse(grid_dirs: Sequence[Path], include_running: bool, warnings: list[str],
                    diverged: list[str]) -> tuple[list[RunFile], pa.Table]:
    """Every run file, and the records of those in scope. Slices are parsed on a worker thread while the
    scan reads the next one: pyarrow releases the GIL, so reading and parsing overlap."""
    files: list[RunFile] = []
    parsing: list[Future[list[pa.Table]]] = []
    chunk: list[RunFile] = []
    size = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        for f in (f for g in grid_dirs for f in _scan(g, include_running, warnings, diverged)):
            f.index = len(files)
            files.append(f)
            if _in_scope(f, include_running):
                chunk.append(f)
                size += len(f.data)
            if size >= _CHUNK_BYTES:
                parsing.append(pool.submit(parse_files, chunk))
                chunk, size = [], 0
        parsing.append(pool.submit(parse_files, chunk))
        tables = [table for job in parsing for table in job.result()]
    return files, pa.concat_tables(tables) if tables else PARSE_SCHEMA.empty_table()


def _expected_seeds(grid_dir: Path, warnings: list[str]) -> int | None:
    """Seeds per setting the grid asked for, from its plan's end-task runs (None if it has none)."""
    grid = GridDir(grid_dir)
    plan = read_plan(grid)
    if plan is None:
        if grid.plan.exists():
            warnings.append(f"{grid.plan}: unreadable; expected seeds taken as the most any setting has")
        return None
    return len(end_task_seeds(plan)) or None


def _scan(grid_dir: Path, include_running: bool, warnings: list[str], diverged: list[str]) -> Iterator[RunFile]:
    """Run directories in name order, with the files the aggregation will use read (metadata only for
    excluded runs). A directory whose records belong to another run (a copy, a backup) is left out, and so
    is a diverged run (its name added to `diverged`): its numbers come from a model gone NaN."""
    if not grid_dir.exists():
        raise UserError(f"grid directory does not exist: {grid_dir}")
    if not grid_dir.is_dir():
        raise UserError(f"not a directory: {grid_dir}")
    found = False
    for run_id, run_dir in result_run_dirs(grid_dir):
        # Plain strings and os calls: pathlib's per-path overhead is a second at 10,000 runs.
        complete = os.path.exists(os.path.join(run_dir, DONE_MARKER))
        if not complete and os.path.exists(os.path.join(run_dir, FAILED_MARKER)) \
                and diverged_step(RunDir(Path(run_dir))) is not None:
            diverged.append(run_id)
            found = True
            continue
        f = RunFile(grid_dir, run_dir, complete, own_id=run_id)
        if not os.path.isfile(f.path):
            if complete:
                warnings.append(f"{run_dir}: has DONE but no metrics.jsonl; skipped")
            continue
        if complete or include_running:
            with open(f.path, "rb") as fh:
                f.data = fh.read()
            drop_torn_tail(f)
            f.meta, other = first_meta(iter_lines(f.data), run_id)
        else:
            with open(f.path, "rb") as fh:
                f.meta, other = first_meta((line for line in fh if line.endswith(b"\n")), run_id)
        if other is not None:
            warnings.append(f"{run_dir}: holds records of run {other}, not of run {run_id} "
                            "(a copy or backup?); ignored")
            continue
        found = True
        yield f
    if not found:
        raise UserError(f"no runs found under {grid_dir}: expected a grid directory ({grid_dir}/runs/<run_id>/"
                        "metrics.jsonl), a run directory, or a folder of run directories (`robustmtl run --out`)")


def _runs_frame(files: Sequence[RunFile], include_running: bool, warnings: list[str]) -> pd.DataFrame:
    """One row per run; a run id found in several grid directories keeps the last (its records too)."""
    rows = []
    for f in files:
        if f.meta is None:
            f.issues.append("no valid record; run skipped")
            continue
        rows.append(
            {
                **f.meta,
                "complete": f.complete,
                "included": f.complete or include_running,
                "run_dir": f.run_dir,
                "grid_dir": str(f.grid_dir),
            }
        )
    runs = pd.DataFrame(rows, columns=RUN_COLUMNS[:-1])
    runs = runs.astype(
        {"seed": "int64", "uses_train_groups": bool, "report": bool, "complete": bool, "included": bool}
    )
    dup = runs[runs.duplicated("run_id", keep="last")]
    for run_id, run_dir in zip(dup["run_id"], dup["run_dir"], strict=True):
        warnings.append(f"run {run_id} found twice; ignoring the copy in {run_dir}")
    return runs.drop_duplicates("run_id", keep="last").reset_index(drop=True)


def _add_expected(runs: pd.DataFrame, grid_dirs: Sequence[Path], warnings: list[str]) -> pd.DataFrame:
    """Expected seeds per run: from its grid.toml, else the most seeds any setting of that grid has."""
    per_setting = runs[runs["report"]].groupby(["grid_dir", "setting_id"])["seed"].nunique()
    seen = per_setting.groupby(level="grid_dir").max().to_dict() if len(per_setting) else {}
    expected = {}
    for g in grid_dirs:
        from_spec = _expected_seeds(g, warnings)
        expected[str(g)] = from_spec if from_spec is not None else int(seen.get(str(g), 1))
    runs["n_expected"] = runs["grid_dir"].map(expected).astype(int)
    return runs


def load_runs(grid_dirs: Sequence[Path], include_running: bool = False) -> Loaded:
    """Scan every grid directory, parse the runs in scope, deduplicate records (last in file order wins)."""
    warnings: list[str] = []
    diverged: list[str] = []
    files, table = _scan_and_parse(grid_dirs, include_running, warnings, diverged)
    where = ", ".join(map(str, grid_dirs))
    if diverged and not files:
        raise UserError(f"every run under {where} diverged ({len(diverged)} FAILED with a non-finite loss; "
                        "`robustmtl grid status` names the step): nothing to tabulate")
    if diverged:
        warnings.append(diverged_note(diverged))
    runs = _add_expected(_runs_frame(files, include_running, warnings), grid_dirs, warnings)
    records = own_records(table, files, set(runs["run_dir"]))
    warnings += [f"{f.path}: {'; '.join(f.issues)}" for f in files if f.issues]
    records = records.drop_duplicates(KEY, keep="last").reset_index(drop=True)

    complete = sum(f.complete for f in files)
    counts = RunCounts(
        found=len(files) + len(diverged),
        complete=complete,
        excluded_incomplete=0 if include_running else len(files) - complete,
        helper=int((~runs["report"]).sum()),
        excluded_diverged=len(diverged),
    )
    if runs.empty:
        raise UserError(f"no metrics.jsonl under {where} holds a valid record; see the warnings")
    if complete == 0 and not include_running:
        raise UserError(
            f"no complete runs under {where} ({len(files)} without DONE"
            + (f", {len(diverged)} diverged" if diverged else "") + "); "
            "--include-running shows incomplete ones"
        )
    return Loaded(records, runs, counts, warnings)


DIVERGED_SHOWN = 3  # run ids a diverged note names before "..."


def diverged_note(run_ids: Sequence[str]) -> str:
    """The one line that says which diverged runs the tables leave out, and why."""
    shown = ", ".join(run_ids[:DIVERGED_SHOWN]) + (", ..." if len(run_ids) > DIVERGED_SHOWN else "")
    return (f"{len(run_ids)} diverged run(s) left out ({shown}): their loss became non-finite, so they enter "
            "no table, not even with --include-running (`robustmtl grid status` names the step)")
