"""Setting selection ties: means one float step apart are a tie on either side of any rounding boundary."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from robustmtl.aggregate.select import TIE_TOLERANCE, _choose_settings


def boundary_pair() -> tuple[float, float]:
    """Two adjacent floats that 9-decimal rounding (numpy's, as pandas rounds) puts on different sides."""
    for k in range(1, 1000):
        upper = 0.35 + (k + 0.5) * 1e-9
        lower = math.nextafter(upper, 0.0)
        if np.round(lower, 9) != np.round(upper, 9):
            return lower, upper
    raise AssertionError("no rounding boundary found")


def choose(scores: list[float], seeds: list[int] | None = None) -> tuple[str, list[str]]:
    ids = [f"s{i}" for i in range(len(scores))]
    per_run = pd.DataFrame({"dataset": "wb", "method": "erm", "setting_id": ids,
                            "seed": seeds or [0] * len(scores), "score": scores})
    warnings: list[str] = []
    return _choose_settings(per_run, warnings).iloc[0]["setting_id"], warnings


def test_one_float_step_across_a_rounding_boundary_is_a_tie_to_the_smallest_id():
    lower, upper = boundary_pair()
    assert choose([lower, upper]) == ("s0", [])
    assert choose([upper, lower]) == ("s0", [])


def test_a_real_difference_still_wins():
    assert choose([0.35, 0.35 + 100 * TIE_TOLERANCE])[0] == "s1"
    assert choose([0.35 + 100 * TIE_TOLERANCE, 0.35])[0] == "s0"


def test_a_setting_with_fewer_seeds_is_named_only_when_truly_better():
    lower, upper = boundary_pair()
    # s0 has two seeds (both `lower`); s1 one seed at `upper`: no warning for a float step
    per_run = pd.DataFrame({"dataset": "wb", "method": "erm", "setting_id": ["s0", "s0", "s1"],
                            "seed": [0, 1, 0], "score": [lower, lower, upper]})
    warnings: list[str] = []
    assert _choose_settings(per_run, warnings).iloc[0]["setting_id"] == "s0" and warnings == []
    per_run.loc[2, "score"] = 0.9
    assert _choose_settings(per_run, warnings).iloc[0]["setting_id"] == "s0" and "s1" in warnings[0]
