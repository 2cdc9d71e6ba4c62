"""Sharded (DistributedModelParallel, 2 ranks, gloo) vs unsharded parity: predictions and one training step.

Each rank takes half of one global batch. DDP averages dense gradients over ranks, and in torchrec 1.9 the
sharded tables' gradients are averaged over ranks too (measured: the updates are exactly half of the sum-of-losses
update on 2 ranks), so the unsharded reference is one SGD step on the mean of the per-rank mean losses.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from features.batch import RankBatch
from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from ranker.build import ModelConfig, build_ranker
from ranker.model import RankerTrain
from ranker.sharding import describe_plan, distribute
from tests.helpers import write_tiny_dataset

pytestmark = pytest.mark.dist

WORLD = 2
ROWS_PER_RANK = 16
SPARSE_LR, DENSE_LR = 0.5, 0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _batch_rows(batch: RankBatch, lo: int, hi: int) -> RankBatch:
    """Rows [lo, hi) of a batch, rebuilding the KJT per key."""
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    values, lengths = [], []
    for key in batch.sparse.keys():
        jt = batch.sparse[key]
        offsets = jt.offsets()
        values.append(jt.values()[offsets[lo] : offsets[hi]])
        lengths.append(jt.lengths()[lo:hi])
    kjt = KeyedJaggedTensor.from_lengths_sync(batch.sparse.keys(), torch.cat(values), torch.cat(lengths))
    return RankBatch(
        batch.dense[lo:hi], kjt, batch.labels[lo:hi], batch.weights[lo:hi], batch.group_ids[lo:hi],
        batch.item_ids[lo:hi], batch.image_index[lo:hi], batch.is_cold[lo:hi],
    )  # fmt: skip


def _copy_into(local: dict[str, torch.Tensor], full: dict[str, torch.Tensor]) -> None:
    """Copies a full (unsharded) state into a sharded state dict, shard by shard."""
    with torch.no_grad():
        for key, tensor in local.items():
            if isinstance(tensor, ShardedTensor):
                for shard in tensor.local_shards():
                    rows, cols = shard.metadata.shard_offsets
                    n_rows, n_cols = shard.metadata.shard_sizes
                    shard.tensor.copy_(full[key][rows : rows + n_rows, cols : cols + n_cols])
            else:
                tensor.copy_(full[key])


def _gather_full(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in local.items():
        if isinstance(tensor, ShardedTensor):
            full = torch.zeros(tensor.size()) if dist.get_rank() == 0 else None
            tensor.gather(dst=0, out=full)
            out[key] = full
        else:
            out[key] = tensor.detach().clone()
    return out


def _rank_main(rank: int, port: int, features: str, sharding: str, result_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        fmap = FeatureMap.load(features)
        cfg = ModelConfig(interaction="hiformer", embedding_dim=8, interaction_kwargs={"num_layers": 1})
        full_state = torch.load(Path(result_dir) / "init.pt", weights_only=True)
        batch = torch.load(Path(result_dir) / "batch.pt", weights_only=False)
        model = RankerTrain(build_ranker(fmap, cfg, sparse_device=torch.device("meta")))
        dmp = distribute(model, torch.device("cpu"), SPARSE_LR, [sharding], ROWS_PER_RANK, sparse_optimizer="sgd")
        plan = describe_plan(dmp)
        assert set(plan.values()) == {sharding}, plan
        _copy_into(dmp.state_dict(), full_state)
        dense = KeyedOptimizerWrapper(
            dict(in_backward_optimizer_filter(dmp.named_parameters())), lambda p: torch.optim.SGD(p, lr=DENSE_LR)
        )
        optimizer = CombinedOptimizer([dmp.fused_optimizer, dense])
        local = _batch_rows(batch, rank * ROWS_PER_RANK, (rank + 1) * ROWS_PER_RANK)
        loss, (_, logits, _) = dmp(local)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        logits_all = [torch.zeros_like(logits) for _ in range(WORLD)]
        dist.all_gather(logits_all, logits.contiguous())
        after = _gather_full(dmp.state_dict())
        if rank == 0:
            torch.save({"logits": torch.cat(logits_all), "after": after}, Path(result_dir) / f"{sharding}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parity")
    schema = load_schema(write_tiny_dataset(root / "raw", n=400))
    features = root / "features"
    fmap = fit(schema, features)
    transform(schema, features, "train", fmap)
    torch.manual_seed(0)
    cfg = ModelConfig(interaction="hiformer", embedding_dim=8, interaction_kwargs={"num_layers": 1})
    reference = RankerTrain(build_ranker(fmap, cfg))
    torch.save(reference.state_dict(), root / "init.pt")
    batch = next(iter(RankLoader(processed_files(features, "train"), fmap, WORLD * ROWS_PER_RANK, prefetch=0)))
    torch.save(batch, root / "batch.pt")
    return root, features


def _reference_step(root: Path, features: Path) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    fmap = FeatureMap.load(features)
    cfg = ModelConfig(interaction="hiformer", embedding_dim=8, interaction_kwargs={"num_layers": 1})
    model = RankerTrain(build_ranker(fmap, cfg))
    model.load_state_dict(torch.load(root / "init.pt", weights_only=True))
    batch = torch.load(root / "batch.pt", weights_only=False)
    parts = [_batch_rows(batch, r * ROWS_PER_RANK, (r + 1) * ROWS_PER_RANK) for r in range(WORLD)]
    logits = torch.cat([model.model(p) for p in parts]).detach()
    loss = sum(model(p)[0] for p in parts) / WORLD
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for name, param in model.named_parameters():
            lr = SPARSE_LR if ".ebc." in name else DENSE_LR
            param -= lr * param.grad
    return logits, {k: v.detach() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("sharding", ["table_wise", "column_wise"])
def test_sharded_matches_unsharded(setup: tuple[Path, Path], sharding: str) -> None:
    root, features = setup
    mp.spawn(_rank_main, args=(_free_port(), str(features), sharding, str(root)), nprocs=WORLD, join=True)
    sharded = torch.load(root / f"{sharding}.pt", weights_only=False)
    logits, after = _reference_step(root, features)
    torch.testing.assert_close(sharded["logits"], logits, rtol=1e-5, atol=1e-6)
    before = torch.load(root / "init.pt", weights_only=True)
    moved = 0
    for key, value in after.items():
        torch.testing.assert_close(sharded["after"][key], value, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
        moved += int(not torch.equal(value, before[key]))
    assert moved > len(after) // 2, "one step should change most parameters"
