"""Toolkit overhead at the sizes researchers hit: prints figures, asserts nothing.

    python benchmarks/toolkit.py [--runs-dry 100000] [--runs-status 10000] [--runs-agg 10000] [--epochs 50]

Measures, each as a fresh `robustmtl` process (what a user waits for): `--help`; `grid submit --dry-run`
of a large grid; `grid status` of a grid of finished runs; `aggregate` of runs × epochs × 3 splits of
JSONL records. The synthetic run directories are generated in a temporary folder (several hundred MB
for the default aggregation size).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"help": 0.5, "dry-run": 3.0, "status": 2.0, "aggregate": 10.0}


def timed(argv: list[str], repeat: int = 1) -> float:
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "robustmtl", *argv], check=True, capture_output=True)
        best = min(best, time.perf_counter() - start)
    return best


def big_spec(path: Path, runs: int) -> int:
    """A grid with about `runs` runs: 2 methods, 10 seeds, lr × batch axes and a method sweep."""
    side = 1
    while 10 * side**3 + 10 * side**4 < runs:
        side += 1
    values = [round(1e-4 * (i + 1), 6) for i in range(side)]
    path.write_text(f"""
name = "big"
datasets = ["synthetic"]
methods = ["mtl", "mtl_l1"]
seeds = {list(range(10))}
[sweep]
lr = {values}
warmup_frac = {[round(0.01 * i, 3) for i in range(side)]}
alpha_aux = {[round(0.1 * (i + 1), 3) for i in range(side)]}
[method.mtl_l1.sweep]
alpha_reg = {[round(0.01 * (i + 1), 4) for i in range(side)]}
[executor]
kind = "debug"
""")
    return 10 * side**3 + 10 * side**4


def fake_grid(root: Path, runs: int, epochs: int, with_metrics: bool) -> None:
    """Finished runs as submit and the loop leave them: the plan, config.json, DONE, the attempt log and
    metrics (records only with `with_metrics`: status never reads them)."""
    (root / "runs").mkdir(parents=True)
    (root / "grid.toml").write_text('name = "fake"\ndatasets = ["synthetic"]\nmethods = ["erm"]\n'
                                    f"seeds = {list(range(5))}\n")
    (root / "plan.jsonl").write_text("".join(json.dumps({"run_id": f"{i:012x}", "dataset": "synthetic", "method": "erm",
                                                         "seed": i % 5, "setting": f"lr={i // 5}"}) + "\n"
                                             for i in range(runs)))
    groups = {"0": 0.9, "1": 0.6, "2": 0.7, "3": 0.95}
    for i in range(runs):
        run_id = f"{i:012x}"
        rd = root / "runs" / run_id
        rd.mkdir()
        (rd / "config.json").write_text(json.dumps({"run_id": run_id}))
        (rd / "DONE").write_text(json.dumps({"run_id": run_id}))
        (rd / "attempts.jsonl").write_text("".join(
            json.dumps({"event": event, "job_id": f"{1000 + i}", "restart_count": 0, "time": 1.7e9, "host": "node1"})
            + "\n" for event in ("start", "done")))
        if not with_metrics:
            (rd / "metrics.jsonl").write_text("")
            continue
        base = {"run_id": run_id, "setting_id": f"{i // 5:012x}", "method": ["erm", "mtl_l1"][i % 2],
                "dataset": "synthetic", "model": "mlp", "seed": i % 5, "hparams": {"lr": 1e-3 * (1 + i // 10 % 4)},
                "uses_train_groups": False, "report": True, "group_n": {"0": 100, "1": 10, "2": 10, "3": 100},
                "loss": 0.5, "time_s": 1.0}
        lines = []
        for epoch in range(1, epochs + 1):
            for split in ("train", "val", "test"):
                acc = 0.5 + 0.4 * ((i * 7 + epoch * 13 + len(split)) % 100) / 100
                lines.append(json.dumps({**base, "epoch": epoch, "step": epoch * 10, "split": split, "avg_acc": acc,
                                         "worst_group_acc": acc - 0.2, "group_acc": groups}))
        (rd / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dry", type=int, default=100_000)
    parser.add_argument("--runs-status", type=int, default=10_000)
    parser.add_argument("--runs-agg", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=50)
    args = parser.parse_args()
    figures = {"help": timed(["--help"], repeat=5)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        n = big_spec(tmp_path / "big.toml", args.runs_dry)
        figures["dry-run"] = timed(["grid", "submit", str(tmp_path / "big.toml"), "--dry-run"])
        fake_grid(tmp_path / "status", args.runs_status, 0, with_metrics=False)
        figures["status"] = timed(["grid", "status", str(tmp_path / "status")])
        fake_grid(tmp_path / "agg", args.runs_agg, args.epochs, with_metrics=True)
        figures["aggregate"] = timed(["aggregate", str(tmp_path / "agg"), "--quiet"])
    sizes = {"help": "", "dry-run": f"{n} runs", "status": f"{args.runs_status} runs",
             "aggregate": f"{args.runs_agg * args.epochs * 3:,} records"}
    print(f"{'operation':<10} {'size':>18} {'seconds':>8} {'target':>7}")
    for key, seconds in figures.items():
        print(f"{key:<10} {sizes[key]:>18} {seconds:8.2f} {TARGETS[key]:7.1f}")


if __name__ == "__main__":
    main()
