"""What a user sees: commands in, run directories, files and tables out, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from robustmtl.layout import GridDir
from tests.conftest import TINY, read_records, tiny_grid, write_spec

SMALL = tiny_grid("small", ["erm", "mtl_l1"], [0, 1], sweeps={"mtl_l1": {"alpha_reg": [0.01, 0.1]}})


def test_run_then_rerun_reports_without_training(cli, tmp_path):
    out = tmp_path / "one"
    result = cli("run", "--method", "erm", "--dataset", "synthetic", "--set", "epochs=2", "--set", "n_train=200",
                 "--out", out)
    assert "worst-group acc" in result.output
    records = read_records(out / "metrics.jsonl")
    assert [r["split"] for r in records] == ["train", "val", "test"] * 2
    second = cli("run", "--method", "erm", "--dataset", "synthetic", "--set", "epochs=2", "--set", "n_train=200",
                 "--out", out)
    assert "already done" in second.output
    assert len(read_records(out / "metrics.jsonl")) == 6
    events = [json.loads(line) for line in (out / "attempts.jsonl").read_text().splitlines()]
    assert [(e["event"], e["job_id"], e.get("via")) for e in events] == [("start", None, "run"), ("done", None, None)]


def test_dry_run_prints_the_table_and_writes_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = write_spec(tmp_path / "g.toml", SMALL)
    result = cli("grid", "submit", spec, "--dry-run")
    assert "6 runs" in result.output and "alpha_reg" in result.output and "--max-runs" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.toml"]
    over = " ".join(cli("grid", "submit", spec, "--dry-run", "--max-runs", "5").output.split())
    assert "6 runs (dry run: nothing written)" in over and "more than --max-runs 5: submit it with --max-runs 6" in over


def state_counts(status_output: str) -> dict[str, int]:
    """The nonzero rows of `grid status`'s state table (cells between the table's │ rules)."""
    counts = {}
    for line in status_output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 3 and cells[1].isdigit() and int(cells[1]):
            counts[cells[0]] = int(cells[1])
    return counts


def test_grid_submit_status_and_resubmit(cli, tmp_path):
    spec = write_spec(tmp_path / "g.toml", SMALL)
    out = tmp_path / "grid"
    cli("grid", "submit", spec, "--out", out)
    grid = GridDir(out)
    assert len(grid.run_ids()) == 6
    assert grid.spec.read_text() == SMALL
    for run_id in grid.run_ids():
        rd = grid.run(run_id)
        config = json.loads(rd.config.read_text())
        assert config["run_id"] == run_id and rd.done.exists()
    status = cli("grid", "status", out)
    assert state_counts(status.output) == {"done": 6}
    again = cli("grid", "submit", spec, "--out", out)
    assert "6 already done, 0 to run" in again.output


def test_grid_dir_from_another_spec_is_refused_unless_forced(cli, tmp_path):
    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "a.toml", SMALL), "--out", out)
    other = write_spec(tmp_path / "b.toml", SMALL.replace("seeds = [0, 1]", "seeds = [0, 1, 2]"))
    refused = cli("grid", "submit", other, "--out", out, ok=False)
    assert refused.exit_code == 2 and "different grid spec" in refused.output
    cli("grid", "submit", other, "--out", out, "--force")
    assert len(GridDir(out).run_ids()) == 9


@pytest.mark.parametrize("args, fragment", [
    (["run", "--method", "ermm", "--dataset", "synthetic"], "did you mean 'erm'"),
    (["run", "--method", "erm", "--dataset", "synthetic", "--set", "lr"], "--set expects key=value"),
    (["run", "--method", "erm", "--dataset", "synthetic", "--set", "lr=0"], "lr must be > 0"),
    (["grid", "submit", "missing.toml"], "grid file not found"),
    (["grid", "status", "no/such/grid"], "no grid directory"),
    (["grid", "submit", "{spec}", "--executor", "cloud"], "kind must be one of"),
])
def test_user_mistakes_are_one_line_exit_2(cli, tmp_path, args, fragment):
    spec = write_spec(tmp_path / "g.toml", SMALL)
    result = cli(*[a.replace("{spec}", str(spec)) for a in args], ok=False)
    assert result.exit_code == 2, result.output
    assert fragment in result.output and "Traceback" not in result.output


def test_console_script_entry_points_show_help():
    root_cli = str(Path(__file__).parents[1] / "cli.py")
    for cmd in ([sys.executable, "-m", "robustmtl", "--help"], [sys.executable, root_cli, "--help"]):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        assert "grid" in out and "aggregate" in out


def test_user_error_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "robustmtl", "run", "--method", "erm", "--dataset", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "unknown dataset 'nope'" in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args, fragment", [
    (["run", "--method", "erm"], "robustmtl run: Missing option '--dataset'"),
    (["run", "--method", "erm", "--dataset", "synthetic", "--seed", "x"], "Invalid value for '--seed'"),
    (["run", "--method", "erm", "--dataset", "synthetic", "--sed", "1"], "No such option: --sed"),
    (["grid", "submitt", "g.toml"], "Did you mean 'submit'?"),
    (["aggregate", "--format"], "'--format' requires an argument"),
])
def test_usage_mistakes_in_a_real_process_are_one_line_exit_2(args, fragment):
    proc = subprocess.run([sys.executable, "-m", "robustmtl", *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "╭" not in proc.stderr


def test_submit_then_aggregate_every_format(cli, tmp_path):
    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "g.toml", SMALL), "--out", out)
    table = cli("aggregate", out)
    assert "ERM" in table.output and "MTL+ℓ1" in table.output and "worst" in table.output
    for suffix, marker in ((".tex", "\\toprule"), (".md", "| ERM"), (".csv", "dataset,dataset_display,method")):
        target = tmp_path / f"table{suffix}"
        cli("aggregate", out, "--output", target, "--quiet")
        assert marker in target.read_text()
    csv_rows = (tmp_path / "table.csv").read_text().strip().splitlines()
    assert len(csv_rows) == 1 + 2 * 2  # header + (erm, mtl_l1) × (avg, worst-group)
    assert all(",2," in row for row in csv_rows[1:])  # n = 2 seeds in every cell


def test_run_directories_aggregate_alone_or_from_the_folder_holding_them(cli, tmp_path, monkeypatch):
    sets = [arg for key, value in {**TINY, "epochs": 1}.items() for arg in ("--set", f"{key}={value}")]
    single = tmp_path / "runs" / "single"  # `robustmtl run --out runs/single`: the run directory itself
    cli("run", "--method", "erm", "--dataset", "synthetic", *sets, "--out", single)
    alone = cli("aggregate", single, "--format", "csv", "--quiet").output
    assert "synthetic,Synthetic,erm,ERM,worst_group_acc" in alone and ",1,1,0," in alone  # n = 1 seed, 1 expected
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for seed in ("0", "1"):  # the default run directories: runs/single/<run_id>
        cli("run", "--method", "mtl", "--dataset", "synthetic", "--seed", seed, *sets)
    folder = cli("aggregate", "runs/single", "--format", "csv", "--quiet").output
    assert "synthetic,Synthetic,mtl,MTL,worst_group_acc" in folder and ",2,2,0," in folder and "erm" not in folder
    both = cli("aggregate", single, "runs/single", "--format", "csv", "--quiet").output
    assert all(f"synthetic,Synthetic,{m},{m.upper()},worst_group_acc" in both for m in ("erm", "mtl"))


def test_aggregate_mistakes_are_one_line(cli, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("aggregate", empty, ok=False)
    assert result.exit_code == 2 and "no runs" in result.output
    result = cli("aggregate", empty, "--select", "best-test", ok=False)
    assert result.exit_code == 2


def test_aggregate_options_and_plot(cli, tmp_path):
    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "g.toml", SMALL), "--out", out)
    result = cli("aggregate", out, "--baseline", "erm", "--show-hparams")
    assert "Chosen hyperparameters" in result.output and "Paired difference vs ERM" in result.output
    markdown = cli("aggregate", out, "--baseline", "erm", "--format", "markdown", "--quiet")
    assert "Paired difference vs ERM" in markdown.output and "| Synthetic | MTL+ℓ1 | worst |" in markdown.output
    few = cli("aggregate", out, "--select", "few-groups", "--few-groups-fraction", "0.5")
    assert "few-groups (50% of validation" in " ".join(few.output.split())
    figures = cli("plot", out, "--out", tmp_path / "figs")
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == ["sweep_mtl_l1.pdf", "sweep_mtl_l1.png", "tradeoff.pdf", "tradeoff.png"], figures.output


def test_machine_formats_on_stdout_are_clean_and_side_tables_are_files(cli, tmp_path):
    """A narrow terminal must not wrap CSV/Markdown rows; side tables of one-table formats become files."""
    import csv
    import io
    import os

    import pandas as pd

    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "g.toml", SMALL), "--out", out)
    env = {**os.environ, "COLUMNS": "40"}
    proc = subprocess.run([sys.executable, "-m", "robustmtl", "aggregate", str(out), "--format", "csv", "--baseline",
                           "erm", "--show-cost"], capture_output=True, text=True, env=env, check=True)
    rows = list(csv.reader(io.StringIO(proc.stdout)))
    assert rows[0][:5] == ["dataset", "dataset_display", "method", "method_display", "metric"]
    assert len(rows) == 1 + 2 * 2 and {len(r) for r in rows} == {len(rows[0])}
    assert "Paired difference vs ERM" in proc.stderr and "--output FILE" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "robustmtl", "aggregate", str(out), "--format", "markdown"],
                          capture_output=True, text=True, env=env, check=True)
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 2 and all(line.endswith("|") for line in table)
    assert "Selection" in proc.stderr

    for suffix in (".csv", ".tex"):
        target = tmp_path / f"t{suffix}"
        cli("aggregate", out, "--output", target, "--baseline", "erm", "--show-cost", "--show-hparams", "--quiet")
        sides = {name: tmp_path / f"t.{name}{suffix}" for name in ("hparams", "differences", "cost")}
        assert all(p.is_file() for p in sides.values())
        if suffix == ".csv":
            assert list(pd.read_csv(sides["differences"])["method"]) == ["mtl_l1", "mtl_l1"]
            assert list(pd.read_csv(sides["cost"])["runs"]) == [2, 4]
            assert pd.read_csv(sides["hparams"]).set_index("method").loc["mtl_l1", "searched"].startswith(
                '{"alpha_reg": ')
        else:
            # side tables print display names, like the main table
            assert all("\\toprule" in p.read_text() and r"MTL+$\ell_{1}$" in p.read_text() for p in sides.values())
            assert not any(r"mtl\_l1" in p.read_text() for p in sides.values())


def test_aggregate_output_never_lands_in_a_grid_or_guesses_a_format(cli, tmp_path):
    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "g.toml", SMALL), "--out", out)
    metrics = out / "runs" / GridDir(out).run_ids()[0] / "metrics.jsonl"
    before = metrics.read_bytes()
    for args, fragment in (
        (["--output", metrics], "inside the grid directory"),
        (["--output", tmp_path], "is a directory"),
        (["--output", tmp_path / "t.xlsx"], "cannot tell the format"),
        (["--output", tmp_path / "t.csv", "--format", "latex"], "looks like csv"),
        (["--output", tmp_path / "file" / "t.md"], "cannot write --output"),
    ):
        if "file" in str(args[1]):
            (tmp_path / "file").write_text("a file, not a folder")
        result = cli("aggregate", out, "--quiet", *args, ok=False)
        assert result.exit_code == 2 and fragment in result.output, result.output
    assert metrics.read_bytes() == before
    cli("aggregate", out, "--quiet", "--output", tmp_path / "T.CSV")
    assert (tmp_path / "T.CSV").read_text().startswith("dataset,dataset_display,method,method_display,metric")


def test_the_dry_run_table_at_80_columns_prints_every_run_id_whole(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    spec = tiny_grid("wide", ["erm", "mtl_l1"], [0, 1], sweeps={"mtl_l1": {
        "alpha_aux": [0.5, 1.0], "alpha_reg": [0.01, 0.1], "spurious_variance_ratio": [0.25, 4.0],
        "weight_decay": [0.0, 0.0001]}})
    result = cli("grid", "submit", write_spec(tmp_path / "g.toml", spec), "--out", tmp_path / "grid", "--dry-run")
    table = [line for line in result.output.splitlines() if line.startswith("│")]
    ids = [line.split("│")[1].strip() for line in table if line.split("│")[1].strip()]
    assert "…" not in result.output and max(len(line) for line in result.output.splitlines()) <= 80
    assert len(ids) >= 20 and all(len(i) == len(ids[0]) for i in ids)  # each row's id whole, none cut or folded
