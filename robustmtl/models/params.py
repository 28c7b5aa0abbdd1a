"""Parameter blocks of the models (torch-free: the grid reads them without importing the models)."""

from __future__ import annotations

from dataclasses import dataclass, field

from robustmtl.models.hub import MINILM
from robustmtl.params import added_later, at_least, between, local_path, one_of, positive


@dataclass(frozen=True)
class MLPParams:
    hidden_dim: int = field(default=64, metadata=positive())
    depth: int = field(default=2, metadata=positive())
    dropout: float = field(default=0.0, metadata=between(0.0, 0.99))
    feature_mask_ratio: float = field(default=0.3, metadata=between(0.01, 1.0))
    # The representation h on its own: its width (0: hidden_dim), so h can be narrower than the input's core
    # block while the hidden layers keep their width, and whether it ends in the LayerNorm, which
    # renormalises every example and so keeps an L1 penalty from switching units off.
    h_dim: int = field(default=0, metadata=added_later(at_least(0)))
    h_norm: bool = field(default=True, metadata=added_later())


@dataclass(frozen=True)
class BertParams:
    bert_pretrained: str = field(default=MINILM, metadata=local_path("dir"))
    bert_max_length: int = field(default=128, metadata=positive())
    mlm_probability: float = field(default=0.15, metadata=between(0.01, 1.0))
    bert_dropout: float = field(default=0.1, metadata=between(0.0, 0.99))
    # h, the representation the classifier and the L1 "cls" target read: the CLS embedding, or the mean of the
    # last hidden state over real tokens (what sentence encoders such as all-MiniLM-L6-v2 were trained with).
    # "cls" stays the default so configs without the field keep their meaning; set "mean" for MiniLM (one ERM
    # run on text_spurious, 2,000 snippets: test worst-group 30.6 with "mean", 25.4 with "cls"). "pooler" is the
    # reference's: the checkpoint's pooler (dense + tanh) over the CLS embedding.
    bert_pool: str = field(default="cls", metadata=added_later(one_of("cls", "mean", "pooler")))
    # the checkpoint's architecture and tokenizer with random weights: the "pre-training is necessary" ablation
    bert_from_scratch: bool = field(default=False, metadata=added_later())
    # the auxiliary objective: masked LM, or the reference's ablation, a causal LM (next-token cross-entropy through
    # the same head, the auxiliary forward causally masked; the end-task forward stays bidirectional)
    aux_task: str = field(default="mlm", metadata=added_later(one_of("mlm", "clm")))


@dataclass(frozen=True)
class MIMParams:
    """SimMIM's masking, shared by the image encoders."""

    mim_mask_ratio: float = field(default=0.6, metadata=between(0.01, 1.0))
    mim_mask_scale: int = field(default=2, metadata=positive())
    mim_loss: str = field(default="l1", metadata=added_later(one_of("l1", "l2")))


@dataclass(frozen=True)
class ImageViewParams:
    """How the image encoders see their images. The defaults are robustmtl's first pipeline (a short-side
    resize and centre crop everywhere, no augmentation); the reference trains on RandomResizedCrop(scale 0.05-1)
    and evaluates on a squash to the model's size."""

    # The deterministic view (evaluation, auxiliary batches, and training without random crops).
    image_resize: str = field(default="crop", metadata=added_later(one_of("crop", "squash")))
    image_train_crop: str = field(default="none", metadata=added_later(one_of("none", "random_resized")))
    image_crop_scale_min: float = field(default=0.05, metadata=added_later(between(0.01, 1.0)))


@dataclass(frozen=True)
class NewLayerParams:
    """How the image encoders initialise the layers a checkpoint does not hold (the classifier, SimMIM's decoder).
    The default is PyTorch's own (Kaiming-uniform weights and biases); the reference's are transformers' ViT init,
    a truncated normal of std 0.02 and zero biases."""

    head_init: str = field(default="torch", metadata=added_later(one_of("torch", "trunc_normal")))


@dataclass(frozen=True)
class ImageAuxParams:
    """The image encoders' auxiliary objective: SimMIM (`MIMParams`), or SimCLR for the reference's ablation
    (`models/simclr.py`): "simclr" contrasts two views of each auxiliary image, "simclr_ref" pairs the
    reference's way (a detached end-task CLS with a view of another image)."""

    aux_task: str = field(default="mim", metadata=added_later(one_of("mim", "simclr", "simclr_ref")))
    simclr_temperature: float = field(default=1.0, metadata=added_later(positive()))


@dataclass(frozen=True)
class ViTParams(ImageAuxParams, NewLayerParams, ImageViewParams, MIMParams):
    vit_pretrained: str = field(default="", metadata=local_path("dir"))
    vit_image_size: int = field(default=0, metadata=at_least(0))
    vit_patch_size: int = field(default=4, metadata=positive())
    vit_hidden_dim: int = field(default=128, metadata=positive())
    vit_depth: int = field(default=4, metadata=positive())
    vit_heads: int = field(default=4, metadata=positive())
    # the checkpoint's architecture and image normalisation with random weights: the "pre-training is necessary"
    # ablation
    vit_from_scratch: bool = field(default=False, metadata=added_later())


@dataclass(frozen=True)
class TimmViTParams(ImageAuxParams, NewLayerParams, ImageViewParams, MIMParams):
    timm_name: str = "vit_base_patch16_224"
    timm_weights: str = field(default="", metadata=local_path("file"))
    timm_image_size: int = field(default=0, metadata=at_least(0))


@dataclass(frozen=True)
class ResNetParams(NewLayerParams, ImageViewParams):
    """The baselines' ImageNet ResNet (`models/resnet.py`): no auxiliary objective, so no `ImageAuxParams`."""

    resnet_pretrained: str = field(default="", metadata=local_path("dir"))
    resnet_image_size: int = field(default=224, metadata=positive())
    resnet_depth: int = field(default=50, metadata=one_of(18, 34, 50, 101, 152))  # of a randomly initialised one
