"""Hiformer (Gui et al., arXiv 2311.05884) and the two attention baselines it generalises.

All three are ``AttentionInteraction`` stacks and differ only in their projections:

    name              query       key / value          output     FFN
    transformer       shared      shared               shared     shared
    hetero_attention  per token   per token            per token  per token
    hiformer          per token   composite (low-rank) shared     per token

``query_mode="composite"`` makes Hiformer's query composite too (an open reading of the paper, see
docs/hiformer.md).
The composite key/value map the flattened ``B x (S·D)`` sequence, so each key and value depends on every feature.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from ranker.interactions._registry import register
from ranker.interactions.attention import (
    AttentionInteraction,
    AttentionLayer,
    CompositeLinear,
    FeedForward,
    Projection,
    TokenLinear,
)


@dataclass(frozen=True)
class _Mixing:
    """How a projection mixes tokens: ``shared`` weight, per-``token`` weights, or ``composite`` (rank None = full)."""

    kind: Literal["shared", "token", "composite"]
    rank: int | None = None

    def build(
        self,
        in_tokens: int,
        out_tokens: int,
        in_dim: int,
        out_dim: int,
        device: torch.device | str | None,
        dtype: torch.dtype | None,
    ) -> Projection:
        if self.kind == "composite":
            return CompositeLinear(in_tokens, in_dim, out_tokens, out_dim, rank=self.rank, device=device, dtype=dtype)
        return TokenLinear(in_dim, out_dim, out_tokens, shared=self.kind == "shared", device=device, dtype=dtype)


def _attention_stack(
    *,
    num_tokens: int,
    dim: int,
    num_tasks: int,
    query: _Mixing,
    key: _Mixing,
    value: _Mixing,
    out: _Mixing,
    shared_ffn: bool,
    num_layers: int,
    num_heads: int,
    head_dim: int | None,
    value_dim: int | None,
    ffn_hidden: int | None,
    dropout: float,
    norm: str,
    prune_last: bool,
    device: torch.device | str | None,
    dtype: torch.dtype | None,
) -> AttentionInteraction:
    if min(num_tokens, dim, num_tasks, num_layers, num_heads) < 1:
        raise ValueError("num_tokens, dim, num_tasks, num_layers and num_heads must be >= 1")
    if norm not in ("pre", "post"):
        raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
    if head_dim is None:
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}; pass head_dim")
        head_dim = dim // num_heads
    value_dim = head_dim if value_dim is None else value_dim
    ffn_hidden = 4 * dim if ffn_hidden is None else ffn_hidden
    total = num_tokens + num_tasks
    layers = []
    for index in range(num_layers):
        rows = num_tasks if prune_last and index == num_layers - 1 else total
        layers.append(
            AttentionLayer(
                query=query.build(total, rows, dim, num_heads * head_dim, device, dtype),
                key=key.build(total, total, dim, num_heads * head_dim, device, dtype),
                value=value.build(total, total, dim, num_heads * value_dim, device, dtype),
                out=out.build(rows, rows, num_heads * value_dim, dim, device, dtype),
                ffn=FeedForward(dim, ffn_hidden, rows, shared=shared_ffn, device=device, dtype=dtype),
                dim=dim,
                num_heads=num_heads,
                norm_first=norm == "pre",
                dropout=dropout,
                device=device,
                dtype=dtype,
            )
        )
    return AttentionInteraction(
        layers,
        num_tokens=num_tokens,
        dim=dim,
        num_tasks=num_tasks,
        final_norm=norm == "pre",
        device=device,
        dtype=dtype,
    )


@register("hiformer")
def hiformer(
    *,
    num_tokens: int,
    dim: int,
    num_tasks: int,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int | None = None,
    value_dim: int | None = None,
    ffn_hidden: int | None = None,
    rank_k: int | Literal["auto"] | None = "auto",
    rank_v: int | Literal["auto"] | None = "auto",
    query_mode: Literal["hetero", "composite"] = "hetero",
    dropout: float = 0.0,
    norm: Literal["pre", "post"] = "pre",
    prune_last: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionInteraction:
    """Hiformer: heterogeneous queries, composite (low-rank) keys/values, shared output, token-specific FFNs.

    Args:
        num_tokens: T, feature tokens per example (task tokens excluded).
        dim: D, token width.
        num_tasks: K, learned task tokens appended in the last K slots; their final states are returned.
        num_layers: number of attention layers.
        num_heads: H.
        head_dim: d_k, per-head query/key width (default D / H).
        value_dim: d_v, per-head value width (default d_k).
        ffn_hidden: hidden width of the token-specific FFNs (default 4·D).
        rank_k: rank of the composite key projection (and of the query one when ``query_mode="composite"``);
            None = full ``(S·D) x (S·H·d_k)`` matrix, quadratic in S = T + K; ``"auto"`` = 2·D, or full where
            that would not compress (2·D >= S·D).
        rank_v: rank of the composite value projection; None = full; ``"auto"`` = 4·D (the paper gives values
            the larger rank), or full where that would not compress.
        query_mode: ``"hetero"`` (token-specific queries) or ``"composite"`` (queries from the composite map).
        dropout: on attention weights and residual branches.
        norm: ``"pre"`` (pre-LN, with a final LayerNorm) or ``"post"`` (post-LN).
        prune_last: in the last layer compute queries, attention rows, output projection and FFN for the task
            tokens only (exact; the pruned layer has no weights for the feature-token rows).
        device: parameter device (``"meta"`` for deferred initialisation).
        dtype: parameter dtype.

    Returns:
        Module mapping ``B x T x D`` to ``B x K x D`` (``out_dim`` = D).
    """
    if query_mode not in ("hetero", "composite"):
        raise ValueError(f"query_mode must be 'hetero' or 'composite', got {query_mode!r}")
    width = (num_tokens + num_tasks) * dim
    ranks: dict[str, int | None] = {}
    for label, rank, auto in (("rank_k", rank_k, 2 * dim), ("rank_v", rank_v, 4 * dim)):
        if rank == "auto":
            ranks[label] = auto if auto < width else None
            continue
        if rank is not None and rank >= width:
            warnings.warn(
                f"hiformer {label}={rank} >= (T + K)·D = {width}: the factorised composite projection cannot "
                f"compress and costs more than the full matrix ({label}=None); pick a rank well below {width}",
                stacklevel=2,
            )
        ranks[label] = rank
    return _attention_stack(
        num_tokens=num_tokens,
        dim=dim,
        num_tasks=num_tasks,
        query=_Mixing("token") if query_mode == "hetero" else _Mixing("composite", ranks["rank_k"]),
        key=_Mixing("composite", ranks["rank_k"]),
        value=_Mixing("composite", ranks["rank_v"]),
        out=_Mixing("shared"),
        shared_ffn=False,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        value_dim=value_dim,
        ffn_hidden=ffn_hidden,
        dropout=dropout,
        norm=norm,
        prune_last=prune_last,
        device=device,
        dtype=dtype,
    )


@register("hetero_attention")
def hetero_attention(
    *,
    num_tokens: int,
    dim: int,
    num_tasks: int,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int | None = None,
    value_dim: int | None = None,
    ffn_hidden: int | None = None,
    dropout: float = 0.0,
    norm: Literal["pre", "post"] = "pre",
    prune_last: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionInteraction:
    """Heterogeneous attention (paper §3.3): token-specific query/key/value/output projections and FFNs.

    Args:
        As :func:`hiformer`, without ``rank_k``, ``rank_v`` and ``query_mode``.

    Returns:
        Module mapping ``B x T x D`` to ``B x K x D`` (``out_dim`` = D).
    """
    return _attention_stack(
        num_tokens=num_tokens,
        dim=dim,
        num_tasks=num_tasks,
        query=_Mixing("token"),
        key=_Mixing("token"),
        value=_Mixing("token"),
        out=_Mixing("token"),
        shared_ffn=False,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        value_dim=value_dim,
        ffn_hidden=ffn_hidden,
        dropout=dropout,
        norm=norm,
        prune_last=prune_last,
        device=device,
        dtype=dtype,
    )


@register("transformer")
def transformer(
    *,
    num_tokens: int,
    dim: int,
    num_tasks: int,
    num_layers: int = 2,
    num_heads: int = 2,
    head_dim: int | None = None,
    value_dim: int | None = None,
    ffn_hidden: int | None = None,
    dropout: float = 0.0,
    norm: Literal["pre", "post"] = "pre",
    prune_last: bool = True,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> AttentionInteraction:
    """Vanilla multi-head self-attention over feature tokens (AutoInt-like), all weights shared across tokens.

    Args:
        As :func:`hiformer`, without ``rank_k``, ``rank_v`` and ``query_mode``.

    Returns:
        Module mapping ``B x T x D`` to ``B x K x D`` (``out_dim`` = D).
    """
    return _attention_stack(
        num_tokens=num_tokens,
        dim=dim,
        num_tasks=num_tasks,
        query=_Mixing("shared"),
        key=_Mixing("shared"),
        value=_Mixing("shared"),
        out=_Mixing("shared"),
        shared_ffn=True,
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=head_dim,
        value_dim=value_dim,
        ffn_hidden=ffn_hidden,
        dropout=dropout,
        norm=norm,
        prune_last=prune_last,
        device=device,
        dtype=dtype,
    )
