"""Non-attention baselines: DCN-v2 (Wang et al., arXiv 2008.13535) and DLRM's dot interaction (arXiv 1906.00091).

Both produce one representation per example; it is repeated for each of the K tasks so that every interaction
has the same ``B x K x out_dim`` contract and the per-task heads sit on top.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from ranker.interactions._registry import register


def _mlp(
    in_dim: int, hidden: Sequence[int], device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[nn.Sequential, int]:
    """Linear + ReLU per hidden width; returns the MLP and its output width (``in_dim`` when ``hidden`` is empty)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width, device=device, dtype=dtype), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers), in_dim


@register("dcnv2")
class DCNv2(nn.Module):
    """DCN-v2: a cross network over the flattened tokens plus a deep MLP, stacked or in parallel.

    Cross layer l (torchrec ``CrossNet``; ``LowRankCrossNet`` when ``low_rank`` is set):
    ``x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l`` on ``x_0 = flatten(tokens)``, width T·D.

    Args:
        num_tokens: T, input tokens.
        dim: D, token width.
        num_tasks: K; the representation is repeated K times.
        num_cross_layers: number of cross layers.
        low_rank: rank r of ``W_l = U_l V_l`` (torchrec suggests r ≈ T·D / 4), or None for full ``(T·D)²`` matrices.
        hidden: widths of the deep MLP (Linear + ReLU each).
        structure: ``"stacked"`` (MLP on the cross output) or ``"parallel"`` (concat of cross output and MLP(x_0)).
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x T x D`` -> ``B x K x out_dim``; ``out_dim`` = ``hidden[-1]`` (stacked) or
    ``T·D + hidden[-1]`` (parallel).

    Example::

        >>> model = DCNv2(num_tokens=4, dim=8, num_tasks=2, hidden=(16,))
        >>> model(torch.randn(3, 4, 8)).shape
        torch.Size([3, 2, 16])
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        dim: int,
        num_tasks: int,
        num_cross_layers: int = 3,
        low_rank: int | None = None,
        hidden: Sequence[int] = (256, 128),
        structure: Literal["stacked", "parallel"] = "stacked",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        # Imported here so that the other interactions work where torchrec (and fbgemm) are not installed.
        from torchrec.modules.crossnet import CrossNet, LowRankCrossNet

        if structure not in ("stacked", "parallel"):
            raise ValueError(f"structure must be 'stacked' or 'parallel', got {structure!r}")
        width = num_tokens * dim
        self.num_tasks = num_tasks
        self.parallel = structure == "parallel"
        # Registered before the cross net so that eager construction and meta materialisation (which resets
        # children in registration order, then this module) draw the same random numbers.
        self.deep, deep_out = _mlp(width, hidden, device, dtype)
        self.out_dim = width + deep_out if self.parallel else deep_out
        # torchrec's cross nets take no device/dtype arguments; the default-device context keeps a meta build
        # from allocating the (T·D)² kernels on the CPU first.
        with torch.device(device) if device is not None else contextlib.nullcontext():
            cross = (
                CrossNet(width, num_cross_layers)
                if low_rank is None
                else LowRankCrossNet(width, num_cross_layers, low_rank)
            )
        self.cross: nn.Module = cross.to(dtype=dtype)

    def reset_parameters(self) -> None:
        # torchrec's cross nets initialise only in their constructors (xavier-normal kernels, zero biases); redoing
        # it here lets a model built on the meta device be materialised with to_empty() + reset_parameters().
        for name, param in self.cross.named_parameters():
            if name.startswith("bias"):
                nn.init.zeros_(param)
            else:
                nn.init.xavier_normal_(param)

    def forward(self, tokens: Tensor) -> Tensor:
        x0 = tokens.flatten(1)  # (B, T·D)
        crossed = self.cross(x0)  # (B, T·D)
        y = torch.cat([crossed, self.deep(x0)], dim=1) if self.parallel else self.deep(crossed)  # (B, out_dim)
        return y.unsqueeze(1).expand(-1, self.num_tasks, -1)  # (B, K, out_dim)


@register("dlrm")
class DotInteraction(nn.Module):
    """DLRM interaction: dot products of all token pairs (i < j) concatenated with the dense token, then an MLP.

    Args:
        num_tokens: T, input tokens; token 0 must be the dense-feature token (the caller's order puts it first).
        dim: D, token width.
        num_tasks: K; the representation is repeated K times.
        hidden: widths of the over-MLP (Linear + ReLU each).
        device: parameter device.
        dtype: parameter dtype.

    Shapes: ``B x T x D`` -> ``B x K x out_dim``; the MLP input is ``D + T(T-1)/2`` wide, ``out_dim`` =
    ``hidden[-1]``.

    Example::

        >>> model = DotInteraction(num_tokens=4, dim=8, num_tasks=2, hidden=(16,))
        >>> model(torch.randn(3, 4, 8)).shape
        torch.Size([3, 2, 16])
    """

    def __init__(
        self,
        *,
        num_tokens: int,
        dim: int,
        num_tasks: int,
        hidden: Sequence[int] = (256, 128),
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.num_tasks = num_tasks
        self.over, self.out_dim = _mlp(dim + num_tokens * (num_tokens - 1) // 2, hidden, device, dtype)

    def forward(self, tokens: Tensor) -> Tensor:
        gram = torch.bmm(tokens, tokens.transpose(1, 2))  # (B, T, T)
        # Built per call (tiny) rather than as a buffer, so modules created on the meta device need no fix-up.
        rows, cols = torch.triu_indices(self.num_tokens, self.num_tokens, offset=1, device=tokens.device)
        z = torch.cat([tokens[:, 0], gram[:, rows, cols]], dim=1)  # (B, D + T(T-1)/2)
        return self.over(z).unsqueeze(1).expand(-1, self.num_tasks, -1)  # (B, K, out_dim)
