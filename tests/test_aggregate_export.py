"""Table renderers on hand-built Summaries: structure, formatting, markers, escaping."""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from rich.console import Console

from robustmtl.aggregate import (
    RunCounts,
    Summary,
    hparams_table,
    render_rich,
    to_csv,
    to_latex,
    to_markdown,
)
from robustmtl.aggregate.export import MISSING, caption, method_order
from robustmtl.aggregate.names import RAW_NAMES, DisplayNames
from robustmtl.aggregate.summary import CELL_COLUMNS
from robustmtl.registry import DATASETS, METHODS
from robustmtl.render import render
from robustmtl.render.latex import escape as latex_escape

# (method, dataset) -> (avg mean, worst mean, half-width, n, n_expected, uses_train_groups)
Spec = dict[tuple[str, str], tuple[float, float, float, int, int, bool]]
BASE: Spec = {
    ("erm", "waterbirds"): (0.90, 0.70, 0.012, 3, 3, False),
    ("gdro", "waterbirds"): (0.88, 0.85, 0.020, 3, 3, True),
    ("mtl_l1", "waterbirds"): (0.91, 0.80, 0.015, 3, 3, False),
    ("erm", "civil_comments"): (0.92, 0.60, 0.010, 3, 3, False),
    ("gdro", "civil_comments"): (0.89, 0.70, 0.030, 3, 3, True),
    ("mtl_l1", "civil_comments"): (0.90, 0.72, 0.010, 3, 3, False),
}


def make_summary(spec: Spec, ci: str = "t", select: str = "worst-val", excluded: int = 0,
                 codes: dict[tuple[str, str], str] | None = None) -> Summary:
    rows, chosen = [], []
    for (method, dataset), (avg, worst, hw, n, n_exp, utg) in spec.items():
        for metric, mean in (("avg_acc", avg), ("worst_group_acc", worst)):
            h = hw if n > 1 else math.nan
            rows.append(
                {
                    "dataset": dataset,
                    "method": method,
                    "metric": metric,
                    "mean": mean,
                    "lower": mean - h,
                    "upper": mean + h * (1.5 if ci == "bootstrap" else 1),
                    "half_width": math.nan if ci == "bootstrap" else h,
                    "n": n,
                    "n_expected": n_exp,
                    "n_unfinished": 0,
                    "select": select,
                    "ci": ci,
                    "uses_train_groups": utg,
                    "code": (codes or {}).get((method, dataset), "0a1b2c3d4e5f"),
                }
            )
        chosen.append(
            {
                "dataset": dataset,
                "method": method,
                "setting_id": "0123456789ab",
                "score": worst,
                "n_seeds": n,
                "model": "bert",
                "hparams": {"lr": 1e-5, "alpha_aux": 0.5},
                "searched": {"lr": 1e-5} if method == "erm" else {},
                "uses_train_groups": utg,
                "n_expected": n_exp,
                "epochs": {s: 2 + s for s in range(n)},
            }
        )
    counts = RunCounts(found=20, complete=20 - excluded, excluded_incomplete=excluded, helper=0)
    return Summary(
        pd.DataFrame(rows, columns=CELL_COLUMNS), pd.DataFrame(chosen), pd.DataFrame(), select, ci, counts
    )


def md_table(md: str) -> list[list[str]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln)[1:-1]] for ln in lines]


def test_method_order() -> None:
    assert method_order(["zeta", "mtl", "erm", "alpha", "jtt", "gdro", "mtl_l1"]) == [
        "erm",
        "jtt",
        "gdro",
        "mtl",
        "mtl_l1",
        "alpha",
        "zeta",
    ]


