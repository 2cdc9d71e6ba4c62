"""Launching training ranks with torchrun (standalone on one node, or multi-node through a c10d rendezvous).

A job owns its ``out_dir``: the launching process holds an exclusive lock on ``out_dir/.lock`` for the job's life
(released by the kernel when the process ends, however it ends), so a second job into the same folder is refused
instead of interleaving checkpoints. When a rank fails, torchrun's report becomes one line naming the rank and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path

LOCK = ".lock"
_ROOT_CAUSE = "Root Cause (first observed failure):"


def torchrun_command(
    config: Path,
    nproc: int,
    extra: list[str],
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_id: str = "ranker",
    max_restarts: int = 0,
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
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return cmd + ["-m", "pipelines.train", "--config", str(config), *extra]


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Holds ``out_dir/.lock`` for the block; raises ``ValueError`` when another live process holds it."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LOCK).open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ValueError(
                f"out_dir {out_dir} is in use by another training run (pid {holder} holds {out_dir / LOCK}); "
                "wait for it to end or choose another out_dir"
            ) from None
        with contextlib.suppress(OSError):  # the pid is for the message only; a full disk must not stop the run
            f.truncate(0)
            f.write(f"{os.getpid()}\n")
            f.flush()
        yield


def failure_line(log: str, code: int) -> str:
    """One line from torchrun's failure report: the rank that failed first, how it ended and, if any, its error."""
    block = log.rpartition(_ROOT_CAUSE)[2]
    fields = dict(re.findall(r"^\s*(rank|exitcode|error_file)\s*:\s*(.*?)\s*$", block, re.M))
    if "rank" not in fields:
        return f"training failed: torchrun exited with code {code} (its output is above)"
    exitcode = fields.get("exitcode", "?")
    signal = re.search(r"\((SIG\w+)\)", exitcode)
    how = f"was killed by {signal.group(1)}" if signal else f"exited with code {exitcode.split()[0]}"
    line = f"training failed: rank {fields['rank'].split()[0]} {how}"
    error_file = Path(fields.get("error_file", ""))
    if error_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            message = json.loads(error_file.read_text())["message"]["message"]
            line += f": {message.strip().splitlines()[-1]}"
    return line + "; complete checkpoints are kept: `ranker train --resume` continues from the newest"


def launch_training(
    config: Path, nproc: int, overrides: list[str], resume: bool = False, max_restarts: int = 0, **rdzv: object
) -> int:
    """Runs training to completion; returns 0. ``overrides``: ``key=value`` strings.

    The config, the features and the model are checked here first (``pipelines.train.preflight``): a bad config
    is one ``ValueError`` in this process, before any rank starts. A failed job raises ``ChildProcessError`` with
    :func:`failure_line`. ``max_restarts``: torchrun restarts all ranks up to this many times after a failure; the
    restarted ranks continue from the last complete checkpoint.
    """
    from features.strict_yaml import parse_overrides
    from pipelines.train import load_config, preflight

    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    cfg = load_config(config, parse_overrides(overrides))
    preflight(cfg, resume)
    extra = [f"--set={item}" for item in overrides] + (["--resume"] if resume else [])
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    if max_restarts:
        # Ranks sharing the agent's store find the dead ranks' gloo addresses there after a restart and fail to
        # connect ("Connection refused"); a store of their own per attempt starts clean.
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    cmd = torchrun_command(config, nproc, extra, max_restarts=max_restarts, **rdzv)  # type: ignore[arg-type]
    # Nodes of a multi-node job share out_dir; each node's launcher would refuse the others.
    lock = exclusive(Path(cfg.out_dir)) if rdzv.get("nnodes", 1) == 1 else contextlib.nullcontext()
    with lock, subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        tail: deque[str] = deque(maxlen=400)  # torchrun's report ends stderr
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        code = proc.wait()
    if code != 0:
        raise ChildProcessError(failure_line("".join(tail), code))
    return 0
