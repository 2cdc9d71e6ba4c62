"""ConViT towers built from timm's GPSA blocks.

Paper: d'Ascoli et al., "ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases", ICML 2021,
https://arxiv.org/abs/2103.10697. Code: https://github.com/facebookresearch/convit; timm ``timm/models/convit.py``
(used here, not copied).

Gated positional self-attention (GPSA), per head h: A = (1 - sigmoid(l_h)) softmax(q k^T / sqrt(d))
+ sigmoid(l_h) softmax(v_h . r_ij), r_ij = (dx, dy, dx^2 + dy^2). The local init sets v_h = (2 D_h, -1) so the
positional part is a soft kernel exp(-|delta - D_h|^2) centred on offset D_h (a sqrt(H) x sqrt(H) grid of centres),
and l_h = 1 (sigmoid = 0.73 weight on position). GPSA blocks see patch tokens only; the CLS token joins before the
first vanilla block. H must be a perfect square.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models.convit import ConVit

from ._registry import register_tower


class ConViTTower(ConVit):
    """timm ``ConVit`` with the tower interface.

    ``forward(images B x C x H x W) -> B x D``: the final-LN CLS token. ``forward_tokens -> B x N x D``: CLS (index 0)
    and the N - 1 = (H/patch)^2 patch tokens after the final LN. ``classify(B x D)``: linear head.

    Args:
        img_size: input side (fixed: it sets the patch grid and the position embedding).
        patch_size: patch side.
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head.
        head_dim: width per head (timm calls it ``embed_dim``); D = head_dim * num_heads.
        num_heads: H, a perfect square.
        depth: number of blocks.
        local_up_to_layer: the first this-many blocks are GPSA, the rest vanilla attention.
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        head_dim: int = 48,
        num_heads: int = 4,
        depth: int = 12,
        local_up_to_layer: int = 10,
        drop_path_rate: float = 0.0,
    ) -> None:
        if round(num_heads**0.5) ** 2 != num_heads:
            raise ValueError(f"GPSA local init needs a perfect-square number of heads, got {num_heads}")
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            in_chans=in_chans,
            num_classes=num_classes,
            embed_dim=head_dim,
            depth=depth,
            num_heads=num_heads,
            local_up_to_layer=local_up_to_layer,
            drop_path_rate=drop_path_rate,
        )
        self.img_size = img_size

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> B x N x D (CLS at index 0)."""
        return self.forward_features(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> CLS embedding B x D."""
        return self.forward_head(self.forward_features(images), pre_logits=True)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """B x D -> logits B x num_classes (identity when num_classes = 0)."""
        return self.head(embedding)


@register_tower(published=True)
def convit_tiny(**overrides: Any) -> ConViTTower:
    """ConViT-Ti, 3 x 224 x 224, 1000 classes: 4 heads x 48, 12 blocks (10 GPSA); timm ``convit_tiny``: 5.71M."""
    return ConViTTower(**overrides)


@register_tower
def convit_fm(**overrides: Any) -> ConViTTower:
    """Fashion-MNIST ConViT: 1 x 28 x 28 native size, patch 4 (7 x 7 grid), 4 heads x 32, 6 blocks (4 GPSA)."""
    cfg: dict[str, Any] = dict(
        img_size=28, patch_size=4, in_chans=1, num_classes=0, head_dim=32, num_heads=4, depth=6, local_up_to_layer=4
    )
    return ConViTTower(**{**cfg, **overrides})
