"""Sharded (DistributedModelParallel, gloo) vs unsharded parity: predictions and one training step.

Every sharding type the planner can pick on CPU is covered (table-wise, column-wise, table-column-wise,
data-parallel), and each must train its tables with the configured sparse optimiser: the reference applies that
optimiser's update rule, written here row by row, to the unsharded model.

Each rank takes an equal share of one global batch. DDP averages dense gradients over ranks, and in torchrec 1.9
the sharded tables' gradients are averaged over ranks too (measured: the updates are exactly half of the
sum-of-losses update on 2 ranks), so the reference is one step on the mean of the per-rank mean losses.
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

from features.batch import RankBatch
from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from pipelines.distributed import process_group_backend
from ranker.build import ModelConfig, build_ranker
from ranker.model import RankerTrain
from ranker.sharding import SPARSE_EPS, build_optimizers, describe_plan, distribute
from tests.helpers import write_tiny_dataset

pytestmark = pytest.mark.dist

WORLD = 2
GLOBAL_ROWS = 32
SPARSE_LR, DENSE_LR = 0.5, 0.1
MODEL = ModelConfig(interaction="hiformer", embedding_dim=8, interaction_kwargs={"hiformer": {"num_layers": 1}})


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
                    shard.tensor.copy_(full[key][rows : rows + n_rows, cols : cols + n_cols].to(shard.tensor.device))
            else:
                tensor.copy_(full[key].to(tensor.device))


def _gather_full(local: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, tensor in local.items():
        if isinstance(tensor, ShardedTensor):
            device = tensor.local_shards()[0].tensor.device if tensor.local_shards() else torch.device("cpu")
            full = torch.zeros(tensor.size(), device=device) if dist.get_rank() == 0 else None
            tensor.gather(dst=0, out=full)
            out[key] = full.cpu() if full is not None else None
        else:
            out[key] = tensor.detach().cpu().clone()
    return out


def _rank_main(
    rank: int,
    world: int,
    port: int,
    features: str,
    shardings: list[str],
    optimizer: str,
    result_dir: str,
    tag: str,
    device_type: str,
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device(device_type if device_type == "cpu" else f"cuda:{rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(process_group_backend(device.type == "cuda"), rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        fmap = FeatureMap.load(features)
        full_state = torch.load(Path(result_dir) / "init.pt", weights_only=True)
        batch = torch.load(Path(result_dir) / "batch.pt", weights_only=False)
        model = RankerTrain(build_ranker(fmap, MODEL, sparse_device=torch.device("meta")))
        rows = GLOBAL_ROWS // world
        dmp = distribute(model, device, SPARSE_LR, shardings, rows, sparse_optimizer=optimizer)
        _copy_into(dmp.state_dict(), full_state)
        optimizers = build_optimizers(dmp, lambda p: torch.optim.SGD(p, lr=DENSE_LR), optimizer, SPARSE_LR)
        local = _batch_rows(batch, rank * rows, (rank + 1) * rows).to(device)
        loss, (_, logits, _) = dmp(local)
        optimizers.combined.zero_grad()
        loss.backward()
        optimizers.combined.step()
        logits_all = [torch.zeros_like(logits) for _ in range(world)]
        dist.all_gather(logits_all, logits.contiguous())
        after = _gather_full(dmp.state_dict())
        if rank == 0:
            result = {"logits": torch.cat(logits_all).cpu(), "after": after, "plan": describe_plan(dmp)}
            torch.save(result, Path(result_dir) / f"{tag}.pt")
    finally:
        dist.destroy_process_group()


def run_step(
    root: Path, features: Path, world: int, shardings: list[str], optimizer: str, tag: str, device_type: str = "cpu"
) -> dict:
    """One step on ``world`` spawned ranks (gloo on CPU; one GPU per rank with ``device_type="cuda"``)."""
    args = (world, _free_port(), str(features), shardings, optimizer, str(root), tag, device_type)
    mp.spawn(_rank_main, args=args, nprocs=world, join=True)
    return torch.load(root / f"{tag}.pt", weights_only=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_setup(tmp_path_factory)


def make_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Tiny features, the reference model's initial state and one global batch, in a fresh folder."""
    root = tmp_path_factory.mktemp("parity")
    schema = load_schema(write_tiny_dataset(root / "raw", n=400))
    features = root / "features"
    fmap = fit(schema, features)
    transform(schema, features, "train", fmap)
    torch.manual_seed(0)
    reference = RankerTrain(build_ranker(fmap, MODEL))
    torch.save(reference.state_dict(), root / "init.pt")
    batch = next(iter(RankLoader(processed_files(features, "train"), fmap, GLOBAL_ROWS, prefetch=0)))
    torch.save(batch, root / "batch.pt")
    return root, features


