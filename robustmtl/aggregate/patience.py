"""`worst-val-patience` selection: the reference's early stopping, applied to finished runs at selection time.

The reference stops a run once `patience` evaluations in a row have not improved validation worst-group
accuracy, and reports the epoch of its last improvement. Its learning-rate schedule is set for the full run
whatever the stop, so every evaluation before the stop is the same in a run that was not stopped: truncating
each run's evaluations where the stop would have come, then taking the best one, reproduces it without
retraining. Improvement is strict (>), so among equal scores the first evaluation wins.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from robustmtl.aggregate.select import Selector

REFERENCE_PATIENCE = 9


def patience_pick(scores: Sequence[float], patience: int) -> int:
    """Index of the evaluation early stopping reports: the last strict improvement before `patience`
    evaluations in a row without one (-1 for no scores)."""
    best, pick, since = -math.inf, -1, 0
    for i, score in enumerate(scores):
        if score > best:
            best, pick, since = score, i, 0
        else:
            since += 1
            if since >= patience:
                break
    return pick


@dataclass(frozen=True)
class PatienceSelector(Selector):
    name: str = "worst-val-patience"
    split: str = "val"
    metric: str = "worst_group_acc"
    description: str = (f"validation worst-group accuracy up to the reference's early stop (patience "
                        f"{REFERENCE_PATIENCE})")
    upper_bound: bool = False
    patience: int = REFERENCE_PATIENCE

    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        pts = records.loc[records["split"] == self.split, ["run_id", "epoch", "step", self.metric]]
        pts = pts.dropna(subset=[self.metric]).sort_values(["run_id", "epoch", "step"], kind="mergesort")
        runs = pts["run_id"].to_numpy()
        scores = pts[self.metric].to_numpy(dtype=np.float64)
        starts = np.flatnonzero(np.r_[True, runs[1:] != runs[:-1]]) if len(runs) else np.array([], np.int64)
        ends = np.r_[starts[1:], len(runs)]
        picked = [start + patience_pick(scores[start:end], self.patience)
                  for start, end in zip(starts, ends, strict=True)]
        chosen = pts.iloc[picked].rename(columns={self.metric: "score"})
        return chosen[["run_id", "epoch", "step", "score"]].reset_index(drop=True)
