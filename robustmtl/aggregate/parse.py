"""Bytes of metrics.jsonl files → typed records, fast and tolerant of torn or corrupt lines.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from robustmtl import layout
from robustmtl.metrics import MECHANISM_FIELDS

KEY = ["run_id", "epoch", "step", "split"]
METRICS = ["avg_acc", "worst_group_acc"]
# Numbers only some records carry: worst-class accuracy (absent before it was recorded) and the mechanism fields
# (test records of block-structured data)
OPTIONAL_FLOATS = ("worst_class_acc", *MECHANISM_FIELDS)
RECORD_SCHEMA = pa.schema(
    [
        ("run_id", pa.string()),
        ("epoch", pa.int64()),
        ("step", pa.int64()),
        ("split", pa.string()),
        ("avg_acc", pa.float64()),
        ("worst_group_acc", pa.float64()),
        ("code", pa.string()),
        *((name, pa.float64()) for name in OPTIONAL_FLOATS),  # present on test records of block-structured data
    ]
)
_FILE = "_robustmtl_file"  # only on the sentinel line that ends each file's bytes: that file's index
PARSE_SCHEMA = RECORD_SCHEMA.append(pa.field(_FILE, pa.int64()))
_PARSE = pa_json.ParseOptions(explicit_schema=PARSE_SCHEMA, unexpected_field_behavior="ignore")
_READ = pa_json.ReadOptions(block_size=8 << 20)
# Run-level fields repeated on every record; read once per run from its first valid line.
META_TYPES: dict[str, type | tuple[type, ...]] = {
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

@dataclass
class RunFile:
    grid_dir: Path
    run_dir: str
    complete: bool
    data: bytes = b""
    meta: dict | None = None
    index: int = 0  # position among all scanned files, written on the file's sentinel line
    issues: list[str] = field(default_factory=list)
    own_id: str = ""  # the run it belongs to where its directory is not named by it (`robustmtl run --out`)

    @property
    def path(self) -> str:
        return os.path.join(self.run_dir, layout.METRICS)

    @property
    def run_id(self) -> str:
        """The run this file belongs to: its directory's name in a grid (a copy's records name another run)."""
        return self.own_id or os.path.basename(self.run_dir)

    @property
    def sentinel(self) -> bytes:
        return b'{"%s": %d}\n' % (_FILE.encode(), self.index)


def iter_lines(data: bytes) -> Iterator[bytes]:
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
    for key, typ in META_TYPES.items():
        value = rec.get(key)
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            return None
    return {key: rec[key] for key in META_TYPES}


def first_meta(lines: Iterator[bytes], run_id: str) -> tuple[dict | None, str | None]:
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


def drop_torn_tail(f: RunFile) -> None:
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


def parse_slow(f: RunFile) -> pa.Table:
    """Line-by-line fallback for a file the bulk parser rejected; counts the bad lines for the warning."""
    good: list[dict] = []
    bad: list[int] = []
    for lineno, line in enumerate(iter_lines(f.data), start=1):
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
        for k in (*METRICS, *OPTIONAL_FLOATS):
            if isinstance(rec[k], int | float) and not isinstance(rec[k], bool):
                rec[k] = float(rec[k])
            elif k not in METRICS:
                rec[k] = None
    return pa.Table.from_pylist([*good, {_FILE: f.index}], schema=PARSE_SCHEMA)


def parse_files(files: Sequence[RunFile]) -> list[pa.Table]:
    """Bulk-parse; on failure bisect the files so one bad file costs ~2 extra passes, not a slow sweep."""
    if not files:
        return []
    buf = b"".join(part for f in files for part in (f.data, f.sentinel))
    try:
        return [pa_json.read_json(io.BytesIO(buf), read_options=_READ, parse_options=_PARSE)]
    except pa.ArrowException:
        if len(files) == 1:
            return [parse_slow(files[0])]
        mid = len(files) // 2
        return parse_files(files[:mid]) + parse_files(files[mid:])


def own_records(table: pa.Table, files: Sequence[RunFile], kept_dirs: set[str]) -> pd.DataFrame:
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
