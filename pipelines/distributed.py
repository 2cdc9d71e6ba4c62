"""The training ranks' process group and the few collectives the trainer runs itself (torch only, no TorchRec).

On GPUs the group is ``cpu:gloo,cuda:nccl``: TorchRec's collectives on CUDA tensors go through nccl, while the
trainer's own small CPU collectives (mean losses, gathered validation predictions, object broadcasts) go through
gloo. An nccl-only group fails on the first CPU tensor.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def process_group_backend(cuda: bool) -> str:
    """gloo on CPU; on GPUs nccl for CUDA tensors and gloo for CPU ones."""
    return "cpu:gloo,cuda:nccl" if cuda else "gloo"


def init_distributed(timeout_s: int = 600) -> torch.device:
    """Joins the job's process group (torchrun's environment); returns this rank's device.

    ``timeout_s``: how long a collective waits for the other ranks before failing (``$RANKER_DIST_TIMEOUT`` wins),
    so that a stuck rank ends the job instead of hanging it.
    """
    cuda = torch.cuda.is_available()
    device = torch.device("cpu")
    if cuda:
        device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
        torch.cuda.set_device(device)
    timeout = timedelta(seconds=int(os.environ.get("RANKER_DIST_TIMEOUT", timeout_s)))
    store = _loopback_store(timeout)
    if store is None:
        dist.init_process_group(process_group_backend(cuda), timeout=timeout)
    else:
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        dist.init_process_group(
            process_group_backend(cuda), store=store, rank=rank, world_size=world_size, timeout=timeout
        )
    return device


def _loopback_store(timeout: timedelta) -> dist.TCPStore | None:
    """The ranks' store when torchrun gives a loopback ``MASTER_ADDR`` (one node) and no agent store: rank 0
    serves it on that address only. ``None`` otherwise (multi-node), for torch's own ``env://`` store.

    A ``TCPStore`` server listens on every interface, whatever host it is given; handed a socket already bound
    (``master_listen_fd``), it listens there instead.
    """
    host = os.environ.get("MASTER_ADDR", "")
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" or not _is_loopback(host):
        return None
    port, world_size = int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"])
    if int(os.environ["RANK"]) != 0:
        return dist.TCPStore(host, port, world_size, is_master=False, timeout=timeout)
    server = socket.create_server((host, port))  # SO_REUSEADDR: the port may be in TIME_WAIT from a restart
    return dist.TCPStore(host, port, world_size, is_master=True, timeout=timeout, master_listen_fd=server.detach())


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def mean_over_ranks(value: float) -> float:
    """The mean of one CPU scalar over all ranks."""
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total) / dist.get_world_size()


def gather_to_rank0(obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 only (``None`` elsewhere): no rank but 0 holds them all."""
    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_rank0(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    box = [obj if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
