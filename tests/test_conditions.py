"""`aggregate --by` and `plot --by`: one row group per condition, selected within it, checked by hand."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import copy_runs

GRID = """name = "cond"
datasets = ["synthetic"]
methods = ["erm", "mtl"]
seeds = [0, 1, 2]
[defaults]
epochs = 3
n_train = 200
n_val = 100
n_test = 100
batch_size = 32
[sweep]
spurious_variance_ratio = [0.5, 2.0]
[method.mtl.sweep]
alpha_aux = [0.5, 1.0]
[executor]
kind = "debug"
"""


@pytest.fixture(scope="module")
def grid(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from robustmtl.cli import app

    root = tmp_path_factory.mktemp("cond")
    (root / "g.toml").write_text(GRID)
    result = CliRunner().invoke(app, ["grid", "submit", str(root / "g.toml"), "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    return root / "out"


Condition = tuple[float | None, ...]


def by_hand(grid: Path, *keys: str) -> dict[tuple[Condition, str], dict[int, float]]:
    """Per (values of `keys`, default the variance ratio; method): the test worst-group accuracy per seed of the
    setting with the best mean validation worst-group accuracy, each run at its best validation epoch (earliest on
    ties)."""
    keys = keys or ("spurious_variance_ratio",)
    runs: dict[tuple[Condition, str, str], dict[int, tuple[float, float]]] = {}
    for run in (grid / "runs").iterdir():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        first = records[0]
        val = [r for r in records if r["split"] == "val"]
        best = max(val, key=lambda r: (r["worst_group_acc"], -r["epoch"]))
        test = next(r for r in records if r["split"] == "test" and r["epoch"] == best["epoch"])
        cell = (tuple(first["hparams"].get(k) for k in keys), first["method"], first["setting_id"])
        runs.setdefault(cell, {})[first["seed"]] = (best["worst_group_acc"], test["worst_group_acc"])
    chosen: dict[tuple[Condition, str], dict[int, float]] = {}
    for condition, method in {(k[0], k[1]) for k in runs}:
        settings = {k[2]: v for k, v in runs.items() if k[:2] == (condition, method)}
        pick = max(settings, key=lambda s: np.mean([v[0] for v in settings[s].values()]))
        chosen[(condition, method)] = {seed: v[1] for seed, v in settings[pick].items()}
    return chosen


def test_each_condition_is_its_own_row_group_with_paired_differences(grid: Path, cli, tmp_path: Path):
    out = tmp_path / "table.csv"
    cli("aggregate", grid, "--by", "spurious_variance_ratio", "--baseline", "erm", "--output", out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    expected = by_hand(grid)
    assert {((float(r["spurious_variance_ratio"]),), r["method"]) for r in rows} == set(expected)
    for r in rows:
        seeds = expected[((float(r["spurious_variance_ratio"]),), r["method"])]
        assert int(r["n"]) == 3
        assert float(r["worst_group_acc_mean_pct"]) == pytest.approx(100 * np.mean(list(seeds.values())))
        base = expected[((float(r["spurious_variance_ratio"]),), "erm")]
        diff = np.mean([100 * (seeds[s] - base[s]) for s in seeds])
        assert float(r["worst_group_acc_diff_pp"]) == pytest.approx(diff, abs=1e-9)
        assert 1 < float(r["probe_a_acc_mean_pct"]) <= 100  # the mechanism fields travel with the cells, in percent
        assert (r["dataset_display"], r["method_display"]) == ("Synthetic", {"erm": "ERM", "mtl": "MTL"}[r["method"]])


def test_a_key_the_baseline_lacks_compares_each_of_its_values_with_the_same_baseline_runs(grid: Path, cli,
                                                                                           tmp_path: Path):
    """erm has no alpha_aux: with --by alpha_aux each mtl strength is its own row group, and each is compared
    with the same erm runs of its variance ratio, as selected among them."""
    by = ["--by", "spurious_variance_ratio", "--by", "alpha_aux"]
    out = tmp_path / "table.csv"
    cli("aggregate", grid, *by, "--baseline", "erm", "--output", out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert sorted((r["spurious_variance_ratio"], r["alpha_aux"], r["method"]) for r in rows) == [
        (ratio, alpha, method) for ratio in ("0.5", "2.0") for alpha in ("0.5", "1.0") for method in ("erm", "mtl")]
    expected = by_hand(grid, "spurious_variance_ratio", "alpha_aux")
    for r in rows:
        ratio = float(r["spurious_variance_ratio"])
        erm = expected[((ratio, None), "erm")]
        if r["method"] == "mtl":
            seeds = expected[((ratio, float(r["alpha_aux"])), "mtl")]
            diff = np.mean([100 * (seeds[s] - erm[s]) for s in seeds])
            assert float(r["worst_group_acc_diff_pp"]) == pytest.approx(diff, abs=1e-9)
        else:
            assert float(r["worst_group_acc_mean_pct"]) == pytest.approx(100 * np.mean(list(erm.values())))

    # a run without the key that is not the baseline is a condition of its own, printed "–"
    table = cli("aggregate", grid, *by, "--baseline", "mtl", "--format", "markdown").output
    assert "| – | ERM |" in table and "nan" not in table


def test_markdown_and_terminal_name_the_conditions(grid: Path, cli, tmp_path: Path):
    out = tmp_path / "table.md"
    result = cli("aggregate", grid, "--by", "spurious_variance_ratio", "--output", out)
    text = out.read_text()
    assert "σ²spur/σ²core" in text and "Δworst vs ERM" in text and "| 0.5 |" in text and "| 2.0 |" in text
    assert "| MTL |" in text and "| mtl |" not in text  # display names, like the main table
    assert max(len(line) for line in text.splitlines() if not line.startswith("|")) < 300  # a legend, not one line
    assert "probe a" in result.output and "MTL" in result.output
    raw = cli("aggregate", grid, "--by", "spurious_variance_ratio", "--format", "markdown", "--quiet", "--raw-names")
    assert "Δworst vs erm" in raw.output and "| mtl |" in raw.output


def test_plot_by_writes_the_gain_and_mechanism_figures(grid: Path, cli, tmp_path: Path):
    result = cli("plot", grid, "--by", "spurious_variance_ratio", "--out", tmp_path)
    for stem in ("gain_by_spurious_variance_ratio", "mechanism_by_spurious_variance_ratio"):
        assert (tmp_path / f"{stem}.png").stat().st_size > 0
        assert stem in result.output


def test_unknown_condition_key_is_one_line(grid: Path, cli):
    result = cli("aggregate", grid, "--by", "spurious_ratio", ok=False)
    assert result.exit_code == 2
    assert "no run has that parameter" in result.output and len(result.output.strip().splitlines()) == 1


def one_line(result) -> str:
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    return " ".join(line.split())


@pytest.mark.parametrize("command", ["aggregate", "plot"])
def test_a_misspelt_condition_key_gets_the_closest_key_and_the_keys_that_differ(grid: Path, cli, tmp_path: Path,
                                                                                command: str):
    line = one_line(cli(command, grid, "--by", "spurious_varience_ratio", "--out" if command == "plot" else "--quiet",
                        *([tmp_path / "figs"] if command == "plot" else []), ok=False))
    assert "did you mean 'spurious_variance_ratio'?" in line
    assert line.endswith("parameters that differ between the runs: alpha_aux, spurious_variance_ratio")
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize(("command", "args"), [("aggregate", []), ("aggregate", ["--show-hparams"]),
                                             ("aggregate", ["--by", "alpha_aux"]), ("plot", []), ("plot", ["--curves"]),
                                             ("plot", ["--by", "alpha_aux"])])
def test_a_condition_that_differs_within_a_cell_is_refused_never_selected_over(grid: Path, cli, tmp_path: Path,
                                                                               command: str, args: list[str]):
    """erm's runs at two variance ratios are one cell without --by (and with a --by that leaves the ratio out):
    selecting the ratio that scored best would report a condition as a tuned setting, so nothing is written."""
    out = ["--out", tmp_path / "figs"] if command == "plot" else ["--output", tmp_path / "table.md"]
    line = one_line(cli(command, grid, *args, *out, ok=False))
    assert "runs of erm on synthetic (and of 1 more cell(s)) differ in spurious_variance_ratio (0.5, 2.0)" in line
    assert "give --by spurious_variance_ratio for a row group per value" in line
    assert list(tmp_path.iterdir()) == []


def test_a_method_is_paired_only_with_baseline_runs_of_its_own_condition(grid: Path, cli, tmp_path: Path):
    """erm at one variance ratio and mtl at the other, from two grid directories: no difference is computed between
    them, and each table says why in one note; at the same ratio they pair as before."""
    low = copy_runs(grid, tmp_path / "low", "erm", spurious_variance_ratio=0.5)
    high = copy_runs(grid, tmp_path / "high", "mtl", spurious_variance_ratio=2.0)
    note = "the runs differ in spurious_variance_ratio 2.0 vs 0.5 (a condition, not a hyperparameter)"

    result = cli("aggregate", low, high, "--baseline", "erm", "--output", tmp_path / "t.csv")
    differences = list(csv.DictReader((tmp_path / "t.differences.csv").open()))
    assert [(r["method"], r["mean_diff_pp"], r["n"]) for r in differences] == [("mtl", "", "0"), ("mtl", "", "0")]
    assert {r["note"] for r in differences} == {f"mtl on synthetic not paired with erm: {note}"}
    terminal = " ".join(result.output.split())
    assert terminal.count(f"mtl on synthetic not paired with erm: {note}") == 1

    cli("aggregate", low, high, "--by", "alpha_aux", "--output", tmp_path / "by.csv")
    rows = {(r["alpha_aux"], r["method"]): r for r in csv.DictReader((tmp_path / "by.csv").open())}
    for alpha in ("0.5", "1.0"):
        mtl = rows[(alpha, "mtl")]
        assert mtl["worst_group_acc_diff_pp"] == "" and mtl["diff_note"] == (
            f"mtl at alpha_aux={alpha} not paired with erm: {note}")
    figures = cli("plot", low, high, "--by", "alpha_aux", "--out", tmp_path / "figs")
    assert " ".join(figures.output.split()).count(f"not paired with erm: {note}") == 2

    paired = copy_runs(grid, tmp_path / "paired", "mtl", spurious_variance_ratio=0.5)
    cli("aggregate", low, paired, "--baseline", "erm", "--output", tmp_path / "p.csv")
    differences = list(csv.DictReader((tmp_path / "p.differences.csv").open()))
    assert {(r["n"], r["note"]) for r in differences} == {("3", "")}


def test_curves_by_condition_are_refused_in_one_line(grid: Path, cli, tmp_path: Path):
    line = one_line(cli("plot", grid, "--by", "spurious_variance_ratio", "--curves", "--out", tmp_path / "figs",
                        ok=False))
    assert "--curves" in line and "--by" in line
    assert not (tmp_path / "figs").exists()


@pytest.mark.parametrize("args", [["--format", "latex"], ["--select", "few-groups"], ["--ci", "bootstrap"],
                                  ["--show-cost"]])
def test_options_a_condition_table_does_not_take_are_one_line(grid: Path, cli, args: list[str]):
    result = cli("aggregate", grid, "--by", "spurious_variance_ratio", *args, ok=False)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def regimes_table():
    """A condition table shaped like the synthetic regimes study: six methods, five variance ratios, and a second
    --by key (pre-training epochs) that puts a second row of panels under the first."""
    import pandas as pd

    from robustmtl.aggregate.conditions import ConditionTable
    from robustmtl.aggregate.units import stat_column

    rng = np.random.default_rng(0)
    rows = []
    for pretrain_epochs in (0, 10):
        for ratio in (0.25, 0.5, 1.0, 2.0, 4.0):
            for method in ("erm", "jtt", "gdro", "l1", "mtl", "mtl_l1"):
                diff = rng.normal(0, 10)
                row = {"dataset": "synthetic", "spurious_variance_ratio": ratio, "pretrain_epochs": pretrain_epochs,
                       "method": method, "worst_group_acc_diff_pp": diff, "worst_group_acc_diff_lo_pp": diff - 3,
                       "worst_group_acc_diff_hi_pp": diff + 3}
                for field, centre in (("reliance_core", 0.5), ("reliance_spurious", 0.3), ("probe_a_acc", 99.0),
                                      ("active_units", 64.0)):
                    row[stat_column(field, "mean")] = centre * (1 + rng.normal(0, 0.05))
                    row[stat_column(field, "hw")] = abs(centre * rng.normal(0, 0.02))
                rows.append(row)
    return ConditionTable(by=["spurious_variance_ratio", "pretrain_epochs"], cells=pd.DataFrame(rows),
                          baseline="erm", select="worst-val", warnings=[])


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs (a title, another text) whose drawn boxes overlap, where a title is a panel's or the figure's, and the
    other texts are every panel's title, tick labels and axis labels."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()

    def shown(texts):
        return [t for t in texts if t.get_visible() and t.get_text()]

    titles = shown([ax.title for ax in fig.axes] + ([fig._suptitle] if fig._suptitle else []))
    others = shown([t for ax in fig.axes
                    for t in (ax.title, ax.xaxis.label, ax.yaxis.label, ax.xaxis.get_offset_text(),
                              ax.yaxis.get_offset_text(), *ax.get_xticklabels(), *ax.get_yticklabels())])
    return [(title.get_text(), other.get_text()) for title in titles for other in others
            if other is not title
            and title.get_window_extent(renderer).overlaps(other.get_window_extent(renderer))]


@pytest.fixture
def overlaps(monkeypatch) -> dict[str, list[tuple[str, str]]]:
    """Each saved figure's overlapping_texts, by file name, measured as it is written."""
    from matplotlib.figure import Figure

    found: dict[str, list[tuple[str, str]]] = {}
    save = Figure.savefig

    def savefig(fig, path, *args, **kwargs):
        found[Path(path).name] = overlapping_texts(fig)
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return found


