"""Display names end to end: a grid file's [display] table, the registry's names, and --raw-names."""

from __future__ import annotations

import pytest

from tests.conftest import tiny_grid, write_spec

GRID = tiny_grid("names", ["erm", "mtl_l1"], [0])


def method_cells(markdown: str) -> list[str]:
    return [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("|")][2:]


@pytest.fixture
def grid(cli, tmp_path):
    text = GRID.replace("[executor]", '[display.method]\nmtl_l1 = "Ours"\n[display.dataset]\nsynthetic = "Toy"\n'
                                      "[executor]")
    out = tmp_path / "grid"
    cli("grid", "submit", write_spec(tmp_path / "g.toml", text), "--out", out)
    return out


def test_tables_use_the_grids_display_names_and_raw_keys_on_request(cli, grid, tmp_path):
    shown = cli("aggregate", grid, "--format", "markdown", "--quiet").output
    assert method_cells(shown) == ["ERM", "Ours"] and "| Toy avg |" in shown
    tex = tmp_path / "t.tex"
    cli("aggregate", grid, "--output", tex, "--quiet")
    assert "ERM &" in tex.read_text() and "Ours &" in tex.read_text() and "{Toy}" in tex.read_text()
    raw = cli("aggregate", grid, "--format", "markdown", "--quiet", "--raw-names").output
    assert method_cells(raw) == ["erm", "mtl\\_l1"] and "| synthetic avg |" in raw
    terminal = cli("aggregate", grid).output  # the terminal prints what the files print
    assert "Ours" in terminal and "Toy" in terminal and "mtl_l1" not in terminal
    assert "mtl_l1" in cli("aggregate", grid, "--raw-names").output


def test_renaming_is_no_new_spec_and_conflicting_names_warn(cli, grid, tmp_path):
    renamed = (grid / "grid.toml").read_text().replace('"Ours"', '"MTL+L1 (ours)"')
    cli("grid", "submit", write_spec(tmp_path / "g2.toml", renamed), "--out", grid)  # no --force needed
    assert method_cells(cli("aggregate", grid, "--format", "markdown", "--quiet").output)[1] == "MTL+L1 (ours)"
    other = tmp_path / "other"
    cli("grid", "submit", write_spec(tmp_path / "g3.toml", renamed.replace("(ours)", "(theirs)")), "--out", other)
    both = cli("aggregate", grid, other, "--format", "markdown", "--quiet")
    assert method_cells(both.output)[1] == "MTL+L1 (ours)"
    assert "names method 'mtl_l1' 'MTL+L1 (theirs)'" in " ".join(both.output.split())


@pytest.mark.parametrize("table, fragment", [
    ('[display.method]\nmtl_ll = "x"\n', "[display.method] 'mtl_ll' is not a method (did you mean 'mtl_l1'?)"),
    ('[display.method]\nerm = 3\n', "[display.method] erm must be a name to print"),
    ('[display.model]\nmlp = "x"\n', "unknown key `model` in [display]"),
    ('[display]\nerm = "x"\n', "unknown key `erm` in [display]; valid: method, dataset"),
    ('[display]\nmethod = "x"\n', "`display.method` must be a table"),
])
def test_bad_display_tables_are_one_line(cli, tmp_path, table, fragment):
    path = write_spec(tmp_path / "g.toml", GRID.replace("[executor]", table + "[executor]"))
    result = cli("grid", "submit", path, "--dry-run", ok=False)
    assert result.exit_code == 2 and fragment in " ".join(result.output.split())


def test_every_csv_holds_percent_and_the_printed_names_beside_the_keys(cli, grid, tmp_path):
    """The main CSV and its side tables: accuracies in percent and differences in percentage points, in columns
    that say so, and the names the Markdown table prints beside the keys scripts select on."""
    import pandas as pd

    shown = cli("aggregate", grid, "--format", "markdown", "--quiet").output
    cli("aggregate", grid, "--output", tmp_path / "t.csv", "--baseline", "erm", "--show-hparams", "--quiet")
    main = pd.read_csv(tmp_path / "t.csv")
    assert {"mean_pct", "lower_pct", "upper_pct", "half_width_pp"} <= set(main.columns)
    assert not {"mean", "lower", "upper", "half_width"} & set(main.columns)
    assert set(zip(main["method"], main["method_display"], strict=True)) == {("erm", "ERM"), ("mtl_l1", "Ours")}
    assert set(main["dataset_display"]) == {"Toy"}
    worst = main[(main["method"] == "mtl_l1") & (main["metric"] == "worst_group_acc")].iloc[0]
    ours = next(line for line in shown.splitlines() if line.startswith("| Ours"))
    assert ours.split("|")[3].split()[0].strip("*") == f"{worst['mean_pct']:.1f}"  # the table's number, same unit
    assert 1 < main["mean_pct"].max() <= 100

    differences = pd.read_csv(tmp_path / "t.differences.csv")
    assert {"mean_diff_pp", "lower_pp", "upper_pp", "half_width_pp", "method_display"} <= set(differences.columns)
    by_hand = main.set_index(["method", "metric"])["mean_pct"]
    for r in differences.itertuples():
        assert r.mean_diff_pp == pytest.approx(by_hand[("mtl_l1", r.metric)] - by_hand[("erm", r.metric)])
    hparams = pd.read_csv(tmp_path / "t.hparams.csv")
    assert "score_pct" in hparams and 1 < hparams["score_pct"].max() <= 100
    assert list(hparams["method_display"]) == ["ERM", "Ours"]

    tex = tmp_path / "t.tex"
    cli("aggregate", grid, "--output", tex, "--baseline", "erm", "--show-hparams", "--quiet")
    for side in ("hparams", "differences"):
        text = (tmp_path / f"t.{side}.tex").read_text()
        assert "Ours" in text and "Toy" in text and r"mtl\_l1" not in text, side
    assert "vs ERM (percentage points" in (tmp_path / "t.differences.tex").read_text()
