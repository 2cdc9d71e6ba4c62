"""CUDA checks (marker ``gpu``): skipped, with the reason, on machines without a GPU.

1. The trainer's process group (``cpu:gloo,cuda:nccl``) serves both CPU and CUDA tensors and gathers objects to
   rank 0 only: plain ``torch.distributed``, so it also runs where TorchRec is not installed.
2. Sharded vs unsharded parity after one step on CUDA (the planner may pick row-wise there), and a 2-step
   ``ranker train`` run: both need TorchRec with the CUDA build of FBGEMM.

One rank per GPU, as many as are present up to 2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
ROOT = Path(__file__).parents[1]
needs_torchrec = pytest.mark.skipif(
    importlib.util.find_spec("torchrec") is None, reason="TorchRec is not installed in this environment"
)


def _world() -> int:
    return min(2, torch.cuda.device_count())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _collectives(rank: int, world: int, port: int, out: str) -> None:
    from pipelines.distributed import broadcast_from_rank0, gather_to_rank0, mean_over_ranks, process_group_backend

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group(process_group_backend(True), rank=rank, world_size=world)
    try:
        on_gpu = torch.full((3,), float(rank + 1), device=f"cuda:{rank}")
        dist.all_reduce(on_gpu)  # nccl
        mean = mean_over_ranks(float(rank + 1))  # a CPU tensor: gloo
        gathered = gather_to_rank0({"rank": rank, "p": [rank] * 4})
        shared = broadcast_from_rank0({"gathered": gathered})
        result = {"gpu_sum": on_gpu.tolist(), "mean": mean, "gathered": gathered, "shared": shared}
        Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_process_group_serves_cpu_and_cuda_tensors(tmp_path: Path) -> None:
    world = _world()
    mp.spawn(_collectives, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(world)]
    total = sum(range(1, world + 1))
    for rank, res in enumerate(results):
        assert res["gpu_sum"] == [float(total)] * 3
        assert res["mean"] == pytest.approx(total / world)
        if rank == 0:
            assert res["gathered"] == [{"rank": r, "p": [r] * 4} for r in range(world)]
        else:
            assert res["gathered"] is None, "only rank 0 may hold every rank's predictions"
        assert res["shared"]["gathered"] == results[0]["gathered"]


@needs_torchrec
@pytest.mark.parametrize("optimizer", ["adagrad", "rowwise_adagrad"])
def test_sharded_matches_unsharded_on_cuda(tmp_path_factory: pytest.TempPathFactory, optimizer: str) -> None:
    from tests.ranker.test_sharding_parity import assert_matches_reference, make_setup, reference_step, run_step

    root, features = make_setup(tmp_path_factory)
    world = _world()
    sharded = run_step(root, features, world, [], optimizer, f"cuda-{optimizer}", device_type="cuda")
    assert_matches_reference(root, sharded, *reference_step(root, features, world, optimizer))


@needs_torchrec
def test_two_training_steps_on_cuda(tmp_path: Path) -> None:
    from pipelines.build_features import build_features
    from tests.helpers import write_tiny_dataset

    features = tmp_path / "features"
    build_features(write_tiny_dataset(tmp_path / "raw", n=400), features, progress=False)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "features": str(features),
                "out_dir": str(tmp_path / "run"),
                "model": {"embedding_dim": 8, "interaction_kwargs": {"hiformer": {"num_layers": 1}}},
                "batch_size": 32,
                "max_steps": 2,
                "eval_every": 1,
                "tracking": False,
            }
        )
    )
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", str(_world())]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 2 and len(results["history"]) == 2
    assert "on cuda:0" in out.stdout