@pytest.mark.parametrize("figure", ["gain", "mechanism"])
def test_condition_figures_print_no_title_over_another_panels_labels(tmp_path: Path, overlaps, figure: str):
    from robustmtl.aggregate import conditions_plot

    draw = {"gain": conditions_plot.gain_figure, "mechanism": conditions_plot.mechanism_figure}[figure]
    paths = draw(regimes_table(), tmp_path)
    assert sorted(overlaps) == sorted(p.name for p in paths) and len(paths) == 2
    assert overlaps == {p.name: [] for p in paths}


def test_a_by_table_at_80_columns_prints_every_value_whole_and_wraps_its_caption():
    """Six methods, two keys, four mechanism fields: the columns continue in a second table, the keys and method
    repeated, no value cut or broken, and the caption (with a note per unpaired method) wrapped at 80 columns."""
    import io

    from rich.console import Console

    from robustmtl.aggregate.conditions import caption, render_rich, table_rows

    table = regimes_table()
    rng = np.random.default_rng(1)
    for metric in ("avg_acc", "worst_group_acc"):
        table.cells[f"{metric}_mean_pct"], table.cells[f"{metric}_hw_pp"] = rng.uniform(50, 99, 60), rng.uniform(0, 30,
                                                                                                                60)
    table.cells["n"] = 3
    table.notes = ["jtt at spurious_variance_ratio=4.0, pretrain_epochs=10 is not paired with erm: no erm run has "
                   "this condition (epochs 3 and 5 differ)"]
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(render_rich(table))
    text = console.export_text()
    lines = text.splitlines()
    header, rows = table_rows(table, intervals=False)
    values = {cell for row in rows for cell in row} | {word for h in header for word in h.split()}
    assert "…" not in text and max(len(line) for line in lines) <= 80
    assert not [v for v in values if not any(v in line for line in lines)]
    legend = " ".join(" ".join(caption(table)).split())
    assert " ".join(" ".join(lines[-10:]).split()).endswith(legend[-200:])
    assert "σ²spur/σ²core = spurious_variance_ratio" in legend


