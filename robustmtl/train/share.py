"""A parallel pack member's share of its GPU's memory, passed through the member's environment: train/pack.py
sets it, train/loop.py enforces it. Torch-free and below both, so neither imports the other for it."""

from __future__ import annotations

# the fraction of its GPU's memory a pack member may allocate, when it shares the GPU with others
MEMORY_FRACTION_ENV = "ROBUSTMTL_GPU_MEMORY_FRACTION"
