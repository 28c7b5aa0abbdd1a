"""`grid drop`: a run leaves the grid (status, resume, coverage and aggregate stop counting it) and its files are
kept under GRID_DIR/dropped/; a run that is training, or that a staying run requires, is refused."""

from __future__ import annotations

from robustmtl.config import RunOptions
from robustmtl.grid.coverage import read_plan, write_plan
from robustmtl.grid.expand import expand
from robustmtl.grid.spec import load_spec
from robustmtl.layout import GridDir
from robustmtl.rundir import prepare_run
from tests.conftest import tiny_grid, write_spec
from tests.test_cli import state_counts


def test_a_failed_run_dropped_leaves_the_grid_and_keeps_its_files(cli, tmp_path, lock_holder):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("drop", ["erm", "gdro"], [0], defaults={
        "epochs": 1, "n_train": 100, "p_train": 1.0}))  # gdro refuses the empty training groups: it fails
    out = tmp_path / "grid"
    submitted = cli("grid", "submit", spec, "--out", out, ok=False)
    assert submitted.exit_code == 2, submitted.output
    grid = GridDir(out)
    (failed,) = [r for r in grid.run_ids() if grid.run(r).failed.exists()]
    (kept,) = [r for r in grid.run_ids() if r != failed]
    trainer = lock_holder(grid.run(failed).root)  # retried by hand (`robustmtl run --out` into the grid)
    busy = cli("grid", "drop", out, failed, ok=False)
    assert busy.exit_code == 2 and f"run {failed} is running" in busy.output and grid.run(failed).failed.exists()
    trainer.stdin.close()
    trainer.wait()

    assert f"dropped run {failed}" in cli("grid", "drop", out, failed[:5]).output
    status = cli("grid", "status", out).output
    assert state_counts(status) == {"done": 1} and "coverage" not in status
    assert [e["run_id"] for e in read_plan(grid) or []] == [kept]
    assert (out / "dropped" / failed / "FAILED").exists() and (out / "dropped" / failed / "config.json").exists()
    assert "1 already done, 0 to run" in cli("grid", "resume", out).output
    assert "Group DRO" not in cli("aggregate", out).output  # no cell left short
    gone = cli("grid", "drop", out, failed, ok=False)
    assert gone.exit_code == 2 and f"unknown run id {failed!r}" in gone.output


def test_a_required_run_is_dropped_only_with_the_runs_that_need_it(cli, tmp_path):
    spec = write_spec(tmp_path / "g.toml", tiny_grid("pre", ["mtl"], [0], defaults={"pretrain_epochs": 1}))
    runs = expand(load_spec(spec))
    grid = GridDir(tmp_path / "grid")
    grid.root.mkdir()
    grid.spec.write_text(spec.read_text())
    write_plan(grid, runs)
    for run in runs:
        prepare_run(grid.run(run.run_id), run.config, RunOptions())
    pretrain, fine_tune = (r.run_id for r in runs)
    refused = cli("grid", "drop", grid.root, pretrain, ok=False)
    assert refused.exit_code == 2 and f"run {pretrain} is required by run {fine_tune} (mtl)" in refused.output
    assert grid.run_ids() == sorted([pretrain, fine_tune]) and len(read_plan(grid) or []) == 2
    cli("grid", "drop", grid.root, pretrain, fine_tune)
    assert grid.run_ids() == [] and read_plan(grid) == []
    assert sorted(p.name for p in grid.dropped.iterdir()) == sorted([pretrain, fine_tune])
