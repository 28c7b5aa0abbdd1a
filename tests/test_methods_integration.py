"""Every method through the real training loop on tiny synthetic data: records, terms, DONE, exact resume."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from robustmtl.config import RunOptions, build_config
from robustmtl.layout import RunDir
from robustmtl.registry import method_entry, method_plugin
from robustmtl.rundir import prepare_run
from robustmtl.runner import run_with_requirements
from robustmtl.train.loop import train_run
from tests.conftest import TIMING_KEYS, TINY, read_records

TERMS = {
    "erm": {"end"}, "jtt": {"end"}, "subg": {"end"}, "suby": {"end"}, "rwg": {"end"}, "rwy": {"end"},
    "gdro": {"end", "robust", "q_max"}, "ldro": {"end", "robust", "w_max", "w_entropy"},
    "mtl": {"end", "aux"}, "mtl_l1": {"end", "aux", "reg"}, "l1": {"end", "reg"},
}
EXTRA = {"jtt": {"jtt_epochs": 1}}


def prepared(tmp_path, method, name, checkpoint_every=0):
    cfg = build_config(method, "synthetic", 0, None, {**TINY, **EXTRA.get(method, {})}, where="test")
    opts = RunOptions(threads=1, checkpoint_every=checkpoint_every)
    for required in method_plugin(method).requires(cfg).values():  # JTT stage 1, beside the run
        run_with_requirements(required, opts, tmp_path / required.run_id, Console(quiet=True))
    rd = RunDir(tmp_path / name)
    prepare_run(rd, cfg, opts)
    return cfg, rd


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(TERMS))
def test_method_trains_to_done_through_the_loop(tmp_path, method):
    cfg, rd = prepared(tmp_path, method, method)
    summary = train_run(rd)
    records = read_records(rd.metrics)
    assert [(r["epoch"], r["split"]) for r in records] == [
        (e, s) for e in range(1, TINY["epochs"] + 1) for s in ("train", "val", "test")]
    cls = method_entry(method)
    for r in records:
        assert r["method"] == method and r["run_id"] == cfg.run_id
        assert r["uses_train_groups"] is cls.uses_train_groups and r["report"] is True
        assert 0.0 <= r["worst_group_acc"] <= r["avg_acc"] + 1e-12 <= 1.0 + 1e-12
        if r["split"] == "train":
            assert set(r["terms"]) == TERMS[method] | {"total"}
            assert all(v == v for v in r["terms"].values())  # no NaN
    assert json.loads(rd.done.read_text()) == summary
    assert summary["epochs"] == TINY["epochs"] and summary["steps"] == records[-1]["step"] > 0
    if method == "subg":  # an epoch is the balanced subset only: fewer steps than a full pass
        assert summary["steps"] < TINY["epochs"] * -(-TINY["n_train"] // TINY["batch_size"])


class Stop(Exception):
    pass


@pytest.mark.slow
@pytest.mark.parametrize("method", ["jtt", "gdro", "subg", "rwg", "suby", "rwy", "ldro"])
def test_interrupted_run_resumes_exactly(tmp_path, method):
    _, reference = prepared(tmp_path, method, "ref")
    train_run(reference)
    _, rd = prepared(tmp_path, method, "interrupted", checkpoint_every=2)

    def stop(step, total):
        if step == min(5, total - 1):
            raise Stop

    with pytest.raises(Stop):
        train_run(rd, stop)
    train_run(rd)

    def comparable(path):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_records(path)]

    assert comparable(rd.metrics) == comparable(reference.metrics)
