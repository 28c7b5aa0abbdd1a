"""The metrics `aggregate --metric` computes from stored predictions, against scikit-learn or by hand.

scikit-learn is a reference only, not a dependency: where it is not installed its comparisons skip, and
the same metrics are still checked against scipy's Mann-Whitney U (AUROC) and hand computations."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from robustmtl.aggregate.prediction_metrics import (
    Inputs,
    auroc,
    avg_acc,
    balanced_acc,
    ece,
    weighted_avg_acc,
    worst_group_auroc,
    worst_group_ece,
)
from robustmtl.errors import UserError


def inputs(n: int = 400, classes: int = 2, groups: int = 4, seed: int = 0, overlapping: bool = True) -> Inputs:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(classes), n).astype(np.float16)
    y = rng.integers(0, classes, n)
    if overlapping:  # identity-style groups: both classes in each, an example in several or none
        membership = rng.random((n, groups)) < 0.4
    else:
        membership = np.zeros((n, groups), bool)
        membership[np.arange(n), rng.integers(0, groups, n)] = True
    return Inputs(probs, y, membership, rng.integers(10, 500, groups))


def test_balanced_accuracy_by_hand():
    for seed, classes in ((0, 2), (1, 3), (2, 5)):
        x = inputs(classes=classes, seed=seed)
        predicted = x.probs.argmax(axis=1)
        recalls = [float((predicted[x.y == c] == c).mean()) for c in range(classes)]
        assert balanced_acc(x) == pytest.approx(sum(recalls) / classes, abs=1e-12)
        assert avg_acc(x) == pytest.approx(float((predicted == x.y).mean()), abs=1e-12)


def test_balanced_accuracy_matches_sklearn():
    from sklearn import metrics  # the dev extra installs it: a missing reference fails, never skips
    for seed, classes in ((0, 2), (1, 3), (2, 5)):
        x = inputs(classes=classes, seed=seed)
        assert balanced_acc(x) == pytest.approx(metrics.balanced_accuracy_score(x.y, x.probs.argmax(axis=1)),
                                                abs=1e-12)
        assert avg_acc(x) == pytest.approx(float((x.probs.argmax(axis=1) == x.y).mean()), abs=1e-12)


def test_auroc_matches_mann_whitney_per_group():
    x = inputs(seed=3)
    tied = np.array([0.1, 0.4, 0.4, 0.4, 0.9, 0.2])  # ties count half
    positive = np.array([False, True, False, True, True, False])
    for scores, pos in ((tied, positive), *((x.probs[g, 1].astype(np.float64), x.y[g] == 1) for g in x.membership.T)):
        u = mannwhitneyu(scores[pos], scores[~pos]).statistic  # AUROC = U / (n_pos n_neg)
        assert auroc(scores, pos) == pytest.approx(u / (pos.sum() * (~pos).sum()), abs=1e-12)
    assert worst_group_auroc(x) == min(auroc(x.probs[g, 1].astype(np.float64), x.y[g] == 1) for g in x.membership.T)


def test_worst_group_auroc_matches_sklearn_per_group():
    from sklearn import metrics  # the dev extra installs it: a missing reference fails, never skips
    x = inputs(seed=3)
    tied = np.array([0.1, 0.4, 0.4, 0.4, 0.9, 0.2])
    positive = np.array([False, True, False, True, True, False])
    by_sklearn = min(metrics.roc_auc_score(x.y[g], x.probs[g, 1].astype(np.float64)) for g in x.membership.T)
    assert worst_group_auroc(x) == pytest.approx(by_sklearn, abs=1e-12)
    assert auroc(tied, positive) == pytest.approx(metrics.roc_auc_score(positive, tied), abs=1e-12)


def test_worst_group_auroc_is_refused_in_one_line_where_it_has_no_meaning():
    with pytest.raises(UserError, match="binary tasks") as multiclass:
        worst_group_auroc(inputs(classes=3))
    assert "\n" not in str(multiclass.value)
    x = inputs(seed=4, overlapping=False)
    one_class = np.zeros((len(x.y), 4), bool)
    one_class[np.arange(len(x.y)), 2 * x.y + (np.arange(len(x.y)) % 2)] = True  # label x attribute
    with pytest.raises(UserError, match="both classes"):
        worst_group_auroc(Inputs(x.probs, x.y, one_class, x.train_group_n))


def test_worst_group_ece_matches_a_hand_computation():
    probs = np.array([[0.95, 0.05], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5], [0.2, 0.8], [0.99, 0.01]], np.float16)
    y = np.array([0, 1, 1, 0, 0, 0])
    # top probability, correct, 15 bins of width 1/15 closed on the right:
    # 0.95 ok (bin 14), 0.6 wrong (bin 8: (0.533, 0.6]), 0.7 ok (bin 10), 0.5 ok (bin 7), 0.8 wrong (bin 11),
    # 0.99 ok (bin 14)
    conf = probs.max(axis=1).astype(np.float64)
    by_hand_all = (2 * abs(1 - (conf[0] + conf[5]) / 2) + abs(0 - conf[1]) + abs(1 - conf[2])
                   + abs(1 - conf[3]) + abs(0 - conf[4])) / 6
    assert ece(probs, probs.argmax(axis=1) == y) == pytest.approx(by_hand_all, abs=1e-12)
    membership = np.array([[1, 0], [1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], bool)
    group_b = (abs(1 - conf[3]) + abs(0 - conf[4]) + abs(1 - conf[5])) / 3  # one example per bin
    group_a = (abs(1 - conf[0]) + abs(0 - conf[1]) + abs(1 - conf[2])) / 3
    x = Inputs(probs, y, membership, np.array([1, 1]))
    assert worst_group_ece(x) == pytest.approx(max(group_a, group_b), abs=1e-12)


def test_weighted_average_accuracy_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]], np.float16)
    y = np.array([0, 1, 1, 0, 0])  # correct: yes, no, yes, no, yes
    membership = np.zeros((5, 3), bool)
    membership[[0, 1], 0] = membership[[2], 1] = membership[[3, 4], 2] = True  # group accuracies 1/2, 1, 1/2
    train_group_n = np.array([700, 100, 200])
    assert weighted_avg_acc(Inputs(probs, y, membership, train_group_n)) == pytest.approx(
        0.7 * 0.5 + 0.1 * 1.0 + 0.2 * 0.5, abs=1e-12)
    membership[:, 1] = False  # a group absent from the split: the others' shares renormalised
    membership[2, 0] = True  # group 0 now 2/3
    assert weighted_avg_acc(Inputs(probs, y, membership, train_group_n)) == pytest.approx(
        (700 * 2 / 3 + 200 * 0.5) / 900, abs=1e-12)
