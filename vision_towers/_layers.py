"""Layers shared by the towers written here (EfficientMod's hybrid stages and the EET ViT).

Shapes: B batch, N tokens, C channels, H heads, d head dim.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp, trunc_normal_
from torch import nn


class Attention(nn.Module):
    """Multi-head self-attention that can also return its probabilities and per-head outputs.

    Scores are computed with explicit matmuls instead of ``scaled_dot_product_attention`` because EET needs the
    probabilities, and so that ``FlopCounterMode`` counts the score and value matmuls on every backend.

    Args:
        dim: token width C.
        num_heads: H.
        head_dim: d; defaults to ``dim // num_heads``. The inner width H * d may differ from C.
        qkv_bias: bias on the joint q/k/v projection (the output projection always has one).
    """

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim if head_dim is not None else dim // num_heads
        self.scale = self.head_dim**-0.5
        inner = num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim)

    def forward_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: B x N x C -> (probabilities B x H x N x N, per-head outputs B x H x N x d, before ``proj``)."""
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
        attn = attn.softmax(dim=-1)
        return attn, attn @ v

    def merge_heads(self, heads: torch.Tensor) -> torch.Tensor:
        """Per-head outputs B x H x N x d -> B x N x C."""
        B, _, N, _ = heads.shape
        return self.proj(heads.transpose(1, 2).reshape(B, N, -1))  # (B, N, H*d) -> (B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x N x C -> B x N x C."""
        return self.merge_heads(self.forward_heads(x)[1])


class TransformerBlock(nn.Module):
    """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)), no LayerScale.

    Args:
        dim: token width C.
        num_heads: attention heads H.
        head_dim: d per head (defaults to C / H).
        mlp_ratio: MLP hidden width / C.
        qkv_bias: bias on the q/k/v projection.
        drop_path: stochastic-depth rate of both residual branches.
        norm_eps: LayerNorm epsilon.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        head_dim: int | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_path: float = 0.0,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads=num_heads, head_dim=head_dim, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, hidden_features=int(dim * mlp_ratio), act_layer=nn.GELU)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: B x N x C -> (B x N x C, attention B x H x N x N, per-head outputs B x H x N x d)."""
        attn, heads = self.attn.forward_heads(self.norm1(x))
        x = x + self.drop_path(self.attn.merge_heads(heads))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn, heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: B x N x C -> B x N x C."""
        return self.forward_with_attention(x)[0]


def init_vit_weights(module: nn.Module) -> None:
    """ViT/DeiT init (pass to ``Module.apply``): Linear weights ~ TruncNormal(std 0.02), biases 0, LayerNorm (1, 0).

    Convolutions keep PyTorch's default init on purpose (EfficientMod's reference code does the same, see there).
    """
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
