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
