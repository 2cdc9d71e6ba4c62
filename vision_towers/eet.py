"""EET: ViT towers with content-based token pruning and discriminative transfer.

Paper: Jiang, Tang, Pan, Li, "Rethinking Vision Transformer for Large-Scale Fine-Grained Image Retrieval",
arXiv 2504.16691 (2025). Code: https://github.com/WhiteJiang/EET (``model/vit.py``, ``loss.py``); written here from
the method description in /work/shared/reference/methods.md section 5, no code copied. The paper's hashing head is
not used: our towers are embedding/classification towers.

Content-based token pruning (CTP), at a pruning layer with attention A^h (B x H x N x N) and per-head outputs
o^h_i = sum_j A^h_ij v^h_j (before the output projection):

    W^h_i = |o^h_i| / sum_h' |o^h'_i|        (content weight of head h for token i)
    m_i   = sum_h W^h_i * A^h_{cls, i}       (importance of patch i)

the top-K patches by m are kept (sorted by score), the CLS token stays at index 0, the rest are dropped. Position
embeddings are added before any pruning, so reordering tokens does not change what they encode. top-k is hard: no
gradient flows through the scores.

Discriminative transfer (training only, ``EETLoss``): a larger unpruned teacher (1) is distilled into the student
(cosine distance and/or temperature KL between logits) and (2) picks its top-w most important patches, which are
zeroed in the input; the student must still classify the masked image (discriminative region guidance).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, trunc_normal_
from torch import nn

from ._layers import TransformerBlock, init_vit_weights
from ._registry import register_tower


def token_importance(attn: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """CTP importance of the patch tokens (every token but the CLS token at index 0).

    Args:
        attn: attention probabilities B x H x N x N.
        heads: per-head outputs B x H x N x d (before the output projection).

    Returns:
        m: B x (N - 1).
    """
    content = heads[:, :, 1:].norm(dim=-1)  # (B, H, N-1): |o^h_i|
    weights = content / content.sum(dim=1, keepdim=True)  # normalised over heads
    return (weights * attn[:, :, 0, 1:]).sum(dim=1)  # (B, N-1)


def prune_tokens(
    x: torch.Tensor, scores: torch.Tensor, keep: int, patch_idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keeps the CLS token and the ``keep`` highest-scoring patch tokens, in descending score order.

    Args:
        x: tokens B x N x D, CLS at index 0.
        scores: patch importance B x (N - 1).
        keep: K; clamped to N - 1.
        patch_idx: B x (N - 1) original patch index of each patch token (carried along for masks/visualisation).

    Returns:
        (tokens B x (1 + K) x D, original patch indices B x K).
    """
    keep = min(keep, scores.shape[1])
    top = scores.topk(keep, dim=1, sorted=True).indices  # (B, K)
    patches = x[:, 1:].gather(1, top.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, K, D)
    return torch.cat([x[:, :1], patches], dim=1), patch_idx.gather(1, top)


