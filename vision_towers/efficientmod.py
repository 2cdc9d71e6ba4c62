"""EfficientMod: efficient modulation for vision networks.

Paper: Ma et al., "Efficient Modulation for Vision Networks", ICLR 2024, https://arxiv.org/abs/2403.19963
Reference code: https://github.com/ma-xu/EfficientMod (``models/EfficientMod.py``, Apache-2.0). Not in timm, so it is
written here in timm's file anatomy; architecture and configs follow the reference, no code is copied.

One EfficientMod block (channel-last x: B x H x W x C, expansion ratio r):

    y   = LN(x)
    ctx = g(GELU(DWConv7x7(f(y))))           f, g: Linear C -> C           (context branch)
    v   = act(fc1(y))                        fc1: C -> r*C, act = GELU if r > 1 else identity  (value)
    x   = x + gamma * fc2(v * tile_r(ctx))   fc2: r*C -> C, gamma: LayerScale, init 1e-4

The modulation and the MLP are fused: fc1/fc2 are both the MLP and the value/output projections, and the context is
tiled r times along channels instead of being projected to r*C. Ratios alternate 1, r inside each stage. The hybrid
variant appends vanilla pre-LN attention blocks (8 heads, head dim max(C/8, 32)) at the end of stages 3 and 4.

Published configs (3 x 224 x 224, 1000 classes), checked in ``tests/vision_towers/test_efficientmod.py``:
``efficientmod_xxs`` 4.74M params / 0.56 GMACs, ``efficientmod_xs`` 6.63M / 0.71, ``efficientmod_s`` 12.90M / 1.32.
MACs = ``torch.utils.flop_counter.FlopCounterMode`` FLOPs / 2: convolutions and linear layers, not softmax, norms or
element-wise ops, and (like the reference measurement, taken with fused attention the counter cannot see) without the
attention score/value matmuls, which add 0.022 / 0.063 / 0.085 GMACs here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import DropPath
from torch import nn

from ._layers import TransformerBlock, init_vit_weights
from ._registry import register_tower


class ContextBranch(nn.Module):
    """Context of the modulation: Linear -> depthwise k x k conv -> GELU -> Linear, channel-last B x H x W x C.

    Args:
        dim: channels C.
        kernel_size: depthwise kernel (7 in every released config).
    """

    def __init__(self, dim: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.f = nn.Linear(dim, dim)
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.act = nn.GELU()
        self.g = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.f(x).permute(0, 3, 1, 2)  # (B, C, H, W) for the conv
        x = self.act(self.conv(x)).permute(0, 2, 3, 1)  # (B, H, W, C)
        return self.g(x)


class EfficientModBlock(nn.Module):
    """Fused modulation + MLP block, channel-last B x H x W x C -> same shape.

    Args:
        dim: channels C.
        ratio: expansion r; hidden width r * C (the context is tiled r times to match it).
        kernel_size: depthwise kernel of the context branch.
        layer_scale_init: initial LayerScale gamma.
        drop_path: stochastic-depth rate.
    """

    def __init__(
        self, dim: int, ratio: int, kernel_size: int = 7, layer_scale_init: float = 1e-4, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        self.ratio = ratio
        self.norm = nn.LayerNorm(dim)
        self.context = ContextBranch(dim, kernel_size)
        self.fc1 = nn.Linear(dim, ratio * dim)
        # With r = 1 the value is a plain linear projection, as in the reference (no activation).
        self.act = nn.GELU() if ratio > 1 else nn.Identity()
        self.fc2 = nn.Linear(ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        ctx = self.context(y).repeat(1, 1, 1, self.ratio)  # (B, H, W, r*C)
        y = self.fc2(self.act(self.fc1(y)) * ctx)  # (B, H, W, C)
        return x + self.drop_path(self.gamma * y)


class ConvNorm(nn.Module):
    """Strided conv + LayerNorm, channel-last output: stem (7x7 s4) and downsampling (3x3 s2) layers.

    Args:
        in_dim: input channels.
        out_dim: output channels.
        kernel_size: conv kernel.
        stride: conv stride.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x C_in x H x W -> B x H' x W' x C_out."""
        return self.norm(self.conv(x).permute(0, 2, 3, 1))  # (B, H', W', C_out)


class EfficientModStage(nn.Module):
    """``depth`` EfficientMod blocks (ratios 1, r, 1, r, ...), then ``attn_depth`` attention blocks.

    Args:
        dim: channels C.
        depth: number of EfficientMod blocks.
        ratio: r of the odd-numbered blocks.
        attn_depth: number of vanilla attention blocks appended.
        attn_mlp_ratio: MLP ratio of the attention blocks.
        drop_paths: one stochastic-depth rate per block (depth + attn_depth).
        kernel_size: depthwise kernel of the context branch.
        layer_scale_init: initial LayerScale gamma of the EfficientMod blocks.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        ratio: int,
        attn_depth: int,
        attn_mlp_ratio: float,
        drop_paths: Sequence[float],
        kernel_size: int = 7,
        layer_scale_init: float = 1e-4,
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(
                EfficientModBlock(dim, 1 if i % 2 == 0 else ratio, kernel_size, layer_scale_init, drop_paths[i])
                for i in range(depth)
            )
        )
        # NOTE: head_dim has a floor of 32, so at small C the attention's inner width (8 * 32) exceeds C.
        self.attn_blocks = nn.ModuleList(
            TransformerBlock(dim, 8, max(dim // 8, 32), attn_mlp_ratio, drop_path=drop_paths[depth + j])
            for j in range(attn_depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x H x W x C -> same shape."""
        x = self.blocks(x)
        B, H, W, C = x.shape
        x = x.reshape(B, H * W, C)  # (B, N, C) tokens for attention
        for blk in self.attn_blocks:
            x = blk(x)
        return x.reshape(B, H, W, C)  # back to the feature map


class EfficientMod(nn.Module):
    """EfficientMod tower: 4 stages at strides 4, 8, 16, 32 (with ``stem_stride=4``).

    Interface: ``forward(images B x C x H x W) -> B x D`` (LN, then global average pool),
    ``forward_tokens -> B x N x D`` (the LN'd last feature map, N = H/32 * W/32, D = dims[-1]),
    ``classify(B x D) -> B x num_classes``.

    Args:
        img_size: expected input side (informational; any multiple of the total stride works).
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head.
        dims: channels per stage.
        depths: EfficientMod blocks per stage.
        ratios: expansion r per stage (blocks alternate 1, r).
        attn_depths: attention blocks appended per stage.
        attn_mlp_ratios: MLP ratio of each stage's attention blocks.
        kernel_size: depthwise kernel of the context branch.
        stem_stride: stride of the 7x7 stem (4 in the paper; 2 for 32 px inputs).
        layer_scale_init: initial LayerScale gamma.
        drop_path_rate: stochastic depth, linearly increasing over all blocks.
    """

    def __init__(
        self,
        img_size: int = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        dims: Sequence[int] = (32, 64, 128, 256),
        depths: Sequence[int] = (2, 2, 6, 2),
        ratios: Sequence[int] = (6, 6, 6, 6),
        attn_depths: Sequence[int] = (0, 0, 1, 2),
        attn_mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        kernel_size: int = 7,
        stem_stride: int = 4,
        layer_scale_init: float = 1e-4,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = dims[-1]

        self.stem = ConvNorm(in_chans, dims[0], 7, stem_stride)
        n_blocks = [d + a for d, a in zip(depths, attn_depths, strict=True)]
        dpr = torch.linspace(0, drop_path_rate, sum(n_blocks), device="cpu").tolist()  # also under a meta device
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for i, dim in enumerate(dims):
            start = sum(n_blocks[:i])
            self.stages.append(
                EfficientModStage(
                    dim,
                    depths[i],
                    ratios[i],
                    attn_depths[i],
                    attn_mlp_ratios[i],
                    dpr[start : start + n_blocks[i]],
                    kernel_size,
                    layer_scale_init,
                )
            )
            if i + 1 < len(dims):
                self.downsamples.append(ConvNorm(dim, dims[i + 1], 3, 2))
        self.norm = nn.LayerNorm(self.embed_dim)
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        # The reference initialises Linear layers only (its isinstance(m, nn.Linear or nn.Conv2d) matches Linear);
        # convs keep PyTorch's default init. Kept, since the published numbers were trained that way.
        self.apply(init_vit_weights)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> normalised last feature map B x H/32 x W/32 x D (channel-last)."""
        x = self.stem(images)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i < len(self.downsamples):
                x = self.downsamples[i](x.permute(0, 3, 1, 2))  # convs take (B, C, H, W)
        return self.norm(x)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> B x N x D."""
        return self.forward_features(images).flatten(1, 2)  # (B, H*W, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> pooled embedding B x D."""
        return self.forward_tokens(images).mean(dim=1)

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """B x D -> logits B x num_classes (identity when num_classes = 0)."""
        return self.head(embedding)


@register_tower(published=True)
def efficientmod_xxs(**overrides: Any) -> EfficientMod:
    """EfficientMod-xxs, 3 x 224 x 224, 1000 classes: 4.74M params, 0.56 GMACs."""
    cfg: dict[str, Any] = dict(
        dims=(32, 64, 128, 256), depths=(2, 2, 6, 2), ratios=(6, 6, 6, 6), attn_depths=(0, 0, 1, 2)
    )
    return EfficientMod(**{**cfg, **overrides})


@register_tower(published=True)
def efficientmod_xs(**overrides: Any) -> EfficientMod:
    """EfficientMod-xs, 3 x 224 x 224, 1000 classes: 6.63M params, 0.71 GMACs."""
    cfg: dict[str, Any] = dict(
        dims=(32, 64, 144, 288), depths=(3, 3, 4, 2), ratios=(4, 4, 4, 4), attn_depths=(0, 0, 3, 3)
    )
    return EfficientMod(**{**cfg, **overrides})


@register_tower(published=True)
def efficientmod_s(**overrides: Any) -> EfficientMod:
    """EfficientMod-s, 3 x 224 x 224, 1000 classes: 12.90M params, 1.32 GMACs."""
    cfg: dict[str, Any] = dict(
        dims=(32, 64, 144, 312),
        depths=(4, 4, 8, 4),
        ratios=(6, 6, 6, 6),
        attn_depths=(0, 0, 4, 4),
        attn_mlp_ratios=(4, 4, 4, 5),
    )
    return EfficientMod(**{**cfg, **overrides})


@register_tower
def efficientmod_fm(**overrides: Any) -> EfficientMod:
    """Fashion-MNIST config: 1 x 32 x 32 (28 px upsampled), stem stride 2 -> 2 x 2 final map, no head."""
    cfg: dict[str, Any] = dict(
        img_size=32,
        in_chans=1,
        num_classes=0,
        dims=(24, 48, 96, 192),
        depths=(2, 2, 4, 2),
        ratios=(4, 4, 4, 4),
        attn_depths=(0, 0, 1, 1),
        stem_stride=2,
    )
    return EfficientMod(**{**cfg, **overrides})
