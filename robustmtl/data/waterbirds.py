"""Waterbirds (Sagawa et al., 2020): bird type y (landbird 0 / waterbird 1) × background a (land 0 / water 1).

Layout (the `waterbird_complete95_forest2water2` archive as published): `metadata.csv` with columns
img_filename, y, split (0 train / 1 val / 2 test) and place, and the images at the paths
img_filename names, relative to the directory of metadata.csv. Images are read per batch.
"""

from __future__ import annotations

from pathlib import Path

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.files import binary_column, dataset_dir, read_table, split_masks
from robustmtl.data.images import file_image_splits
from robustmtl.params import NoParams

SOURCE = "https://nlp.stanford.edu/data/dro/waterbird_complete95_forest2water2.tar.gz"
FOLDERS = ("waterbird_complete95_forest2water2",)
IMAGE_SIZE = 224
RESIZE_RATIO = 256 / 224


class Waterbirds:
    @staticmethod
    def build(p: NoParams, data_root: Path | None) -> Splits:
        root, path = dataset_dir("waterbirds", data_root, ["metadata.csv"], FOLDERS, SOURCE)
        table = read_table(path, ["img_filename", "y", "split", "place"], "waterbirds", SOURCE)
        y_all = binary_column(table["y"], path, "y", "waterbirds")
        a_all = binary_column(table["place"], path, "place", "waterbirds")
        info = DataInfo(modality="image", n_classes=2, n_attrs=2,
                        group_names=group_names(["landbird", "waterbird"], ["land", "water"]))
        masks = split_masks(table["split"], (0, 1, 2), path, "split", "waterbirds")
        splits = file_image_splits("waterbirds", info, masks, table["img_filename"], root, y_all, a_all,
                                   RESIZE_RATIO, IMAGE_SIZE)
        return Splits(info, *splits)
