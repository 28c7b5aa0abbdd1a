"""`plot --by X --by ... --by C --method M` from three keys on: one figure of M's sweep, X on the x axis, a column
per value of C, a line per combination of the keys between, a row per quantity; drawn from a synthetic table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from robustmtl.aggregate.conditions import ConditionTable
from robustmtl.aggregate.units import stat_column
from tests.test_aggregate_figure_axes import assert_accuracy_limits, drawn  # noqa: F401 (a fixture)
from tests.test_conditions import overlaps  # noqa: F401 (a fixture)

ALPHAS = (0.0498, 0.3679, 2.7183)
BY = ["alpha_reg", "h_dim", "h_norm", "spurious_variance_ratio"]


def capacity_table() -> ConditionTable:
    """Shaped like the capacity study: mtl_l1 and l1 over alpha_reg, erm and mtl without it (None)."""
    rng = np.random.default_rng(0)
    rows = []
    for h_dim in (4, 64):
        for h_norm in (True, False):
            for ratio in (0.25, 1.0, 4.0):
                for method, alphas in (("erm", (None,)), ("mtl", (None,)), ("l1", ALPHAS), ("mtl_l1", ALPHAS)):
                    for alpha in alphas:
                        diff = rng.normal(0, 5)
                        row = {"dataset": "synthetic", "alpha_reg": alpha, "h_dim": h_dim, "h_norm": h_norm,
                               "spurious_variance_ratio": ratio, "method": method,
                               "worst_group_acc_diff_pp": diff, "worst_group_acc_diff_lo_pp": diff - 3,
                               "worst_group_acc_diff_hi_pp": diff + 3}
                        for field, centre in (("reliance_core", 0.5), ("reliance_spurious", 0.3),
                                              ("probe_a_acc", 97.0), ("active_units", h_dim / 2)):
                            row[stat_column(field, "mean")] = centre * (1 + rng.normal(0, 0.05))
                            row[stat_column(field, "hw")] = abs(centre * rng.normal(0, 0.05))
                        rows.append(row)
    return ConditionTable(by=BY, cells=pd.DataFrame(rows), baseline="erm", select="worst-val", warnings=[])


def test_one_column_per_last_key_one_line_per_middle_combination_one_row_per_quantity(tmp_path, drawn):  # noqa: F811
    from robustmtl.aggregate.conditions_sweep import sweep_figure

    paths = sweep_figure(capacity_table(), tmp_path, "mtl_l1")
    assert [p.name for p in paths] == ["sweep_mtl_l1_by_alpha_reg.png", "sweep_mtl_l1_by_alpha_reg.pdf"]
    fig = drawn["sweep_mtl_l1_by_alpha_reg"]
    axes = np.array(fig.axes[:15]).reshape(5, 3)
    assert [ax.get_title() for ax in axes[0]] == [f"spurious_variance_ratio = {r}" for r in ("0.25", "1.0", "4.0")]
    assert [ax.get_ylabel().split("\n")[0] for ax in axes[:, 0]] == [
        "Δ worst-group vs ERM", "active units of h", "probe accuracy for a (%)", "margin reliance on spurious",
        "margin reliance on core"]
    for ax in axes.flat:
        lines = [container.lines[0] for container in ax.containers]
        assert len(lines) == 4  # (h_dim, h_norm): 2 x 2, mtl_l1 only, erm and mtl (no alpha_reg) left out
        assert len({(line.get_color(), line.get_marker()) for line in lines}) == 4
        assert all(len(line.get_xdata()) == len(ALPHAS) for line in lines)
    labels = [t.get_text() for t in axes[0][-1].get_legend().get_texts()]
    assert labels == [f"h_dim = {d}, h_norm = {n}" for d in (4, 64) for n in (False, True)]
    for ax in axes[2]:
        assert_accuracy_limits(ax.get_ylim())
    assert axes[1][0].get_yscale() == "log"
    assert all(t.get_text().isdigit() for t in axes[1][0].get_yticklabels() if t.get_text())  # counts, not 2^k


def test_fewer_than_three_keys_or_a_method_without_the_sweep_draws_nothing(tmp_path):
    from robustmtl.aggregate.conditions_sweep import sweep_figure

    table = capacity_table()
    assert sweep_figure(table, tmp_path, "mtl") == []  # no run of mtl has alpha_reg set
    two = ConditionTable(by=BY[:2], cells=table.cells, baseline="erm", select="worst-val", warnings=[])
    assert sweep_figure(two, tmp_path, "mtl_l1") == []


@pytest.mark.parametrize("method", ["l1", "mtl_l1"])
def test_the_gain_row_is_the_tables_paired_difference(tmp_path, drawn, method):  # noqa: F811
    from robustmtl.aggregate.conditions_sweep import sweep_figure

    table = capacity_table()
    sweep_figure(table, tmp_path, method)
    fig = drawn[f"sweep_{method}_by_alpha_reg"]
    first = fig.axes[0]  # gain, spurious_variance_ratio = 0.25, first line: h_dim = 4, h_norm = False
    cells = table.cells
    expected = cells[(cells["method"] == method) & (cells["h_dim"] == 4) & (~cells["h_norm"])
                     & (cells["spurious_variance_ratio"] == 0.25)].sort_values("alpha_reg")
    np.testing.assert_allclose(np.asarray(first.containers[0].lines[0].get_ydata(), dtype=float),
                               expected["worst_group_acc_diff_pp"].to_numpy(dtype=float))


def test_no_title_or_label_lands_on_another(tmp_path, overlaps):  # noqa: F811
    from robustmtl.aggregate.conditions_sweep import sweep_figure

    paths = sweep_figure(capacity_table(), tmp_path, "mtl_l1")
    assert overlaps == {p.name: [] for p in paths} and len(paths) == 2
