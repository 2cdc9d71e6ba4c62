"""Structured pruning of attention heads and FFN hidden units, ranked by a first-order importance score.

Importance (Michel et al. 2019 for heads, the same idea for FFN units): a mask of ones multiplies each head's
attention output (the input of the output projection, ``B x Q x H·d_v``) and each FFN unit (the input of the second
FFN linear, ``B x Q x hidden``); the score of a unit is ``|dL/dmask|`` summed over batches of training data, i.e.
``|sum_b a_b · dL/da_b|``, the first-order change of the loss when the unit is removed.

The pruned model is again a plain ``ModelConfig`` model: every layer keeps the same number of heads ``H'`` (its own
best ones) with unchanged per-head widths (``head_dim`` / ``value_dim`` become explicit), and every FFN keeps
``hidden'`` units, chosen per token for token-specific FFNs. Weights are copied by index, so the pruned model equals
the unpruned one with the removed heads' outputs and the removed units' activations set to zero (the test's
reference).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from ranker.build import ModelConfig
from ranker.interactions.attention import AttentionInteraction, AttentionLayer, CompositeLinear, TokenLinear
from ranker.model import Ranker, RankerTrain


def _masks(attention: AttentionInteraction) -> tuple[list[Tensor], list[Tensor]]:
    """Ones-masks: per layer ``H`` head masks and ``Q x hidden`` FFN-unit masks (requires_grad)."""
    heads, units = [], []
    for layer in attention.layers:
        heads.append(torch.ones(layer.num_heads, requires_grad=True))
        fc1 = layer.ffn.fc1
        units.append(torch.ones(fc1.out_tokens, fc1.weight.shape[-1], requires_grad=True))
    return heads, units


def _install(attention: AttentionInteraction, heads: list[Tensor], units: list[Tensor]) -> list[Any]:
    """Forward pre-hooks multiplying the output projection's input by the head masks and fc2's by the unit masks."""
    handles = []
    for layer, head_mask, unit_mask in zip(attention.layers, heads, units, strict=True):

        def on_heads(_: nn.Module, args: tuple[Tensor], mask: Tensor = head_mask) -> tuple[Tensor]:
            a = args[0]  # (B, Q, H·d_v), head-major within a token
            per_unit = mask.repeat_interleave(a.shape[-1] // mask.numel())  # (H·d_v,)
            return (a * per_unit.to(a.dtype),)

        def on_units(_: nn.Module, args: tuple[Tensor], mask: Tensor = unit_mask) -> tuple[Tensor]:
            return (args[0] * mask.to(args[0].dtype),)  # (B, Q, hidden) * (Q, hidden)

        handles.append(layer.out.register_forward_pre_hook(on_heads))
        handles.append(layer.ffn.fc2.register_forward_pre_hook(on_units))
    return handles


def importance(model: Ranker, batches: Iterable[Any]) -> tuple[list[Tensor], list[Tensor]]:
    """Per layer: head scores ``H`` and FFN-unit scores ``Q x hidden`` (``|dL/dmask|`` summed over ``batches``)."""
    attention = model.interaction
    if not isinstance(attention, AttentionInteraction):
        raise ValueError("structured pruning needs an attention interaction (hiformer, hetero_attention, transformer)")
    heads, units = _masks(attention)
    head_scores = [torch.zeros_like(m) for m in heads]
    unit_scores = [torch.zeros_like(m) for m in units]
    handles = _install(attention, heads, units)
    wrapped = RankerTrain(model).eval()  # eval: no dropout, so the score is of the served model
    try:
        for batch in batches:
            loss, _ = wrapped(batch)
            grads = torch.autograd.grad(loss, heads + units)
            for score, grad in zip(head_scores + unit_scores, grads, strict=True):
                score += grad.abs()
    finally:
        for handle in handles:
            handle.remove()
    return head_scores, unit_scores


def _head_columns(tokens: int, heads: int, width: int, kept: Tensor) -> Tensor:
    """Indices of the kept heads' columns in a token-major, head-major ``tokens x heads x width`` layout."""
    grid = torch.arange(tokens * heads * width).view(tokens, heads, width)
    return grid[:, kept].reshape(-1)


def _select_out_features(proj: nn.Module, kept_heads: Tensor, heads: int) -> dict[str, Tensor]:
    """State of a Q/K/V projection restricted to the kept heads' output columns."""
    if isinstance(proj, TokenLinear):
        width = proj.weight.shape[-1] // heads
        cols = _head_columns(1, heads, width, kept_heads)
        state = {"weight": proj.weight.detach()[..., cols]}
        if proj.bias is not None:
            state["bias"] = proj.bias.detach()[..., cols]
        return state
    assert isinstance(proj, CompositeLinear)
    last = proj.proj if isinstance(proj.proj, nn.Linear) else proj.proj[1]
    width = last.weight.shape[0] // (proj.out_tokens * heads)
    rows = _head_columns(proj.out_tokens, heads, width, kept_heads)
    if isinstance(proj.proj, nn.Linear):
        return {"proj.weight": proj.proj.weight.detach()[rows]}
    return {"proj.0.weight": proj.proj[0].weight.detach(), "proj.1.weight": proj.proj[1].weight.detach()[rows]}


