"""Launching training ranks with torchrun (standalone on one node, or multi-node through a c10d rendezvous).

A job owns its ``out_dir``: the launching process holds an exclusive lock on ``out_dir/.lock`` for the job's life
(released by the kernel when the process ends, however it ends), so a second job into the same folder is refused
instead of interleaving checkpoints. When a rank fails, torchrun's report becomes one line naming the rank and why.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOCK = ".lock"
LOOPBACK = "127.0.0.1"
RDZV_PORT = 29400  # torchrun's port when an endpoint names none
NEEDS_ENDPOINT = "--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)"
_ROOT_CAUSE = "Root Cause (first observed failure):"


def torchrun_command(
    config: Path,
    nproc: int,
    extra: list[str],
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_id: str = "ranker",
    max_restarts: int = 0,
    rdzv_file: Path | None = None,
    local_addr: str = "",
) -> list[str]:
    """The torchrun command line running ``pipelines.train`` on ``nproc`` processes of this node.

    On one node the rendezvous is a file, ``rdzv_file`` (a path no other job uses), and the ranks' address is
    127.0.0.1: torchrun's agent then listens on no port at all (a TCP store listens on every interface, whatever
    host it is given); see :func:`local_env` and ``pipelines.distributed.init_distributed`` for the ranks. With a
    loopback ``rdzv_endpoint`` every node is on this machine: the agents join the store that
    :func:`loopback_rendezvous` serves, and the ranks' address is 127.0.0.1 too. Otherwise ``local_addr`` is how
    the other nodes reach this one (torchrun's default: its fully qualified host name).
    """
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}"]
    if nnodes > 1:
        if not rdzv_endpoint:
            raise ValueError(NEEDS_ENDPOINT)
        cmd += [f"--nnodes={nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
        if is_loopback_endpoint(rdzv_endpoint):
            cmd += ["--rdzv-conf=is_host=false", f"--local-addr={LOOPBACK}"]
        elif local_addr:
            cmd.append(f"--local-addr={local_addr}")
    else:
        if rdzv_file is None:
            raise ValueError("a one-node job needs rdzv_file, the rendezvous file of this job")
        cmd += ["--nnodes=1", "--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_file}", "--rdzv-conf=store_type=file"]
        cmd.append(f"--local-addr={LOOPBACK}")
    if max_restarts:
        cmd.append(f"--max-restarts={max_restarts}")
    return cmd + ["-m", "pipelines.train", "--config", str(config), *extra]


def local_env(env: dict[str, str]) -> dict[str, str]:
    """``env`` for the ranks of a one-node job, keeping every socket on the loopback interface.

    The ranks do not share the agent's TCP store (it would listen on every interface): rank 0 serves the ranks'
    own store on 127.0.0.1, and gloo's sockets use the loopback interface (unless ``GLOO_SOCKET_IFNAME`` is set).
    """
    return {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", "GLOO_SOCKET_IFNAME": "lo", **env}


def is_loopback_endpoint(endpoint: str) -> bool:
    """Whether the rendezvous endpoint ``HOST:PORT`` names a loopback address (127.0.0.1, [::1])."""
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(parse_rendezvous_endpoint(endpoint, RDZV_PORT)[0]).is_loopback
    return False


@contextlib.contextmanager
def loopback_rendezvous(endpoint: str) -> Iterator[None]:
    """Serves the c10d rendezvous store of a multi-node job with a loopback ``endpoint`` there only, for the block.

    torchrun's agent would host the store itself, listening on every interface. With a loopback endpoint every
    node runs on this machine, so the first node's launcher binds the endpoint and serves the store; the agents
    only connect (``is_host=false``). A launcher that finds the endpoint taken leaves it to the one holding it.
    """
    from torch.distributed import TCPStore
    from torch.distributed.elastic.rendezvous.utils import parse_rendezvous_endpoint

    host, port = parse_rendezvous_endpoint(endpoint, RDZV_PORT)
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    try:
        server = socket.create_server((host, port), family=family)
    except OSError:  # another node's launcher on this machine serves it
        yield
        return
    store = TCPStore(host, port, is_master=True, wait_for_workers=False, master_listen_fd=server.detach())
    try:
        yield
    finally:
        del store


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


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def failure_line(log: str, code: int) -> str:
    """One line from torchrun's failure report: the rank that failed first, how it ended and, if any, its error."""
    block = log.rpartition(_ROOT_CAUSE)[2]
    fields = dict(re.findall(r"^\s*(rank|exitcode|error_file)\s*:\s*(.*?)\s*$", block, re.M))
    if "rank" not in fields:
        return f"training failed: torchrun exited with code {code} (its output is above)"
    exitcode = fields.get("exitcode", "?")
    killed = re.search(r"\((SIG\w+)\)", exitcode)
    code_text = exitcode.split()[0]
    if killed:
        how = f"was killed by {killed.group(1)}"
    elif code_text.isdigit() and 128 < int(code_text) < 128 + 32:  # a rank that ended itself on a signal (SIGTERM)
        how = f"was stopped by {_signal_name(int(code_text) - 128)}"
    else:
        how = f"exited with code {code_text}"
    line = f"training failed: rank {fields['rank'].split()[0]} {how}"
    error_file = Path(fields.get("error_file", ""))
    if error_file.is_file():
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            message = json.loads(error_file.read_text())["message"]["message"]
            line += f": {message.strip().splitlines()[-1]}"
    return line + "; complete checkpoints are kept: `ranker train --resume` continues from the newest"


def _check_store_early(config: Path, overrides: dict[str, Any]) -> None:
    """Stops a job whose MLflow server does not answer before torch and TorchRec are imported.

    Those imports cost about 15 s of CPU time, so checking the store first lets a dead server end the job well
    within 30 s. Only a server can be dead: a local store is left alone here (checking it would create it before the
    config is known to be valid), and a config that does not load is left to ``preflight``, which names the problem.
    """
    from common.config import read_yaml

    try:
        data = read_yaml(config, overrides)
    except ValueError:
        return
    if isinstance(data, dict) and data.get("tracking", True) is not False:
        from pipelines import tracking

        if tracking.is_server(tracking.tracking_uri()):
            tracking.check_store()


def launch_training(
    config: Path,
    nproc: int,
    overrides: list[str],
    resume: bool = False,
    max_restarts: int = 0,
    nnodes: int = 1,
    rdzv_endpoint: str = "",
    rdzv_id: str = "ranker",
    local_addr: str = "",
) -> int:
    """Runs training to completion; returns 0. ``overrides``: ``key=value`` strings.

    The config, the features and the model are checked here first (``pipelines.train.preflight``): a bad config
    is one ``ValueError`` in this process, before any rank starts. A failed job raises ``ChildProcessError`` with
    :func:`failure_line`. ``max_restarts``: torchrun restarts all ranks up to this many times after a failure; the
    restarted ranks continue from the last complete checkpoint. ``nnodes``, ``rdzv_endpoint``, ``rdzv_id``,
    ``local_addr``: as torchrun's (the first three the same on every node of a multi-node job; docs/multinode.md).
    """
    if nproc < 1:
        raise ValueError(f"--nproc must be >= 1, got {nproc}")
    if max_restarts < 0:
        raise ValueError(f"--max-restarts must be >= 0, got {max_restarts}")
    if nnodes < 1:
        raise ValueError(f"--nnodes must be >= 1, got {nnodes}")
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(NEEDS_ENDPOINT)
    from common.config import parse_overrides

    parsed = parse_overrides(overrides)
    _check_store_early(config, parsed)
    from pipelines.train import load_config, preflight  # after the quick checks: it imports torch and TorchRec

    cfg = load_config(config, parsed)
    preflight(cfg, resume)
    extra = [f"--set={item}" for item in overrides] + (["--resume"] if resume else [])
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    one_node = nnodes == 1
    on_this_machine = one_node or is_loopback_endpoint(rdzv_endpoint)
    if on_this_machine:
        env = local_env(env)
    elif max_restarts:
        # Ranks sharing the agent's store find the dead ranks' gloo addresses there after a restart and fail to
        # connect ("Connection refused"); a store of their own per attempt starts clean.
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
    # Nodes of a multi-node job share out_dir; each node's launcher would refuse the others.
    lock = exclusive(Path(cfg.out_dir)) if one_node else contextlib.nullcontext()
    store = loopback_rendezvous(rdzv_endpoint) if on_this_machine and not one_node else contextlib.nullcontext()
    with lock, store, tempfile.TemporaryDirectory(prefix="ranker-rdzv-") as rdzv_dir:
        rdzv_file = Path(rdzv_dir) / "store" if one_node else None
        cmd = torchrun_command(
            config, nproc, extra, nnodes, rdzv_endpoint, rdzv_id, max_restarts, rdzv_file, local_addr
        )
        code, tail = _run(cmd, env)
    if code != 0:
        raise ChildProcessError(failure_line("".join(tail), code))
    return 0


def _run(cmd: list[str], env: dict[str, str]) -> tuple[int, deque[str]]:
    """Runs torchrun, its stderr passed through; its exit code and the last lines of its stderr."""
    with subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace") as proc:
        tail: deque[str] = deque(maxlen=400)  # torchrun's report ends stderr
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line)
        return proc.wait(), tail
