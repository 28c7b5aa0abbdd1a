"""`few-groups` selection: worst-group accuracy on a small, seeded random fraction of validation.

It models a researcher who can afford group labels for only a few validation examples. The subset is
drawn at aggregation time from each run's per-example validation correctness (`val_correct.jsonl`)
and validation group membership (`val_groups.json`), with the same seed for every run of a dataset,
so all runs are judged on the same examples and the fraction can be changed without retraining.
Groups absent from the subset are ignored, as a researcher with that subset could not see them; a
warning names every group the subset holds fewer than THIN examples of, since worst-group accuracy
over 0-4 examples says little. An unreadable file leaves its run without few-groups data, with a warning
naming the file (a finished run without it stops the aggregation, naming the file).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from robustmtl.aggregate.select import RuleInputs, Selector, best_points
from robustmtl.errors import UserError
from robustmtl.layout import VAL_CORRECT, VAL_GROUPS
from robustmtl.metrics import group_metrics, unpack_bools

THIN = 5


class Unreadable(Exception):
    """A per-run validation file that cannot be used; the message says why."""


def read_membership(path: Path) -> np.ndarray:
    """val_groups.json as an [n, n_groups] boolean matrix; any damage or wrong shape raises Unreadable."""
    try:
        groups = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or UTF-8
        raise Unreadable(f"{type(exc).__name__}: {exc}") from None
    shape = isinstance(groups, dict) and isinstance(groups.get("membership"), str)
    n, n_groups = (groups.get("n"), groups.get("n_groups")) if shape else (None, None)
    if type(n) is not int or type(n_groups) is not int or n < 1 or n_groups < 1:
        raise Unreadable("not an object with positive integers n and n_groups and a membership string")
    try:
        bits = unpack_bools(groups["membership"], n * n_groups)
    except ValueError:
        raise Unreadable("membership is not base64") from None
    if len(bits) < n * n_groups:
        raise Unreadable(f"membership holds {len(bits)} of the {n * n_groups} bits n x n_groups needs")
    return bits.reshape(n, n_groups)


def read_correctness(line: bytes, n: int) -> tuple[int, int, np.ndarray]:
    """One val_correct.jsonl line as (epoch, step, per-example correctness); ValueError if damaged."""
    rec = json.loads(line)  # ValueError on bad JSON or UTF-8
    if not isinstance(rec, dict) or type(rec.get("epoch")) is not int or type(rec.get("step")) is not int \
            or not isinstance(rec.get("correct"), str):
        raise ValueError("not an object with integers epoch and step and a correct string")
    correct = unpack_bools(rec["correct"], n)
    if len(correct) < n:
        raise ValueError(f"correct holds {len(correct)} of {n} examples")
    return rec["epoch"], rec["step"], correct


Score = tuple[int, int, float]  # (epoch, step, score) of one validation evaluation


class CorrectnessScores:
    """For rules that score a run's per-example validation correctness file line by line: the lines it could
    not read are skipped with a warning, and a run left with none is noted as missing, under the rule's name."""

    name: str
    missing: dict[str, str]
    file_warnings: list[str]

    def _scored_lines(self, run_id: str, path: Path, lines: list[bytes], n: int,
                      score: Callable[[np.ndarray], float]) -> list[Score]:
        scores, bad = [], []
        for lineno, line in enumerate(lines, start=1):
            try:
                epoch, step, correct = read_correctness(line, n)
            except ValueError as exc:  # also bad JSON, UTF-8 and base64
                bad.append(f"line {lineno}: {exc}")
                continue
            scores.append((epoch, step, score(correct)))
        if bad and not scores:
            return self._unreadable(run_id, path, f"no usable line; {bad[0]}")
        if bad:
            self.file_warnings.append(f"{path}: {len(bad)} unreadable line(s) skipped (first: {bad[0]})")
        return scores

    def _unreadable(self, run_id: str, path: Path, why: str) -> list[Score]:
        """No scores for this run: noted for the warnings and for the error if the run is finished."""
        self.missing[run_id] = f"cannot use {path} ({why})"
        self.file_warnings.append(f"{path}: unreadable ({why}); run {run_id} has no {self.name} data")
        return []


