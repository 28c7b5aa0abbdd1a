"""`robustmtl data check`: load a dataset exactly as a run does (no model) and say whether a grid can train on it.

The report is the table group-robustness papers print: examples per group and split with each group's
share, the training split's label–attribute agreement, and (for `synthetic`) the regime quantities of
`robustmtl/data/regime.py`. Findings come in two kinds: *problems*, which make a grid's numbers
meaningless or crash it (an empty group, a label or attribute with a single value, image files that are
missing or unreadable, one image file listed twice), and *warnings*, which a user should know about but
which do not stop training (tiny groups, repeated texts).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustmtl.data.base import DataInfo, Split, Splits, no_examples_problem
from robustmtl.data.images import FileImages, ImageSplit
from robustmtl.data.regime import BlockSummary, describe, variance_ratio
from robustmtl.data.text import TextSplit
from robustmtl.errors import UserError
from robustmtl.params import coerce, did_you_mean, field_types
from robustmtl.registry import dataset_entry, dataset_plugin

TINY_GROUP = 20  # below this a group's accuracy moves in steps of more than 5 points
EXAMPLES_SHOWN = 2  # file names quoted in a problem line
EVALUATED = ("val", "test")  # splits whose every group must be present for worst-group accuracy to mean anything


@dataclass(frozen=True)
class GroupTable:
    """Examples per group and split; `overlapping` groups (CivilComments' identities) need not sum to the split."""

    title: str
    names: tuple[str, ...]
    counts: dict[str, list[int]]  # split -> count per group
    totals: dict[str, int]  # split -> examples in the split
    overlapping: bool = False

    def share(self, split: str, k: int) -> float:
        total = self.totals[split]
        return self.counts[split][k] / total if total else float("nan")


@dataclass(frozen=True)
class Agreement:
    """How strongly the training split's attribute predicts its label."""

    equal_rate: float | None  # share with a = y (binary label and attribute only)
    attribute_accuracy: float  # predicting y by the majority label of its attribute value
    majority_accuracy: float  # predicting the majority label for everyone


@dataclass(frozen=True)
class Regime:
    blocks: list[BlockSummary]
    variance_ratio: float

    @property
    def line(self) -> str:
        r = self.variance_ratio
        if r <= 1:
            return (f"spurious/core leading-variance ratio {r:.2f} <= 1: the paper's regime, where reconstruction "
                    "favours the core block and MTL can favour the core features")
        return (f"spurious/core leading-variance ratio {r:.2f} > 1: the spurious block carries more variance, the "
                "regime where the paper predicts no gain from MTL (set spurious_variance_ratio <= 1 to test its claim)")


@dataclass
class CheckReport:
    dataset: str
    data_root: str | None
    params: dict[str, Any]
    tables: list[GroupTable]
    agreement: Agreement
    regime: Regime | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["ok"] = self.ok
        if self.regime is not None:
            out["regime"]["line"] = self.regime.line
        return out


def dataset_params(name: str, values: dict[str, Any], where: str = "--set") -> Any:
    """The dataset's parameter block as a run with these values gets it (checked the same way); other keys
    (a method's, a model's) are refused: a dataset check reads only the dataset's own."""
    block = dataset_plugin(name).params
    known = field_types(block)
    for key in values:
        if key not in known:
            raise UserError(f"{where}: {key!r} is not a parameter of dataset {name!r} (its parameters: "
                            f"{', '.join(sorted(known)) or 'none'}){did_you_mean(key, known)}")
    return block(**{key: coerce(block, key, value, where) for key, value in values.items()})


def build_splits(name: str, data_params: Any, data_root: Path | None) -> Splits:
    """The dataset as a run builds it (the registry's builder, the run's parameter block)."""
    return dataset_entry(name).build(data_params, data_root)


def _splits_in_order(splits: Splits) -> dict[str, Split]:
    found = splits.by_name()
    if splits.pretrain is not None:
        found["pretrain"] = splits.pretrain
    return found


def group_tables(splits: Splits) -> list[GroupTable]:
    """Evaluation groups (membership), plus the training groups (`g`) where a dataset defines them apart."""
    info = splits.info
    named = _splits_in_order(splits)
    totals = {s: len(split) for s, split in named.items()}
    eval_counts = {s: split.membership.sum(dim=0).tolist() for s, split in named.items()}
    evaluation = GroupTable("groups (label/attribute)", info.group_names, eval_counts, totals)
    if not info.train_group_names:
        return [evaluation]
    train_counts = {s: torch.bincount(split.g[split.g >= 0], minlength=info.n_train_groups).tolist()
                    for s, split in named.items()}
    return [GroupTable("training groups (label/attribute: what group-aware methods use)", info.train_group_names,
                       train_counts, totals),
            GroupTable("evaluation groups (overlapping: an example counts in each group it belongs to, or in none)",
                       info.group_names, eval_counts, totals, overlapping=True)]


def agreement(split: Split, info: DataInfo) -> Agreement:
    y = split.y[split.g >= 0]
    a = split.g[split.g >= 0] % info.n_attrs
    majority = torch.bincount(y).max().item() / len(y) if len(y) else float("nan")
    hits = sum(int(torch.bincount(y[a == v]).max()) for v in a.unique().tolist())
    binary = info.n_classes == 2 and info.n_attrs == 2
    return Agreement(equal_rate=float((a == y).float().mean()) if binary and len(y) else None,
                     attribute_accuracy=hits / len(y) if len(y) else float("nan"), majority_accuracy=majority)


def group_findings(tables: list[GroupTable]) -> tuple[list[str], list[str]]:
    """(problems, warnings) about empty and tiny groups; tiny groups are one warning per table and split."""
    problems, warnings = [], []
    main = tables[0]  # the groups `g` holds: every one must be trainable, and measurable unless evaluated apart
    measured_by_g = len(tables) == 1
    for table in tables:
        for split, counts in table.counts.items():
            if split == "pretrain":
                continue
            tiny = []
            for name, n in zip(table.names, counts, strict=True):
                if n == 0 and table is main and (split == "train" or (split in EVALUATED and measured_by_g)):
                    problems.append(no_examples_problem([name], split))
                elif n == 0 and split in EVALUATED and table is not main:
                    problems.append(f"evaluation group {name!r} has no {split} examples: worst-group accuracy "
                                    "ignores it")
                elif 0 < n < TINY_GROUP:
                    tiny.append((n, name))
            if tiny:
                shown = [f"{name!r} ({n})" for n, name in sorted(tiny)]
                kind = "group(s)" if table is main else "evaluation group(s)"
                warnings.append(f"{len(tiny)} {kind} have fewer than {TINY_GROUP} {split} examples, so their "
                                f"accuracy moves in steps of 100/n points: {_quoted(shown)}")
    return problems, warnings


def value_findings(splits: Splits) -> list[str]:
    """Problems: a split whose label or attribute takes a single value has no groups to compare."""
    problems = []
    for name, split in splits.by_name().items():
        labels = split.y.unique().tolist()
        if len(labels) < 2:
            problems.append(f"the {name} split has a single label value ({labels[0] if labels else 'none'}); "
                            f"the dataset has {splits.info.n_classes} classes")
        attrs = (split.g[split.g >= 0] % splits.info.n_attrs).unique().tolist()
        if len(attrs) < 2 and (name == "train" or not splits.info.train_group_names):  # else evaluated apart
            problems.append(f"the {name} split has a single attribute value ({attrs[0] if attrs else 'none'})")
    return problems


def _sample(n: int, size: int) -> list[int]:
    if size <= 0 or size >= n:
        return list(range(n))
    return sorted(np.random.default_rng(0).choice(n, size=size, replace=False).tolist())


def _quoted(items: list[str]) -> str:
    shown = ", ".join(items[:EXAMPLES_SHOWN])
    return shown + (f" and {len(items) - EXAMPLES_SHOWN} more" if len(items) > EXAMPLES_SHOWN else "")


def image_findings(splits: Splits, sample: int) -> list[str]:
    """Problems: sampled image files the loader cannot read (the run would stop there), and files listed twice."""
    problems = []
    seen: dict[Path, list[str]] = {}
    for name, split in splits.by_name().items():
        if not (isinstance(split, ImageSplit) and isinstance(split.source, FileImages)):
            continue
        source = split.source
        for path in source.paths:
            seen.setdefault(path, []).append(name)
        missing, unreadable = [], []
        picked = _sample(len(source.paths), sample)
        for i in picked:
            path = source.paths[i]
            if not path.is_file():
                missing.append(str(path))
                continue
            try:
                source.load_one(path, split.size)
            except UserError:
                unreadable.append(str(path))
        of = f"of {len(picked)} {'' if len(picked) == len(source.paths) else 'sampled '}{name} images"
        if missing:
            problems.append(f"{len(missing)} {of} are missing: {_quoted(missing)}")
        if unreadable:
            problems.append(f"{len(unreadable)} {of} cannot be read as images: {_quoted(unreadable)}")
    repeated = [f"{p} ({'+'.join(s)})" for p, s in seen.items() if len(s) > 1]
    if repeated:
        problems.append(f"{len(repeated)} image files are listed more than once: {_quoted(repeated)}")
    return problems


def text_findings(splits: Splits) -> list[str]:
    """Warnings: the same text (or sentence pair) more than once, e.g. a test example also in training."""
    counts: Counter[tuple[str, str | None]] = Counter()
    where: dict[tuple[str, str | None], set[str]] = {}
    for name, split in splits.by_name().items():
        if not isinstance(split, TextSplit):
            return []
        second: list[str | None] = list(split.second) if split.second else [None] * len(split.texts)
        for pair in zip(split.texts, second, strict=True):
            counts[pair] += 1
            where.setdefault(pair, set()).add(name)
    repeated = [pair for pair, n in counts.items() if n > 1]
    if not repeated:
        return []
    across = sum(len(where[pair]) > 1 for pair in repeated)
    return [f"{len(repeated)} texts occur more than once ({across} of them in more than one split), e.g. "
            f"{repeated[0][0][:60]!r}"]


def check_splits(name: str, data_params: Any, data_root: Path | None, splits: Splits,
                 image_sample: int) -> CheckReport:
    """The report on splits already built (by `build_splits`)."""
    tables = group_tables(splits)
    problems, warnings = group_findings(tables)
    problems += value_findings(splits)
    problems += image_findings(splits, image_sample)
    warnings += text_findings(splits)
    regime = Regime(describe(data_params), variance_ratio(data_params)) if name == "synthetic" else None
    return CheckReport(dataset=name, data_root=str(data_root) if data_root else None, params=asdict(data_params),
                       tables=tables, agreement=agreement(splits.train, splits.info), regime=regime,
                       problems=problems, warnings=warnings)


def check_dataset(name: str, data_params: Any, data_root: Path | None, image_sample: int) -> CheckReport:
    """Load `name` as a run would and check it (opening `image_sample` image files per split, 0: all); a layout
    the loader refuses raises its one-line UserError."""
    splits = build_splits(name, data_params, data_root)
    return check_splits(name, data_params, data_root, splits, image_sample)
