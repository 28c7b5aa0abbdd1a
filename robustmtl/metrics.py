"""Group metrics from per-example correctness and group membership (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def group_metrics(correct: np.ndarray, membership: np.ndarray) -> dict[str, Any]:
    """Average accuracy (plain mean over examples) and per-group / worst-group accuracy.

    `membership` is [N, G] boolean; a group with no examples in the split is left out (its accuracy is
    undefined), so worst-group accuracy is over the groups that are present.
    """
    correct = np.asarray(correct, dtype=bool)
    membership = np.asarray(membership, dtype=bool)
    counts = membership.sum(axis=0)
    hits = (membership & correct[:, None]).sum(axis=0)
    present = np.flatnonzero(counts)
    group_acc = {str(k): float(hits[k] / counts[k]) for k in present}
    return {
        "avg_acc": float(correct.mean()) if len(correct) else float("nan"),
        "worst_group_acc": min(group_acc.values()) if group_acc else float("nan"),
        "group_acc": group_acc,
        "group_n": {str(k): int(counts[k]) for k in present},
    }


def class_metrics(correct: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Per-class accuracy and its minimum, worst-class accuracy: a score that needs class labels only, no
    group label (SubpopBench's worst-class accuracy). A class with no examples in the split is left out."""
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    class_acc = {str(c): float(correct[labels == c].mean()) for c in classes}
    return {
        "worst_class_acc": min(class_acc.values()) if class_acc else float("nan"),
        "class_acc": class_acc,
        "class_n": {str(c): int(n) for c, n in zip(classes, counts, strict=True)},
    }


# Mechanism fields of a test record on block-structured inputs (written by train/mechanism.py).
MECHANISM_BLOCKS = ("core", "spurious", "noise")
MECHANISM_FIELDS = ("probe_y_acc", "probe_a_acc", *(f"reliance_{b}" for b in MECHANISM_BLOCKS), "active_units")


def pack_bools(values: np.ndarray) -> str:
    """A boolean array as compact base64 text (one bit per value) for JSON files."""
    import base64

    return base64.b64encode(np.packbits(np.asarray(values, dtype=bool).ravel()).tobytes()).decode()


def unpack_bools(text: str, count: int) -> np.ndarray:
    import base64

    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:count].astype(bool)