def test_csv_is_long_format() -> None:
    s = make_summary({**BASE, ("erm", "waterbirds"): (0.9, 0.7, 0.0, 1, 3, False)})
    df = pd.read_csv(io.StringIO(to_csv(s)))
    assert list(df.columns) == ["dataset", "dataset_display", "method", "method_display", "metric", "mean_pct",
                                "lower_pct", "upper_pct", "half_width_pp", *CELL_COLUMNS[7:]]
    assert len(df) == len(BASE) * 2
    assert set(df["metric"]) == {"avg_acc", "worst_group_acc"}
    one = df[(df["method"] == "erm") & (df["dataset"] == "waterbirds")]
    assert one["lower_pct"].isna().all() and (one["n"] == 1).all() and (one["n_expected"] == 3).all()
    row = df[(df["method"] == "gdro") & (df["dataset"] == "waterbirds") & (df["metric"] == "worst_group_acc")]
    assert row.iloc[0]["mean_pct"] == pytest.approx(85.0) and row.iloc[0]["half_width_pp"] == pytest.approx(2.0)
    assert (row.iloc[0]["method_display"], row.iloc[0]["dataset_display"]) == ("Group DRO", "Waterbirds")
    assert bool(row.iloc[0]["uses_train_groups"]) and row.iloc[0]["select"] == "worst-val"


def test_markdown_shape_bold_and_markers() -> None:
    md = to_markdown(make_summary(BASE))
    table = md_table(md)
    assert len({len(r) for r in table}) == 1
    assert table[0] == [
        "Method",
        "civil\\_comments avg",  # not a registered dataset: printed as its key
        "civil\\_comments worst",
        "Waterbirds avg",
        "Waterbirds worst",
    ]
    assert [r[0] for r in table[2:]] == ["ERM", "Group DRO\\*", "MTL+ℓ1"]
    body = {r[0]: r[1:] for r in table[2:]}
    assert body["ERM"][0] == "**92.0** ± 1.0"
    assert body["Group DRO\\*"][3] == "**85.0** ± 2.0"
    assert body["MTL+ℓ1"][2] == "**91.0** ± 1.5"
    assert sum("**" in c for r in body.values() for c in r) == 4  # exactly one best per column
    assert "n = 3 seeds per cell" in md and "worst-val" in md and "Student-t" in md
    assert "uses training group labels" in md
    assert "†" not in md


def test_markdown_ties_bold_both_and_varying_n_gets_columns() -> None:
    spec = {**BASE, ("erm", "waterbirds"): (0.90, 0.85, 0.0, 1, 3, False)}  # ties gdro's 85.0 worst
    table = md_table(to_markdown(make_summary(spec), RAW_NAMES))
    assert len(table[0]) == 1 + 3 * 2 and table[0][3] == "civil\\_comments n"
    body = {r[0]: r[1:] for r in table[2:]}
    assert body["erm"][4] == "**85.0**†"  # n = 1: no ±; fewer seeds: †
    assert body["erm"][5] == "1"
    assert body["gdro\\*"][4].startswith("**85.0**")


def test_missing_cell_is_a_dash() -> None:
    spec = {k: v for k, v in BASE.items() if k != ("gdro", "civil_comments")}
    body = {r[0]: r[1:] for r in md_table(to_markdown(make_summary(spec), RAW_NAMES))[2:]}
    assert body["gdro\\*"][:2] == [MISSING, MISSING]
    assert "--" in to_latex(make_summary(spec))


def _braces_balanced(tex: str) -> bool:
    depth = 0
    for ch in tex.replace(r"\{", "").replace(r"\}", ""):
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def _tabular_rows(tex: str) -> tuple[int, list[int]]:
    spec = re.search(r"\\begin\{tabular\}\{([^}]*)\}", tex).group(1)
    body = tex.split(r"\begin{tabular}")[1].split(r"\end{tabular}", maxsplit=1)[0]
    widths = []
    for line in body.splitlines():
        if not line.rstrip().endswith(r"\\"):
            continue
        cells = re.split(r"(?<!\\)&", line)
        widths.append(
            sum(int(m.group(1)) if (m := re.search(r"\\multicolumn\{(\d+)\}", c)) else 1 for c in cells)
        )
    return sum(ch in "lcr" for ch in spec), widths


