"""Parameter blocks of the methods: what a grid validates, without torch.

The implementations (`methods/*.py`) import torch; the grid validator and expander read only this
module (through `registry.py`), so a 100,000-run `grid submit --dry-run` never pays torch's import.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from robustmtl.params import at_least, one_of, positive


@dataclass(frozen=True)
class MTLParams:
    alpha_aux: float = field(default=1.0, metadata=at_least(0.0))


@dataclass(frozen=True)
class L1Params:
    alpha_reg: float = field(default=math.exp(-1), metadata=at_least(0.0))
    reg_target: str = field(default="cls", metadata=one_of("cls", "tokens", "tokens_ref"))


@dataclass(frozen=True)
class MTLL1Params(L1Params, MTLParams):
    """Both terms; each key keeps its one definition above."""


@dataclass(frozen=True)
class JTTParams:
    jtt_epochs: int = field(default=2, metadata=positive())
    jtt_upweight: int = field(default=5, metadata=at_least(0))


@dataclass(frozen=True)
class GDROParams:
    gdro_eta: float = field(default=0.01, metadata=at_least(0.0))
    gdro_c: float = field(default=0.0, metadata=at_least(0.0))
    gdro_balanced: bool = True


@dataclass(frozen=True)
class LDROParams:
    ldro_lookahead_lr: float = field(default=0.01, metadata=at_least(0.0))
    ldro_tau: float = field(default=0.1, metadata=positive())
    ldro_steps: int = field(default=100, metadata=positive())
