"""What runs cost: wall time, GPU-hours and peak GPU memory per (dataset, method), from DONE summaries.

The training loop writes `wall_s` (all attempts, evaluation included), `gpu_hours` (wall time × GPUs
used; 0 on a CPU) and `peak_mem_mb` (torch.cuda.max_memory_allocated; null on a CPU) into every
run's DONE summary. A cell's cost counts every finished run of it, all hyperparameter settings and
seeds, because that is what the sweep paid; runs that other runs need (JTT's stage 1) are their own
rows, so the price of a two-stage method is visible in full.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.table import Table
from rich.text import Text

from robustmtl.rundir import run_cost

COST_COLUMNS = ["dataset", "method", "runs", "wall_h_per_run", "gpu_h_per_run", "gpu_h_total", "peak_mem_gib",
                "without_cost"]


def cost_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, method) over the finished runs in `runs` (a Loaded.runs frame).

    `without_cost` counts finished runs whose DONE has no cost fields (written before robustmtl
    recorded them); they are left out of the means rather than counted as free.
    """
    rows = []
    finished = runs[runs["complete"]]
    for (dataset, method), group in finished.groupby(["dataset", "method"], sort=True):
        costs = [c for c in (run_cost(Path(d)) for d in group["run_dir"]) if c is not None]
        walls = [c.wall_s for c in costs if c.wall_s is not None]
        gpu = [c.gpu_hours for c in costs if c.gpu_hours is not None]
        peaks = [c.peak_mem_mb for c in costs if c.peak_mem_mb is not None]
        rows.append({
            "dataset": dataset, "method": method, "runs": len(group),
            "wall_h_per_run": sum(walls) / len(walls) / 3600 if walls else math.nan,
            "gpu_h_per_run": sum(gpu) / len(gpu) if gpu else math.nan,
            "gpu_h_total": sum(gpu) if gpu else math.nan,
            "peak_mem_gib": max(peaks) / 1024 if peaks else math.nan,
            "without_cost": len(group) - len(walls),
        })
    return pd.DataFrame(rows, columns=COST_COLUMNS)


COST_HEADER = ("dataset", "method", "runs", "wall time / run", "GPU-h / run", "GPU-h total", "peak GPU mem")
COST_NOTE = ("every finished run of the cell, all settings and seeds; GPU-h = wall time × GPUs (0 on a CPU); "
             "peak memory = torch.cuda.max_memory_allocated, the largest run")


def _duration(hours: float) -> str:
    if math.isnan(hours):
        return "\u2013"
    seconds = hours * 3600
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{hours:.1f} h"


def _gpu_hours(value: float) -> str:
    return "\u2013" if math.isnan(value) else f"{value:.3g}"


def cost_rows(costs: pd.DataFrame) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in costs.itertuples():
        runs = f"{r.runs}" + (f" ({r.without_cost} without cost)" if r.without_cost else "")
        peak = "\u2013" if math.isnan(r.peak_mem_gib) else f"{r.peak_mem_gib:.2f} GiB"
        rows.append((str(r.dataset), str(r.method), runs, _duration(r.wall_h_per_run), _gpu_hours(r.gpu_h_per_run),
                     _gpu_hours(r.gpu_h_total), peak))
    return rows


def render_cost_rich(costs: pd.DataFrame) -> Table:
    table = Table(title=Text("Cost per cell"), caption=Text(COST_NOTE))
    for name in COST_HEADER:
        table.add_column(name, justify="left" if name in ("dataset", "method") else "right", overflow="fold")
    for row in cost_rows(costs):
        table.add_row(*map(Text, row))
    return table


def cost_to_markdown(costs: pd.DataFrame) -> str:
    lines = ["Cost per cell:", "", "| " + " | ".join(COST_HEADER) + " |", "|:--|:--" + "|--:" * 5 + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|").replace("_", "\\_") for c in row) + " |"
              for row in cost_rows(costs)]
    return "\n".join([*lines, "", COST_NOTE[0].upper() + COST_NOTE[1:] + "."]) + "\n"