def _select_in_features(proj: nn.Module, kept_heads: Tensor, heads: int) -> dict[str, Tensor]:
    """State of the output projection restricted to the kept heads' input rows."""
    if isinstance(proj, TokenLinear):
        width = proj.weight.shape[-2] // heads
        rows = _head_columns(1, heads, width, kept_heads)
        state = {"weight": proj.weight.detach()[..., rows, :]}
        if proj.bias is not None:
            state["bias"] = proj.bias.detach()
        return state
    assert isinstance(proj, CompositeLinear)
    first = proj.proj if isinstance(proj.proj, nn.Linear) else proj.proj[0]
    tokens = proj.out_tokens  # the output projection maps Q tokens to Q tokens
    width = first.weight.shape[1] // (tokens * heads)
    cols = _head_columns(tokens, heads, width, kept_heads)
    if isinstance(proj.proj, nn.Linear):
        return {"proj.weight": proj.proj.weight.detach()[:, cols]}
    return {"proj.0.weight": proj.proj[0].weight.detach()[:, cols], "proj.1.weight": proj.proj[1].weight.detach()}


def _select_units(layer: AttentionLayer, kept: Tensor) -> dict[str, Tensor]:
    """FFN state restricted to ``kept`` hidden units (``Q x hidden'`` per token, or ``hidden'`` when shared)."""
    fc1, fc2 = layer.ffn.fc1, layer.ffn.fc2
    w1, b1, w2 = fc1.weight.detach(), fc1.bias.detach(), fc2.weight.detach()  # type: ignore[union-attr]
    if w1.dim() == 2:  # shared: (D, hidden), (hidden,), (hidden, D)
        return {"fc1.weight": w1[:, kept], "fc1.bias": b1[kept], "fc2.weight": w2[kept], "fc2.bias": fc2.bias.detach()}
    index = kept[:, None, :].expand(-1, w1.shape[1], -1)  # (Q, D, hidden')
    return {
        "fc1.weight": torch.gather(w1, 2, index),
        "fc1.bias": torch.gather(b1, 1, kept),
        "fc2.weight": torch.gather(w2, 1, kept[:, :, None].expand(-1, -1, w2.shape[2])),
        "fc2.bias": fc2.bias.detach(),  # type: ignore[union-attr]
    }


def prune_structured(
    model: Ranker,
    cfg: ModelConfig,
    build: Any,
    scores: tuple[list[Tensor], list[Tensor]],
    heads: int | None,
    ffn_hidden: int | None,
) -> tuple[Ranker, ModelConfig, dict[str, Any]]:
    """The model keeping, per layer, its ``heads`` best heads and per FFN its ``ffn_hidden`` best units.

    ``scores``: :func:`importance`'s output; ``build(cfg) -> Ranker`` builds a model of a config (weights are copied
    over); None keeps all heads / units.
    """
    attention = model.interaction
    assert isinstance(attention, AttentionInteraction)
    head_scores, unit_scores = scores
    first = attention.layers[0]
    num_heads = first.num_heads
    hidden = first.ffn.fc1.weight.shape[-1]
    keep_heads = num_heads if heads is None else heads
    keep_units = hidden if ffn_hidden is None else ffn_hidden
    if not 1 <= keep_heads <= num_heads or not 1 <= keep_units <= hidden:
        raise ValueError(
            f"prune: heads must be in [1, {num_heads}] and ffn_hidden in [1, {hidden}], got {heads}, {ffn_hidden}"
        )
    kwargs = cfg.chosen_kwargs() | {"num_heads": keep_heads, "ffn_hidden": keep_units, **_widths(first, num_heads)}
    new_cfg = replace(cfg, interaction_kwargs={**cfg.interaction_kwargs, cfg.interaction: kwargs})
    target = build(new_cfg)
    state = model.state_dict()
    report: dict[str, Any] = {"heads": keep_heads, "ffn_hidden": keep_units, "layers": []}
    for i, layer in enumerate(attention.layers):
        kept_heads = torch.sort(torch.topk(head_scores[i], keep_heads).indices).values
        if layer.ffn.fc1.weight.dim() == 2:
            kept_units = torch.sort(torch.topk(unit_scores[i].sum(0), keep_units).indices).values
        else:
            kept_units = torch.sort(torch.topk(unit_scores[i], keep_units, dim=1).indices, dim=1).values
        prefix = f"interaction.layers.{i}."
        parts = {
            "query.": _select_out_features(layer.query, kept_heads, num_heads),
            "key.": _select_out_features(layer.key, kept_heads, num_heads),
            "value.": _select_out_features(layer.value, kept_heads, num_heads),
            "out.": _select_in_features(layer.out, kept_heads, num_heads),
            "ffn.": _select_units(layer, kept_units),
        }
        for part, values in parts.items():
            for name, value in values.items():
                state[prefix + part + name] = value.clone()
        report["layers"].append(
            {
                "kept_heads": kept_heads.tolist(),
                "head_scores": head_scores[i].tolist(),
                "kept_units": kept_units.tolist(),
            }
        )
    target.load_state_dict(state, strict=True)
    return target.eval(), new_cfg, report


def _widths(layer: AttentionLayer, num_heads: int) -> dict[str, int]:
    """Per-head query/key and value widths of ``layer`` (kept explicit when the head count changes)."""

    def out_width(proj: nn.Module, tokens: int) -> int:
        if isinstance(proj, TokenLinear):
            return proj.weight.shape[-1]
        last = proj.proj if isinstance(proj.proj, nn.Linear) else proj.proj[1]  # type: ignore[index]
        return last.weight.shape[0] // tokens

    return {
        "head_dim": out_width(layer.key, layer.key.out_tokens) // num_heads,
        "value_dim": out_width(layer.value, layer.value.out_tokens) // num_heads,
    }
