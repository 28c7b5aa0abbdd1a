"""The paper's synthetic task: core features decide the label, a spurious attribute mostly agrees.

x = [core | spurious | noise]. Core features are drawn around ±core_mean by the label, spurious ones
around ±spurious_mean by the attribute a. In training a agrees with y with probability p_train, in
val/test with p_eval (0.5: no correlation), so a model that leans on the spurious features fails on
the minority groups (y ≠ a). The regime (which block has the larger leading-direction variance,
which is the easier to separate) is described, and can be chosen, in `robustmtl/data/regime.py`.
With `pretrain_n` > 0 the pre-training stage gets an unlabeled pool of its own, drawn after the three
splits (so they do not change), whose attribute agrees with the label at rate `pretrain_p_agree`.
The data depends only on `data_seed`, not on the run's seed: seeds vary training, not the dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustmtl.data.base import DataInfo, Splits, VectorSplit, agreeing_attribute, group_names
from robustmtl.data.params import SyntheticParams
from robustmtl.data.regime import block_slices, spurious_mean_std


class Synthetic:
    @staticmethod
    def build(p: SyntheticParams, data_root: Path | None) -> Splits:
        gen = torch.Generator().manual_seed(p.data_seed)
        info = DataInfo(modality="vector", n_classes=2, n_attrs=2,
                        group_names=group_names(["y=0", "y=1"], ["a=0", "a=1"]),
                        input_dim=p.core_dim + p.spurious_dim + p.noise_dim, extra={"blocks": block_slices(p)})
        spurious_mean, spurious_std = spurious_mean_std(p)

        def split(name: str, n: int, p_agree: float) -> VectorSplit:
            y = torch.randint(0, 2, (n,), generator=gen)
            a = agreeing_attribute(y, p_agree, gen)
            sign_y = (2 * y - 1).float()[:, None]
            sign_a = (2 * a - 1).float()[:, None]
            core = sign_y * p.core_mean + p.core_std * torch.randn(n, p.core_dim, generator=gen)
            spurious = sign_a * spurious_mean + spurious_std * torch.randn(n, p.spurious_dim, generator=gen)
            noise = p.noise_std * torch.randn(n, p.noise_dim, generator=gen)
            x = torch.cat([core, spurious, noise], dim=1)
            return VectorSplit(name, x, y, info.n_attrs * y + a, n_groups=info.n_groups)

        splits = Splits(info, split("train", p.n_train, p.p_train), split("val", p.n_val, p.p_eval),
                        split("test", p.n_test, p.p_eval))
        if p.pretrain_n:
            splits.pretrain = split("pretrain", p.pretrain_n, p.pretrain_p_agree)
        return splits
