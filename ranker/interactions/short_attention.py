"""Fused CPU attention for short sequences (Hiformer's 13-16 tokens): a C++ kernel built on first use.

PyTorch runs attention over S <= 16 keys as batched GEMMs of ``B·H`` tiny matrices (13 x 8 x 13 for Hiformer at
D = 16, H = 2) plus a softmax over rows shorter than a SIMD vector; forward + backward of one full Hiformer layer's
attention took 3.5-4.5 ms at batch 512 on one thread, the largest single cost of its training step
(benchmarks/results/train_throughput.md). ``csrc/short_attention.cpp`` computes one (batch, head) pair at a time
with every inner loop over 16 lanes: 2.4x faster forward + backward for the full layer, 1.8x for the pruned last
layer (Q = 1), same values within float rounding (tests/ranker/test_short_attention.py).

The kernel is compiled with ``torch.utils.cpp_extension`` for the CPU's vector ISA (AVX-512, AVX2 or none, as
PyTorch's own dispatch picks), cached under ``TORCH_EXTENSIONS_DIR`` (default ``~/.cache/torch_extensions``);
``make install`` builds it once (:func:`build`). Where it cannot be built (no
C++ compiler) one log line says so and attention runs on PyTorch ops, same results, slower.

:func:`usable` decides per call: fp32 CPU tensors, S and Q <= 16, head widths <= 64, no attention dropout while
training, and not inside ``torch.compile`` / ``torch.export`` (Inductor fuses the PyTorch form itself, and exported
serving programs must stay pure ATen). ``RANKER_SHORT_ATTENTION=0`` in the environment turns it off.

Shapes: B batch, H heads, Q query rows, S keys, d_k / d_v head widths.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "short_attention.cpp"
MAX_TOKENS = 16  # rows and keys per (batch, head): one AVX-512 vector of fp32 lanes
MAX_HEAD_DIM = 64
# RANKER_SHORT_ATTENTION=0 turns the kernel off (PyTorch ops everywhere), e.g. to compare numbers or speed.
enabled = os.environ.get("RANKER_SHORT_ATTENTION", "1") != "0"
# Vector ISA flags per PyTorch CPU capability; -mprefer-vector-width=512 because GCC's generic tuning keeps 256.
_ISA_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma", "-mprefer-vector-width=512"],
    "AVX2": ["-mavx2", "-mfma"],
}


@functools.cache
def load() -> bool:
    """Builds (once per machine and source version) and loads the kernel; False, with one log line, if it cannot."""
    try:
        from ranker.library_noise import silence_known_library_noise

        silence_known_library_noise()  # importing cpp_extension logs that a CPU-only machine has no CUDA runtime
        from torch.utils import cpp_extension

        capability = torch.backends.cpu.get_cpu_capability()
        isa = capability if capability in _ISA_FLAGS else "DEFAULT"
        cpp_extension.load(
            name=f"ranker_short_attention_{isa.lower()}",
            sources=[str(SOURCE)],
            extra_cflags=["-O3", "-fopenmp-simd", *_ISA_FLAGS.get(isa, [])],
            is_python_module=False,
            verbose=False,
        )
    except Exception as exc:  # a missing compiler or ninja surfaces as several exception types
        log.warning("short-attention kernel unavailable (%s); attention runs on PyTorch ops (slower)", exc)
        return False
    _register_flop_formulas()
    return True


def _register_flop_formulas() -> None:
    """Counts for ``FlopCounterMode`` (benchmarks' % of peak, the complexity test): those of the GEMMs replaced."""
    from torch.utils.flop_counter import register_flop_formula

    ops = torch.ops.ranker_short_attention

    def products(q: torch.Size, k: torch.Size, v: torch.Size) -> int:
        batch, rows, heads, dk = q
        return 2 * batch * heads * rows * k[1] * (dk + v[3])  # Q Kᵀ and W V

    @register_flop_formula(ops.forward)
    def _forward(q: torch.Size, k: torch.Size, v: torch.Size, *_: object, out_shape: object = None) -> int:
        return products(q, k, v)

    @register_flop_formula(ops.backward)
    def _backward(
        _grad: torch.Size, q: torch.Size, k: torch.Size, v: torch.Size, *_: object, out_shape: object = None
    ) -> int:
        return 2 * products(q, k, v)  # two products per forward one, as autograd's bmm backward


def usable(query: Tensor, key: Tensor, value: Tensor, dropout: float, training: bool) -> bool:
    """Whether :func:`attention` applies to these ``B x H x Q x d_k``, ``B x H x S x d_k``, ``B x H x S x d_v``."""
    tensors = (query, key, value)
    return (
        enabled
        and all(
            t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 4 and t.stride(-1) == 1 for t in tensors
        )
        and query.shape[2] <= MAX_TOKENS
        and key.shape[2] <= MAX_TOKENS
        and max(query.shape[3], value.shape[3]) <= MAX_HEAD_DIM
        and not (training and dropout > 0)
        and not torch.compiler.is_compiling()
        and load()
    )


class _ShortAttention(torch.autograd.Function):
    """Softmax attention of ``B x Q x H x d_k`` queries over ``B x S x H`` keys/values, output ``B x Q x H x d_v``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
        out, weights = torch.ops.ranker_short_attention.forward(q, k, v, scale)  # weights: B x H x S x 16
        ctx.save_for_backward(q, k, v, weights)
        ctx.scale = scale  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        q, k, v, weights = ctx.saved_tensors  # type: ignore[attr-defined]
        if grad.stride(-1) != 1:
            grad = grad.contiguous()
        gq, gk, gv = torch.ops.ranker_short_attention.backward(grad, q, k, v, weights, ctx.scale)  # type: ignore[attr-defined]
        return gq, gk, gv, None


def attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """``softmax(Q Kᵀ / sqrt(d_k)) V`` with the fused kernel (call only where :func:`usable` is True).

    Args:
        query: ``B x H x Q x d_k``.
        key: ``B x H x S x d_k``.
        value: ``B x H x S x d_v``.

    Returns:
        ``B x H x Q x d_v``, a view of a ``B x Q x H x d_v`` tensor, so merging the heads back is free.
    """
    # The projections emit token-major B x tokens x H x d tensors and the heads were split by a transpose: undo it.
    out = _ShortAttention.apply(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), query.shape[-1] ** -0.5
    )  # (B, Q, H, d_v)
    return out.transpose(1, 2)  # (B, H, Q, d_v)


def build() -> None:
    """``make install`` builds the kernel here, so that the first training run does not wait for the compiler."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(f"short-attention kernel: {'built and loaded' if load() else 'not available, PyTorch ops are used'}")
