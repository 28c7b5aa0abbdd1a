"""What runs cost: wall time, GPU-hours and peak GPU memory per (dataset, method), from DONE summaries.

The training loop writes `wall_s` (all attempts, evaluation included), `gpu_hours` (wall time × GPUs
used; 0 on a CPU) and `peak_mem_mb` (torch.cuda.max_memory_allocated; null on a CPU) into every
run's DONE summary. A cell's cost counts every finished run of it, all hyperparameter settings and
seeds, because that is what the sweep paid; runs that other runs need (JTT's stage 1) are their own
rows, so the price of a two-stage method is visible in full. Wall time is in hours, GPU time in GPU-hours and
memory in GiB everywhere (aggregate/units.py).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from robustmtl.aggregate.names import REGISTRY_NAMES, DisplayNames, with_display_columns
from robustmtl.aggregate.units import GPU_TIME, MEMORY, WALL_TIME, column, hours
from robustmtl.render import Table, columns
from robustmtl.rundir import run_cost

WALL_PER_RUN = column("wall_time_per_run", WALL_TIME)
GPU_PER_RUN = column("gpu_time_per_run", GPU_TIME)
GPU_TOTAL = column("gpu_time_total", GPU_TIME)
PEAK_MEMORY = column("peak_mem", MEMORY)
COST_COLUMNS = ["dataset", "method", "runs", WALL_PER_RUN, GPU_PER_RUN, GPU_TOTAL, PEAK_MEMORY, "without_cost"]


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
            WALL_PER_RUN: hours(sum(walls) / len(walls)) if walls else math.nan,
            GPU_PER_RUN: sum(gpu) / len(gpu) if gpu else math.nan,
            GPU_TOTAL: sum(gpu) if gpu else math.nan,
            PEAK_MEMORY: max(peaks) / 1024 if peaks else math.nan,
            "without_cost": len(group) - len(walls),
        })
    return pd.DataFrame(rows, columns=COST_COLUMNS)


COST_HEADER = ("dataset", "method", "runs", f"wall time / run ({WALL_TIME.symbol})",
               f"GPU time / run ({GPU_TIME.symbol})", f"GPU time total ({GPU_TIME.symbol})",
               f"peak GPU mem ({MEMORY.symbol})")
COST_NOTE = ("every finished run of the cell, all settings and seeds; GPU time = wall time × GPUs (0 on a CPU); "
             "peak memory = torch.cuda.max_memory_allocated, the largest run")


def _number(value: float, spec: str = ".3g") -> str:
    return "\u2013" if math.isnan(value) else f"{value:{spec}}"


def cost_rows(costs: pd.DataFrame, names: DisplayNames = REGISTRY_NAMES) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for r in costs.to_dict("records"):
        runs = f"{r['runs']}" + (f" ({r['without_cost']} without cost)" if r["without_cost"] else "")
        rows.append((names.dataset(str(r["dataset"])), names.method(str(r["method"])), runs, _number(r[WALL_PER_RUN]),
                     _number(r[GPU_PER_RUN]), _number(r[GPU_TOTAL]), _number(r[PEAK_MEMORY], ".2f")))
    return rows


def cost_report(costs: pd.DataFrame, names: DisplayNames = REGISTRY_NAMES) -> Table:
    """The cost table (a cost_table frame) to print; its CSV has the units in the column names and the display
    names beside the keys."""
    return Table("Cost per cell", [*columns(COST_HEADER[:2], "left"), *columns(COST_HEADER[2:], "right")],
                 cost_rows(costs, names), notes=[COST_NOTE[0].upper() + COST_NOTE[1:] + "."], keep=2,
                 label="tab:cost", data=with_display_columns(costs, names))
