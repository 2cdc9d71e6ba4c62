"""Parameters, MACs and forward+backward time of the registered interactions at one ranking-sized config.

Usage::

    python benchmarks/studies/interactions_bench.py --device cpu --batch 256 \
        --out benchmarks/results/studies/interactions_cpu.md
    python benchmarks/studies/interactions_bench.py --device cuda --batch 4096 --compile --out $OUT/interactions_cuda.md

Config: N = 40 feature tokens (e.g. 1 dense + 36 sparse + 3 image), D = 64, K = 2 tasks, 2 layers, 4 heads of
width 16, FFN 128. MACs are per example from ``torch.utils.flop_counter`` (matmuls only: no softmax, norms,
activations). On CUDA it also times bf16 autocast, reports the bf16-vs-fp32 output gap and, with
``--compile``, checks that Hiformer compiles as one graph.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ranker.interactions import create  # noqa: E402

N, D, K = 40, 64, 2
ATTENTION = {"num_layers": 2, "num_heads": 4, "ffn_hidden": 128}
CONFIGS: list[tuple[str, str, dict[str, Any]]] = [
    ("transformer", "transformer", ATTENTION),
    ("hetero_attention", "hetero_attention", ATTENTION),
    ("hiformer full-rank", "hiformer", {**ATTENTION, "rank_k": None, "rank_v": None}),
    ("hiformer r=128/256 unpruned", "hiformer", {**ATTENTION, "prune_last": False}),
    ("hiformer r=128/256", "hiformer", ATTENTION),
    ("hiformer r=128/256 composite-q", "hiformer", {**ATTENTION, "query_mode": "composite"}),
    ("dcnv2 r=512", "dcnv2", {"low_rank": 512}),
    ("dlrm", "dlrm", {}),
]


def step_ms(model: nn.Module, x: torch.Tensor, iters: int, autocast: bool) -> float:
    """Median wall time of forward + backward (one optimiser-free training step)."""
    times = []
    for i in range(iters + 3):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = model(x)
        out.float().square().mean().backward()
        if x.is_cuda:
            torch.cuda.synchronize()
        if i >= 3:  # warm-up: allocator, cuBLAS heuristics
            times.append((time.perf_counter() - start) * 1e3)
        model.zero_grad(set_to_none=True)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 column is true fp32
    name = (
        torch.cuda.get_device_name() if cuda else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    )
    lines = [
        f"# Interactions benchmark: {name}, torch {torch.__version__}",
        "",
        f"N={N} tokens, D={D}, K={K}, batch {args.batch}; attention: {ATTENTION}; median of {args.iters} fwd+bwd.",
        "",
        "| config | params | MMACs/example | fp32 ms | bf16 ms | max abs bf16-fp32 / max abs |",
        "|---|---|---|---|---|---|",
    ]
    x = torch.randn(args.batch, N, D, device=device)
    for label, registered, kwargs in CONFIGS:
        torch.manual_seed(0)
        try:
            model = create(registered, num_tokens=N, dim=D, num_tasks=K, device=device, **kwargs)
        except ImportError as error:  # dcnv2 without torchrec
            lines.append(f"| {label} | skipped: {error} | | | | |")
            continue
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(x[:2])
        macs = counter.get_total_flops() / 2 / 2 / 1e6
        fp32 = step_ms(model, x, args.iters, autocast=False)
        bf16, gap = "", ""
        if cuda:
            bf16 = f"{step_ms(model, x, args.iters, autocast=True):.2f}"
            with torch.no_grad():
                reference = model(x)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    low = model(x).float()
            gap = f"{((low - reference).abs().max() / reference.abs().max()).item():.1e}"
        lines.append(f"| {label} | {params:,} | {macs:.2f} | {fp32:.2f} | {bf16} | {gap} |")
        print(lines[-1], flush=True)
    if args.compile:
        torch.manual_seed(0)
        model = create("hiformer", num_tokens=N, dim=D, num_tasks=K, device=device, **ATTENTION)
        eager = step_ms(model, x, args.iters, autocast=cuda)
        start = time.perf_counter()
        compiled = torch.compile(model, fullgraph=True)
        step_ms(compiled, x, 1, autocast=cuda)
        warm = time.perf_counter() - start
        with torch.no_grad():
            gap = (compiled(x) - model(x)).abs().max().item()
        lines += [
            "",
            f"torch.compile(fullgraph=True) hiformer r=128/256 ({'bf16 autocast' if cuda else 'fp32'}): eager "
            f"{eager:.2f} ms, compiled {step_ms(compiled, x, args.iters, autocast=cuda):.2f} ms, compile {warm:.0f} s, "
            f"max abs output gap {gap:.1e}",
        ]
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