class EETViT(nn.Module):
    """DeiT-style ViT (CLS token, learned position embedding, pre-LN blocks) with optional CTP token pruning.

    Interface: ``forward(images B x C x H x W) -> B x D`` (final-LN CLS token), ``forward_tokens -> B x N x D``
    (CLS at index 0, then the patch tokens that survive pruning, N = 1 + last keep count), ``classify(B x D)``.

    Args:
        img_size: input side (fixed: sets the patch grid).
        patch_size: patch side.
        in_chans: input channels.
        num_classes: classifier outputs; 0 for no head.
        embed_dim: D.
        depth: number of blocks.
        num_heads: attention heads.
        prune_after: 1-based block numbers after which tokens are pruned (``(4, 8, 10)`` = after the 4th, 8th, 10th).
        keep_tokens: patch tokens kept at each pruning point (same length as ``prune_after``).
        drop_path_rate: stochastic depth.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        prune_after: Sequence[int] = (),
        keep_tokens: Sequence[int] = (),
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if len(prune_after) != len(keep_tokens):
            raise ValueError(f"prune_after {prune_after} and keep_tokens {keep_tokens} differ in length")
        if any(not 1 <= b <= depth for b in prune_after):
            raise ValueError(f"prune_after {prune_after} must name blocks 1..{depth}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.embed_dim = self.num_features = embed_dim
        self.keep_at = dict(zip(prune_after, keep_tokens, strict=True))  # 1-based block number -> K

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid = img_size // patch_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid**2, embed_dim))
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # plain floats, also under a meta device
        self.blocks = nn.ModuleList(
            TransformerBlock(embed_dim, num_heads, qkv_bias=True, drop_path=dpr[i], norm_eps=1e-6) for i in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)
        self.apply(init_vit_weights)

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, G*G, D)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)  # (B, 1 + G*G, D)
        return x + self.pos_embed  # (B, 1 + G*G, D)

    def forward_pruned(
        self, images: torch.Tensor, prune: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the blocks, pruning at the configured points.

        Args:
            images: B x C x H x W.
            prune: False runs the same weights on all tokens (the unpruned baseline / teacher behaviour).

        Returns:
            tokens: final-LN tokens B x (1 + K) x D, CLS first;
            patch_idx: original (row-major) patch index of each kept patch token, B x K;
            importance: CTP importance of those K tokens in the last block, B x K (the teacher's region guide).
        """
        x = self._embed(images)
        B, N, _ = x.shape
        patch_idx = torch.arange(N - 1, device=x.device).expand(B, -1)  # (B, N-1)
        for i, blk in enumerate(self.blocks, start=1):
            x, attn, heads = blk.forward_with_attention(x)
            if prune and i in self.keep_at:
                x, patch_idx = prune_tokens(x, token_importance(attn, heads), self.keep_at[i], patch_idx)
        if prune and len(self.blocks) in self.keep_at:
            # Pruned after the last block: re-score the survivors so importance stays aligned with patch_idx.
            attn, heads = self.blocks[-1].attn.forward_heads(self.blocks[-1].norm1(x))
        return self.norm(x), patch_idx, token_importance(attn, heads)

    def forward_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> B x N x D (CLS at index 0)."""
        return self.forward_pruned(images)[0]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: B x C x H x W -> CLS embedding B x D."""
        return self.forward_tokens(images)[:, 0]

    def classify(self, embedding: torch.Tensor) -> torch.Tensor:
        """B x D -> logits B x num_classes (identity when num_classes = 0)."""
        return self.head(embedding)