def test_a_method_without_the_key_is_paired_with_the_baseline_that_lacks_it_too(cli, tmp_path: Path):
    """erm and mtl both lack alpha_reg (None beside l1's numbers, which pandas reads as NaN): mtl's row is still
    compared with erm's runs, as it is without that key."""
    from tests.conftest import tiny_grid, write_spec

    text = tiny_grid("pair", ["erm", "mtl", "l1"], [0, 1], defaults={"epochs": 1},
                     sweeps={"l1": {"alpha_reg": [0.1, 1.0]}})
    cli("grid", "submit", write_spec(tmp_path / "g.toml", text), "--out", tmp_path / "grid")
    with_key, without = (tmp_path / "with.csv", tmp_path / "without.csv")
    cli("aggregate", tmp_path / "grid", "--by", "alpha_reg", "--baseline", "erm", "--output", with_key)
    cli("aggregate", tmp_path / "grid", "--by", "epochs", "--baseline", "erm", "--output", without)
    mtl = [r for r in csv.DictReader(with_key.open()) if r["method"] == "mtl"]
    (alone,) = [r for r in csv.DictReader(without.open()) if r["method"] == "mtl"]
    assert len(mtl) == 1 and mtl[0]["worst_group_acc_diff_pp"] == alone["worst_group_acc_diff_pp"] != ""
