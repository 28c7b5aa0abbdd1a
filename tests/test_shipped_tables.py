"""Properties the shipped tables must have before they can say anything, read from the files themselves.

A demo compares methods only where ERM has a gap between its average and its worst group: a
regenerated table that lost it (a data or model change) fails here instead of shipping.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

AGGREGATES = Path(__file__).resolve().parent.parent / "aggregates"

# ERM from scratch, mean over the seeds: worst group at least 20 points, and 10 points below its average
GAP_DEMOS = {"text_spurious.csv": {"pretrain_epochs": "0"}, "mnist_spurious.csv": {"pretrain_epochs": "0"}}


def rows(name: str) -> list[dict[str, str]]:
    with open(AGGREGATES / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("name", sorted(GAP_DEMOS))
def test_erm_has_a_real_spurious_gap(name: str) -> None:
    condition = GAP_DEMOS[name]
    (erm,) = [r for r in rows(name) if r["method"] == "erm" and all(r[k] == v for k, v in condition.items())]
    assert int(erm["n"]) >= 5
    worst, avg = float(erm["worst_group_acc_mean"]), float(erm["avg_acc_mean"])
    assert worst >= 20.0, f"{name}: ERM's worst group {worst:.1f} < 20"
    assert avg - worst >= 10.0, f"{name}: ERM's average {avg:.1f} is within 10 points of its worst group"


@pytest.mark.parametrize("name", sorted(GAP_DEMOS))
def test_group_dro_closes_part_of_the_gap(name: str) -> None:
    """The group-aware reference: if it does not beat ERM's worst group, the groups or the data are wrong."""
    condition = GAP_DEMOS[name]
    by_method = {r["method"]: r for r in rows(name) if all(r[k] == v for k, v in condition.items())}
    assert float(by_method["gdro"]["worst_group_acc_diff_lo"]) > 0
