"""Splits and dataset metadata shared by every dataset and model."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

# What a training batch's random draws depend on: (run seed, epoch, position of its first example in the
# epoch's visiting order). Never a worker's RNG state, so any worker count gives the same batches.
Draw = tuple[int, int, int]


@dataclass(frozen=True)
class DataInfo:
    """What a model and the metrics need to know about a dataset."""

    modality: str
    n_classes: int
    n_attrs: int
    group_names: tuple[str, ...]
    input_dim: int = 0
    train_group_names: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        """Evaluation groups (membership columns)."""
        return len(self.group_names)

    @property
    def n_train_groups(self) -> int:
        """Training groups (values of `g`); the same as evaluation groups unless a dataset says otherwise."""
        return len(self.train_group_names or self.group_names)


class Split(torch.utils.data.Dataset):
    """One split. Indexing with a list of indices returns a whole batch (a dict of tensors).

    `g` is the training group id (label × attribute, `g = n_attrs * y + a`), `-1` where hidden;
    `membership[i, k]` says whether example i counts in evaluation group k (one-hot of `g` for
    ordinary datasets, several groups at once for overlapping ones like CivilComments).
    """

    def __init__(self, name: str, y: torch.Tensor, g: torch.Tensor, membership: torch.Tensor | None = None,
                 n_groups: int | None = None) -> None:
        self.name = name
        self.y = y.long()
        self.g = g.long()
        if membership is None:
            size = n_groups if n_groups is not None else int(g.max()) + 1
            membership = torch.nn.functional.one_hot(self.g.clamp(min=0), size).bool() & (self.g >= 0)[:, None]
        self.membership = membership

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def eval_order(self) -> torch.Tensor:
        """The order evaluation batches the examples in: plain here; splits padded per batch sort by size."""
        return torch.arange(len(self))

    def labels(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"idx": idx, "y": self.y[idx], "g": self.g[idx]}

    def __getitem__(self, idx: torch.Tensor | list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return {**self.labels(idx), **self.inputs(idx)}

    def training_batch(self, idx: torch.Tensor, draw: Draw) -> dict[str, torch.Tensor]:
        """An end-task training batch: `self[idx]`, unless the split augments its training inputs (random image
        crops), which it then draws from `draw` alone."""
        return self[idx]

    def with_groups(self, g: torch.Tensor) -> Split:
        """A view of this split with other training group labels (hidden: all -1)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.g = g.long()
        return clone

    def hide_groups(self) -> Split:
        return self.with_groups(torch.full_like(self.g, -1))


class VectorSplit(Split):
    def __init__(self, name: str, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor, n_groups: int) -> None:
        super().__init__(name, y, g, n_groups=n_groups)
        self.x = x.float()

    def inputs(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": self.x[idx]}


@dataclass
class Splits:
    info: DataInfo
    train: Split
    val: Split
    test: Split
    pretrain: Split | None = None  # the pre-training stage's own input pool, where the dataset offers one

    def by_name(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}


def empty_train_groups(split: Split, info: DataInfo) -> list[str]:
    """The training groups (values of `g`) without an example in `split`: a group-aware method cannot train on
    them (`data check` calls this a problem, and such a method refuses to start)."""
    counts = torch.bincount(split.g[split.g >= 0], minlength=info.n_train_groups).tolist()
    return [name for name, n in zip(info.train_group_names or info.group_names, counts, strict=True) if n == 0]


def no_examples_problem(groups: list[str], split: str) -> str:
    """The one line for groups with no examples in a split (with `train`: why a group-aware method cannot run)."""
    named = ", ".join(map(repr, groups))
    what = f"group {named} has" if len(groups) == 1 else f"groups {named} have"
    it, its = ("it", "its") if len(groups) == 1 else ("them", "their")
    return f"{what} no {split} examples: " + (
        f"group-aware methods cannot train on {it}" if split == "train" else
        f"{its} accuracy cannot be measured and worst-group accuracy ignores {it}")


def group_names(class_names: list[str], attr_names: list[str]) -> tuple[str, ...]:
    """Names in group-id order, g = n_attrs * y + a."""
    return tuple(f"{c}/{a}" for c in class_names for a in attr_names)


def agreeing_attribute(y: torch.Tensor, p_agree: float, gen: torch.Generator) -> torch.Tensor:
    """A spurious attribute: a = y with probability p_agree, else 1 - y (binary labels)."""
    agree = torch.rand(len(y), generator=gen) < p_agree
    return torch.where(agree, y, 1 - y)
