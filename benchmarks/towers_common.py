"""Helpers shared by the vision-tower benchmarks: machine description, MAC counting, CPU timing, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"
STUDIES = RESULTS / "studies"  # results of the finished one-off studies (benchmarks/studies/)


def machine_info() -> dict[str, Any]:
    """CPU model (first lines of ``lscpu``), core count, torch version, threads and load at call time."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout.splitlines()
    return {
        "lscpu_head": [line.strip() for line in lscpu[:12]],
        "os_cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "loadavg_1_5_15": os.getloadavg(),
    }


def count_macs(tower: nn.Module, batch: int = 1) -> float:
    """MACs per image of ``classify(forward(x))`` = FlopCounterMode FLOPs / 2 (convs and matmuls only)."""
    x = torch.randn(batch, tower.in_chans, tower.img_size, tower.img_size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        tower.classify(tower(x))
    return counter.get_total_flops() / 2 / batch


@torch.no_grad()
def images_per_second(tower: nn.Module, batch: int, repeats: int = 5) -> float:
    """Best-of-``repeats`` inference throughput on random inputs (best, because the box is shared)."""
    tower.eval()
    x = torch.randn(batch, tower.in_chans, tower.img_size, tower.img_size)
    tower(x)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tower(x)
        times.append(time.perf_counter() - start)
    return batch / min(times)


@torch.no_grad()
def paired_latency_ms(towers: dict[str, nn.Module], batch: int, repeats: int = 20) -> dict[str, dict[str, float]]:
    """Forward latency (ms) of several towers, interleaved A, B, A, B, ... so load swings hit all of them alike.

    Returns per tower the median and min over ``repeats``, and ``ratio_to_first``: the median over repeats of
    (first tower's time / this tower's time) within the same round, the most load-robust speed-up estimate here.
    """
    inputs = {n: torch.randn(batch, t.in_chans, t.img_size, t.img_size) for n, t in towers.items()}
    for name, tower in towers.items():
        tower.eval()
        tower(inputs[name])  # warm-up
    times: dict[str, list[float]] = {n: [] for n in towers}
    for _ in range(repeats):
        for name, tower in towers.items():
            start = time.perf_counter()
            tower(inputs[name])
            times[name].append(1e3 * (time.perf_counter() - start))
    first = next(iter(towers))
    return {
        n: {
            "median_ms": statistics.median(t),
            "min_ms": min(t),
            "ratio_to_first": statistics.median(a / b for a, b in zip(times[first], t, strict=True)),
        }
        for n, t in times.items()
    }


def write_results(stem: str, payload: dict[str, Any], markdown: str, folder: Path = RESULTS) -> None:
    """``folder/stem.json`` and ``folder/stem.md``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (folder / f"{stem}.md").write_text(markdown)


def machine_markdown(info: dict[str, Any]) -> str:
    lines = "\n".join(info["lscpu_head"])
    return (
        f"Machine (`lscpu | head -12`, shared with other jobs, so timings are noisy):\n\n```\n{lines}\n```\n\n"
        f"os.cpu_count() = {info['os_cpu_count']}, torch {info['torch']} with {info['torch_threads']} threads, "
        f"Python {info['python']}, load average at start {info['loadavg_1_5_15']}.\n"
    )
