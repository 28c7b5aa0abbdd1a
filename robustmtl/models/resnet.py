"""An ImageNet ResNet through transformers' ResNetModel (no torchvision): the baselines' backbone.

JTT, group DRO, DFR and SubpopBench fine-tune an ImageNet-pretrained ResNet-50 on Waterbirds and CelebA, so
this model puts robustmtl's baselines on the backbone their published numbers use. `resnet_pretrained` names a
checkpoint in Hugging Face's format (a local directory such as a download of microsoft/resnet-50, or a cached
hub id; nothing is fetched: `models/hub.py`); empty means a ResNet of `resnet_depth` layers with random weights
from the run's seed (`resnet_depth` is ignored for a checkpoint, which fixes its own architecture).

`h` is the global average pool of the last stage's feature map (2048 wide for ResNet-50); `tokens` are that
map's H·W positions, [B, H·W, C], which the L1 `tokens` target reads. The classifier is one linear layer on `h`
with no dropout, initialised by `head_init`.

Images come through the ViT's pipeline (`ImageInput`: uint8 batches from `data/images.py`, made floats and
normalised on the model's device, views by `ImageViewParams`) at `resnet_image_size`, 224 px as the peers use,
normalised by the checkpoint's preprocessor_config.json mean/std, else ImageNet's (`IMAGENET_MEAN`,
`IMAGENET_STD`).

There is no pre-training objective, so the methods that train one are refused when a grid is planned
(`ModelPlugin.has_aux` in `registry.py`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from robustmtl.data.base import DataInfo
from robustmtl.models.base import Encoded
from robustmtl.models.hub import load, resolve
from robustmtl.models.params import ResNetParams
from robustmtl.models.vit import ImageInput, init_as_transformers, normalisation

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# He et al.'s ResNets by depth: block type, blocks per stage (stage widths follow from the block type)
ARCHITECTURES = {18: ("basic", [2, 2, 2, 2]), 34: ("basic", [3, 4, 6, 3]), 50: ("bottleneck", [3, 4, 6, 3]),
                 101: ("bottleneck", [3, 4, 23, 3]), 152: ("bottleneck", [3, 8, 36, 3])}
WIDTHS = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}


def architecture(depth: int) -> Any:
    """transformers' ResNetConfig of the ResNet of this depth (stride in the 3×3 convolution, as torchvision's)."""
    from transformers import ResNetConfig

    layer_type, depths = ARCHITECTURES[depth]
    return ResNetConfig(layer_type=layer_type, depths=depths, hidden_sizes=WIDTHS[layer_type])


class ResNet(ImageInput):
    resnet: Any  # transformers' ResNetModel

    def __init__(self, p: ResNetParams, info: DataInfo) -> None:
        super().__init__()
        from transformers import ResNetModel

        if p.resnet_pretrained:
            self.resnet = load(ResNetModel, p.resnet_pretrained, "resnet_pretrained")
            self.mean, self.std = normalisation(resolve(p.resnet_pretrained, "resnet_pretrained"), IMAGENET_MEAN,
                                                IMAGENET_STD)
        else:  # random weights drawn from the run's seeded RNG, as every new layer's are
            self.resnet = ResNetModel(architecture(p.resnet_depth))
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
        self._set_input(p.resnet_image_size, p)
        self.head = nn.Linear(self.resnet.config.hidden_sizes[-1], info.n_classes)
        if p.head_init == "trunc_normal":
            init_as_transformers(self.head)

    @classmethod
    def build(cls, p: ResNetParams, info: DataInfo) -> ResNet:
        return cls(p, info)

    def encode(self, batch: dict[str, torch.Tensor]) -> Encoded:
        features = self.resnet(pixel_values=self.pixels(batch)).last_hidden_state  # [B, C, H, W]
        return Encoded(h=features.mean(dim=(2, 3)), tokens=features.flatten(2).transpose(1, 2))

    def encoder_module(self) -> nn.Module:
        return self.resnet
