"""The fused short-sequence CPU attention kernel against a float64 closed form, and where it must not run."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from ranker.interactions import create, short_attention
from ranker.interactions.attention import attend

pytestmark = pytest.mark.unit

if not short_attention.load():
    pytest.skip("the C++ kernel could not be built here (see the log line)", allow_module_level=True)


def closed_form(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``softmax(Q Kᵀ / sqrt(d_k)) V`` in float64, every sum written out."""
    q, k, v = q.double(), k.double(), v.double()
    scores = (q.unsqueeze(-2) * k.unsqueeze(-3)).sum(-1) / q.shape[-1] ** 0.5  # (B, H, Q, S)
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    weights = weights / weights.sum(-1, keepdim=True)
    return (weights.unsqueeze(-1) * v.unsqueeze(-3)).sum(-2)  # (B, H, Q, d_v)


def heads(batch: int, tokens: int, num_heads: int, width: int, scale: float = 1.0) -> Tensor:
    """A ``B x H x tokens x width`` view of a token-major tensor, as the projections emit (heads split later)."""
    return (scale * torch.randn(batch, tokens, num_heads, width)).transpose(1, 2).requires_grad_()


def backward_names(out: Tensor, depth: int = 3) -> str:
    """The names of the autograd nodes within ``depth`` steps of ``out``."""
    names, frontier = [], [out.grad_fn]
    for _ in range(depth):
        frontier = [n for n in frontier if n is not None]
        names += [type(n).__name__ for n in frontier]
        frontier = [nxt for n in frontier for nxt, _ in n.next_functions]
    return " ".join(names)


@pytest.mark.parametrize(
    ("rows", "keys", "num_heads", "dk", "dv", "scale"),
    [
        (13, 13, 2, 8, 8, 1.0),  # Hiformer's first layer on fashion-clicks (T = 12 + 1 task token)
        (1, 13, 2, 8, 8, 1.0),  # its pruned last layer: the task token's row only
        (16, 16, 1, 4, 12, 1.0),  # the widest sequence the kernel takes, d_k != d_v
        (3, 5, 4, 16, 16, 6.0),  # logits up to ~±100: the softmax's range reduction and underflow
        (2, 1, 3, 64, 64, 1.0),  # one key (weight exactly 1) and the widest heads
    ],
)
def test_values_and_gradients_match_the_closed_form(
    rows: int, keys: int, num_heads: int, dk: int, dv: int, scale: float
) -> None:
    torch.manual_seed(0)
    q, k, v = heads(7, rows, num_heads, dk, scale), heads(7, keys, num_heads, dk, scale), heads(7, keys, num_heads, dv)
    assert short_attention.usable(q, k, v, dropout=0.0, training=True)
    out = short_attention.attention(q, k, v)
    expected = closed_form(q, k, v)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad.double())
    for name, a, b in zip("qkv", got, want, strict=True):
        torch.testing.assert_close(
            a.double(), b.double(), rtol=1e-5, atol=1e-5, msg=lambda m, name=name: f"d{name}: {m}"
        )


def test_attend_takes_the_kernel_and_the_switch_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """``attend`` dispatches to the kernel (same result as its PyTorch form, to float rounding), and
    ``RANKER_SHORT_ATTENTION=0`` (the module's ``enabled``) routes back to the PyTorch ops."""
    torch.manual_seed(1)
    q, k, v = heads(64, 13, 2, 8), heads(64, 13, 2, 8), heads(64, 13, 2, 8)
    fused = attend(q, k, v)
    assert "ShortAttention" in backward_names(fused)
    monkeypatch.setattr(short_attention, "enabled", False)
    plain = attend(q, k, v)
    assert "ShortAttention" not in backward_names(plain)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "case",
    ["float64", "dropout_while_training", "17_keys", "head_width_65"],
)
def test_falls_back_where_the_kernel_does_not_apply(case: str) -> None:
    torch.manual_seed(2)
    shapes = {"17_keys": (13, 17, 8), "head_width_65": (13, 13, 65)}.get(case, (13, 13, 8))
    rows, keys, width = shapes
    q, k, v = heads(4, rows, 2, width), heads(4, keys, 2, width), heads(4, keys, 2, width)
    if case == "float64":
        q, k, v = (t.detach().double() for t in (q, k, v))
    dropout = 0.1 if case == "dropout_while_training" else 0.0
    assert not short_attention.usable(q, k, v, dropout=dropout, training=True)
    assert short_attention.usable(q.float(), k.float(), v.float(), dropout=dropout, training=False) == (
        case in ("float64", "dropout_while_training")
    )
    if dropout == 0.0:
        torch.testing.assert_close(attend(q, k, v).double(), closed_form(q, k, v), rtol=1e-5, atol=1e-6)


def test_same_bits_whatever_the_thread_count() -> None:
    """Each output element is computed by one thread in a fixed order, so results do not depend on threads."""
    torch.manual_seed(3)
    q, k, v = heads(300, 13, 2, 8), heads(300, 13, 2, 8), heads(300, 13, 2, 8)
    threads = torch.get_num_threads()
    results = []
    for n in (1, 2):
        torch.set_num_threads(n)
        out = short_attention.attention(q, k, v)
        results.append((out, *torch.autograd.grad(out.square().sum(), (q, k, v))))
    torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_hiformer_trains_the_same_with_and_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole Hiformer stack (full and pruned layer): outputs and every parameter gradient agree with the
    PyTorch-ops path to float rounding."""
    torch.manual_seed(4)
    model = create("hiformer", num_tokens=12, dim=16, num_tasks=1)
    x = torch.randn(256, 12, 16)
    runs = []
    for enabled in (True, False):
        monkeypatch.setattr(short_attention, "enabled", enabled)
        model.zero_grad(set_to_none=True)
        out = model(x)
        out.square().mean().backward()
        runs.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (out_fused, grads_fused), (out_plain, grads_plain) = runs
    # Two layers of float32 rounding in a different summation order (each op alone is checked to 1e-6 above).
    torch.testing.assert_close(out_fused, out_plain, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_fused, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_exported_programs_stay_pure_aten() -> None:
    """Serving programs (``torch.export``) are loaded where only torch is imported: the kernel must not be traced."""
    model = create("hiformer", num_tokens=12, dim=16, num_tasks=1).eval()
    program = torch.export.export(model, (torch.randn(8, 12, 16),), strict=False)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("ranker_short_attention" in t for t in targets)
    assert any("bmm" in t or "matmul" in t for t in targets)