@dataclass(frozen=True)
class FewGroupsSelector(CorrectnessScores, Selector):
    fraction: float = 0.05
    seed: int = 0
    run_dirs: dict[str, Path] = field(default_factory=dict)
    name: str = "few-groups"
    split: str = "val"
    metric: str = "worst_group_acc"
    description: str = "worst-group accuracy on a random fraction of validation"
    upper_bound: bool = False
    reads_all_val_groups: bool = False
    # (validation size, examples of each group in its subset) → runs seen with it: runs of one size may
    # carry other group labels (another dataset, other data parameters), so each is checked
    group_counts: dict[tuple[int, tuple[int, ...]], int] = field(default_factory=dict, compare=False)
    missing: dict[str, str] = field(default_factory=dict, compare=False)  # run id -> why it has no scores
    file_warnings: list[str] = field(default_factory=list, compare=False)  # one per damaged or unreadable file

    def __post_init__(self) -> None:
        if not 0 < self.fraction <= 1:
            raise UserError(f"--few-groups-fraction must be in (0, 1], got {self.fraction}")

    def bind(self, inputs: RuleInputs) -> FewGroupsSelector:
        """A fresh rule (its notes start empty) at the inputs' fraction and seed, reading their run directories."""
        return replace(self, fraction=inputs.few_groups_fraction, seed=inputs.few_groups_seed,
                       run_dirs=dict(inputs.run_dirs), group_counts={}, missing={}, file_warnings=[])

    def notes(self) -> list[str]:
        return self.file_warnings + self.thin_group_warnings()

    @property
    def label(self) -> str:
        return f"few-groups ({self.fraction:.0%} of validation, seed {self.seed})"

    def subset(self, n: int) -> np.ndarray:
        """The same examples for every run with n validation examples: a seeded draw of round(f·n)."""
        size = max(1, round(self.fraction * n))
        return np.sort(np.random.default_rng(self.seed).permutation(n)[:size])

    def _run_scores(self, run_id: str, run_dir: Path) -> list[tuple[int, int, float]]:
        groups_path, correct_path = run_dir / VAL_GROUPS, run_dir / VAL_CORRECT
        for path in (groups_path, correct_path):
            if not path.exists():
                self.missing[run_id] = f"has no {path.name} (trained before few-groups data was stored?)"
                return []
        try:
            membership = read_membership(groups_path)
            lines = [line for line in correct_path.read_bytes().splitlines() if line.strip()]
        except (Unreadable, OSError) as exc:
            return self._unreadable(run_id, groups_path if isinstance(exc, Unreadable) else correct_path, str(exc))
        n = len(membership)
        keep = self.subset(n)
        counts = (n, tuple(int(c) for c in membership[keep].sum(axis=0)))
        self.group_counts[counts] = self.group_counts.get(counts, 0) + 1
        return self._scored_lines(run_id, correct_path, lines, n,
                                  lambda correct: group_metrics(correct[keep], membership[keep])["worst_group_acc"])

    def missing_reason(self, run_id: str) -> str:
        return self.missing.get(run_id) or super().missing_reason(run_id)

    def thin_group_warnings(self) -> list[str]:
        """One warning per validation split (size and group labels) whose subset holds fewer than THIN
        examples of some group."""
        warnings = []
        for (n, counts), runs in sorted(self.group_counts.items()):
            thin = [f"group {g}: {c}" for g, c in enumerate(counts) if c < THIN]
            if thin:
                warnings.append(f"few-groups: the {len(self.subset(n))}-example subset of a {n}-example "
                                f"validation split ({runs} run(s)) holds few examples of some groups "
                                f"({', '.join(thin)}); worst-group accuracy over it ignores or barely sees them "
                                "(raise --few-groups-fraction)")
        return warnings

    def select_epochs(self, records: pd.DataFrame) -> pd.DataFrame:
        run_ids = records.loc[records["split"] == "val", "run_id"].unique()
        rows = [(run_id, epoch, step, score) for run_id in run_ids if run_id in self.run_dirs
                for epoch, step, score in self._run_scores(run_id, self.run_dirs[run_id])]
        return best_points(pd.DataFrame(rows, columns=["run_id", "epoch", "step", "score"]))
