"""Per-example predictions kept on disk, so metrics can be chosen at aggregation time without retraining.

Each evaluation of a stored split writes the class probabilities (softmax, float16) of every example, in
example order, as one `.npy` file keyed like a record by (epoch, step, split). Probabilities rather than
logits: they are bounded in [0, 1], so float16 keeps them to within 2^-12 of the float32 value (logits
have no bound and lose absolute precision as they grow), and every metric reads them directly (the
confidence for calibration, the positive-class score for AUROC). The labels, group membership and the
training split's group sizes are stored once per split, since they never change within a run.

Every file is written atomically (temp file, fsync, rename), and a file already there is left as it is:
a resumed run that redoes an evaluation reproduces the same numbers, so skipping it neither duplicates
nor tears anything. numpy only, so `aggregate` reads these without torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robustmtl.layout import atomic_write

PREDICTIONS_DIR = "predictions"
STORED_SPLITS = ("val", "test")


def probs_name(split: str, epoch: int, step: int) -> str:
    return f"{split}-epoch{epoch}-step{step}.npy"


def labels_name(split: str) -> str:
    return f"labels-{split}.npz"


class PredictionStore:
    """The predictions folder of one run."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def probs_path(self, split: str, epoch: int, step: int) -> Path:
        return self.root / probs_name(split, epoch, step)

    def labels_path(self, split: str) -> Path:
        return self.root / labels_name(split)

    def write(self, split: str, epoch: int, step: int, probs: np.ndarray, labels: np.ndarray,
              membership: np.ndarray, train_group_n: np.ndarray) -> None:
        """One evaluation's probabilities, and the split's labels the first time; each once."""
        labels_path = self.labels_path(split)
        if not labels_path.exists():
            atomic_write(labels_path, lambda f: np.savez_compressed(
                f, y=np.asarray(labels, dtype=np.int64), membership=np.asarray(membership, dtype=bool),
                train_group_n=np.asarray(train_group_n, dtype=np.int64)))
        path = self.probs_path(split, epoch, step)
        if not path.exists():
            atomic_write(path, lambda f: np.save(f, np.asarray(probs, dtype=np.float16), allow_pickle=False))

    def has(self, split: str, epoch: int, step: int) -> bool:
        return self.labels_path(split).is_file() and self.probs_path(split, epoch, step).is_file()

    def read_probs(self, split: str, epoch: int, step: int) -> np.ndarray:
        return np.load(self.probs_path(split, epoch, step), allow_pickle=False)

    def read_labels(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(labels [N], group membership [N, G] boolean, the training split's group sizes [G])."""
        with np.load(self.labels_path(split), allow_pickle=False) as z:
            return z["y"], z["membership"], z["train_group_n"]
