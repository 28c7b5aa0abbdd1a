"""What each figure's axes show, drawn from small synthetic tables (no training): accuracy axes span at least a few
points and stay inside [0, 100] (probe accuracies too), bands are clipped, the heatmap outlines the
selected setting on a colour scale no narrower than seed noise, methods on one line stay told apart, and a
condition's ticks read as the tables print its values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from robustmtl.aggregate.axes import MIN_ACCURACY_SPAN
from robustmtl.aggregate.load import RunCounts
from robustmtl.aggregate.summary import CELL_COLUMNS, Summary
from tests.test_conditions import regimes_table


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Each figure as save_figure is about to write it, by file stem (the files are still written)."""
    from matplotlib.figure import Figure

    figures: dict[str, Any] = {}
    save = Figure.savefig

    def savefig(fig: Any, path: Any, *args: Any, **kwargs: Any) -> Any:
        figures[Path(path).stem] = fig
        fig.canvas.draw()
        return save(fig, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def summary_of(cells: list[tuple[str, str, float, float, float]], chosen: dict[str, dict[str, float]] | None = None,
               per_seed: pd.DataFrame | None = None) -> Summary:
    """A Summary from (method, metric, mean, lower, upper) fractions of one dataset, one seed each."""
    rows = [{"dataset": "synthetic", "method": m, "metric": metric, "mean": mean, "lower": lo, "upper": hi,
             "half_width": (hi - lo) / 2, "n": 1, "n_expected": 1, "n_unfinished": 0, "select": "worst-val", "ci": "t",
             "uses_train_groups": False, "code": "test"} for m, metric, mean, lo, hi in cells]
    chosen_rows = [{"dataset": "synthetic", "method": m, "hparams": h} for m, h in (chosen or {}).items()]
    return Summary(pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(chosen_rows, columns=["dataset", "method",
                                                                                                  "hparams"]),
                   per_seed if per_seed is not None else pd.DataFrame(), "worst-val", "t", RunCounts(1, 1, 0, 0))


def assert_accuracy_limits(limits: tuple[float, float]) -> None:
    low, high = limits
    assert low >= 0 and high <= 100, limits
    assert high - low >= MIN_ACCURACY_SPAN, limits


def test_the_heatmap_outlines_the_selected_setting_on_a_colour_scale_of_at_least_a_few_points(tmp_path, drawn):
    from matplotlib.patches import Rectangle

    from robustmtl.aggregate.plot import sweep_heatmap

    table = pd.DataFrame([{"dataset": "synthetic", "alpha_aux": aux, "alpha_reg": reg, "n": 1,
                           "worst_group_acc": 0.8 + 0.001 * i}
                          for i, (aux, reg) in enumerate([(0.5, 0.01), (0.5, 0.1), (1.0, 0.01), (1.0, 0.1)])])
    summary = summary_of([], chosen={"mtl_l1": {"alpha_aux": 1.0, "alpha_reg": 0.01}})
    sweep_heatmap(table, summary, "mtl_l1", tmp_path, formats=("png",))
    ax = drawn["sweep_mtl_l1"].axes[0]
    norm = ax.images[0].norm
    assert norm.vmax - norm.vmin >= MIN_ACCURACY_SPAN and norm.vmin >= 0 and norm.vmax <= 100
    marks = [p for p in ax.patches if isinstance(p, Rectangle) and not p.get_fill()]
    assert [(m.get_x(), m.get_y(), m.get_width(), m.get_height()) for m in marks] == [(-0.5, 0.5, 1, 1)]  # row 1.0
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"setting selected ({summary.selector.label})"]


@pytest.mark.parametrize(("avg", "worst"), [((0.8001, 0.8002), (0.7001, 0.7003)), ((0.999, 0.9995), (0.998, 0.999)),
                                             ((0.001, 0.002), (0.0, 0.001))])
def test_tradeoff_axes_span_a_few_points_inside_0_to_100(tmp_path, drawn, avg, worst):
    from robustmtl.aggregate.plot import tradeoff_figure

    cells = [(m, metric, v, v - 0.002, v + 0.002) for m, a, w in (("erm", avg[0], worst[0]), ("jtt", avg[1], worst[1]))
             for metric, v in (("avg_acc", a), ("worst_group_acc", w))]
    tradeoff_figure(summary_of(cells), tmp_path, formats=("png",))
    ax = drawn["tradeoff"].axes[0]
    assert_accuracy_limits(ax.get_xlim())
    assert_accuracy_limits(ax.get_ylim())


