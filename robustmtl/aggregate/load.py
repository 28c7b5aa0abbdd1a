"""Read GRID_DIR/runs/*/metrics.jsonl into flat tables, fast and tolerant of torn or corrupt lines.

Speed matters (a sweep is ~10^4 files, ~10^6 records), so records are parsed in bulk with pyarrow's
JSON reader on concatenated file bytes; only a file that breaks the bulk parse is re-read line by line.
A sentinel line after each file's bytes marks where the file ends, so every record is traced to its file
and a record that claims another run (a stray or copied line) cannot change that run's numbers.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from robustmtl.errors import UserError
from robustmtl.grid.spec import parse_toml

KEY = ["run_id", "epoch", "step", "split"]
METRICS = ["avg_acc", "worst_group_acc"]
RECORD_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("avg_acc", pa.float64()),
        ("worst_group_acc", pa.float64()),
        ("code", pa.string()),
    ]
)
_FILE = "_robustmtl_file"  # only on the sentinel line that ends each file's bytes: that file's index
_PARSE_SCHEMA = RECORD_SCHEMA.append(pa.field(_FILE, pa.int64()))
_PARSE = pa_json.ParseOptions(explicit_schema=_PARSE_SCHEMA, unexpected_field_behavior="ignore")
_READ = pa_json.ReadOptions(block_size=8 << 20)
_CHUNK_BYTES = 64 << 20  # parse in slices so peak memory stays ~2x a slice, not 2x the whole sweep
# Run-level fields repeated on every record; read once per run from its first valid line.
_META_TYPES: dict[str, type | tuple[type, ...]] = {
    "run_id": str,
    "setting_id": str,
    "method": str,
    "dataset": str,
    "model": str,
    "seed": int,
    "hparams": dict,
    "uses_train_groups": bool,
    "report": bool,
}
RUN_COLUMNS = [*_META_TYPES, "complete", "included", "run_dir", "grid_dir", "n_expected"]


@dataclass(frozen=True)
class RunCounts:
    """How many runs were seen and why some are not in the tables (reported so nothing vanishes silently)."""

    found: int
    complete: int
    excluded_incomplete: int
    helper: int  # report=False runs (e.g. JTT stage 1): used by other runs, never shown


@dataclass
class Loaded:
    """records: one row per (run_id, epoch, step, split), last duplicate wins. runs: one row per run."""

    records: pd.DataFrame
    runs: pd.DataFrame
    counts: RunCounts
    warnings: list[str]


@dataclass
class _RunFile:
    grid_dir: Path
    run_dir: str
    complete: bool
    data: bytes = b""
    meta: dict | None = None
    index: int = 0  # position among all scanned files, written on the file's sentinel line
    issues: list[str] = field(default_factory=list)

    @property
    def path(self) -> str:
        return os.path.join(self.run_dir, "metrics.jsonl")

    @property
    def run_id(self) -> str:
        """The run this file belongs to: its directory's name (a copy's records name another run)."""
        return os.path.basename(self.run_dir)

    @property
    def sentinel(self) -> bytes:
        return b'{"%s": %d}\n' % (_FILE.encode(), self.index)


def _iter_lines(data: bytes) -> Iterator[bytes]:
    """Lazy line iterator: the first valid line is usually line 1, so splitting the whole file is waste."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        yield data[start:end]
        start = end + 1


