"""Where one 1,024-candidate request spends its time: the served programs of a ``benchmarks/serving.py`` run, profiled.

Issue 10 asks for the profile that shows why the compressed Hiformer, with 3.7x fewer MACs per candidate than
DCN-v2, is not faster than it: ``torch.profiler`` over ``--requests`` requests of the eager served programs
(``serve/model.pt2``) at 1 thread, operators grouped by self CPU time, and the products' share.

    python -m benchmarks.studies.serving_profile --work /tmp/sb12 --runs /tmp/wt10runs \\
        --features /tmp/wt10data/features/movielens-100k

``--work`` is the serving benchmark's ``--work`` (its compressed exports); writes
``benchmarks/results/studies/serving_profile.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.serving import request_inputs
from benchmarks.towers_common import STUDIES

VARIANTS = ("hiformer", "best+heads", "dcnv2", "dcnv2_low_rank_44+ft")
PRODUCTS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")
TOP = 8


def profile_program(path: Path, inputs: tuple[torch.Tensor, ...], requests: int) -> dict[str, Any]:
    """Self CPU time per operator over ``requests`` calls of the served program at ``path``."""
    fn = torch.export.load(path).module()
    with torch.no_grad():
        for _ in range(10):
            fn(*inputs)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(requests):
                fn(*inputs)
    ops = [(e.key, e.self_cpu_time_total, e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in ops)
    ops.sort(key=lambda op: -op[1])
    return {
        "ms_per_request": total / requests / 1e3,
        "operator_calls_per_request": sum(c for _, _, c in ops) / requests,
        "products_share": sum(t for k, t, _ in ops if k in PRODUCTS) / total,
        "top": [
            {"op": k, "share": t / total, "calls_per_request": c / requests, "us_per_call": t / c}
            for k, t, c in ops[:TOP]
        ],
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        "# Where a served request spends its time (issue 10)",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']['cpu_count']} CPUs, load average {result['machine']['load_avg']}, torch "
        f"{result['machine']['torch']}; 1 thread, {result['requests']} requests of {result['candidates']:,} "
        "candidates through each eager served program (`serve/model.pt2`), `torch.profiler` self CPU time.",
        "",
        "| variant | ms / request (profiled) | operator calls / request | share in matrix products |",
        "|---|---:|---:|---:|",
    ]
    for name, r in result["variants"].items():
        lines.append(
            f"| {name} | {r['ms_per_request']:.1f} | {r['operator_calls_per_request']:.0f} | "
            f"{100 * r['products_share']:.0f}% |"
        )
    for name, r in result["variants"].items():
        lines += ["", f"## {name}", "", "| operator | share | calls / request | µs / call |", "|---|---:|---:|---:|"]
        lines += [
            f"| `{op['op']}` | {100 * op['share']:.1f}% | {op['calls_per_request']:.0f} | {op['us_per_call']:.0f} |"
            for op in r["top"]
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the serving benchmark's --work folder")
    parser.add_argument("--runs", type=Path, required=True, help="the serving benchmark's --runs folder")
    parser.add_argument("--features", type=Path, required=True)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=STUDIES / "serving_profile")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    inputs = request_inputs(args.features, args.runs / "hiformer" / "export", args.candidates)
    variants = {name: profile_program(args.work / name / "serve" / "model.pt2", inputs, args.requests)
                for name in VARIANTS}  # fmt: skip
    result = {
        "command": "python -m benchmarks.studies.serving_profile " + " ".join(argv or sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_avg": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(),
            "torch": torch.__version__,
        },  # fmt: skip
        "requests": args.requests,
        "candidates": args.candidates,
        "variants": variants,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render(result))
    print(render(result))


if __name__ == "__main__":
    main()