def test_curve_bands_are_clipped_to_0_100_and_the_axis_spans_a_few_points():
    from robustmtl.aggregate.curves import METRICS, SPLITS, curve_figure

    rows = [{"dataset": "synthetic", "method": "erm", "split": split, "metric": metric, "epoch": epoch,
             "mean_pct": 99.5 + 0.01 * epoch, "lower_pct": 97.0, "upper_pct": 102.0, "n": 2}
            for split in SPLITS for metric in METRICS for epoch in (1, 2, 3)]
    per_seed = pd.DataFrame({"dataset": ["synthetic"] * 2, "method": ["erm"] * 2, "seed": [0, 1], "epoch": [2, 3]})
    fig = curve_figure(pd.DataFrame(rows), summary_of([], per_seed=per_seed), "synthetic")
    ax = fig.axes[0]
    bands = np.concatenate([path.vertices for band in ax.collections for path in band.get_paths()])
    assert len(ax.collections) == 4 and bands[:, 1].max() == 100.0 and bands[:, 1].min() == 97.0
    assert_accuracy_limits(ax.get_ylim())


def test_probe_accuracy_axes_stay_in_0_100_and_methods_differ_in_marker_and_line(tmp_path, drawn):
    from robustmtl.aggregate.conditions_plot import mechanism_figure

    table = regimes_table()
    table.cells["probe_a_acc_mean_pct"] = table.cells["probe_a_acc_mean_pct"].clip(upper=100.0)
    table.cells["probe_a_acc_hw_pp"] = 5.0  # an interval that would run past 100 from a mean of about 99
    mechanism_figure(table, tmp_path)
    axes = drawn["mechanism_by_spurious_variance_ratio"].axes
    probes = [ax for ax in axes if ax.get_title().startswith("probe accuracy for a")]
    assert len(probes) == 2
    for ax in probes:
        assert_accuracy_limits(ax.get_ylim())
        lines = [container.lines[0] for container in ax.containers]
        styles = [(line.get_marker(), line.get_linestyle()) for line in lines]
        assert len(styles) == 6 and len({s[0] for s in styles}) == 6 and len({s[1] for s in styles}) > 1
        assert len({line.get_xdata()[0] for line in lines}) == 6  # dodged: no two methods' markers at one x
        for container in ax.containers:
            ends = np.concatenate([seg for seg in container.lines[2][0].get_segments()])
            assert ends[:, 1].max() <= 100.0


@pytest.mark.parametrize("figure", ["gain", "mechanism"])
def test_condition_ticks_read_as_the_tables_print_the_values(tmp_path, drawn, figure):
    from robustmtl.aggregate import conditions_plot
    from robustmtl.aggregate.conditions import table_rows

    table = regimes_table()
    for column in ("n", "avg_acc_mean_pct", "avg_acc_hw_pp", "worst_group_acc_mean_pct", "worst_group_acc_hw_pp"):
        table.cells[column] = 1
    draw = {"gain": conditions_plot.gain_figure, "mechanism": conditions_plot.mechanism_figure}[figure]
    draw(table, tmp_path)
    header, rows = table_rows(table)
    printed = list(dict.fromkeys(r[header.index("σ²spur/σ²core")] for r in rows))
    assert printed == ["0.25", "0.5", "1.0", "2.0", "4.0"]
    for ax in drawn[f"{figure}_by_spurious_variance_ratio"].axes:
        if ax.get_visible() and ax.get_xlabel():
            assert ax.get_xscale() == "log"
            assert [t.get_text() for t in ax.get_xticklabels()] == printed
            assert [t.get_text() for t in ax.get_xticklabels(minor=True)] == []


def test_gain_axis_spans_a_few_points_around_small_differences(tmp_path, drawn):
    from robustmtl.aggregate.conditions_plot import gain_figure

    table = regimes_table()
    for column in ("worst_group_acc_diff_pp", "worst_group_acc_diff_lo_pp", "worst_group_acc_diff_hi_pp"):
        table.cells[column] = 0.01 * table.cells[column]
    gain_figure(table, tmp_path)
    low, high = drawn["gain_by_spurious_variance_ratio"].axes[0].get_ylim()
    assert high - low >= MIN_ACCURACY_SPAN
