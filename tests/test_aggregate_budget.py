"""`--label-budget` from the user's side: a table with a column per validation label budget whose every number is
the per-rule aggregate's, paired differences against a baseline, exports, and the figure."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.budget import FRACTIONS, budgets, label_budget_table
from robustmtl.aggregate.export import interval_text, percent_text
from robustmtl.grid.submit import submit
from tests.conftest import tiny_grid, write_spec

SPEC = tiny_grid("budget", ["erm", "mtl"], [0, 1])
HEADS = ["avg-val", "worst-class", *(["few-groups"] * len(FRACTIONS)), "worst-val"]


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """erm and mtl on the synthetic task, two seeds each (4 tiny runs)."""
    from rich.console import Console

    root = tmp_path_factory.mktemp("budget")
    submit(write_spec(root / "g.toml", SPEC), root / "grid", None, False, Console(quiet=True))
    return root / "grid"


def worst(summary, method: str) -> dict:
    cells = summary.cells
    return cells[(cells["method"] == method) & (cells["metric"] == "worst_group_acc")].iloc[0].to_dict()


def test_each_column_is_the_aggregate_of_its_rule(grid):
    table = label_budget_table([grid], few_groups_seed=3)
    assert [b.key for b in table.budgets] == ["avg-val", "worst-class", "few-groups 5%", "few-groups 10%",
                                              "few-groups 25%", "few-groups 50%", "worst-val"]
    for budget in table.budgets:
        summary = aggregate([grid], select=budget.rule, few_groups_fraction=budget.fraction or 0.05, few_groups_seed=3)
        for method in ("erm", "mtl"):
            row = table.cell("synthetic", method, budget)
            assert row is not None and row["mean"] == worst(summary, method)["mean"], (budget, method)
            assert row["half_width"] == worst(summary, method)["half_width"] and row["n"] == 2


def test_aggregate_label_budget_prints_a_column_per_budget_with_the_rules_values(cli, grid):
    result = cli("aggregate", grid, "--label-budget", "--format", "markdown")
    title, table = result.stdout.split("\n\n")[:2]
    assert title == "Test worst-group accuracy by validation label budget:"
    head, _, *body = table.splitlines()
    assert [c.strip().split(" (")[0] for c in head.strip("|").split("|")] == ["method", *HEADS]
    erm = next(r for r in body if r.startswith("| ERM "))
    summary = aggregate([grid], select="worst-class")
    cell = worst(summary, "erm")
    assert erm.split(" | ")[2] == f"{percent_text(cell['mean'])} {interval_text(cell, 't')}"
    assert "few-groups (5%)" in head and "avg-val (none)" in head and "worst-val (all)" in head


def test_a_baseline_adds_the_paired_differences_of_each_rule(cli, grid, tmp_path):
    out = tmp_path / "budget.csv"
    cli("aggregate", grid, "--label-budget", "--baseline", "erm", "--output", out)
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert {r["budget"] for r in rows} == {b.key for b in budgets()}
    mtl = next(r for r in rows if r["method"] == "mtl" and r["budget"] == "worst-class")
    diff = aggregate([grid], select="worst-class", baseline="erm").differences
    expected = diff[(diff["method"] == "mtl") & (diff["metric"] == "worst_group_acc")].iloc[0]
    assert float(mtl["diff_mean_pp"]) == pytest.approx(100 * expected["mean_diff"])
    assert float(mtl["mean_pct"]) == pytest.approx(100 * worst(aggregate([grid], select="worst-class"), "mtl")["mean"])
    markdown = cli("aggregate", grid, "--label-budget", "--baseline", "erm", "--format", "markdown").stdout
    assert "Paired difference in test worst-group accuracy vs ERM" in markdown


def test_latex_export_writes_the_table_and_its_differences_beside_it(cli, grid, tmp_path):
    out = tmp_path / "budget.tex"
    cli("aggregate", grid, "--label-budget", "--baseline", "erm", "--output", out)
    assert r"\label{tab:label-budget}" in out.read_text() and "worst-class" in out.read_text()
    assert r"\label{tab:label-budget-differences}" in (tmp_path / "budget.differences.tex").read_text()


def test_plot_label_budget_writes_the_figure(cli, grid, tmp_path):
    result = cli("plot", grid, "--label-budget", "--out", tmp_path / "figs")
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["label_budget.pdf", "label_budget.png"]
    assert (tmp_path / "figs" / "label_budget.png").read_bytes().startswith(b"\x89PNG")
    assert result.output.count("wrote ") == 2


@pytest.mark.parametrize("args", [["--select", "avg-val"], ["--few-groups-fraction", "0.1"], ["--by", "lr"],
                                  ["--show-hparams"]])
def test_options_the_budget_table_decides_itself_are_one_line(cli, grid, args):
    result = cli("aggregate", grid, "--label-budget", *args, ok=False)
    assert result.exit_code == 2 and "error: --label-budget runs every rule" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_rule_without_its_data_leaves_its_column_empty_with_a_warning(grid, tmp_path):
    import shutil

    from robustmtl.layout import VAL_CORRECT

    root = shutil.copytree(grid, tmp_path / "grid")
    for run in (root / "runs").iterdir():
        (run / VAL_CORRECT).unlink()  # as runs trained before few-groups data was stored
    table = label_budget_table([root])
    assert set(table.cells["budget"]) == {"avg-val", "worst-class", "worst-val"}  # worst-class: from the records
    assert sum(w.startswith("few-groups ") and w.endswith("its column is empty") for w in table.warnings) == 4
    assert table.cell("synthetic", "erm", table.budgets[2]) is None
