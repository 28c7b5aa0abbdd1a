"""Where a grid's and a run's files live, atomic writes, and run state read from markers.

The file names are the constants below; what each file holds is described once, in docs/run-layout.md.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from robustmtl.errors import UserError

RUN_ID = re.compile(r"^[0-9a-f]{12}$")
CONFIG = "config.json"
DONE_MARKER = "DONE"
FAILED_MARKER = "FAILED"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
ATTEMPTS = "attempts.jsonl"
VAL_CORRECT = "val_correct.jsonl"
VAL_GROUPS = "val_groups.json"
PRETRAINED_ENCODER = "encoder.pt"
HEAD = "head.pt"  # the classification head's final weights, beside encoder.pt when a run keeps its model
EVAL_DIR = "eval"  # RUN/eval/<dataset>/: `robustmtl eval`'s records of the run's kept model, by default
EVAL_TARGET = "eval.json"  # in an evaluation folder: the run and the data it evaluated (its marker)
OPTIONS = "options.json"
PROVENANCE = "provenance.jsonl"
TRAIN_LOCK = ".train.lock"
TRACKERS_FILE = "trackers.json"
ERROR_SET = "error_set.json"  # JTT stage 1's artifact
DIVERGED_STEP = "diverged_step"  # FAILED marker and `failed` event of a diverged run: its first non-finite step
DEFAULT_OUT = Path("runs")  # where a grid's directory (runs/NAME) and single runs (runs/single) go by default
# a grid directory
GRID_SPEC = "grid.toml"
PLAN = "plan.jsonl"
MANIFEST = "manifest.jsonl"
SUBMIT_LOCK = ".submit.lock"
RUNS = "runs"
SUBMITIT = "submitit"
DROPPED = "dropped"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write-temp, fsync, rename: a reader sees the old file or the new one, never half of one. `write`
    streams into the temp file itself, so a large state is never held a second time in memory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise corrupt(what, exc.msg if hasattr(exc, "msg") else str(exc), path) from None


def corrupt(what: str, why: str, path: Path) -> UserError:
    """The one-line error for a run file that cannot be what it claims to be."""
    return UserError(f"{what} is corrupt ({why}): {path}; delete the run directory to rerun it")


def claim_dir(path: Path, what: str, marker: str, extra: Collection[str] = ()) -> None:
    """Refuse an output folder that is a file, lies under one, or holds files but not `marker` (nor only
    `extra` ones): writing there would fail half-way or mix our files into a folder that is not ours."""
    try:
        names = set(os.listdir(path))
    except FileNotFoundError:
        names = set()
    except NotADirectoryError:
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise UserError(f"{what} {path}: {blocker} is a file, not a folder; choose another path") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if names - set(extra) and marker not in names:
        raise UserError(f"{what} {path} already holds other files and no {marker}; choose a new or empty folder")


def make_dir(path: Path, what: str) -> None:
    """Create the folder (and its parents), as one line when that is not possible."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {what} {path}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG

    @property
    def options(self) -> Path:
        return self.root / OPTIONS

    @property
    def metrics(self) -> Path:
        return self.root / METRICS

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT

    @property
    def done(self) -> Path:
        return self.root / DONE_MARKER

    @property
    def failed(self) -> Path:
        return self.root / FAILED_MARKER

    @property
    def attempts(self) -> Path:
        return self.root / ATTEMPTS

    def artifact(self, name: str) -> Path:
        """A method's own output file (e.g. JTT's error set)."""
        return self.root / name

    def clear_stale_temps(self) -> None:
        """Remove temp files of atomic writes that a killed process never renamed."""
        for pattern in (".*.tmp", "*/.*.tmp"):  # the run's own files and those of its folders (predictions/)
            for tmp in self.root.glob(pattern):
                tmp.unlink(missing_ok=True)

    def listing(self) -> frozenset[str]:
        """The names in the run directory: one system call answers every marker question."""
        try:
            return frozenset(os.listdir(self.root))
        except FileNotFoundError:
            return frozenset()


def marker_state(names: frozenset[str]) -> str:
    """done | failed | started | new, from a run directory's listing."""
    if DONE_MARKER in names:
        return "done"
    if FAILED_MARKER in names:
        return "failed"
    if CHECKPOINT in names or METRICS in names:
        return "started"
    return "new"


