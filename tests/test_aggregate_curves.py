"""`robustmtl plot --curves`: the drawn curves are the seeds' mean accuracy per epoch at the chosen setting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from robustmtl.aggregate import aggregate
from robustmtl.aggregate.curves import curve_figure, curve_table
from tests.conftest import read_records, tiny_grid, write_spec

SPEC = tiny_grid("curves", ["erm", "mtl_l1"], [0, 1], defaults={"epochs": 3},
                 sweeps={"mtl_l1": {"alpha_aux": [0.5, 2.0]}})


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """erm and mtl_l1 (two alpha_aux settings), two seeds, three epochs: 6 tiny runs."""
    from rich.console import Console

    from robustmtl.grid.submit import submit

    root = tmp_path_factory.mktemp("curves")
    submit(write_spec(root / "g.toml", SPEC), root / "grid", None, False, Console(quiet=True))
    return root / "grid"


def expected_curve(grid: Path, run_ids: list[str], split: str, metric: str) -> dict[int, tuple[float, float]]:
    """Epoch → (mean, 95% t half-width) in percent over the runs, straight from their metrics.jsonl."""
    values: dict[int, list[float]] = {}
    for run_id in run_ids:
        for r in read_records(grid / "runs" / run_id / "metrics.jsonl"):
            if r["split"] == split:
                values.setdefault(r["epoch"], []).append(100 * r[metric])
    return {e: (float(np.mean(v)), float(stats.t.ppf(0.975, len(v) - 1) * np.std(v, ddof=1) / np.sqrt(len(v))))
            for e, v in values.items()}


def test_the_drawn_curves_are_the_chosen_settings_seed_means_by_epoch(grid):
    summary = aggregate([grid])
    table = curve_table(summary)
    fig = curve_figure(table, summary, "synthetic")
    panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
    assert set(panels) == {"ERM (n=2)", "MTL+ℓ1 (n=2)"}
    for method, title in (("erm", "ERM (n=2)"), ("mtl_l1", "MTL+ℓ1 (n=2)")):
        chosen = summary.per_seed[summary.per_seed["method"] == method]
        assert chosen["setting_id"].nunique() == 1 and len(chosen) == 2
        lines = {line.get_label(): line for line in panels[title].get_lines()}
        for split in ("val", "test"):
            for metric in ("avg_acc", "worst_group_acc"):
                expected = expected_curve(grid, list(chosen["run_id"]), split, metric)
                line = lines[f"{split} {metric}"]
                assert list(line.get_xdata()) == sorted(expected) == [1, 2, 3]
                assert np.allclose(line.get_ydata(), [expected[e][0] for e in sorted(expected)])
                band = table[(table["method"] == method) & (table["split"] == split) & (table["metric"] == metric)]
                assert np.allclose(band["upper_pct"] - band["mean_pct"], [expected[e][1] for e in sorted(expected)])
        marked = sorted(ln.get_xdata()[0] for ln in panels[title].get_lines() if ln.get_label() == "_selected epoch")
        assert marked == sorted(set(chosen["epoch"]))


def test_plot_curves_writes_one_figure_per_dataset_with_its_numbers(cli, grid, tmp_path):
    out = tmp_path / "figs"
    result = cli("plot", grid, "--curves", "--out", out, "--raw-names")
    assert sorted(p.name for p in out.iterdir()) == ["curves_synthetic.csv", "curves_synthetic.pdf",
                                                    "curves_synthetic.png"], result.output
    written = pd.read_csv(out / "curves_synthetic.csv")
    assert list(written.columns[:4]) == ["dataset", "dataset_display", "method", "method_display"]
    assert set(written["method_display"]) == {"erm", "mtl_l1"}  # --raw-names: the keys in both columns
    summary = aggregate([grid])
    pd.testing.assert_frame_equal(written.drop(columns=["dataset_display", "method_display"]),
                                  curve_table(summary).reset_index(drop=True),
                                  check_exact=False, rtol=1e-5, check_dtype=False)
    assert written["mean_pct"].between(0, 100).all() and written["mean_pct"].max() > 1  # percent, not fractions
    assert (out / "curves_synthetic.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
