"""CelebA (Liu et al., 2015) as a group-robustness benchmark: y = one attribute, a = another.

The default is the usual task, y = Blond_Hair and a = Male (the minority group is blond men); both
are parameters (`celeba_target`, `celeba_attr`: any two of the 40 attribute columns).

Layout (the CSV edition, e.g. Kaggle's "celeba-dataset"): `list_attr_celeba.csv` (image_id and 40
attribute columns of +1/−1), `list_eval_partition.csv` (image_id, partition 0 train / 1 val /
2 test) and the aligned 178×218 images in `img_align_celeba/` (or `img_align_celeba/img_align_celeba/`,
as that archive unpacks). Images are read per batch and centre-cropped to a square.
"""

from __future__ import annotations

from pathlib import Path

from robustmtl.data.base import DataInfo, Splits, group_names
from robustmtl.data.files import binary_column, dataset_dir, read_table, split_masks
from robustmtl.data.images import file_image_splits
from robustmtl.data.params import CelebAParams
from robustmtl.errors import UserError

SOURCE = ("https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html "
          "(CSV edition: kaggle.com/datasets/jessicali9530/celeba-dataset)")
IMAGE_SIZE = 224


class CelebA:
    @staticmethod
    def build(p: CelebAParams, data_root: Path | None) -> Splits:
        if p.celeba_target == p.celeba_attr:
            raise UserError(f"celeba_target and celeba_attr are both {p.celeba_target!r}; pick two attributes")
        root, attr_path = dataset_dir("celeba", data_root, ["list_attr_celeba.csv"], (), SOURCE)
        part_path = root / "list_eval_partition.csv"
        attrs = read_table(attr_path, ["image_id", p.celeba_target, p.celeba_attr], "celeba", SOURCE)
        parts = read_table(part_path, ["image_id", "partition"], "celeba", SOURCE)
        for path, listed in ((attr_path, attrs), (part_path, parts)):
            repeated = listed["image_id"][listed["image_id"].duplicated()]
            if len(repeated):
                raise UserError(f"celeba: {path} lists {len(repeated)} image ids more than once (e.g. "
                                f"{repeated.iloc[0]!r}); each image must have one row")
        table = attrs.merge(parts, on="image_id", how="inner", validate="one_to_one")
        if len(table) != len(attrs):
            raise UserError(f"celeba: {len(attrs) - len(table)} image ids of {attr_path} are missing from {part_path}")
        images = root / "img_align_celeba"
        if (images / "img_align_celeba").is_dir():
            images = images / "img_align_celeba"
        if not images.is_dir():
            raise UserError(f"celeba: missing image directory {images}; get the dataset from {SOURCE}")
        y_all = binary_column(table[p.celeba_target], attr_path, p.celeba_target, "celeba", negative=-1)
        a_all = binary_column(table[p.celeba_attr], attr_path, p.celeba_attr, "celeba", negative=-1)
        info = DataInfo(modality="image", n_classes=2, n_attrs=2,
                        group_names=group_names([f"not {p.celeba_target}", p.celeba_target],
                                                [f"not {p.celeba_attr}", p.celeba_attr]))
        masks = split_masks(table["partition"], (0, 1, 2), part_path, "partition", "celeba")
        splits = file_image_splits("celeba", info, masks, table["image_id"], images, y_all, a_all, 1.0, IMAGE_SIZE)
        return Splits(info, *splits)
