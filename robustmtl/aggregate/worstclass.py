"""`worst-class` selection: the minimum over classes of validation per-class accuracy, with no group label.

It models a researcher with class labels only (SubpopBench's worst-class accuracy). Records carry
`worst_class_acc`; a run whose validation records do not (trained before it was recorded) is scored from its
per-example validation correctness (`val_correct.jsonl`) and group membership (`val_groups.json`), where each
example's class follows from its group: groups are class × attribute, g = n_attrs · y + a, with n_attrs as
the dataset declares it (robustmtl/registry.py). Where membership does not give the class (CivilComments'
evaluation groups overlap and leave out comments that mention no identity), the run has no worst-class data.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from robustmtl.aggregate.fewgroups import CorrectnessScores, Unreadable, read_membership
from robustmtl.aggregate.select import RuleInputs, Selector, best_points
from robustmtl.layout import VAL_CORRECT, VAL_GROUPS
from robustmtl.metrics import class_metrics
from robustmtl.registry import DATASETS

METRIC = "worst_class_acc"


def labels_from_groups(membership: np.ndarray, n_attrs: int) -> np.ndarray:
    """Each example's class from its one group, g = n_attrs · y + a; Unreadable when the groups do not say it."""
    if n_attrs < 1:
        raise Unreadable("its dataset declares no attributes per class (n_attrs), so groups do not give classes")
    in_groups = membership.sum(axis=1)
    if (in_groups != 1).any() or membership.shape[1] % n_attrs:
        raise Unreadable(f"its groups are not class × attribute ({int((in_groups != 1).sum())} example(s) in no "
                         f"group or several), so they do not give each example's class")
    return np.argmax(membership, axis=1) // n_attrs


@dataclass(frozen=True)
class WorstClassSelector(CorrectnessScores, Selector):
    name: str = "worst-class"
    split: str = "val"
    metric: str = METRIC
    description: str = "validation worst-class accuracy"
    upper_bound: bool = False
    reads_all_val_groups: bool = False
    run_dirs: dict[str, Path] = field(default_factory=dict)
    n_attrs: dict[str, int] = field(default_factory=dict)  # run id -> its dataset's attributes per class
    missing: dict[str, str] = field(default_factory=dict, compare=False)  # run id -> why it has no scores
    file_warnings: list[str] = field(default_factory=list, compare=False)

    def bind(self, inputs: RuleInputs) -> WorstClassSelector:
        n_attrs = {r: DATASETS[d].n_attrs if d in DATASETS else 0 for r, d in inputs.datasets.items()}
        return replace(self, run_dirs=dict(inputs.run_dirs), n_attrs=n_attrs, missing={}, file_warnings=[])

    def notes(self) -> list[str]:
        return list(self.file_warnings)

    def missing_reason(self, run_id: str) -> str:
        return self.missing.get(run_id) or super().missing_reason(run_id)

    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        """Runs whose every validation record has worst_class_acc are scored from it, the others from files."""
        val = records.loc[records["split"] == self.split, ["run_id", "epoch", "step", self.metric]]
        recorded = val.groupby("run_id")[self.metric].apply(lambda s: bool(s.notna().all()))
        from_records = val[val["run_id"].isin(recorded[recorded].index)].rename(columns={self.metric: "score"})
        rows = [(run_id, epoch, step, score) for run_id in recorded[~recorded].index if run_id in self.run_dirs
                for epoch, step, score in self._file_scores(run_id, self.run_dirs[run_id])]
        from_files = pd.DataFrame(rows, columns=["run_id", "epoch", "step", "score"])
        return best_points(pd.concat([from_records, from_files], ignore_index=True) if rows else from_records)

    def _file_scores(self, run_id: str, run_dir: Path) -> list[tuple[int, int, float]]:
        groups_path, correct_path = run_dir / VAL_GROUPS, run_dir / VAL_CORRECT
        for path in (groups_path, correct_path):
            if not path.exists():
                self.missing[run_id] = (f"has no {self.metric} in its validation records and no {path.name} to "
                                        "compute it from")
                return []
        try:
            membership = read_membership(groups_path)
        except Unreadable as exc:
            return self._unreadable(run_id, groups_path, str(exc))
        try:
            labels = labels_from_groups(membership, self.n_attrs.get(run_id, 0))
        except Unreadable as exc:
            self.missing[run_id] = f"has no {self.metric} in its validation records, and {groups_path}: {exc}"
            return []
        try:
            lines = [line for line in correct_path.read_bytes().splitlines() if line.strip()]
        except OSError as exc:
            return self._unreadable(run_id, correct_path, str(exc))
        return self._scored_lines(run_id, correct_path, lines, len(labels),
                                  lambda correct: class_metrics(correct, labels)[self.metric])
