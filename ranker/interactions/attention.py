"""Attention core shared by the Hiformer, heterogeneous-attention and vanilla-transformer interactions.

The three variants differ only in how each token is projected (Hiformer, arXiv 2311.05884, §3): one weight for
all tokens (vanilla), one weight per token (heterogeneous), or one big map of the flattened token sequence
(composite, Hiformer keys/values), optionally low-rank. So this module holds one attention layer that takes its
projections as arguments, and the stack that appends task tokens and returns their final states.

Shapes: B batch, T feature tokens, K tasks, S = T + K tokens (task tokens in the last K slots), D model width,
H heads, d_k / d_v per-head key / value width, Q rows a layer updates (S, or K in a pruned last layer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ranker.interactions import short_attention

# PyTorch's CPU softmax over the last dim runs a vectorised kernel only for rows at least one SIMD vector long
# (16 fp32 lanes with AVX-512, 8 with AVX2) and a scalar one below: 7x slower on Hiformer's 13-wide rows.
_SOFTMAX_MIN_ROW = 16


def softmax_last(scores: Tensor) -> Tensor:
    """Softmax over the last dim, rows shorter than 16 padded with -inf so that PyTorch's vectorised kernel runs.

    Measured on a 2-vCPU AMD EPYC (Zen 4), torch 2.14.1, 1 thread, ``B x H x S x S`` = 512 x 2 x 13 x 13 fp32:
    forward + backward 0.64 ms padded against 4.9 ms unpadded with AVX-512 kernels and 1.0 ms with AVX2 ones
    (``ATEN_CPU_CAPABILITY=avx2``), and 1.3-1.9 ms for the max-subtract / exp / sum form written out; the padded
    entries get exactly zero weight and zero gradient.

    Shapes: ``... x S`` -> ``... x S`` (a view of a ``... x 16`` tensor when S < 16).
    """
    width = scores.shape[-1]
    if width >= _SOFTMAX_MIN_ROW:
        return scores.softmax(dim=-1)
    padded = F.pad(scores, (0, _SOFTMAX_MIN_ROW - width), value=float("-inf"))  # (..., 16)
    return padded.softmax(dim=-1)[..., :width]


def attend(query: Tensor, key: Tensor, value: Tensor, dropout: float = 0.0, training: bool = False) -> Tensor:
    """Scaled dot-product attention with the softmax in at least fp32.

    On the CPU in fp32 with at most 16 tokens (Hiformer's case) it runs the fused kernel of
    :mod:`ranker.interactions.short_attention` (2.4x faster forward + backward); otherwise it is written out rather
    than via ``F.scaled_dot_product_attention`` so that the softmax precision is ours to fix, the short-row softmax
    can take :func:`softmax_last`'s fast path, and the FLOP counter sees plain matmuls (SDPA was also slower here:
    13 vs 9 ms for Hiformer's forward at batch 512, 1 thread). Both equal SDPA within float rounding (tests:
    ``F.scaled_dot_product_attention``, tests/ranker/test_short_attention.py).

    Args:
        query: ``B x H x Q x d_k``.
        key: ``B x H x S x d_k``.
        value: ``B x H x S x d_v``.
        dropout: dropout probability on the attention weights.
        training: apply dropout only when True.

    Returns:
        ``B x H x Q x d_v``.
    """
    if short_attention.usable(query, key, value, dropout, training):
        return short_attention.attention(query, key, value)
    scores = torch.matmul(query, key.transpose(-2, -1))  # (B, H, Q, S)
    # bf16/fp16 logits would round away the small gaps between tokens; float64 stays float64 for exact tests.
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * query.shape[-1] ** -0.5
    weights = F.dropout(softmax_last(scores), dropout, training).to(value.dtype)
    return torch.matmul(weights, value)  # (B, H, Q, d_v)


class TokenLinear(nn.Module):
    """Linear map applied to each of the last ``out_tokens`` tokens, with one weight per token or one shared.

    Per-token weights are stacked as ``out_tokens x in_dim x out_dim`` and applied with one einsum, so
    heterogeneous projections cost the same FLOPs as a shared one. Reading the *last* tokens of the input lets a
    pruned last layer, which only updates the K task tokens (the last K slots), take the full sequence.

    Args:
        in_dim: input width.
        out_dim: output width.
        out_tokens: number of trailing tokens projected (Q).
        shared: one weight for all tokens (vanilla) instead of one per token (heterogeneous).
        bias: add a bias (per token when not shared).
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x S x in_dim`` (S >= Q) -> ``B x Q x out_dim``.

    Example::

        >>> proj = TokenLinear(16, 8, out_tokens=5)
        >>> proj(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        out_tokens: int,
        *,
        shared: bool = False,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.out_tokens = out_tokens
        lead = () if shared else (out_tokens,)
        self.weight = nn.Parameter(torch.empty(*lead, in_dim, out_dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(*lead, out_dim, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Unit-variance outputs for unit-variance inputs, so attention logits start O(1) whatever the width.
        nn.init.normal_(self.weight, std=self.weight.shape[-2] ** -0.5)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x[:, x.shape[1] - self.out_tokens :]  # (B, Q, in_dim)
        if self.weight.dim() == 2:
            y = x @ self.weight  # (B, Q, out_dim)
            return y if self.bias is None else y + self.bias
        # bmm over tokens rather than einsum: its weight gradient is freshly laid out, which DDP's gradient buckets
        # require (einsum's had a non-standard stride when Q = 1). The result stays token-major in memory, so a
        # following TokenLinear (the FFN's second layer) reads it without a copy; baddbmm adds the bias in the same
        # pass (the FFN forward + backward 1.2x faster than bmm + add, batch 512, 1 thread).
        xt = x.transpose(0, 1)  # (Q, B, in_dim)
        if self.bias is None:
            y = torch.bmm(xt, self.weight)  # (Q, B, out_dim)
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xt, self.weight)  # (Q, B, out_dim)
        return y.transpose(0, 1)  # (B, Q, out_dim)


class CompositeLinear(nn.Module):
    """Hiformer composite projection: every output token is a linear map of *all* input tokens.

    The ``S x in_dim`` tokens are flattened and mapped by one ``(S·in_dim) x (Q·out_dim)`` matrix, full or
    factorised as two bias-free linears of rank ``rank`` with nothing in between (paper §3.5.1). A block-diagonal
    matrix recovers a heterogeneous projection.

    Args:
        in_tokens: number of input tokens (S).
        in_dim: input width per token.
        out_tokens: number of trailing tokens emitted (Q).
        out_dim: output width per token.
        rank: rank of the factorisation, or None for the full matrix.
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x S x in_dim`` -> ``B x Q x out_dim``.

    Example::

        >>> proj = CompositeLinear(5, 16, 5, 8, rank=4)
        >>> proj(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 8])
    """

    def __init__(
        self,
        in_tokens: int,
        in_dim: int,
        out_tokens: int,
        out_dim: int,
        *,
        rank: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.out_tokens = out_tokens
        self.rank = rank
        dd = {"device": device, "dtype": dtype}
        fan_in, fan_out = in_tokens * in_dim, out_tokens * out_dim
        self.proj: nn.Module = (
            nn.Linear(fan_in, fan_out, bias=False, **dd)
            if rank is None
            else nn.Sequential(nn.Linear(fan_in, rank, bias=False, **dd), nn.Linear(rank, fan_out, bias=False, **dd))
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Full or factorised, the effective matrix gets entry variance 1/(S·in_dim), so outputs keep unit variance
        # and the composite logits do not grow with the token count. Factorised: U ~ N(0, 1/(S·in_dim)) and
        # W ~ N(0, 1/rank), whose product over the rank dimension has that variance.
        for linear in self.proj.modules():
            if isinstance(linear, nn.Linear):
                nn.init.normal_(linear.weight, std=linear.in_features**-0.5)

    def forward(self, x: Tensor) -> Tensor:
        batch = x.shape[0]
        y = self.proj(x.reshape(batch, -1))  # (B, S·in_dim) -> (B, Q·out_dim)
        return y.view(batch, self.out_tokens, -1)  # (B, Q, out_dim)


Projection = TokenLinear | CompositeLinear


class FeedForward(nn.Module):
    """Two-layer GELU MLP on each of the last ``out_tokens`` tokens, token-specific or shared.

    Args:
        dim: token width D.
        hidden: hidden width.
        out_tokens: number of trailing tokens processed (Q).
        shared: one MLP for all tokens instead of one per token (Hiformer's token-specific FFN).
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x Q x D`` -> ``B x Q x D``.

    Example::

        >>> ffn = FeedForward(16, 32, out_tokens=5)
        >>> ffn(torch.randn(2, 5, 16)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        dim: int,
        hidden: int,
        out_tokens: int,
        *,
        shared: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        dd = {"shared": shared, "bias": True, "device": device, "dtype": dtype}
        self.fc1 = TokenLinear(dim, hidden, out_tokens, **dd)
        self.fc2 = TokenLinear(hidden, dim, out_tokens, **dd)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class AttentionLayer(nn.Module):
    """Multi-head self-attention over all S tokens, then a FFN, each in a residual block (pre- or post-LN).

    Only the last Q = ``query.out_tokens`` tokens are updated: Q = S normally, Q = K in a pruned last layer,
    where queries, attention rows, output projection and FFN are computed for the task tokens only while keys
    and values still cover all S tokens, so the task-token outputs are exactly those of the unpruned layer.

    Args:
        query: projection ``B x S x D -> B x Q x H·d_k``.
        key: projection ``B x S x D -> B x S x H·d_k``.
        value: projection ``B x S x D -> B x S x H·d_v``.
        out: projection ``B x Q x H·d_v -> B x Q x D``.
        ffn: ``B x Q x D -> B x Q x D``.
        dim: token width D.
        num_heads: H.
        norm_first: pre-LN (``x + f(LN(x))``) if True, else post-LN (``LN(x + f(x))``).
        dropout: dropout on the attention weights and on both residual branches.
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x S x D`` -> ``B x Q x D`` (the new states of the last Q tokens).

    Example::

        >>> S, D = 5, 16
        >>> layer = AttentionLayer(
        ...     query=TokenLinear(D, D, S), key=TokenLinear(D, D, S), value=TokenLinear(D, D, S),
        ...     out=TokenLinear(D, D, S, shared=True), ffn=FeedForward(D, 32, S), dim=D, num_heads=2)
        >>> layer(torch.randn(2, S, D)).shape
        torch.Size([2, 5, 16])
    """

    def __init__(
        self,
        *,
        query: Projection,
        key: Projection,
        value: Projection,
        out: Projection,
        ffn: FeedForward,
        dim: int,
        num_heads: int,
        norm_first: bool = True,
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.query, self.key, self.value, self.out, self.ffn = query, key, value, out, ffn
        self.num_heads = num_heads
        self.norm_first = norm_first
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(dim, device=device, dtype=dtype)
        self.norm2 = nn.LayerNorm(dim, device=device, dtype=dtype)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, tokens, _ = x.shape
        return x.view(batch, tokens, self.num_heads, -1).transpose(1, 2)  # (B, H, tokens, d)

    def forward(self, x: Tensor) -> Tensor:
        batch, _, _ = x.shape
        rows = self.query.out_tokens
        h = self.norm1(x) if self.norm_first else x
        q = self._split_heads(self.query(h))  # (B, H, Q, d_k)
        k = self._split_heads(self.key(h))  # (B, H, S, d_k)
        v = self._split_heads(self.value(h))  # (B, H, S, d_v)
        a = attend(q, k, v, self.dropout, self.training)  # (B, H, Q, d_v)
        a = a.transpose(1, 2).reshape(batch, rows, -1)  # (B, Q, H·d_v)
        y = x[:, x.shape[1] - rows :] + F.dropout(self.out(a), self.dropout, self.training)  # (B, Q, D)
        if not self.norm_first:
            y = self.norm1(y)
        f = self.ffn(self.norm2(y) if self.norm_first else y)
        y = y + F.dropout(f, self.dropout, self.training)
        return y if self.norm_first else self.norm2(y)


class AttentionInteraction(nn.Module):
    """Appends K learned task tokens to the T feature tokens, runs the layers, returns the task-token states.

    Token order is fixed by the caller (dense, sparse, image tokens); the task tokens take the last K slots. With
    token-specific or composite projections the result is *not* permutation-equivariant, so the order must never
    change between training and serving.

    Args:
        layers: attention layers built for S = T + K tokens; only the last may update fewer rows (exactly K).
        num_tokens: T, feature tokens per example (excluding task tokens).
        dim: token width D.
        num_tasks: K, number of task tokens (one per prediction task).
        final_norm: LayerNorm the task-token states (needed after pre-LN layers, whose stream is unnormalised).
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x T x D`` -> ``B x K x D``; ``out_dim`` = D.

    Example::

        >>> from ranker.interactions import create
        >>> model = create("hiformer", num_tokens=6, dim=16, num_tasks=2, num_heads=2, rank_k=8, rank_v=16)
        >>> model(torch.randn(4, 6, 16)).shape
        torch.Size([4, 2, 16])
    """

    def __init__(
        self,
        layers: list[AttentionLayer],
        *,
        num_tokens: int,
        dim: int,
        num_tasks: int,
        final_norm: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if layers[-1].query.out_tokens not in (num_tasks, num_tokens + num_tasks):
            raise ValueError("the last layer must update all tokens or exactly the task tokens")
        self.num_tokens = num_tokens
        self.num_tasks = num_tasks
        self.out_dim = dim
        self.task_tokens = nn.Parameter(torch.empty(num_tasks, dim, device=device, dtype=dtype))
        self.layers = nn.ModuleList(layers)
        self.final_norm: nn.Module = nn.LayerNorm(dim, device=device, dtype=dtype) if final_norm else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Small like BERT's CLS token: the pre-LN input normalisation rescales it, the residual stream keeps it quiet.
        nn.init.trunc_normal_(self.task_tokens, std=0.02)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, num_tokens, dim = tokens.shape
        if (num_tokens, dim) != (self.num_tokens, self.out_dim):
            raise ValueError(f"expected B x {self.num_tokens} x {self.out_dim} tokens, got {tuple(tokens.shape)}")
        x = torch.cat([tokens, self.task_tokens.expand(batch, -1, -1)], dim=1)  # (B, S, D)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x[:, x.shape[1] - self.num_tasks :])  # (B, K, D)
