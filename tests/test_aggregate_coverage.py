"""`aggregate` compares the saved spec with the runs that are done and lists what is missing per cell."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import tiny_grid, write_spec


def test_aggregate_lists_missing_seeds_and_settings_per_cell(tmp_path: Path, cli) -> None:
    sweeps = {"mtl": {"alpha_aux": [0.5, 1.0]}}
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm", "mtl"], [0, 1], sweeps=sweeps))
    cli("grid", "submit", spec, "--out", tmp_path / "out")
    configs = {d: json.loads((d / "config.json").read_text()) for d in (tmp_path / "out" / "runs").iterdir()}
    lost = next(d for d, c in configs.items()
                if c["method"] == "mtl" and c["seed"] == 1 and c["method_params"]["alpha_aux"] == 0.5)
    assert "coverage of" not in cli("aggregate", tmp_path / "out").output  # everything the spec asks for is done
    (lost / "DONE").unlink()
    out = tmp_path / "t.md"
    result = cli("aggregate", tmp_path / "out", "--output", out)
    assert "synthetic/mtl (3/4 done): alpha_aux=0.5: seed 1" in result.output
    assert "synthetic/erm" not in result.output.split("coverage of")[1]
    assert "- synthetic/mtl (3/4 done): alpha\\_aux=0.5: seed 1" in out.read_text()


def test_a_shared_pretraining_run_with_its_own_seed_does_not_make_cells_short(tmp_path: Path, cli) -> None:
    """The pre-training run has pretrain_seed (0), which is not one of the grid's seeds: the cells still ask
    for the grid's two seeds, not three."""
    defaults = {"pretrain_epochs": 1, "pretrain_n": 200, "pretrain_batch_size": 32}
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [3, 4], defaults=defaults))
    cli("grid", "submit", spec, "--out", tmp_path / "out")
    plan = tmp_path / "out" / "plan.jsonl"
    entries = [json.loads(line) for line in plan.read_text().splitlines()]
    without_field = "".join(json.dumps({k: v for k, v in e.items() if k != "required"}) + "\n" for e in entries)
    for plan_text in (plan.read_text(), without_field):  # and a plan whose lines do not say which runs are required
        plan.write_text(plan_text)
        out = tmp_path / "t.md"
        result = cli("aggregate", tmp_path / "out", "--output", out)
        assert "coverage of" not in result.output
        assert "†" not in out.read_text()
        assert "n = 2 seeds per cell" in out.read_text()
    assert [(e["method"], e["seed"], e.get("required")) for e in entries] == [
        ("pretrain", 0, True), ("erm", 3, False), ("erm", 4, False)]
