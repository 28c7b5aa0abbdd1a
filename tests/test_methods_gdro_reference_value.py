"""Group DRO's logged `robust_adjusted`: the loss value the group DRO reference reports when gdro_c > 0."""

from __future__ import annotations

import math

import pytest

from tests.test_methods_gdro import COUNTS, FIRST, SECOND, Logits, batch, hand_losses, make


def test_robust_adjusted_adds_the_q_weighted_adjustment_of_every_group(tmp_path):
    c = 2.0
    method = make(tmp_path, gdro_eta=0.3, gdro_c=c)
    for rows in (FIRST, SECOND):
        terms = method.loss(Logits(), batch(rows), None)
        q = method.q.tolist()
        losses = hand_losses(rows)
        # the reference: group losses (0 where absent) plus C/sqrt(n_g) on every group, weighted by q
        reference = sum(q[g] * (losses.get(g, 0.0) + c / math.sqrt(n)) for g, n in enumerate(COUNTS))
        assert float(terms.parts["robust_adjusted"]) == pytest.approx(reference, rel=1e-6)
        assert float(terms.parts["robust"]) < float(terms.parts["robust_adjusted"])
        assert float(terms.total) == pytest.approx(float(terms.parts["robust"]))  # what is optimised is unchanged


def test_without_adjustment_nothing_extra_is_logged(tmp_path):
    terms = make(tmp_path, gdro_eta=0.3).loss(Logits(), batch(FIRST), None)
    assert set(terms.parts) == {"end", "robust", "q_max"}