@dataclass(frozen=True)
class GridDir:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / GRID_SPEC

    @property
    def plan(self) -> Path:
        return self.root / PLAN

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def runs(self) -> Path:
        return self.root / RUNS

    @property
    def submitit(self) -> Path:
        return self.root / SUBMITIT

    @property
    def dropped(self) -> Path:
        """Where `grid drop` moves the runs it takes out of the grid."""
        return self.root / DROPPED

    def run(self, run_id: str) -> RunDir:
        if not RUN_ID.match(run_id):
            raise UserError(f"{run_id!r} is not a run id (12 lowercase hex characters)")
        return RunDir(self.runs / run_id)

    def run_ids(self) -> list[str]:
        if not self.runs.is_dir():
            return []
        return sorted(p.name for p in self.runs.iterdir() if RUN_ID.match(p.name))

    def done_run_ids(self) -> set[str]:
        """Runs with a DONE marker: one listing and one stat per run directory, in plain strings (a grid
        directory may hold 100,000 runs, where pathlib's per-path overhead alone takes seconds)."""
        try:
            names = os.listdir(self.runs)
        except FileNotFoundError:
            return set()
        base = str(self.runs)
        return {n for n in names if RUN_ID.match(n) and os.path.exists(os.path.join(base, n, DONE_MARKER))}


def result_run_dirs(root: Path) -> list[tuple[str, str]]:
    """(run id, path) of the run directories under a folder of results, in path order: a grid directory's
    runs/<run_id>, else `root` itself when it is a run directory, else its subfolders that are (what
    `robustmtl run --out` writes: runs/single/<run_id>, or any names). A grid's folder name is its run id;
    elsewhere the run's config.json says it. Plain os calls: a grid may hold 100,000 runs."""
    runs = os.path.join(root, RUNS)
    if os.path.isdir(runs):
        return [(e.name, e.path) for e in sorted(os.scandir(runs), key=lambda e: e.name) if e.is_dir()]
    if os.path.isfile(os.path.join(root, CONFIG)):
        return [(_config_run_id(str(root)), str(root))]
    found = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name) if os.path.isdir(root) else []:
        if entry.is_dir() and os.path.isfile(os.path.join(entry.path, CONFIG)):
            found.append((_config_run_id(entry.path), entry.path))
    return found


def _config_run_id(run_dir: str) -> str:
    """The run id a run directory's config.json records (its folder name when unreadable)."""
    try:
        with open(os.path.join(run_dir, CONFIG), "rb") as f:
            recorded = json.load(f).get("run_id")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded if isinstance(recorded, str) else os.path.basename(run_dir)


def append_durably(path: Path, text: str) -> None:
    """Append whole lines and fsync; a line torn by an earlier kill is closed first so this one stays whole."""
    with open(path, "a+b") as f:
        if f.seek(0, os.SEEK_END):
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                text = "\n" + text
        f.write(text.encode())
        f.flush()
        os.fsync(f.fileno())


def failure_line(rd: RunDir) -> str:
    """The error of a FAILED marker, with why it was not retried when the job gave up on it."""
    try:
        failure = json.loads(rd.failed.read_bytes())
    except (OSError, ValueError):  # ValueError: not JSON, or not UTF-8
        failure = None
    error = failure.get("error") if isinstance(failure, dict) else None
    lines = error.strip().splitlines() if isinstance(error, str) else []
    if not lines:
        return "unknown error (FAILED marker unreadable)"
    reason = failure.get("reason")
    return f"{lines[-1]} ({reason})" if isinstance(reason, str) and reason else lines[-1]


def diverged_step(rd: RunDir) -> int | None:
    """The first non-finite step of a run that failed by diverging (None: not failed, or failed otherwise)."""
    try:
        failure = json.loads(rd.failed.read_bytes())
    except (OSError, ValueError):
        return None
    step = failure.get(DIVERGED_STEP) if isinstance(failure, dict) else None
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def is_object(entry: Any) -> bool:
    return isinstance(entry, dict)


def read_jsonl(path: Path, keep: Callable[[Any], bool] = is_object) -> list[Any]:
    """The values of an append-only JSON-lines log, oldest first: torn, corrupt and undecodable lines, and
    values `keep` rejects (by default anything but an object), are skipped; a missing file is empty (other
    read errors are raised)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in data.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:  # JSONDecodeError, or bytes that are not UTF-8
            continue
        if keep(entry):
            entries.append(entry)
    return entries
