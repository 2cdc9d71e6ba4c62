"""Vision towers: image encoders whose embeddings/tokens feed the Hiformer ranker.

Shape vocabulary: B batch, C channels, H/W image height/width, N image tokens, D embedding dim.

Every registered tower is an ``nn.Module`` with

* ``forward(images: B x C x H x W float) -> B x D``: pooled embedding (before any classifier);
* ``forward_tokens(images) -> B x N x D``: tokens. Conv towers: the last feature map flattened (row-major), with the
  tower's final norm applied; ViT-style towers: the CLS token (index 0) and patch tokens from the last block;
* ``classify(embedding: B x D) -> B x num_classes``: classifier, identity when built with ``num_classes=0``
  (named so as not to clash with timm's ``forward_head``, which the timm-based towers inherit);
* attributes ``embed_dim`` (D), ``in_chans`` (C), ``img_size`` (H = W the tower is configured for), ``num_classes``.

Images come from ``prepare_images(uint8 photos, tower.in_chans, tower.img_size)`` (``vision_towers.images``).

Registry: ``create_tower(name, **overrides)`` builds a config, ``list_towers()`` names them,
``tower_parameters(name)`` lists the constructor arguments ``overrides`` may set,
``@register_tower`` adds one (``published=True`` marks full-size 3 x 224 x 224 ImageNet configs).
Families: EfficientMod (``efficientmod.py``), ConvFormer/CAFormer (``metaformer.py``), ConViT (``convit.py``),
EET pruned ViT (``eet.py``). ``vision_towers.pretrain`` trains towers on Fashion-MNIST and loads them back (frozen or
trainable); it is not imported here because it reads the dataset package.
"""

from . import convit, eet, efficientmod, metaformer  # noqa: F401  (importing registers the towers)
from ._registry import create_tower, list_towers, register_tower, tower_parameters
from .images import prepare_images

__all__ = ["create_tower", "list_towers", "prepare_images", "register_tower", "tower_parameters"]