def _sparse_step(table: torch.Tensor, grad: torch.Tensor, optimizer: str) -> None:
    """One step of ``optimizer`` from a zero accumulator, row by row (FBGEMM's exact rules)."""
    for r in range(table.shape[0]):
        g = grad[r]
        if optimizer == "sgd":
            table[r] -= SPARSE_LR * g
        elif optimizer == "adagrad":
            table[r] -= SPARSE_LR * g / (g * g).sqrt().add(SPARSE_EPS)
        else:
            table[r] -= SPARSE_LR * g / (float((g * g).mean()) ** 0.5 + SPARSE_EPS)


def reference_step(root: Path, features: Path, world: int, optimizer: str) -> tuple[torch.Tensor, dict]:
    fmap = FeatureMap.load(features)
    model = RankerTrain(build_ranker(fmap, MODEL))
    model.load_state_dict(torch.load(root / "init.pt", weights_only=True))
    batch = torch.load(root / "batch.pt", weights_only=False)
    rows = GLOBAL_ROWS // world
    parts = [_batch_rows(batch, r * rows, (r + 1) * rows) for r in range(world)]
    logits = torch.cat([model.model(p) for p in parts]).detach()
    loss = sum(model(p)[0] for p in parts) / world
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ebc." in name:
                _sparse_step(param, param.grad, optimizer)
            else:
                param -= DENSE_LR * param.grad
    return logits, {k: v.detach() for k, v in model.state_dict().items()}


def assert_matches_reference(root: Path, sharded: dict, logits: torch.Tensor, after: dict) -> None:
    torch.testing.assert_close(sharded["logits"], logits, rtol=1e-5, atol=1e-6)
    before = torch.load(root / "init.pt", weights_only=True)
    moved = 0
    for key, value in after.items():
        torch.testing.assert_close(sharded["after"][key], value, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
        moved += int(not torch.equal(value, before[key]))
    assert moved > len(after) // 2, "one step should change most parameters"


@pytest.mark.parametrize(
    ("sharding", "optimizer"),
    [
        ("table_wise", "adagrad"),
        ("column_wise", "adagrad"),
        ("table_column_wise", "adagrad"),
        ("data_parallel", "adagrad"),
        ("data_parallel", "rowwise_adagrad"),
        ("data_parallel", "sgd"),
        ("table_wise", "rowwise_adagrad"),
    ],
)
def test_sharded_matches_unsharded(setup: tuple[Path, Path], sharding: str, optimizer: str) -> None:
    """Element-wise Adagrad is exact under any split of a table, so it checks every sharding type."""
    root, features = setup
    sharded = run_step(root, features, WORLD, [sharding], optimizer, f"{sharding}-{optimizer}")
    assert set(sharded["plan"].values()) == {sharding}, sharded["plan"]
    assert_matches_reference(root, sharded, *reference_step(root, features, WORLD, optimizer))


def test_one_and_two_ranks_train_tables_alike(setup: tuple[Path, Path]) -> None:
    """The planner's own plans for 1 and 2 ranks (every table data-parallel on 1 rank) train each table with
    the same row-wise Adagrad step: the same global batch gives the same parameters."""
    root, features = setup
    one = run_step(root, features, 1, [], "rowwise_adagrad", "one-rank")
    two = run_step(root, features, WORLD, [], "rowwise_adagrad", "two-ranks")
    assert "data_parallel" in one["plan"].values(), one["plan"]
    assert set(one["plan"]) == set(two["plan"])
    assert_matches_reference(root, one, *reference_step(root, features, 1, "rowwise_adagrad"))
    assert_matches_reference(root, two, *reference_step(root, features, WORLD, "rowwise_adagrad"))
    for key, value in one["after"].items():
        torch.testing.assert_close(two["after"][key], value, rtol=1e-4, atol=1e-6, msg=lambda m, k=key: f"{k}: {m}")
