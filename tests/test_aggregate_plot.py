"""`robustmtl plot` from the user's side: real PNG/PDF files from a tiny one-seed grid, the heatmap showing the
tables' numbers under every selection rule, a note (not a traceback) when there is no sweep to map, and every
user mistake one line with exit code 2."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.plot import interval_note, sweep_table
from robustmtl.grid.submit import submit
from robustmtl.registry import METHODS
from tests.conftest import copy_runs, read_records, tiny_grid, write_spec

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


def test_without_out_the_figures_go_beside_the_first_grid_never_into_the_checkout(cli, grid, tmp_path, monkeypatch):
    """`plot runs/demo` from a checkout writes runs/demo-figures/, never the shipped aggregates/figures/."""
    shutil.copytree(grid, tmp_path / "runs" / "demo")
    (tmp_path / "aggregates" / "figures").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    result = cli("plot", Path("runs") / "demo")
    assert_figures(tmp_path / "runs" / "demo-figures", ALL)
    assert "wrote runs/demo-figures/tradeoff.png" in result.output
    assert list((tmp_path / "aggregates" / "figures").iterdir()) == []


def test_selection_options_reach_the_heatmap_which_shows_the_tables_numbers(cli, grid, tmp_path):
    options = {"select": "few-groups", "few_groups_fraction": 0.5, "few_groups_seed": 1}
    cli("plot", grid, "--out", tmp_path / "figs", "--select", "few-groups", "--few-groups-fraction", "0.5",
        "--few-groups-seed", "1", "--ci", "bootstrap", "--seed", "3", "--include-running")
    assert_figures(tmp_path / "figs", ALL)
    summary = aggregate([grid], **options)
    table, _ = sweep_table(summary, "mtl_l1")
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
    ("nosuch", "unknown method 'nosuch'; known methods: afr, dfr, erm,"),
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


# The plotted numbers against numbers derived here from the run files alone (records, val_correct.jsonl,
# val_groups.json): the selection rule and its few-groups subset, the chosen setting, the means and the bars.
TWO_SEEDS = tiny_grid("plots2", ["erm", "mtl_l1"], [0, 1], sweeps={"mtl_l1": {"alpha_reg": [0.01, 0.1]}})


@pytest.fixture(scope="module")
def two_seed_grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeds per cell, so the bars exist: erm, and mtl_l1 at two alpha_reg (6 tiny runs)."""
    from rich.console import Console

    root = tmp_path_factory.mktemp("plots2")
    submit(write_spec(root / "g.toml", TWO_SEEDS), root / "grid", None, False, Console(quiet=True))
    return root / "grid"


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """What each figure shows, read off the figure as plot saves it (matplotlib's savefig still writes the file)."""
    from matplotlib.figure import Figure

    shown: dict[str, dict] = {}
    save = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        shown[Path(path).stem] = figure_values(fig)
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return shown


def figure_values(fig) -> dict:
    """Trade-off: per legend entry the point and its bar ends (percent). Heatmap: per (alpha_aux, alpha_reg) tick
    labels the cell's value. Plus the title."""
    ax = fig.axes[0]
    values: dict = {"title": fig._suptitle.get_text()}
    if ax.images:
        rows, cols = ([t.get_text() for t in ticks] for ticks in (ax.get_yticklabels(), ax.get_xticklabels()))
        grid = ax.images[0].get_array()
        values["cells"] = {(r, c): float(grid[i, j]) for i, r in enumerate(rows) for j, c in enumerate(cols)}
        return values
    values["points"] = {}
    for method, container in zip([t.get_text() for t in fig.legends[0].get_texts()], ax.containers, strict=True):
        line, _, bars = container.lines
        x, y = line.get_xydata()[0]
        ends = [tuple(sorted(float(p[k]) for p in bar.get_segments()[0])) for bar, k in zip(bars, (0, 1), strict=True)]
        values["points"][method] = ((float(x), float(y)), *ends) if ends else ((float(x), float(y)),)
    return values


def _bits(text: str, count: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count].astype(bool)


def _run_scores(run: Path, few: tuple[float, int] | None) -> list[tuple[float, int, int]]:
    """(score, epoch, step) per validation point: the val record's worst-group accuracy, or the worst-group
    accuracy over the few-groups subset (a seeded draw of round(fraction·n) validation examples)."""
    if few is None:
        return [(r["worst_group_acc"], r["epoch"], r["step"]) for r in read_records(run / "metrics.jsonl")
                if r["split"] == "val"]
    groups = json.loads((run / "val_groups.json").read_text())
    n, n_groups = groups["n"], groups["n_groups"]
    keep = np.sort(np.random.default_rng(few[1]).permutation(n)[:max(1, round(few[0] * n))])
    member = _bits(groups["membership"], n * n_groups).reshape(n, n_groups)[keep]
    scores = []
    for line in (run / "val_correct.jsonl").read_text().splitlines():
        rec = json.loads(line)
        correct = _bits(rec["correct"], n)[keep]
        scores.append((min(correct[member[:, k]].mean() for k in range(n_groups) if member[:, k].any()),
                       rec["epoch"], rec["step"]))
    return scores


