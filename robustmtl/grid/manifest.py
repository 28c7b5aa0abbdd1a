"""GRID_DIR/manifest.jsonl: which scheduler job runs which run (append-only; the last entry wins)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from robustmtl.train.attempts import append_durably


def manifest_path(grid_root: Path) -> Path:
    return grid_root / "manifest.jsonl"


def append_entries(grid_root: Path, entries: list[dict[str, Any]]) -> None:
    if not entries:
        return
    now = time.time()
    text = "".join(json.dumps({"submitted_at": now, **e}, sort_keys=True) + "\n" for e in entries)
    append_durably(manifest_path(grid_root), text)


def latest_entries(grid_root: Path) -> dict[str, dict[str, Any]]:
    """run_id → its newest manifest entry; torn or corrupt lines are skipped."""
    latest: dict[str, dict[str, Any]] = {}
    try:
        lines = manifest_path(grid_root).read_text().splitlines()
    except FileNotFoundError:
        return latest
    for line in lines:
        try:
            entry = json.loads(line)
            latest[entry["run_id"]] = entry
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return latest
