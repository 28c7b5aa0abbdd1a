"""`few-groups` selection: worst-group accuracy on a small, seeded random fraction of validation.

It models a researcher who can afford group labels for only a few validation examples. The subset is
drawn at aggregation time from each run's per-example validation correctness (`val_correct.jsonl`)
and validation group membership (`val_groups.json`), with the same seed for every run of a dataset,
so all runs are judged on the same examples and the fraction can be changed without retraining.
Groups absent from the subset are ignored, as a researcher with that subset could not see them; a
warning names every group the subset holds fewer than THIN examples of, since worst-group accuracy
over 0-4 examples says little.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from robustmtl.aggregate.select import Selector
from robustmtl.errors import UserError
from robustmtl.layout import VAL_CORRECT, VAL_GROUPS
from robustmtl.metrics import group_metrics, unpack_bools

THIN = 5


@dataclass(frozen=True)
class FewGroupsSelector(Selector):
    fraction: float = 0.05
    seed: int = 0
    run_dirs: dict[str, Path] = field(default_factory=dict)
    name: str = "few-groups"
    split: str = "val"
    metric: str = "worst_group_acc"
    description: str = "worst-group accuracy on a random fraction of validation"
    upper_bound: bool = False
    group_counts: dict[int, tuple[int, ...]] = field(default_factory=dict, compare=False)  # per validation size

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise UserError(f"--few-groups-fraction must be in (0, 1], got {self.fraction}")

    @property
    def label(self) -> str:
        return f"few-groups ({self.fraction:.0%} of validation, seed {self.seed})"

    def subset(self, n: int) -> np.ndarray:
        """The same examples for every run with n validation examples: a seeded draw of round(f·n)."""
        size = max(1, round(self.fraction * n))
        return np.sort(np.random.default_rng(self.seed).permutation(n)[:size])

    def _run_scores(self, run_dir: Path) -> list[tuple[int, int, float]]:
        groups_path, correct_path = run_dir / VAL_GROUPS, run_dir / VAL_CORRECT
        if not groups_path.exists() or not correct_path.exists():
            return []
        groups = json.loads(groups_path.read_text())
        n, n_groups = groups["n"], groups["n_groups"]
        membership = unpack_bools(groups["membership"], n * n_groups).reshape(n, n_groups)
        keep = self.subset(n)
        self.group_counts.setdefault(n, tuple(int(c) for c in membership[keep].sum(axis=0)))
        scores = []
        for line in correct_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            correct = unpack_bools(rec["correct"], n)
            worst = group_metrics(correct[keep], membership[keep])["worst_group_acc"]
            scores.append((rec["epoch"], rec["step"], worst))
        return scores

    def thin_group_warnings(self) -> list[str]:
        """One warning per validation size whose subset holds fewer than THIN examples of some group."""
        warnings = []
        for n, counts in sorted(self.group_counts.items()):
            thin = [f"group {g}: {c}" for g, c in enumerate(counts) if c < THIN]
            if thin:
                warnings.append(f"few-groups: the {len(self.subset(n))}-example subset of a {n}-example "
                                f"validation split holds few examples of some groups ({', '.join(thin)}); worst-group "
                                "accuracy over it ignores or barely sees them (raise --few-groups-fraction)")
        return warnings

    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        run_ids = records.loc[records["split"] == "val", "run_id"].unique()
        rows = [(run_id, epoch, step, score) for run_id in run_ids if run_id in self.run_dirs
                for epoch, step, score in self._run_scores(self.run_dirs[run_id])]
        pts = pd.DataFrame(rows, columns=["run_id", "epoch", "step", "score"]).dropna(subset=["score"])
        pts = pts.sort_values(["run_id", "score", "epoch", "step"], ascending=[True, False, True, True],
                              kind="mergesort")
        return pts.drop_duplicates("run_id", keep="first").reset_index(drop=True)