@pytest.mark.parametrize("vary_n", [False, True])
def test_latex_structure(vary_n: bool) -> None:
    spec = {**BASE, ("we&ird_%#", "waterbirds"): (0.5, 0.4, 0.1, 2 if vary_n else 3, 3, False)}
    tex = to_latex(make_summary(spec), names=RAW_NAMES)
    assert _braces_balanced(tex)
    assert tex.isascii()  # no ± or † glyphs: they need font/encoding setup in older TeX installs
    ncols, widths = _tabular_rows(tex)
    assert ncols == 1 + (3 if vary_n else 2) * 2
    assert len(widths) == 2 + 4  # two header rows + four methods
    assert all(w == ncols for w in widths)
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"we\&ird\_\%\#" in tex and r"mtl\_l1" in tex and r"civil\_comments" in tex
    assert tex.count(r"\textbf{") == 4
    assert r"\textbf{92.0} $\pm$ 1.0" in tex
    assert "gdro$^{*}$" in tex
    assert (r"$^{\dagger}$" in tex) == vary_n
    cap = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert "worst-val" in cap and "Student-t" in cap and ("n = 3" in cap) != vary_n
    assert re.sub(r"\\_|\$[^$]*\$", "", tex).count("_") == 0  # every underscore escaped or in math


def test_latex_bootstrap_and_oracle_caption() -> None:
    tex = to_latex(make_summary(BASE, ci="bootstrap", select="oracle"))
    cap = re.search(r"\\caption\{(.*)\}", tex).group(1)
    assert "oracle (upper bound)" in cap and "percentile bootstrap" in cap
    assert r"\textbf{92.0} [91.0, 93.5]" in tex and "60.0 [59.0, 61.5]" in tex
    body = tex.split(r"\midrule")[1]
    assert r"\pm" not in body


def test_latex_escape() -> None:
    assert latex_escape(r"a_b&c%d$e#f{g}h~i^j\k") == (
        r"a\_b\&c\%d\$e\#f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}k"
    )


@pytest.fixture
def pdflatex() -> str:
    """pdflatex, or a skip; `make test` sets ROBUSTMTL_REQUIRE_LATEX=1 (after scripts/test-deps.sh installs it),
    so there a missing pdflatex fails instead of silently skipping the compile."""
    found = shutil.which("pdflatex")
    if found is None:
        if os.environ.get("ROBUSTMTL_REQUIRE_LATEX") == "1":
            pytest.fail("pdflatex required (ROBUSTMTL_REQUIRE_LATEX=1) but not installed: run scripts/test-deps.sh")
        pytest.skip("pdflatex not installed (scripts/test-deps.sh installs it)")
    return found


@pytest.mark.parametrize(("ci", "select", "names"), [("t", "worst-val", RAW_NAMES),
                                                     ("bootstrap", "oracle", DisplayNames())])
def test_latex_compiles(pdflatex: str, tmp_path: Path, ci: str, select: str, names: DisplayNames) -> None:
    odd = "[we&ird]_%#~^\\{x}"
    spec = {
        **BASE,
        (odd, "water_birds"): (0.5, 0.4, 0.1, 2, 3, False),
        ("erm", "one_seed"): (0.5, 0.4, 0, 1, 1, 0),
        **{(m, "celeba"): (0.5, 0.4, 0.1, 3, 3, False) for m in METHODS},  # every display name
    }
    doc = (
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\begin{document}\n"
        + to_latex(make_summary(spec, ci=ci, select=select), names=names)
        + "\\end{document}\n"
    )
    (tmp_path / "t.tex").write_text(doc)
    proc = subprocess.run(
        [pdflatex, "-interaction=nonstopmode", "-halt-on-error", "t.tex"],
        cwd=tmp_path,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]


def _rich_text(table: object, width: int = 200, styles: bool = False) -> str:
    console = Console(
        record=True,
        width=width,
        file=io.StringIO(),
        force_terminal=styles,
        color_system="standard" if styles else None,
    )
    console.print(table)
    return console.export_text(styles=styles)


