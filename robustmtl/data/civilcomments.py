"""CivilComments (Borkan et al., 2019; WILDS edition): y = toxic, groups from 8 identity annotations.

Training groups (what `g` holds, what group-aware methods use): y × "mentions any of the 8
identities" — 4 groups, g = 2·y + any. Evaluation groups: y × each identity (male, female, LGBTQ,
christian, muslim, other_religions, black, white) — 16 groups in the order y=0 then y=1, each over
the 8 identities. They overlap: a comment that mentions several identities counts in each of
them, and a comment that mentions none is in no evaluation group (it still counts in the average
accuracy, which robustmtl reports as the plain mean over examples; the reference's average over the
duplicated group rows is `aggregate --metric group_rows_avg_acc`). Scores ≥ 0.5 binarise toxicity and
every identity, as WILDS does; "any identity" is computed from the same 8 columns.

Layout (WILDS' `civilcomments_v1.0`): `all_data_with_identities.csv` with columns comment_text,
split (train / val / test), toxicity and the 8 identity columns.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.files import SPLIT_NAMES, dataset_dir, read_table, split_masks
from robustmtl.data.text import TextSplit
from robustmtl.params import NoParams

SOURCE = "WILDS civilcomments_v1.0 (https://wilds.stanford.edu/datasets/, or `pip install wilds` and download it)"
FILE = "all_data_with_identities.csv"
FOLDERS = ("civilcomments_v1.0",)
IDENTITIES = ("male", "female", "LGBTQ", "christian", "muslim", "other_religions", "black", "white")
LABEL_NAMES = ("non-toxic", "toxic")
MENTIONS = ("no identity", "any identity")  # the training attribute
THRESHOLD = 0.5


class CivilComments:
    @staticmethod
    def build(p: NoParams, data_root: Path | None) -> Splits:
        _, path = dataset_dir("civilcomments", data_root, [FILE], FOLDERS, SOURCE)
        table = read_table(path, ["comment_text", "split", "toxicity", *IDENTITIES], "civilcomments", SOURCE,
                           dtype={"comment_text": str})
        texts = table["comment_text"].fillna("").tolist()
        y_all = torch.tensor((table["toxicity"].fillna(0) >= THRESHOLD).to_numpy(), dtype=torch.long)
        identity = torch.tensor((table[list(IDENTITIES)].fillna(0) >= THRESHOLD).to_numpy(), dtype=torch.bool)
        any_all = identity.any(dim=1).long()
        # membership column c·8 + k: label c and identity k (group_names below is in the same order)
        member_all = torch.cat([identity & (y_all == c)[:, None] for c in (0, 1)], dim=1)
        info = DataInfo(modality="text", n_classes=2, n_attrs=2, group_names=eval_group_names(),
                        train_group_names=group_names(list(LABEL_NAMES), list(MENTIONS)))
        masks = split_masks(table["split"], SPLIT_NAMES, path, "split", "civilcomments")
        splits = []
        for name, mask in zip(SPLIT_NAMES, masks, strict=True):
            rows = torch.tensor(mask.to_numpy().nonzero()[0])
            y = y_all[rows]
            splits.append(TextSplit(name, [texts[i] for i in rows.tolist()], y, info.n_attrs * y + any_all[rows],
                                    membership=member_all[rows]))
        return Splits(info, *splits)


def eval_group_names() -> tuple[str, ...]:
    """The 16 evaluation groups, label x identity, in membership-column order (column c * 8 + k)."""
    return group_names(list(LABEL_NAMES), list(IDENTITIES))
