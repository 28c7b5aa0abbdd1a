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
    terminal = cli("aggregate", grid).output  # the terminal keeps the keys the options take
    assert "mtl_l1" in terminal and "Ours" not in terminal


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