def test_rich_table_content_and_no_truncation() -> None:
    spec = {**BASE, ("a_really_long_method_name_x", "waterbirds"): (0.5, 0.4, 0.1, 2, 3, False)}
    s = make_summary(spec, select="oracle", excluded=2)
    text = _rich_text(render_rich(s))
    assert "oracle (upper bound)" in text
    assert "92.0 ± 1.0" in text and "Group DRO*" in text and "gdro" not in text and "†" in text
    assert "2 incomplete run(s) excluded" in text
    narrow = _rich_text(render_rich(s), width=40)
    assert "…" not in narrow
    first_column = "".join(ln.split("│")[1].strip() for ln in narrow.splitlines() if ln.startswith("│"))
    assert "a_really_long_method_name_x" in first_column  # folded over lines, never cut


def test_rich_caption_is_printed_at_the_terminal_width_not_the_table_width() -> None:
    s = make_summary({("erm", "synthetic"): (0.7, 0.4, 0.03, 3, 3, False)})
    lines = _rich_text(render_rich(s), width=100).splitlines()
    table_width = max(len(ln) for ln in lines if ln.startswith(("┏", "│", "└")))
    below = lines[next(i for i, ln in enumerate(lines) if ln.startswith("└")) + 1:]
    assert below[0].startswith("Test accuracy (%) at the epoch") and table_width < 40
    assert max(len(ln) for ln in below) > table_width and len(below) <= 4  # caption, code note
    assert " ".join(" ".join(below).split()).startswith(caption(s))


def test_rich_bold_marks_best() -> None:
    styled = _rich_text(render_rich(make_summary(BASE)), styles=True)
    bold = re.findall(r"\x1b\[1m\s*([^\x1b]*)", styled.split("┡")[1])  # body only: headers are bold too
    assert sorted(bold) == ["72.0", "85.0", "91.0", "92.0"]


def test_hparams_views() -> None:
    s = make_summary(BASE)
    text = _rich_text(render(hparams_table(s), "table"), width=300)
    assert "0123456789ab" in text and "0:2 1:3 2:4" in text and "3/3" in text and "val worst" in text
    assert "lr=1e-05" in text and "(one setting)" in text and "alpha_aux" not in text
    assert "alpha_aux=0.5" in _rich_text(render(hparams_table(s, full=True), "table"), width=300)
    table = md_table(render(hparams_table(s), "markdown"))
    assert len(table) == 2 + len(BASE) and len({len(r) for r in table}) == 1
    assert table[2][:2] == ["civil\\_comments", "ERM"] and table[2][-1] == "lr=1e-05"
    assert table[0][4] == "val worst (%)" and table[2][4] == "60.0"  # the score, in percent like every accuracy
    assert "test worst" in render(hparams_table(make_summary(BASE, select="oracle")), "markdown")


def test_latex_small_intervals_keep_structure() -> None:
    tex = to_latex(make_summary(BASE), small_intervals=True)
    assert _braces_balanced(tex)
    assert r"\textbf{92.0} {\scriptsize $\pm$ 1.0}" in tex
    ncols, widths = _tabular_rows(tex)
    assert all(w == ncols for w in widths)
    assert r"\scriptsize" not in to_latex(make_summary(BASE))


def test_cells_from_several_code_versions_are_flagged_and_the_code_is_named():
    summary = make_summary(BASE, codes={("gdro", "waterbirds"): "0a1b2c3d4e5f; 9f8e7d6c5b4a+dirty.1234abcd"})
    md = to_markdown(summary)
    gdro = next(line for line in md.splitlines() if line.startswith("| Group DRO"))
    erm = next(line for line in md.splitlines() if line.startswith("| ERM"))
    assert gdro.count("‡") == 2 and "‡" not in erm  # both metrics of the mixed cell, nothing else
    assert "‡ runs from more than one code version" in md
    assert "Code: 0a1b2c3d4e5f, 9f8e7d6c5b4a+dirty.1234abcd." in md
    tex = to_latex(summary)
    assert tex.count(r"$^{\ddagger}$") == 3 and "Code: 0a1b2c3d4e5f, 9f8e7d6c5b4a+dirty.1234abcd" in tex
    plain = make_summary(BASE)
    assert "‡" not in to_markdown(plain) and "Code: 0a1b2c3d4e5f." in to_markdown(plain)


