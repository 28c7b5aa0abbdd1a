"""Atomic checkpoints holding everything needed to continue a run exactly where it stopped."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from robustmtl.errors import UserError
from robustmtl.layout import HEAD, PRETRAINED_ENCODER, RunDir, atomic_write

if TYPE_CHECKING:
    from robustmtl.models.base import Model


def rng_state() -> dict[str, Any]:
    np_state: Any = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_to_tuple(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(obj: Any) -> Any:
    return tuple(_to_tuple(o) for o in obj) if isinstance(obj, list | tuple) else obj


def save(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save(state, f))


def load(path: Path) -> dict[str, Any] | None:
    """The checkpoint's state, or None when there is none. Tensors and plain types only (no pickled code)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"checkpoint {path} cannot be read ({type(exc).__name__}); delete it to restart the run "
                        "from scratch") from None


def load_tensors(path: Path) -> dict[str, Any]:
    """A saved state dict that must exist (a required run's weights)."""
    state = load(path)
    if state is None:
        raise UserError(f"{path} is missing: the run that should have left it is not done; rerun it")
    return state


def head_state(model: Model) -> dict[str, torch.Tensor]:
    """The classification head's weights (the complement of `Model.encoder_state`)."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("head.")}


def save_final_weights(run_dir: RunDir, model: Model, with_head: bool) -> None:
    """The run's final encoder weights, and with `with_head` its head's: the whole model, in two files."""
    save(run_dir.artifact(PRETRAINED_ENCODER), model.encoder_state())
    if with_head:
        save(run_dir.artifact(HEAD), head_state(model))


def load_head(model: Model, path: Path) -> None:
    """Set the model's head to the weights saved at `path` (ValueError when they do not fit it)."""
    state = load_tensors(path)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a shape mismatch: another number of classes or features
        mismatch = str(exc).split("size mismatch for ")[-1].split("\n")[0].strip()
        raise ValueError(f"the head does not fit this model ({mismatch})") from None
    wrong = [k for k in missing if k.startswith("head.")] + list(unexpected)
    if wrong:
        raise ValueError(f"the head does not fit this model: {', '.join(wrong[:5])}")
