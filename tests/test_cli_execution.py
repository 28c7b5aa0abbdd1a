"""Execution settings have one shape: `Execution` (how a run executes) inside `ExecutorSettings` (a grid's
[executor] table) and `RunOptions` (a run's options.json), and the options of `run`, `grid submit` and
`grid resume` are generated from those fields."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import typer.main

from robustmtl.cli import app
from robustmtl.cli_grid import GRID_OVERRIDES
from robustmtl.config import Execution
from robustmtl.grid.executor import ExecutorSettings, executor_settings, with_overrides
from robustmtl.layout import RunDir
from tests.conftest import tiny_grid, write_spec

COMMANDS = (("run",), ("grid", "submit"), ("grid", "resume"))
SETTINGS = {f.name: f for f in dataclasses.fields(ExecutorSettings)}  # Execution's fields included
# every Execution key, most away from their defaults (compile stays off: it would compile the encoder)
HOW: dict[str, Any] = {"device": "cpu", "threads": 1, "checkpoint_every": 3, "checkpoint_minutes": 5.0,
                       "epoch_checkpoints": False, "num_workers": 0, "image_cache": False, "keep_checkpoint": True,
                       "keep_model": True, "precision": "fp32", "compile": False}


def settings_options(path: tuple[str, ...]) -> dict[str, tuple[list[str], str | None, Any]]:
    """A command's options that set a settings field: field name → (option names, help, lower bound)."""
    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {p.name: ([*p.opts, *p.secondary_opts], p.help, getattr(p, "min", None))
            for p in command.params if p.name in SETTINGS}


def flag(key: str, value: Any) -> list[str]:
    name = key.replace("_", "-")
    if isinstance(value, bool):
        return [f"--{name}" if value else f"--no-{name}"]
    return [f"--{name}", str(value)]


def test_every_command_generates_its_execution_options_from_the_fields():
    options = {path: settings_options(path) for path in COMMANDS}
    assert set(options[("run",)]) == {f.name for f in dataclasses.fields(Execution)}
    assert set(options[("grid", "submit")]) == set(GRID_OVERRIDES)
    assert options[("grid", "submit")] == options[("grid", "resume")]
    for path, found in options.items():
        for key, (names, help_text, _) in found.items():
            meta = SETTINGS[key].metadata
            assert help_text == meta["help"], (path, key)
            assert names[0] == meta.get("cli_names", (f"--{key.replace('_', '-')}",))[0], (path, key)
    # where two commands take the same key, they take it under the same names with the same help
    for key in {k for found in options.values() for k in found}:
        shapes = {(tuple(found[key][0]), found[key][1]) for found in options.values() if key in found}
        assert len(shapes) == 1, (key, shapes)
    assert options[("grid", "submit")]["timeout_min"][0] == ["--time", "--timeout"]
    assert options[("grid", "submit")]["pack"][2] == 1  # an override's bound is checked as it is parsed


def test_grid_overrides_on_the_command_line_equal_the_same_executor_table(cli, tmp_path, monkeypatch):
    table = {"kind": "debug", "partition": "gpu", "account": "lab", "qos": "high", "gpus": 2, "timeout_min": 30,
             "array_parallelism": 4, "pack": 3}
    assert set(table) == set(GRID_OVERRIDES)
    given: dict[str, Any] = {}

    def capture(spec: Any, out: Any, kind: Any, force: Any, console: Any, overrides: dict[str, Any],
                **_: Any) -> dict[str, str]:
        given.update(overrides, kind=kind)
        return {}

    monkeypatch.setattr("robustmtl.grid.submit.submit", capture)  # what the command hands the grid
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0]))
    names = {key: settings_options(("grid", "submit"))[key][0][0] for key in table}
    cli("grid", "submit", spec, *[part for key, value in table.items() for part in (names[key], str(value))])
    assert with_overrides(ExecutorSettings(), given, "cli") == executor_settings(table, "g.toml")
    result = cli("grid", "submit", spec, "--pack", "0", ok=False)
    assert result.exit_code == 2 and "--pack" in result.output


def test_run_flags_and_a_grid_executor_table_give_a_run_the_same_options(cli, tmp_path):
    assert set(HOW) == {f.name for f in dataclasses.fields(Execution)}
    spec = write_spec(tmp_path / "g.toml", tiny_grid("g", ["erm"], [0], executor=HOW))
    cli("grid", "submit", spec, "--out", tmp_path / "grid")
    (grid_run,) = (tmp_path / "grid" / "runs").iterdir()
    sets = [part for key, value in {"epochs": 2, "n_train": 200, "n_val": 100, "n_test": 100}.items()
            for part in ("--set", f"{key}={value}")]
    out = tmp_path / "single"
    cli("run", "--method", "erm", "--dataset", "synthetic", *sets, "--out", out,
        *[part for key, value in HOW.items() for part in flag(key, value)])
    assert out.joinpath("config.json").read_text() == RunDir(grid_run).config.read_text()  # the same run
    from_grid = json.loads(RunDir(grid_run).options.read_text())
    assert json.loads(RunDir(out).options.read_text()) == from_grid
    assert {key: from_grid[key] for key in HOW} == HOW
