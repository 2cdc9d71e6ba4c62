"""ConvFormer and CAFormer towers built from timm's MetaFormer.

Paper: Yu et al., "MetaFormer Baselines for Vision", TPAMI 2023, https://arxiv.org/abs/2210.13452
Code: https://github.com/sail-sg/metaformer; timm ``timm/models/metaformer.py`` (used here, not copied).

ConvFormer = MetaFormer with the inverted separable-conv mixer (``SepConv``) in all four stages; CAFormer = SepConv in
stages 1-2 and vanilla attention (head dim 32, so stage widths must be multiples of 32) in stages 3-4. Both use
StarReLU MLPs, bias-free LayerNorms and res-scale in stages 3-4 (timm's defaults). The tower subclasses timm's class,
so its ``state_dict`` is key-for-key timm's and timm checkpoints load unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models.metaformer import Attention, LayerNorm2dNoBias, LayerNormNoBias, MetaFormer, SepConv
from torch import nn

from ._registry import register_tower

_CONV_MIXERS = (SepConv,) * 4
_CONV_NORMS = (LayerNorm2dNoBias,) * 4
# CAFormer's attention stages run on B x N x C tokens, hence channel-last norms there.
_CA_MIXERS = (SepConv, SepConv, Attention, Attention)
_CA_NORMS = (LayerNorm2dNoBias, LayerNorm2dNoBias, LayerNormNoBias, LayerNormNoBias)


class MetaFormerTower(MetaFormer):
    """timm ``MetaFormer`` with the tower interface.

    ``forward(images B x C x H x W) -> B x D``: global average pool, then the head LayerNorm (timm's pre-logits).
    ``forward_tokens -> B x N x D``: the last feature map (stride 32, N = H/32 * W/32) with the head LayerNorm applied
    per position (so its mean is close to, but not exactly, the pooled embedding). ``classify(B x D)``: timm's MLP head.

    Args:
        img_size: expected input side (informational; MetaFormer is fully convolutional, stride 32).
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head.
        depths: blocks per stage.
        dims: channels per stage.
        token_mixers: mixer class per stage (``SepConv`` or timm's metaformer ``Attention``).
        norm_layers: norm class per stage (channel-first for conv stages, channel-last for attention stages).
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 9, 3),
        dims: Sequence[int] = (64, 128, 320, 512),
        token_mixers: Sequence[type[nn.Module]] = _CONV_MIXERS,
        norm_layers: Sequence[type[nn.Module]] = _CONV_NORMS,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__(
            in_chans=in_chans,
            num_classes=num_classes,
            depths=tuple(depths),
            dims=tuple(dims),
            token_mixers=list(token_mixers),
            norm_layers=list(norm_layers),
            drop_path_rate=drop_path_rate,
        )
        self.img_size = img_size
        self.embed_dim: int = dims[-1]

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> B x N x D."""
        x = self.head.norm(self.forward_features(images))  # (B, D, H/32, W/32)
        return x.flatten(2).transpose(1, 2)  # (B, N, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> pooled embedding B x D."""
        return self.forward_head(self.forward_features(images), pre_logits=True)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """B x D -> logits B x num_classes (identity when num_classes = 0)."""
        return self.head.fc(embedding)


@register_tower(published=True)
def convformer_s18(**overrides: Any) -> MetaFormerTower:
    """ConvFormer-S18, 3 x 224 x 224, 1000 classes (timm ``convformer_s18``: 26.77M params)."""
    return MetaFormerTower(**{"depths": (3, 3, 9, 3), "dims": (64, 128, 320, 512), **overrides})


@register_tower(published=True)
def caformer_s18(**overrides: Any) -> MetaFormerTower:
    """CAFormer-S18, 3 x 224 x 224, 1000 classes (timm ``caformer_s18``: 26.34M params)."""
    cfg: dict[str, Any] = dict(
        depths=(3, 3, 9, 3), dims=(64, 128, 320, 512), token_mixers=_CA_MIXERS, norm_layers=_CA_NORMS
    )
    return MetaFormerTower(**{**cfg, **overrides})


# Fashion-MNIST configs: 28 px photos upsampled to 64 so the stride-32 network ends on a 2 x 2 map.
_FM_CFG: dict[str, Any] = dict(img_size=64, in_chans=1, num_classes=0, depths=(1, 1, 3, 1), dims=(32, 64, 128, 192))


@register_tower
def convformer_fm(**overrides: Any) -> MetaFormerTower:
    """Fashion-MNIST ConvFormer: 1 x 64 x 64, widths 32/64/128/192, depths 1/1/3/1, no head."""
    return MetaFormerTower(**{**_FM_CFG, **overrides})


@register_tower
def caformer_fm(**overrides: Any) -> MetaFormerTower:
    """Fashion-MNIST CAFormer: as ``convformer_fm`` with attention (4 and 6 heads of 32) in stages 3-4."""
    return MetaFormerTower(**{**_FM_CFG, "token_mixers": _CA_MIXERS, "norm_layers": _CA_NORMS, **overrides})
