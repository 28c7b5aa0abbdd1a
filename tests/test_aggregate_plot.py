"""`robustmtl plot` from the user's side: real PNG/PDF files from a tiny one-seed grid, the heatmap showing the
tables' numbers under every selection rule, a note (not a traceback) when there is no sweep to map, and every
user mistake one line with exit code 2."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.plot import interval_note, sweep_table
from robustmtl.grid.submit import submit
from tests.conftest import tiny_grid, write_spec

SPEC = tiny_grid("plots", ["erm", "mtl_l1"], [0],
                 sweeps={"mtl_l1": {"alpha_aux": [0.5, 1.0], "alpha_reg": [0.01, 0.1]}})
TRADEOFF = ["tradeoff.pdf", "tradeoff.png"]
ALL = [*TRADEOFF, "sweep_mtl_l1.pdf", "sweep_mtl_l1.png"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One seed per cell: erm, and mtl_l1 over a 2 x 2 alpha sweep (5 tiny runs, a few seconds)."""
    from rich.console import Console

    root = tmp_path_factory.mktemp("plots")
    submit(write_spec(root / "g.toml", SPEC), root / "grid", None, False, Console(quiet=True))
    return root / "grid"


def copy_runs(grid: Path, dest: Path, method: str, n: int, done: bool = True) -> Path:
    """A grid directory holding copies of `grid`'s first n runs of `method` (without DONE unless `done`)."""
    runs = [d for d in sorted((grid / "runs").iterdir())
            if json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["method"] == method]
    for run in runs[:n]:
        shutil.copytree(run, dest / "runs" / run.name)
        if not done:
            (dest / "runs" / run.name / "DONE").unlink()
    return dest


def assert_figures(folder: Path, names: list[str]) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    for path in folder.iterdir():
        magic = b"\x89PNG" if path.suffix == ".png" else b"%PDF"
        assert path.stat().st_size > 1000 and path.read_bytes().startswith(magic), path


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0]


def test_one_seed_grid_plots_points_without_intervals(cli, grid, tmp_path):
    result = cli("plot", grid, "--out", tmp_path / "figs")
    assert_figures(tmp_path / "figs", ALL)
    assert result.output.count("wrote ") == 4 and "Traceback" not in result.output
    assert interval_note(aggregate([grid])) == "one seed per cell (n=1): no interval"


def test_selection_options_reach_the_heatmap_which_shows_the_tables_numbers(cli, grid, tmp_path):
    options = {"select": "few-groups", "few_groups_fraction": 0.5, "few_groups_seed": 1}
    cli("plot", grid, "--out", tmp_path / "figs", "--select", "few-groups", "--few-groups-fraction", "0.5",
        "--few-groups-seed", "1", "--ci", "bootstrap", "--seed", "3", "--include-running")
    assert_figures(tmp_path / "figs", ALL)
    summary = aggregate([grid], **options)
    table, _ = sweep_table(summary, [grid], "mtl_l1", include_running=False)
    chosen = summary.chosen.set_index("method").loc["mtl_l1", "hparams"]
    at_chosen = table[(table["alpha_aux"] == chosen["alpha_aux"]) & (table["alpha_reg"] == chosen["alpha_reg"])]
    cell = summary.cells[(summary.cells["method"] == "mtl_l1") & (summary.cells["metric"] == "worst_group_acc")]
    assert len(table) == 4 and at_chosen["worst_group_acc"].item() == pytest.approx(cell["mean"].item())


@pytest.mark.parametrize(("method", "why", "runs"), [
    ("erm", "erm has no alpha_aux or alpha_reg hyperparameter", None),
    ("gdro", "gdro has no runs in these grids (methods there: erm, mtl_l1)", None),
    ("mtl_l1", "mtl_l1 ran at a single alpha_aux/alpha_reg setting", {"erm": 1, "mtl_l1": 1}),
])
def test_no_sweep_to_map_is_a_note_and_the_tradeoff_is_still_written(cli, grid, tmp_path, method, why, runs):
    grid_dir = tmp_path / "partial" if runs else grid
    for name, n in (runs or {}).items():
        copy_runs(grid, grid_dir, name, n)
    result = cli("plot", grid_dir, "--out", tmp_path / "figs", "--method", method)
    assert_figures(tmp_path / "figs", TRADEOFF)
    note = [line for line in result.output.splitlines() if line.startswith("no sweep heatmap: ")]
    assert len(note) == 1 and why in note[0], result.output


def test_unfinished_runs_of_the_method_are_a_note_pointing_to_include_running(cli, grid, tmp_path):
    copy_runs(grid, tmp_path / "mixed", "erm", 1)
    copy_runs(grid, tmp_path / "mixed", "mtl_l1", 4, done=False)
    result = cli("plot", tmp_path / "mixed", "--out", tmp_path / "figs")
    assert "no sweep heatmap: mtl_l1 has no finished runs here (4 unfinished); --include-running" in result.output
    cli("plot", tmp_path / "mixed", "--out", tmp_path / "figs", "--include-running")
    assert_figures(tmp_path / "figs", ALL)


@pytest.mark.parametrize(("method", "expected"), [
    ("mtl_l", "unknown method 'mtl_l' (did you mean 'mtl_l1'?)"),
    ("nosuch", "unknown method 'nosuch'; known methods: erm,"),
])
def test_unknown_method_is_one_line_before_any_figure(cli, grid, tmp_path, method, expected):
    assert expected in one_line_error(cli("plot", grid, "--out", tmp_path / "figs", "--method", method, ok=False))
    assert not (tmp_path / "figs").exists()


def _empty_grid(tmp: Path, grid: Path) -> list[Path | str]:
    (tmp / "empty").mkdir()
    return [tmp / "empty"]


def _unfinished_grid(tmp: Path, grid: Path) -> list[Path | str]:
    return [copy_runs(grid, tmp / "unfinished", "erm", 1, done=False)]


def _out_is_a_file(tmp: Path, grid: Path) -> list[Path | str]:
    (tmp / "taken").write_text("x")
    return [grid, "--out", tmp / "taken"]


def _out_under_a_file(tmp: Path, grid: Path) -> list[Path | str]:
    (tmp / "taken").write_text("x")
    return [grid, "--out", tmp / "taken" / "figs"]


MISTAKES: dict[str, tuple[Callable[[Path, Path], list[Path | str]], str]] = {
    "missing grid": (lambda tmp, grid: [tmp / "nope"], "grid directory does not exist"),
    "empty grid": (_empty_grid, "has written metrics yet: start the grid with `robustmtl grid submit"),
    "no finished run": (_unfinished_grid, "--include-running shows incomplete ones"),
    "out is a file": (_out_is_a_file, "is a file; give a folder for the figures"),
    "out under a file": (_out_under_a_file, "a file; give a folder for the figures"),
    "unknown rule": (lambda tmp, grid: [grid, "--select", "best-test"], "unknown selection rule 'best-test'"),
}


@pytest.mark.parametrize("case", MISTAKES)
def test_user_mistakes_are_one_line_and_exit_2(cli, grid, tmp_path, case):
    build, expected = MISTAKES[case]
    args = build(tmp_path, grid)
    if "--out" not in args:
        args += ["--out", tmp_path / "figs"]
    assert expected in one_line_error(cli("plot", *args, ok=False))
    assert not (tmp_path / "figs").exists()
    assert not (tmp_path / "taken").is_dir()
