"""Model selection: which epoch of each run and which hyperparameter setting per (dataset, method) to report.

A rule is a Selector; the registry of rules by name is aggregate/rules.py. A rule needing data beyond the
records (`few-groups` and `worst-class` read per-run files) gets it from `bind`, so the aggregation pipeline
treats every rule alike.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robustmtl.aggregate.load import Loaded
from robustmtl.aggregate.parse import METRICS
from robustmtl.errors import UserError
from robustmtl.registry import METHODS

CELL = ["dataset", "method"]
# Scores are accuracies in [0, 1] averaged over seeds: a difference this small is summation order, not skill
TIE_TOLERANCE = 1e-9


@dataclass(frozen=True)
class RuleInputs:
    """What a rule may read besides the records: each run's directory and dataset, and few-groups' subset."""

    run_dirs: Mapping[str, Path] = field(default_factory=dict)
    datasets: Mapping[str, str] = field(default_factory=dict)  # run id -> dataset key
    few_groups_fraction: float = 0.05
    few_groups_seed: int = 0

    @classmethod
    def of(cls, runs: pd.DataFrame, few_groups_fraction: float = 0.05, few_groups_seed: int = 0) -> RuleInputs:
        """The inputs for the runs of a Loaded.runs frame."""
        ids = runs["run_id"]
        return cls({r: Path(d) for r, d in zip(ids, runs["run_dir"], strict=True)},
                   dict(zip(ids, runs["dataset"], strict=True)), few_groups_fraction, few_groups_seed)


class Selector(ABC):
    """A selection rule: scores each evaluation point of a run; the best point is the run's epoch."""

    name: str
    split: str
    metric: str
    description: str
    upper_bound: bool
    # False for a rule that reads fewer validation group labels than all (avg-val, worst-class, few-groups):
    # methods that fit on every validation group label (registry: fits_on_val_groups) get no cell under it
    reads_all_val_groups: bool = True

    @property
    def label(self) -> str:
        """Name as shown to readers; rules that peek at test data must say they are an upper bound."""
        return f"{self.name} (upper bound)" if self.upper_bound else self.name

    @abstractmethod
    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        """One row per run that has the data this rule needs: run_id, epoch, step, score."""

    def bind(self, inputs: RuleInputs) -> Selector:
        """This rule ready to select among the runs `inputs` describes; a rule that reads the records only is
        itself."""
        return self

    def notes(self) -> list[str]:
        """Warnings the last selection left (files it could not read, thin subsets); none by default."""
        return []

    def missing_reason(self, run_id: str) -> str:
        """Why select_epochs gave a run no row, for the error that stops a finished run being left out."""
        return f"has no {self.split} records with {self.metric}"


@dataclass(frozen=True)
class MetricSelector(Selector):
    """Pick the evaluation point maximising one metric on one split; ties go to the earliest epoch."""

    name: str
    split: str
    metric: str
    description: str
    upper_bound: bool = False
    reads_all_val_groups: bool = True

    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        pts = records.loc[records["split"] == self.split, ["run_id", "epoch", "step", self.metric]]
        return best_points(pts.rename(columns={self.metric: "score"}))


def best_points(pts: pd.DataFrame) -> pd.DataFrame:
    """Per run, its evaluation point (run_id, epoch, step, score) with the highest score; ties go to the
    earliest epoch, and points without a score never count."""
    pts = pts.dropna(subset=["score"])
    pts = pts.sort_values(["run_id", "score", "epoch", "step"], ascending=[True, False, True, True], kind="mergesort")
    return pts.drop_duplicates("run_id", keep="first").reset_index(drop=True)


@dataclass
class Selection:
    """per_seed: test metrics of each chosen run at its selected epoch. chosen: one row per cell."""

    per_seed: pd.DataFrame
    chosen: pd.DataFrame
    warnings: list[str]


def _check_missing(runs: pd.DataFrame, picked: pd.DataFrame, sel: Selector, warnings: list[str]) -> None:
    """A finished run lacking the rule's split is a broken input (error); a running one may just be early."""
    missing = runs[~runs["run_id"].isin(picked["run_id"])]
    done = missing[missing["complete"]]
    if len(done):
        more = f" (and {len(done) - 1} more run(s))" if len(done) > 1 else ""
        first = done.iloc[0]
        raise UserError(
            f"run {first['run_id']} ({first['run_dir']}) {sel.missing_reason(first['run_id'])}; "
            f"the {sel.name} rule needs {sel.split} data{more}"
        )
    for run_id in missing["run_id"]:
        warnings.append(f"run {run_id} (incomplete) has no {sel.split} records yet; skipped")


def _choose_settings(per_run: pd.DataFrame, warnings: list[str]) -> pd.DataFrame:
    """Per cell, the best mean score over seeds among the settings with the most seeds.

    Seeds counted are the finished runs' (with `--include-running`, unfinished runs count as seeds too).
    A setting with fewer seeds does not compete (one lucky seed must not beat a complete setting); a
    warning names it when it scored higher. Means within TIE_TOLERANCE of the best tie (settings whose
    means differ only by float summation order must not be told apart by it); ties go to the smallest
    setting_id.
    """
    scores = per_run.groupby([*CELL, "setting_id"], as_index=False).agg(
        score=("score", "mean"), n_seeds=("seed", "nunique")
    )
    competing = scores[scores["n_seeds"] == scores.groupby(CELL)["n_seeds"].transform("max")]
    chosen = _best_within_tolerance(competing).set_index(CELL)
    for r in _best_within_tolerance(scores).itertuples():
        pick = chosen.loc[(r.dataset, r.method)]
        if r.setting_id != pick["setting_id"] and r.score > pick["score"] + TIE_TOLERANCE:
            warnings.append(
                f"{r.dataset}/{r.method}: setting {r.setting_id} has the higher selection score ({r.score:.4f} vs "
                f"{pick['score']:.4f}) but {r.n_seeds} seed(s) done against {pick['n_seeds']} for the chosen "
                f"{pick['setting_id']}; settings compete on the most seeds any of them has (finish its runs)"
            )
    return chosen.reset_index()


