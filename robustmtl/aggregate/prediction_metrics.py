"""The metrics `aggregate --metric` computes from a run's stored predictions (robustmtl/predictions.py).

Each metric is defined here once, as docs/results.md#metrics-from-stored-predictions states it, on one
split's float16 class probabilities, labels, group membership and the training split's group sizes. All
return fractions (accuracies, AUROC and ECE in [0, 1]); aggregate/units.py prints them in percent. The
predicted class is the argmax of the stored probabilities (ties to the lowest class).

numpy only: scikit-learn is the tests' reference, not a dependency.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robustmtl.errors import UserError
from robustmtl.predictions import PREDICTIONS_DIR, PredictionStore

ECE_BINS = 15
RECORD_METRIC = "worst_group_acc"  # the default: read from the records, no stored predictions needed


@dataclass(frozen=True)
class Inputs:
    probs: np.ndarray  # [N, C] float
    y: np.ndarray  # [N] int
    membership: np.ndarray  # [N, G] bool
    train_group_n: np.ndarray  # [G] int

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.y

    def groups(self) -> list[np.ndarray]:
        """Boolean masks of the groups present in the split (a group without examples has no value)."""
        return [self.membership[:, g] for g in range(self.membership.shape[1]) if self.membership[:, g].any()]


def avg_acc(x: Inputs) -> float:
    return float(x.correct.mean())


def balanced_acc(x: Inputs) -> float:
    """The mean over the classes present of their recall."""
    return float(np.mean([x.correct[x.y == c].mean() for c in np.unique(x.y)]))


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve: the chance a positive outranks a negative, ties counting half (Mann-Whitney)."""
    ranks = _average_ranks(scores)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # 1-based mean rank of each tie block
    return ranks


def worst_group_auroc(x: Inputs) -> float:
    """The minimum over groups holding both classes of the AUROC of the positive-class (class 1) score.

    Binary tasks only. Groups of one class (label x attribute groups) have no AUROC and are left out; a
    split where no group holds both classes has none to report."""
    if x.probs.shape[1] != 2:
        raise UserError(f"worst_group_auroc is defined for binary tasks; this one has {x.probs.shape[1]} classes "
                        "(use balanced_acc or worst_group_acc)")
    positive = x.y == 1
    values = [auroc(x.probs[g, 1].astype(np.float64), positive[g]) for g in x.groups()
              if positive[g].any() and (~positive[g]).any()]
    if not values:
        raise UserError("worst_group_auroc needs groups holding both classes; every group of this split holds "
                        "one class (label x attribute groups), so no group has an AUROC")
    return min(values)


def ece(probs: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error: confidence (the top probability) binned into `bins` equal-width bins of
    (0, 1], each right-closed; the size-weighted mean over bins of |accuracy - mean confidence|."""
    confidence = probs.max(axis=1).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    total = 0.0
    for b in np.unique(which):
        inside = which == b
        total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(confidence))


def worst_group_ece(x: Inputs) -> float:
    """The maximum over groups of their ECE (lower is better)."""
    correct = x.correct
    return max(ece(x.probs[g], correct[g]) for g in x.groups())


def weighted_avg_acc(x: Inputs) -> float:
    """Each group's accuracy weighted by its share of the training set (WILDS' `adj_acc_avg`); the shares are
    renormalised over the groups present in the split."""
    correct = x.correct
    present = [g for g in range(x.membership.shape[1]) if x.membership[:, g].any()]
    weights = x.train_group_n[present].astype(np.float64)
    if not weights.sum():
        raise UserError("weighted_avg_acc weighs groups by their share of the training set, and no training example "
                        "is in this split's groups (civilcomments_small's coarse training rows name no identity)")
    accs = np.array([correct[x.membership[:, g]].mean() for g in present])
    return float((weights * accs).sum() / weights.sum())


def group_rows_avg_acc(x: Inputs) -> float:
    """Accuracy over (example, evaluation group) pairs: an example counts once in each group it is in, and not at
    all in none. The reference reports this as CivilComments' average (over its duplicated identity rows)."""
    rows = x.membership.sum(axis=1)
    if not rows.sum():
        raise UserError("group_rows_avg_acc averages over the examples' evaluation groups, and no example of this "
                        "split is in one")
    return float((x.correct * rows).sum() / rows.sum())


@dataclass(frozen=True)
class Metric:
    name: str
    label: str  # column header
    description: str
    compute: Callable[[Inputs], float]
    higher_is_better: bool = True


PREDICTION_METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("avg_acc", "avg", "average accuracy", avg_acc),
        Metric("balanced_acc", "balanced", "balanced accuracy (mean per-class recall)", balanced_acc),
        Metric("worst_group_auroc", "worst AUROC", "worst-group AUROC", worst_group_auroc),
        Metric("worst_group_ece", "worst ECE", f"worst-group expected calibration error ({ECE_BINS} bins)",
               worst_group_ece, higher_is_better=False),
        Metric("weighted_avg_acc", "weighted avg", "average accuracy with groups weighted as in training",
               weighted_avg_acc),
        Metric("group_rows_avg_acc", "avg (group rows)",
               "average accuracy over (example, group) rows, an example once per evaluation group it is in",
               group_rows_avg_acc),
    )
}
METRIC_NAMES = (RECORD_METRIC, *PREDICTION_METRICS)
LOWER_IS_BETTER = frozenset(m.name for m in PREDICTION_METRICS.values() if not m.higher_is_better)


def check_metric(name: str) -> str:
    if name not in METRIC_NAMES:
        raise UserError(f"unknown --metric {name!r}; valid: {', '.join(METRIC_NAMES)}")
    return name


def shown_metrics(name: str) -> list[str]:
    """The columns a table shows per dataset: average and worst-group accuracy from the records by default;
    with another metric, the records' average accuracy beside it (or it alone, for avg_acc)."""
    check_metric(name)
    if name == RECORD_METRIC:
        return ["avg_acc", RECORD_METRIC]
    return [name] if name == "avg_acc" else ["avg_acc", name]


def from_predictions(per_seed: pd.DataFrame, run_dirs: Mapping[str, Path], name: str,
                     split: str = "test") -> pd.DataFrame:
    """per_seed with column `name` computed from each run's stored `split` predictions at its selected
    (epoch, step). avg_acc replaces the records' value, so a table never mixes the two. Runs without stored
    predictions stop the aggregation in one line that names them."""
    metric = PREDICTION_METRICS[name]
    lacking, values = [], []
    for row in per_seed.itertuples():
        store = PredictionStore(Path(run_dirs[row.run_id]) / PREDICTIONS_DIR)
        if not store.has(split, int(row.epoch), int(row.step)):
            lacking.append(str(row.run_id))
            continue
        y, membership, train_group_n = store.read_labels(split)
        values.append(metric.compute(Inputs(store.read_probs(split, int(row.epoch), int(row.step)), y,
                                            membership, train_group_n)))
    if lacking:
        shown = ", ".join(lacking[:5]) + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
        raise UserError(f"--metric {name} needs stored {split} predictions at the selected epoch, which "
                        f"{len(lacking)} run(s) lack ({shown}; trained before predictions were stored?); only "
                        f"the record metrics are available for them: --metric {RECORD_METRIC} (the default)")
    out = per_seed.copy()
    out[name] = values
    return out
