"""Launching training ranks with torchrun (standalone on one node, or multi-node through a c10d rendezvous)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def torchrun_command(
    config: Path, nproc: int, extra: list[str], nnodes: int = 1, rdzv_endpoint: str = "", rdzv_id: str = "ranker"
) -> list[str]:
    """The torchrun command line running ``pipelines.train`` on ``nproc`` processes of this node."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)")
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    else:
        # A free port per job, so that several local jobs (or tests) never collide on the default one.
        cmd += ["--nnodes=1", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]
    return cmd + ["-m", "pipelines.train", "--config", str(config), *extra]


def launch_training(config: Path, nproc: int, overrides: list[str], resume: bool = False, **rdzv: object) -> int:
    """Runs training to completion; returns torchrun's exit code. ``overrides``: ``key=value`` strings.

    The config, the features and the model are checked here first (``pipelines.train.preflight``): a bad config
    is one ``ValueError`` in this process, before any rank starts.
    """
    from pipelines.train import load_config, parse_overrides, preflight

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    preflight(load_config(config, parse_overrides(overrides)), resume)
    extra = [f"--set={item}" for item in overrides] + (["--resume"] if resume else [])
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    return subprocess.call(torchrun_command(config, nproc, extra, **rdzv), env=env)  # type: ignore[arg-type]
