"""torch, imported when first used: `from robustmtl.lazy import torch` in a plug-in module.

A method's module declares its parameter block beside its code, and planning a grid reads that block to
validate and expand 100,000 runs without paying for torch's import (several seconds cold). Such modules
bind `torch` to a stand-in that imports the real module on its first attribute access; type checkers see
the real module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class Deferred:
    """A module, imported on first attribute access (then looked up in `sys.modules`, a dict access)."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


if TYPE_CHECKING:
    import torch as torch
else:
    torch = Deferred("torch")