def _valid_meta(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    if not isinstance(rec, dict):
        return None
    for key, typ in _META_TYPES.items():
        value = rec.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            return None
    return {key: rec[key] for key in _META_TYPES}


def _first_meta(lines: Iterator[bytes], run_id: str) -> tuple[dict | None, str | None]:
    """The metadata on the first valid line of this run; failing that, the first other run id seen (the file
    is then a copy or backup of that run)."""
    other = None
    for line in lines:
        if line.strip() and (meta := _valid_meta(line)) is not None:
            if meta["run_id"] == run_id:
                return meta, None
            other = other or meta["run_id"]
    return None, other


def _valid_record(rec: object) -> bool:
    """The slow path's schema check: key fields typed as the bulk parser expects, both metrics numeric."""
    if not isinstance(rec, dict):
        return False
    ok_ints = all(isinstance(rec.get(k), int) and not isinstance(rec.get(k), bool) for k in ("epoch", "step"))
    ok_strs = isinstance(rec.get("run_id"), str) and isinstance(rec.get("split"), str)
    ok_nums = all(isinstance(rec.get(k), int | float) and not isinstance(rec.get(k), bool) for k in METRICS)
    ok_code = rec.get("code") is None or isinstance(rec.get("code"), str)
    return ok_ints and ok_strs and ok_nums and ok_code


def _drop_torn_tail(f: _RunFile) -> None:
    """A job killed mid-write leaves a last line without newline; keep it only if it is whole JSON."""
    data = f.data
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    try:
        json.loads(data[cut:])
        f.data = data + b"\n"
    except ValueError:
        f.data = data[:cut]
        f.issues.append("truncated last line dropped")


def _parse_slow(f: _RunFile) -> pa.Table:
    """Line-by-line fallback for a file the bulk parser rejected; counts the bad lines for the warning."""
    good: list[dict] = []
    bad: list[int] = []
    for lineno, line in enumerate(_iter_lines(f.data), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad.append(lineno)
            continue
        if _valid_record(rec):
            good.append({k: rec.get(k) for k in RECORD_SCHEMA.names})
        else:
            bad.append(lineno)
    if bad:
        f.issues.append(f"{len(bad)} corrupt line(s) skipped (first at line {bad[0]})")
    for rec in good:  # JSON ints in float columns: pyarrow will not cast them implicitly
        for k in METRICS:
            rec[k] = float(rec[k])
    return pa.Table.from_pylist([*good, {_FILE: f.index}], schema=_PARSE_SCHEMA)


def _parse(files: Sequence[_RunFile]) -> list[pa.Table]:
    """Bulk-parse; on failure bisect the files so one bad file costs ~2 extra passes, not a slow sweep."""
    if not files:
        return []
    buf = b"".join(part for f in files for part in (f.data, f.sentinel))
    try:
        return [pa_json.read_json(io.BytesIO(buf), read_options=_READ, parse_options=_PARSE)]
    except pa.ArrowException:
        if len(files) == 1:
            return [_parse_slow(files[0])]
        mid = len(files) // 2
        return _parse(files[:mid]) + _parse(files[mid:])


def _in_scope(f: _RunFile, include_running: bool) -> bool:
    return f.meta is not None and (f.complete or include_running)


def _scan_and_parse(grid_dirs: Sequence[Path], include_running: bool,
                    warnings: list[str]) -> tuple[list[_RunFile], pa.Table]:
    """Every run file, and the records of those in scope. Slices are parsed on a worker thread while the
    scan reads the next one: pyarrow releases the GIL, so reading and parsing overlap."""
    files: list[_RunFile] = []
    parsing: list[Future[list[pa.Table]]] = []
    chunk: list[_RunFile] = []
    size = 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        for f in (f for g in grid_dirs for f in _scan(g, include_running, warnings)):
            f.index = len(files)
            files.append(f)
            if _in_scope(f, include_running):
                chunk.append(f)
                size += len(f.data)
            if size >= _CHUNK_BYTES:
                parsing.append(pool.submit(_parse, chunk))
                chunk, size = [], 0
        parsing.append(pool.submit(_parse, chunk))
        tables = [table for job in parsing for table in job.result()]
    return files, pa.concat_tables(tables) if tables else _PARSE_SCHEMA.empty_table()


def _expected_seeds(grid_dir: Path, warnings: list[str]) -> int | None:
    """Seeds per setting the grid asked for, from grid.toml's top-level `seeds` list (None if unknown)."""
    spec = grid_dir / "grid.toml"
    if not spec.is_file():
        return None
    try:
        seeds = parse_toml(spec)[1].get("seeds")
    except UserError as exc:
        warnings.append(f"{exc}; expected seeds taken as the most any setting has")
        return None
    if isinstance(seeds, list) and seeds:
        return len(set(map(str, seeds)))
    return None


def _scan(grid_dir: Path, include_running: bool, warnings: list[str]) -> Iterator[_RunFile]:
    """Run directories in name order, with the files the aggregation will use read (metadata only for
    excluded runs). A directory whose records belong to another run (a copy, a backup) is left out."""
    if not grid_dir.exists():
        raise UserError(f"grid directory does not exist: {grid_dir}")
    if not grid_dir.is_dir():
        raise UserError(f"not a directory: {grid_dir}")
    runs_dir = grid_dir / "runs"
    entries = sorted(os.scandir(runs_dir), key=lambda e: e.name) if runs_dir.is_dir() else []
    found = False
    for entry in entries:
        if not entry.is_dir():
            continue
        # Plain strings and os calls: pathlib's per-path overhead is a second at 10,000 runs.
        complete = os.path.exists(os.path.join(entry.path, "DONE"))
        f = _RunFile(grid_dir, entry.path, complete)
        if not os.path.isfile(f.path):
            if complete:
                warnings.append(f"{entry.path}: has DONE but no metrics.jsonl; skipped")
            continue
        if complete or include_running:
            with open(f.path, "rb") as fh:
                f.data = fh.read()
            _drop_torn_tail(f)
            f.meta, other = _first_meta(_iter_lines(f.data), entry.name)
        else:
            with open(f.path, "rb") as fh:
                f.meta, other = _first_meta((line for line in fh if line.endswith(b"\n")), entry.name)
        if other is not None:
            warnings.append(f"{entry.path}: holds records of run {other}, not of run {entry.name} "
                            "(a copy or backup?); ignored")
            continue
        found = True
        yield f
    if not found:
        raise UserError(f"no runs found under {grid_dir}: expected {grid_dir}/runs/<run_id>/metrics.jsonl")


def _runs_frame(files: Sequence[_RunFile], include_running: bool, warnings: list[str]) -> pd.DataFrame:
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


def _own_records(table: pa.Table, files: Sequence[_RunFile], kept_dirs: set[str]) -> pd.DataFrame:
    """The records each kept file holds of its own run, vectorised. Records lacking a key field or a metric
    (they would overwrite a good record, or count as a code version) and records naming another run are
    dropped, each noted in its file's issues."""
    file_col = table[_FILE]
    file_of = pc.fill_null_backward(file_col)  # a file's records precede its sentinel
    incomplete = pc.is_null(table["run_id"])
    for name in [*KEY[1:], *METRICS]:
        incomplete = pc.or_kleene(incomplete, pc.is_null(table[name]))
    incomplete = pc.and_kleene(incomplete, pc.is_null(file_col))  # sentinel rows are not records
    owner = pa.array([f.run_id for f in files], pa.string()).take(file_of)
    foreign = pc.and_kleene(pc.invert(incomplete), pc.not_equal(table["run_id"], owner))
    per_file = np.bincount(pc.filter(file_of, incomplete).to_numpy(), minlength=len(files))
    for n, f in zip(per_file, files, strict=True):
        if n:
            f.issues.append(f"{n} incomplete record(s) skipped (without run_id, epoch, step, split, avg_acc "
                            "or worst_group_acc)")
    strays = table.select(["run_id"]).append_column("file", file_of).filter(foreign).to_pandas()
    for index, group in strays.groupby("file", sort=True):
        f = files[index]
        f.issues.append(f"{len(group)} record(s) of other runs ({', '.join(sorted(set(group['run_id'])))}) "
                        f"dropped: the file belongs to run {f.run_id}")
    kept = pa.array([f.run_dir in kept_dirs for f in files], pa.bool_()).take(file_of)
    keep = pc.and_kleene(kept, pc.invert(pc.or_kleene(pc.or_kleene(incomplete, foreign), pc.is_valid(file_col))))
    return table.filter(keep).drop_columns([_FILE]).to_pandas()


def load_runs(grid_dirs: Sequence[Path], include_running: bool = False) -> Loaded:
    """Scan every grid directory, parse the runs in scope, deduplicate records (last in file order wins)."""
    warnings: list[str] = []
    files, table = _scan_and_parse(grid_dirs, include_running, warnings)
    runs = _add_expected(_runs_frame(files, include_running, warnings), grid_dirs, warnings)
    records = _own_records(table, files, set(runs["run_dir"]))
    warnings += [f"{f.path}: {'; '.join(f.issues)}" for f in files if f.issues]
    records = records.drop_duplicates(KEY, keep="last").reset_index(drop=True)

    complete = sum(f.complete for f in files)
    counts = RunCounts(
        found=len(files),
        complete=complete,
        excluded_incomplete=0 if include_running else len(files) - complete,
        helper=int((~runs["report"]).sum()),
    )
    where = ", ".join(map(str, grid_dirs))
    if runs.empty:
        raise UserError(f"no metrics.jsonl under {where} holds a valid record; see the warnings")
    if complete == 0 and not include_running:
        raise UserError(
            f"no complete runs under {where} ({len(files)} without DONE); "
            "--include-running shows incomplete ones"
        )
    return Loaded(records, runs, counts, warnings)