def derive(grid: Path, few: tuple[float, int] | None) -> dict:
    """Per method the chosen setting's per-seed test (avg, worst) at each run's best epoch, and per mtl_l1
    alpha_reg the mean test worst-group accuracy (the heatmap's cells)."""
    per_setting: dict[tuple[str, str], list[dict]] = {}
    for run in sorted((grid / "runs").iterdir()):
        records = read_records(run / "metrics.jsonl")
        score, epoch, step = max(_run_scores(run, few), key=lambda s: (s[0], -s[1], -s[2]))
        test = next(r for r in records if r["split"] == "test" and (r["epoch"], r["step"]) == (epoch, step))
        first = records[0]
        per_setting.setdefault((first["method"], first["setting_id"]), []).append(
            {"score": score, "avg": test["avg_acc"], "worst": test["worst_group_acc"], "hparams": first["hparams"]})
    chosen: dict[str, list[dict]] = {}
    for (method, _), runs in sorted(per_setting.items()):
        mean = round(float(np.mean([r["score"] for r in runs])), 9)
        best = chosen.get(method)
        if best is None or mean > round(float(np.mean([r["score"] for r in best])), 9):
            chosen[method] = runs
    cells = {f"{runs[0]['hparams']['alpha_reg']:.3g}": 100 * float(np.mean([r["worst"] for r in runs]))
             for (method, _), runs in per_setting.items() if method == "mtl_l1"}
    return {"chosen": chosen, "cells": cells}


def test_plotted_numbers_follow_few_groups_options_and_bootstrap_bars(cli, two_seed_grid, tmp_path, drawn):
    cli("plot", two_seed_grid, "--out", tmp_path / "figs", "--select", "few-groups", "--few-groups-fraction", "0.2",
        "--few-groups-seed", "5", "--ci", "bootstrap", "--seed", "3")
    expected, default = derive(two_seed_grid, (0.2, 5)), derive(two_seed_grid, None)
    other_subset = derive(two_seed_grid, (0.2, 6))
    assert expected != default and expected != other_subset  # ignoring any of the options changes the figure
    points = drawn["tradeoff"]["points"]
    assert sorted(points) == ["ERM", "MTL+ℓ1"] and "95% bootstrap interval" in drawn["tradeoff"]["title"]
    for method, runs in expected["chosen"].items():
        avg, worst = (100 * np.array([r[k] for r in runs]) for k in ("avg", "worst"))
        (x, y), xbar, ybar = points[METHODS[method].display]  # the legend names methods as the tables do
        assert (x, y) == pytest.approx((avg.mean(), worst.mean()))
        # Two seeds: each 2.5% tail of the 10,000 resample means holds only the all-one-seed resamples (1/4 each),
        # so the percentile bootstrap ends exactly on the two seeds' values whatever its seed.
        assert xbar == pytest.approx((avg.min(), avg.max())) and ybar == pytest.approx((worst.min(), worst.max()))
    heat = drawn["sweep_mtl_l1"]
    assert "few-groups (20% of validation, seed 5)" in heat["title"] and heat["title"].startswith("MTL+ℓ1: ")
    assert {c: v for (_, c), v in heat["cells"].items()} == pytest.approx(expected["cells"])


def test_t_bars_are_the_student_t_interval_of_the_seeds(cli, two_seed_grid, tmp_path, drawn):
    from scipy.stats import t

    cli("plot", two_seed_grid, "--out", tmp_path / "figs", "--raw-names")
    assert "95% t interval" in drawn["tradeoff"]["title"]
    for method, runs in derive(two_seed_grid, None)["chosen"].items():
        (x, y), xbar, ybar = drawn["tradeoff"]["points"][method]
        for values, centre, bar in ((100 * np.array([r[k] for r in runs]), c, b)
                                    for k, c, b in (("avg", x, xbar), ("worst", y, ybar))):
            half = t.ppf(0.975, df=1) * values.std(ddof=1) / np.sqrt(2)
            assert centre == pytest.approx(values.mean())
            assert bar == pytest.approx((values.mean() - half, values.mean() + half))