def _best_within_tolerance(scores: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: the smallest setting_id among those within TIE_TOLERANCE of the cell's best score."""
    best = scores.groupby(CELL)["score"].transform("max")
    tied = scores[scores["score"] >= best - TIE_TOLERANCE]
    return tied.sort_values([*CELL, "setting_id"], kind="mergesort").drop_duplicates(CELL, keep="first")


def _searched(per_setting: pd.DataFrame, dataset: str, method: str, hparams: dict) -> dict:
    """The chosen values of the hyperparameters that differed among the settings compared for a cell."""
    candidates = per_setting.loc[
        (per_setting["dataset"] == dataset) & (per_setting["method"] == method), "hparams"
    ]
    keys = {k for h in candidates for k in h} | set(hparams)
    varied = {k for k in keys if len({json.dumps(h.get(k), sort_keys=True) for h in candidates}) > 1}
    return {k: hparams.get(k) for k in sorted(varied)}


def _without_validation_fitters(runs: pd.DataFrame, sel: Selector, warnings: list[str]) -> pd.DataFrame:
    """The runs whose method does not fit on every validation group label (DFR, AFR): under a rule that reads
    fewer, such a method's numbers would not be what that label budget buys."""
    fitters = runs["method"].map(lambda m: m in METHODS and METHODS[m].fits_on_val_groups)
    if fitters.any():
        names = ", ".join(sorted(set(runs.loc[fitters, "method"])))
        warnings.append(f"{names} fit on every validation group label: no cell under {sel.name}, which reads fewer")
    return runs[~fitters]


def select_runs(loaded: Loaded, sel: Selector) -> Selection:
    """Apply a rule: epochs within runs, settings across runs, then look up test metrics at those epochs."""
    warnings: list[str] = []
    runs = loaded.runs[loaded.runs["included"] & loaded.runs["report"]]
    if not sel.reads_all_val_groups:
        runs = _without_validation_fitters(runs, sel, warnings)
    if runs.empty:
        raise UserError("no reportable runs in scope: only helper runs (report=false) were found")
    records = loaded.records[loaded.records["run_id"].isin(runs["run_id"])]
    picked = sel.select_epochs(records)
    _check_missing(runs, picked, sel, warnings)

    per_run = picked.merge(runs, on="run_id", how="inner")
    dup = per_run.duplicated(["setting_id", "seed"], keep="last")
    for run_id in per_run.loc[dup, "run_id"]:
        warnings.append(f"run {run_id} repeats a (setting, seed) pair of a later run; ignored")
    per_run = per_run[~dup]
    if per_run.empty:
        raise UserError(f"no run in scope has {sel.split} records yet; nothing to select with {sel.name}")

    chosen = _choose_settings(per_run, warnings)
    per_setting = per_run.drop_duplicates("setting_id")[[*CELL, "hparams"]]
    per_run = per_run.merge(chosen[[*CELL, "setting_id"]], on=[*CELL, "setting_id"], how="inner")
    test = records.loc[records["split"] == "test", ["run_id", "epoch", "step", *METRICS]]
    per_seed = per_run.merge(test, on=["run_id", "epoch", "step"], how="left")
    no_test = per_seed[METRICS].isna().all(axis=1)
    for r in per_seed[no_test].itertuples():
        warnings.append(
            f"run {r.run_id}: no test record at selected epoch {r.epoch} (step {r.step}); dropped"
        )
    per_seed = per_seed[~no_test]
    per_seed = per_seed[[*CELL, "setting_id", "run_id", "seed", "epoch", "step", "score", "complete", *METRICS]]
    per_seed = per_seed.sort_values([*CELL, "seed"], kind="mergesort").reset_index(drop=True)

    # Describe each chosen setting (for show-hparams): its config, expected seeds, selected epochs.
    meta = loaded.runs.drop_duplicates("setting_id", keep="last").set_index("setting_id")
    expected = loaded.runs[loaded.runs["report"]].groupby("setting_id")["n_expected"].max()
    epochs = per_run.groupby("setting_id")[["seed", "epoch"]].apply(
        lambda g: {int(s): int(e) for s, e in zip(g["seed"], g["epoch"], strict=True)}
    )
    chosen["model"] = chosen["setting_id"].map(meta["model"])
    chosen["hparams"] = chosen["setting_id"].map(meta["hparams"])
    chosen["uses_train_groups"] = chosen["setting_id"].map(meta["uses_train_groups"]).astype(bool)
    chosen["n_expected"] = chosen["setting_id"].map(expected).astype(int)
    chosen["epochs"] = chosen["setting_id"].map(epochs)
    chosen["searched"] = [_searched(per_setting, c.dataset, c.method, c.hparams) for c in chosen.itertuples()]
    return Selection(per_seed, chosen, warnings)
