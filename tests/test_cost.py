"""Cost visible to users: per-run cost fields, `aggregate --show-cost`, and the dry-run estimate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from robustmtl.aggregate.cost import cost_table
from robustmtl.grid.estimate import estimate
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import GridDir
from tests.conftest import tiny_grid, write_spec


def _runs_frame(tmp_path: Path, dones: dict[str, object]) -> pd.DataFrame:
    """A Loaded.runs-like frame of finished runs, one per DONE content (a dict, or raw text for a corrupt one)."""
    rows = []
    for name, done in dones.items():
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "DONE").write_text(done if isinstance(done, str) else json.dumps(done))
        rows.append({"dataset": "d", "method": "m", "run_dir": str(run_dir), "complete": True})
    return pd.DataFrame(rows)


def test_cost_table_means_over_runs_that_recorded_cost_and_counts_the_rest(tmp_path: Path) -> None:
    runs = _runs_frame(tmp_path, {
        "a": {"wall_s": 3600, "gpu_hours": 1.0, "peak_mem_mb": 1024},
        "b": {"wall_s": 7200, "gpu_hours": 2.0, "peak_mem_mb": 2048},
        "old": {"time_s": 10.0},
        "corrupt": "{not json",
    })
    row = cost_table(runs).iloc[0]
    assert row["runs"] == 4 and row["without_cost"] == 2
    assert row["wall_time_per_run_h"] == pytest.approx(1.5)
    assert row["gpu_time_per_run_gpu_h"] == pytest.approx(1.5) and row["gpu_time_total_gpu_h"] == pytest.approx(3.0)
    assert row["peak_mem_gib"] == pytest.approx(2.0)


def test_cost_table_cpu_runs_have_zero_gpu_hours_and_no_peak_memory(tmp_path: Path) -> None:
    runs = _runs_frame(tmp_path, {"a": {"wall_s": 30.0, "gpu_hours": 0.0, "peak_mem_mb": None}})
    row = cost_table(runs).iloc[0]
    assert row["gpu_time_total_gpu_h"] == 0.0 and math.isnan(row["peak_mem_gib"])


def test_dry_run_estimate_scales_finished_runs_to_the_runs_left(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm", "mtl"], [0, 1, 2]))
    runs = expand(load_spec(spec))
    grid = GridDir(tmp_path / "out")
    erm = [r for r in runs if r.config.method == "erm"]
    for run, hours in zip(erm[:2], (1.0, 3.0), strict=True):
        run_dir = grid.run(run.run_id)
        run_dir.root.mkdir(parents=True)
        run_dir.done.write_text(json.dumps({"wall_s": hours * 3600, "gpu_hours": hours, "peak_mem_mb": 10.0}))
    cells = {c.method: c for c in estimate(grid, runs)}
    assert cells["erm"].to_do == 1 and cells["erm"].sampled == 2
    assert cells["erm"].gpu_h == pytest.approx(2.0) and cells["erm"].wall_h == pytest.approx(2.0)
    assert cells["mtl"].to_do == 3 and cells["mtl"].sampled == 0 and math.isnan(cells["mtl"].gpu_h)


def test_dry_run_estimate_prices_epochs_and_ignores_cpu_runs_for_gpu_hours(tmp_path: Path) -> None:
    """Runs still to do are twice as long as the finished ones; a CPU debug run must not make GPUs look free."""
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0, 1], sweeps={"erm": {"epochs": [2, 4]}}))
    runs = expand(load_spec(spec))
    grid = GridDir(tmp_path / "out")
    short = [r for r in runs if r.config.train.epochs == 2]
    for run, (wall_h, gpu_h) in zip(short, ((1.0, 1.0), (0.1, 0.0)), strict=True):
        run_dir = grid.run(run.run_id)
        run_dir.root.mkdir(parents=True)
        run_dir.done.write_text(json.dumps({"wall_s": wall_h * 3600, "gpu_hours": gpu_h, "peak_mem_mb": None}))
    (cell,) = estimate(grid, runs)
    assert (cell.to_do, cell.sampled) == (2, 2)
    assert cell.gpu_h == pytest.approx(1.0 / 2 * 8)  # the GPU run's rate per epoch × 2 runs × 4 epochs
    assert cell.wall_h == pytest.approx((0.5 + 0.05) / 2 * 8)


def test_aggregate_show_cost_reports_every_finished_run_including_helper_runs(tmp_path: Path, cli) -> None:
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm", "jtt"], [0, 1], {"jtt_epochs": 1}))
    cli("grid", "submit", spec, "--out", tmp_path / "out")
    out = tmp_path / "t.md"
    cli("aggregate", tmp_path / "out", "--show-cost", "--output", out, "--quiet")
    cost = out.read_text().split("Cost per cell:")[1]
    assert "| wall time / run (h) | GPU time / run (GPU-h) | GPU time total (GPU-h) | peak GPU mem (GiB) |" in cost
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in cost.splitlines() if line.startswith("| Synthetic")}
    assert set(rows) == {"ERM", "JTT", "JTT stage 1"}  # display names, like the main table
    assert rows["ERM"][2] == "2" and rows["JTT stage 1"][2] == "2"  # stage 1 runs once per seed
    for row in rows.values():
        assert 0 < float(row[3]) < 1  # wall time recorded by the loop, in hours: a tiny run takes seconds
        assert row[5] == "0"  # GPU-hours on a CPU
    cli("aggregate", tmp_path / "out", "--show-cost", "--output", tmp_path / "t.csv", "--quiet")
    csv = pd.read_csv(tmp_path / "t.cost.csv")
    assert list(csv.columns[:4]) == ["dataset", "dataset_display", "method", "method_display"]
    assert set(zip(csv["method"], csv["method_display"], strict=True)) == {("erm", "ERM"), ("jtt", "JTT"),
                                                                           ("jtt_stage1", "JTT stage 1")}
    hours = {m: float(h) for m, h in zip(csv["method"], csv["wall_time_per_run_h"], strict=True)}
    assert all(f"{hours[m]:.3g}" == rows[n][3] for m, n in (("erm", "ERM"), ("jtt", "JTT")))  # one unit


def test_dry_run_prints_the_estimate_from_the_grid_directory(tmp_path: Path, cli) -> None:
    done = write_spec(tmp_path / "a.toml", tiny_grid("g", ["erm"], [0, 1]))
    cli("grid", "submit", done, "--out", tmp_path / "out")
    more = write_spec(tmp_path / "b.toml", tiny_grid("g", ["erm"], [0, 1, 2, 3, 4]))
    output = cli("grid", "submit", more, "--out", tmp_path / "out", "--dry-run").output
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in output.splitlines() if "│" in line]
    cells = next(r for r in rows if r and r[0] == "synthetic")  # the estimate table leads with the dataset
    assert cells[:4] == ["synthetic", "erm", "3", "2"]  # 3 runs to do, estimated from the 2 finished
    assert cells[4] == "0" and cells[5] == "0"  # CPU runs cost no GPU-hours
    assert float(cells[6]) > 0  # but they take wall time
    first = cli("grid", "submit", more, "--out", tmp_path / "elsewhere", "--dry-run").output
    assert "no cost estimate: no finished runs" in first