def test_tables_print_display_names_raw_keys_on_request_and_grid_overrides():
    summary = make_summary(BASE)
    tex = to_latex(summary)
    assert r"MTL+$\ell_{1}$" in tex and "Group DRO$^{*}$" in tex and r"\multicolumn{2}{c}{Waterbirds}" in tex
    assert r"mtl\_l1" not in tex and "{waterbirds}" not in tex
    raw = to_latex(summary, names=RAW_NAMES)
    assert r"mtl\_l1" in raw and "gdro$^{*}$" in raw and "{waterbirds}" in raw
    ours = DisplayNames(methods={"mtl_l1": "Ours"}, datasets={"waterbirds": "WB"})
    rows = [r[0] for r in md_table(to_markdown(summary, ours))]
    assert rows[2:] == ["ERM", "Group DRO\\*", "Ours"] and md_table(to_markdown(summary, ours))[0][3] == "WB avg"
    csv = pd.read_csv(io.StringIO(to_csv(summary, ours)))  # the keys for scripts, the printed names beside them
    assert {"mtl_l1": "Ours"}.items() <= dict(zip(csv["method"], csv["method_display"], strict=True)).items()
    assert set(csv["dataset_display"]) == {"WB", "civil_comments"}  # a key the registry does not know: itself


def test_every_plugin_declares_a_display_name():
    assert all(p.display for p in (*METHODS.values(), *DATASETS.values()))
    assert {k: METHODS[k].display for k in ("gdro", "ldro", "l1", "mtl_l1")} == {
        "gdro": "Group DRO", "ldro": "L-DRO", "l1": "ℓ1", "mtl_l1": "MTL+ℓ1"}


def assert_readable(text: str, values: list[str], width: int = 80) -> None:
    """Nothing cut with an ellipsis, no line past the terminal, and every value whole on one line."""
    lines = text.splitlines()
    assert "…" not in text and max(len(line) for line in lines) <= width
    broken = [v for v in values if not any(v in line for line in lines)]
    assert not broken, f"values not printed whole: {broken}\n{text}"


def four_dataset_summary() -> Summary:
    spec = {**BASE, **{(m, d): (0.912, 0.634, 0.0123, 3, 3, m == "gdro") for m in ("erm", "gdro", "mtl_l1")
                       for d in ("celeba", "multinli")}}
    s = make_summary(spec)
    s.chosen["searched"] = [{"alpha_aux": 0.5, "alpha_reg": 0.01, "lr": 1e-05, "weight_decay": 0.0001}] * len(spec)
    return s


def test_the_main_table_at_80_columns_prints_every_interval_whole() -> None:
    """Four datasets' columns do not fit 80 columns: they continue in a second table, the method repeated."""
    s = four_dataset_summary()
    cells = s.cells.dropna(subset=["half_width"])
    intervals = [f"{100 * m:.1f} ± {100 * h:.1f}" for m, h in zip(cells["mean"], cells["half_width"], strict=True)]
    text = _rich_text(render_rich(s), width=80)
    assert_readable(text, intervals)
    assert text.count("Selection: worst-val") == 2 and "(continued)" in text


def test_the_hyperparameter_table_at_80_columns_wraps_between_settings_never_inside_one() -> None:
    s = four_dataset_summary()
    hparams = _rich_text(render(hparams_table(s, full=True), "table"), width=80)
    assert_readable(hparams, ["0123456789ab", "0:2", "1:3", "2:4", "alpha_aux=0.5,", "alpha_reg=0.01,", "lr=1e-05,",
                              "weight_decay=0.0001", "civil_comments", "Waterbirds"])
