"""A run's config on disk: written once when the run is created, verified on every start."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from robustmtl.config import RunConfig, RunOptions, config_from_dict, options_from_dict
from robustmtl.errors import UserError
from robustmtl.layout import DONE_MARKER, RunDir, read_json, write_json


def prepare_run(run_dir: RunDir, cfg: RunConfig, opts: RunOptions) -> None:
    """Create the run directory, or check that an existing one holds this very config."""
    if run_dir.config.exists():
        existing, _ = load_run(run_dir)
        if existing.run_id != cfg.run_id:
            raise UserError(f"{run_dir.root} holds a different run ({existing.method} on {existing.dataset}, "
                            f"id {existing.run_id}); choose another --out directory")
    else:
        run_dir.root.mkdir(parents=True, exist_ok=True)
        write_json(run_dir.config, {"run_id": cfg.run_id, "setting_id": cfg.setting_id, **cfg.to_dict()})
    write_json(run_dir.options, dataclasses.asdict(opts))


def load_run(run_dir: RunDir) -> tuple[RunConfig, RunOptions]:
    """Read a run's config and options; refuse a config whose content does not match its id."""
    raw = read_json(run_dir.config, "run config")
    stored_id = raw.pop("run_id", None) if isinstance(raw, dict) else None
    raw.pop("setting_id", None)
    cfg = config_from_dict(raw, where=str(run_dir.config))
    if stored_id != cfg.run_id:
        raise UserError(f"{run_dir.config}: its content hashes to {cfg.run_id}, not its recorded id {stored_id} "
                        "(edited by hand, or written by another robustmtl version); delete the run to redo it")
    opts_raw = read_json(run_dir.options, "run options") if run_dir.options.exists() else {}
    return cfg, options_from_dict(opts_raw, where=str(run_dir.options))


def required_run_dirs(run_dir: RunDir, required: dict[str, RunConfig]) -> dict[str, RunDir]:
    """Required runs live beside the run that needs them (same grid's runs/ folder) and must be done."""
    dirs = {}
    for role, cfg in required.items():
        other = RunDir(Path(run_dir.root.parent) / cfg.run_id)
        if not other.done.exists():
            raise UserError(f"run {run_dir.root.name} needs its {role} run {cfg.run_id} to finish first "
                            f"(expected {other.done})")
        dirs[role] = other
    return dirs


@dataclass(frozen=True)
class RunCost:
    """What a finished run cost, as the training loop writes it into DONE (None: not recorded)."""

    wall_s: float | None
    gpu_hours: float | None
    peak_mem_mb: float | None


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def run_cost(run_dir: Path) -> RunCost | None:
    """The cost fields of a finished run's DONE summary (None when the run is not done or DONE is unreadable)."""
    try:
        summary = json.loads((run_dir / DONE_MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(summary, dict):
        return None
    return RunCost(_number(summary.get("wall_s")), _number(summary.get("gpu_hours")),
                   _number(summary.get("peak_mem_mb")))
