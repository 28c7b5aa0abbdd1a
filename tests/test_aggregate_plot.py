"""Figures from a real (tiny) grid: files produced, non-empty, real PNGs; the sweep table is right."""

from __future__ import annotations

import pytest

from robustmtl.aggregate.plot import sweep_heatmap, sweep_table, tradeoff_figure
from robustmtl.grid.submit import submit
from tests.conftest import tiny_grid, write_spec

SPEC = tiny_grid("plots", ["erm", "mtl_l1"], [0, 1],
                 sweeps={"mtl_l1": {"alpha_aux": [0.5, 1.0], "alpha_reg": [0.01, 0.1]}})


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    from rich.console import Console

    root = tmp_path_factory.mktemp("plots")
    submit(write_spec(root / "g.toml", SPEC), root / "grid", None, False, Console(quiet=True))
    return root / "grid"


def test_figures_are_written_as_png_and_pdf(grid, tmp_path):
    paths = tradeoff_figure([grid], "worst-val", tmp_path, ("png", "pdf"))
    paths += sweep_heatmap([grid], "worst-val", tmp_path, ("png", "pdf"))
    assert sorted(p.name for p in paths) == ["sweep_mtl_l1.pdf", "sweep_mtl_l1.png", "tradeoff.pdf", "tradeoff.png"]
    for p in paths:
        head = p.read_bytes()[:8]
        assert p.stat().st_size > 1000
        assert head.startswith(b"\x89PNG") if p.suffix == ".png" else head.startswith(b"%PDF")


def test_sweep_table_has_one_cell_per_alpha_pair(grid):
    table = sweep_table([grid], "worst-val", "mtl_l1")
    assert len(table) == 4
    assert set(zip(table["alpha_aux"], table["alpha_reg"], strict=True)) == {
        (0.5, 0.01), (0.5, 0.1), (1.0, 0.01), (1.0, 0.1)}
    assert table["worst_group_acc"].between(0, 1).all()