def mask_patches(images: torch.Tensor, patch_idx: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Zeroes the given patches: images B x C x H x W, patch_idx B x w (row-major: row = i // G, col = i % G)."""
    B, _, H, W = images.shape
    grid_h, grid_w = H // patch_size, W // patch_size
    keep = torch.ones(B, grid_h * grid_w, device=images.device, dtype=images.dtype)
    keep = keep.scatter(1, patch_idx, 0.0).view(B, 1, grid_h, grid_w)  # (B, 1, G_h, G_w), 0 on masked patches
    keep = keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)  # (B, 1, H, W)
    return images * keep


class EETLoss(nn.Module):
    """Student training loss of EET's discriminative transfer.

    total = ce_weight * CE(z_s, y) + mask_weight * CE(z_s(masked), y)
            + cos_weight * mean(1 - cos(z_s, z_t)) + kl_weight * T^2 * KL(softmax(z_t / T) || softmax(z_s / T))

    The default weights are those of EET's released code (``loss.py``/``train_model.py``): 0.1 * (CE + masked CE)
    + 1.0 * cosine distillation, no KL (its KL class is unused there), w = 4; docs/vision_towers.md compares them
    with the paper's description. The released code distils real-valued hash outputs; we distil logits.

    z = logits (``tower.classify(tower(images))``); the teacher runs without gradients. The masked image zeroes the
    teacher's ``mask_top`` most important patches (last-block CTP importance of an unpruned pass); teacher and
    student must share the input size. Distilling logits rather than embeddings lets the teacher be wider than
    the student.

    Args:
        ce_weight: cross-entropy on the clean image.
        mask_weight: cross-entropy on the teacher-masked image (discriminative region guidance).
        cos_weight: cosine distillation between logits.
        kl_weight: temperature-KL distillation between logits.
        temperature: T of the KL term.
        mask_top: w, number of patches zeroed.
    """

    def __init__(
        self,
        ce_weight: float = 0.1,
        mask_weight: float = 0.1,
        cos_weight: float = 1.0,
        kl_weight: float = 0.0,
        temperature: float = 1.0,
        mask_top: int = 4,
    ) -> None:
        super().__init__()
        self.ce_weight = ce_weight
        self.mask_weight = mask_weight
        self.cos_weight = cos_weight
        self.kl_weight = kl_weight
        self.temperature = temperature
        self.mask_top = mask_top

    def settings(self) -> dict[str, float]:
        """The loss's weights, temperature and ``mask_top`` as plain values (for checkpoints and reports)."""
        names = ("ce_weight", "mask_weight", "cos_weight", "kl_weight", "temperature", "mask_top")
        return {name: getattr(self, name) for name in names}

    def forward(
        self, student: nn.Module, teacher: EETViT, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """images: B x C x H x W, labels: B (int64) -> (scalar loss, detached components)."""
        with torch.no_grad():
            t_tokens, t_idx, t_importance = teacher.forward_pruned(images, prune=False)
            t_logits = teacher.classify(t_tokens[:, 0])
            top = t_idx.gather(1, t_importance.topk(self.mask_top, dim=1).indices)  # (B, w) original patch ids
            masked = mask_patches(images, top, teacher.patch_size)
        s_logits = student.classify(student(images))
        s_masked = student.classify(student(masked))

        parts = {
            "ce": F.cross_entropy(s_logits, labels),
            "mask_ce": F.cross_entropy(s_masked, labels),
            "cos": (1 - F.cosine_similarity(s_logits, t_logits, dim=-1)).mean(),
        }
        weights = {"ce": self.ce_weight, "mask_ce": self.mask_weight, "cos": self.cos_weight}
        if self.kl_weight > 0:
            T = self.temperature
            parts["kl"] = F.kl_div(
                F.log_softmax(s_logits / T, dim=-1),
                F.log_softmax(t_logits / T, dim=-1),
                reduction="batchmean",
                log_target=True,
            ) * (T * T)
            weights["kl"] = self.kl_weight
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}


@register_tower(published=True)
def vit_s16(**overrides: Any) -> EETViT:
    """ViT-S/16 (DeiT-S), 3 x 224 x 224, 1000 classes, no pruning: the EET baseline/teacher (22.05M params)."""
    return EETViT(**overrides)


@register_tower(published=True)
def eet_vit_s16(**overrides: Any) -> EETViT:
    """EET's released setting: ViT-S/16 pruned after blocks 4, 8, 10 to 98, 49, 12 of 196 patches."""
    return EETViT(**{"prune_after": (4, 8, 10), "keep_tokens": (98, 49, 12), **overrides})


_FM_VIT: dict[str, Any] = dict(
    img_size=28, patch_size=4, in_chans=1, num_classes=0, embed_dim=128, depth=6, num_heads=4
)


@register_tower
def vit_fm(**overrides: Any) -> EETViT:
    """Fashion-MNIST ViT, unpruned: 1 x 28 x 28, patch 4 (49 patches), D = 128, 6 blocks, 4 heads."""
    return EETViT(**{**_FM_VIT, **overrides})


@register_tower
def eet_vit_fm(**overrides: Any) -> EETViT:
    """``vit_fm`` pruned after blocks 2, 4, 5 to 24, 12, 6 of 49 patches."""
    return EETViT(**{**_FM_VIT, "prune_after": (2, 4, 5), "keep_tokens": (24, 12, 6), **overrides})


@register_tower
def vit_fm_teacher(**overrides: Any) -> EETViT:
    """Wider unpruned ``vit_fm`` (D = 192, 6 heads of 32) used as the EET teacher."""
    return EETViT(**{**_FM_VIT, "embed_dim": 192, "num_heads": 6, **overrides})
