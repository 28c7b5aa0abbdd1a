"""Waterbirds (Sagawa et al., 2020): bird type y (landbird 0 / waterbird 1) × background a (land 0 / water 1).

Layout (the `waterbird_complete95_forest2water2` archive as published): `metadata.csv` with columns
img_filename, y, split (0 train / 1 val / 2 test) and place, and the images at the paths
img_filename names, relative to the directory of metadata.csv. Images are read per batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.files import SPLIT_NAMES, binary_column, dataset_dir, read_table, split_masks
from robustmtl.data.images import FileImages, ImageSplit
from robustmtl.params import NoParams

SOURCE = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
FOLDERS = ("waterbird_complete95_forest2water2",)
IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224


class Waterbirds:
    Params = NoParams
    modality = "image"
    default_model = "vit"

    @staticmethod
    def build(p: NoParams, data_root: Path | None) -> Splits:
        root, path = dataset_dir("waterbirds", data_root, ["metadata.csv"], FOLDERS, SOURCE)
        table = read_table(path, ["img_filename", "y", "split", "place"], "waterbirds", SOURCE)
        y_all = binary_column(table["y"], path, "y", "waterbirds")
        a_all = binary_column(table["place"], path, "place", "waterbirds")
        info = DataInfo(modality="image", n_classes=2, n_attrs=2,
                        group_names=group_names(["landbird", "waterbird"], ["land", "water"]))
        splits = []
        for name, mask in zip(SPLIT_NAMES, split_masks(table["split"], (0, 1, 2), path, "split", "waterbirds"),
                              strict=True):
            rows = torch.tensor(mask.to_numpy())
            files = [root / f for f in table.loc[mask, "img_filename"]]
            y, a = y_all[rows], a_all[rows]
            splits.append(ImageSplit(name, FileImages(files, RESIZE_RATIO, "waterbirds"), y, info.n_attrs * y + a,
                                     size=IMAGE_SIZE, n_groups=info.n_groups))
        return Splits(info, *splits)
