"""GRID_DIR/manifest.jsonl: which scheduler job runs which run (append-only; the last entry wins)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from robustmtl.errors import UserError
from robustmtl.layout import GridDir, append_durably, read_jsonl


def manifest_path(grid_root: Path) -> Path:
    return GridDir(grid_root).manifest


def append_entries(grid_root: Path, entries: list[dict[str, Any]]) -> None:
    if not entries:
        return
    now = time.time()
    text = "".join(json.dumps({"submitted_at": now, **e}, sort_keys=True) + "\n" for e in entries)
    append_durably(manifest_path(grid_root), text)


def latest_entries(grid_root: Path) -> dict[str, dict[str, Any]]:
    """run_id → its newest manifest entry; torn, corrupt, undecodable or ill-typed lines are skipped."""
    path = manifest_path(grid_root)
    try:
        entries = read_jsonl(path, well_formed)
    except OSError as exc:
        raise UserError(f"cannot read the grid's manifest {path}: {exc.strerror or exc}; move it aside (it "
                        "only records which SLURM job runs which run)") from None
    return {entry["run_id"]: entry for entry in entries}


def well_formed(entry: Any) -> bool:
    """An entry whose fields have the types the readers rely on (anything else is damage, not data)."""
    if not isinstance(entry, dict) or not isinstance(entry.get("run_id"), str):
        return False
    job_id, submitted, pack = entry.get("job_id"), entry.get("submitted_at", 0), entry.get("pack", [])
    return ((job_id is None or _is(job_id, str | int)) and _is(submitted, int | float)
            and isinstance(pack, list) and all(isinstance(r, str) for r in pack)
            and isinstance(entry.get("not_submitted", ""), str))


def _is(value: Any, types: Any) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)
