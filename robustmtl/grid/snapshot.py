"""A grid's jobs run the code that submitted them, and none of the submitting shell's SLURM job.

Code snapshot: `grid submit` copies the robustmtl package it runs (source and package data) to
GRID_DIR/code/<hash>/robustmtl, with SOURCE.json (git commit, dirty flag, content hash) and
diff.patch when the tree was dirty, and names it in GRID_DIR/code/CURRENT. Jobs put that directory
first on PYTHONPATH, so editing or checking out another branch in the checkout while the grid is
queued (or requeued days later) changes none of its runs. `grid resume` reuses CURRENT unless told
`--new-code`. The hash covers the source and its git provenance, so identical code shares one copy.

Environment: a grid submitted from inside a SLURM job (an interactive allocation, a driver job)
would hand that job's SLURM_* variables to sbatch, and through it to the new jobs, where stale ones
(SLURM_MEM_PER_NODE beside the new job's SLURM_MEM_PER_CPU, a CPU count) make srun refuse to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from robustmtl.errors import UserError
from robustmtl.layout import GridDir, atomic_write_text, write_json
from robustmtl.provenance import (
    CODE_ENV,
    DIFF_FILE,
    SOURCE_FILE,
    git_source,
    package_files,
    package_hash,
    package_root,
    version_string,
)

CODE_DIR = "code"
CURRENT = "CURRENT"
JOB_VARIABLE_PREFIXES = ("SLURM_", "SRUN_")  # what SLURM sets inside a job (SBATCH_* are the user's defaults)
KEEP_SLURM_VARIABLES = {"SLURM_CONF"}  # where the cluster's configuration is: the user's, not the job's


@dataclass(frozen=True)
class Snapshot:
    root: Path  # GRID_DIR/code/<hash>: holds robustmtl/, SOURCE.json and maybe diff.patch

    @property
    def source(self) -> dict[str, Any]:
        return json.loads((self.root / SOURCE_FILE).read_text())

    @property
    def version(self) -> str:
        s = self.source
        return version_string(s["commit"], s["dirty"], s["source_hash"])

    def setup_lines(self) -> tuple[str, ...]:
        """Shell lines that make a job import this snapshot: first on PYTHONPATH, and the job's working
        directory (which `python -m` puts before PYTHONPATH) kept off sys.path by PYTHONSAFEPATH."""
        where = shlex.quote(str(self.root.resolve()))  # jobs may start in another working directory
        return (f"export PYTHONPATH={where}${{PYTHONPATH:+:$PYTHONPATH}}", "export PYTHONSAFEPATH=1",
                f"export {CODE_ENV}={where}")


def code_dir(grid: GridDir) -> Path:
    return grid.root / CODE_DIR


def current(grid: GridDir) -> Snapshot | None:
    """The snapshot the grid's jobs use, if one was taken. A CURRENT that names no snapshot is an error,
    not "none yet": resuming would otherwise quietly run today's checkout instead of the grid's code."""
    pointer = code_dir(grid) / CURRENT
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {pointer} ({exc}); {_pointer_fix(grid)}") from None
    snap = Snapshot(code_dir(grid) / name) if name and "/" not in name and not name.startswith(".") else None
    if snap is None or not (snap.root / SOURCE_FILE).is_file():
        raise UserError(f"{pointer} names no snapshot ({name[:40]!r}); {_pointer_fix(grid)}")
    return snap


def _pointer_fix(grid: GridDir) -> str:
    """How to repair CURRENT: the snapshots there are (newest first), or taking a new one."""
    snaps = sorted((p for p in code_dir(grid).iterdir() if (p / SOURCE_FILE).is_file()),
                   key=lambda p: (p / SOURCE_FILE).stat().st_mtime, reverse=True)
    named = ", ".join(f"{p.name} ({_version_or_unreadable(Snapshot(p))})" for p in snaps[:5]) or "none"
    return (f"write the snapshot to run into it (the grid has: {named}), or run `grid resume {grid.root} "
            "--new-code` to run this checkout's code")


def _version_or_unreadable(snap: Snapshot) -> str:
    try:
        return snap.version
    except (OSError, ValueError, KeyError, TypeError):
        return "unreadable SOURCE.json"


def source_state() -> dict[str, Any]:
    """The git state of the checkout robustmtl runs from (for the dirty-tree warning and SOURCE.json)."""
    return git_source(package_root())


def dirty_message(source: dict[str, Any]) -> str | None:
    """The warning for a dirty tree, or None when it is clean (or not a git checkout)."""
    if not source["dirty"]:
        return None
    what = f"uncommitted changes on {source['commit'][:12]}"
    if source["untracked"]:
        what += f" and untracked package files ({', '.join(source['untracked'][:3])})"
    return f"{what}; the runs record the diff, but commit first for results you can trace to a commit"


def freeze(grid: GridDir, source: dict[str, Any]) -> Snapshot:
    """Copy the imported robustmtl package into the grid (once per distinct code) and make it CURRENT."""
    root = package_root()
    source_hash = package_hash(root)
    described = {"commit": source["commit"], "dirty": source["dirty"], "untracked": source["untracked"],
                 "source_hash": source_hash}
    key = hashlib.sha256(json.dumps({**described, "diff": source["diff"]}, sort_keys=True).encode()).hexdigest()[:16]
    snap = Snapshot(code_dir(grid) / key)
    try:
        if not (snap.root / SOURCE_FILE).exists():
            code_dir(grid).mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(dir=code_dir(grid), prefix=f".{key}-"))
            try:
                for rel in package_files(root):
                    (staging / "robustmtl" / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(root / rel, staging / "robustmtl" / rel)
                if source["diff"]:
                    atomic_write_text(staging / DIFF_FILE, source["diff"])
                write_json(staging / SOURCE_FILE, {**described, "snapshot": key})
                shutil.rmtree(snap.root, ignore_errors=True)  # a copy cut short before its SOURCE.json
                staging.rename(snap.root)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        atomic_write_text(code_dir(grid) / CURRENT, key + "\n")
    except OSError as exc:
        raise UserError(f"cannot write the code snapshot under {code_dir(grid)}: {exc.strerror or exc}; "
                        "nothing was submitted") from None
    return snap


def for_jobs(grid: GridDir, new_code: bool) -> Snapshot:
    """The grid's current snapshot, or a fresh one when there is none yet or `new_code` asks for it."""
    snap = None if new_code else current(grid)
    return snap or freeze(grid, source_state())


@contextlib.contextmanager
def without_slurm_environment() -> Iterator[None]:
    """Hide the SLURM_*/SRUN_* variables of a job we run inside from sbatch (and so from the jobs) while it submits."""
    saved = {k: v for k, v in os.environ.items()
             if k.startswith(JOB_VARIABLE_PREFIXES) and k not in KEEP_SLURM_VARIABLES}
    for key in saved:
        del os.environ[key]
    try:
        yield
    finally:
        os.environ.update(saved)


def renew(grid: GridDir, console: Console) -> Snapshot:
    """`grid resume --new-code`: make the checkout's code now the grid's snapshot."""
    from robustmtl.grid.lock import submit_lock

    if not grid.spec.exists():
        raise UserError(f"{grid.root} is not a grid directory (no {grid.spec.name}); start it with `grid submit`")
    source = source_state()
    message = dirty_message(source)
    if message:
        console.print(f"[yellow]warning:[/] the checkout robustmtl runs from has {message}", highlight=False)
    with submit_lock(grid.root):
        snap = freeze(grid, source)
    console.print(f"resumed runs will run code {snap.version} ({snap.root})", highlight=False)
    return snap
