"""Sharding the ranker with TorchRec: the planner picks a plan, DistributedModelParallel applies it.

On CPU (gloo) the planner may choose table-wise, column-wise, table-column-wise or data-parallel sharding;
row-wise sharding needs CUDA and becomes available there with no code change, because the plan always comes
from ``EmbeddingShardingPlanner`` over a ``Topology`` of the actual device type. Embedding tables use FBGEMM's
fused row-wise Adagrad (applied in the backward pass; the CPU kernels support sgd, adagrad and rowwise_adagrad).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection

CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise", "data_parallel")


SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


def sharder(sparse_lr: float, optimizer: str = "rowwise_adagrad", eps: float = 1e-8) -> EmbeddingBagCollectionSharder:
    """A sharder whose tables update in the backward pass with a fused FBGEMM optimizer."""
    if optimizer not in SPARSE_OPTIMIZERS:
        raise ValueError(f"unknown sparse optimizer {optimizer!r}; CPU kernels support {sorted(SPARSE_OPTIMIZERS)}")
    return EmbeddingBagCollectionSharder(
        fused_params={"optimizer": SPARSE_OPTIMIZERS[optimizer], "learning_rate": sparse_lr, "eps": eps}
    )


def _table_names(model: nn.Module) -> list[str]:
    return [
        cfg.name
        for module in model.modules()
        if isinstance(module, EmbeddingBagCollection)
        for cfg in module.embedding_bag_configs()
    ]


def plan(
    model: nn.Module,
    device: torch.device,
    pg: dist.ProcessGroup,
    sharding_types: Sequence[str] = (),
    batch_size: int = 1024,
) -> ShardingPlan:
    """The planner's plan for ``model``'s embedding tables, optionally restricted to ``sharding_types``.

    All ranks of ``pg`` agree on one plan (``collective_plan``).
    """
    constraints = None
    if sharding_types:
        constraints = {name: ParameterConstraints(sharding_types=list(sharding_types)) for name in _table_names(model)}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=pg.size(), compute_device=device.type),
        batch_size=batch_size,
        constraints=constraints,
        debug=False,
    )
    sharders = [sharder(0.01)]  # the learning rate does not affect the plan
    return planner.collective_plan(model, sharders, pg)  # type: ignore[arg-type]


def distribute(
    model: nn.Module,
    device: torch.device,
    sparse_lr: float,
    sharding_types: Sequence[str] = (),
    batch_size: int = 1024,
    sparse_optimizer: str = "rowwise_adagrad",
) -> DistributedModelParallel:
    """Wraps ``model`` (embedding tables on ``meta`` or a real device) in DistributedModelParallel."""
    pg = dist.GroupMember.WORLD
    assert pg is not None, "distribute() needs an initialised default process group"
    shard_plan = plan(model, device, pg, sharding_types, batch_size)
    sharders = [sharder(sparse_lr, sparse_optimizer)]
    return DistributedModelParallel(module=model, device=device, plan=shard_plan, sharders=sharders)  # type: ignore[list-item]


def describe_plan(dmp: DistributedModelParallel) -> dict[str, str]:
    """Table name -> sharding type chosen by the planner."""
    out: dict[str, str] = {}
    for module_plan in dmp.plan.plan.values():
        for table, spec in module_plan.items():  # type: ignore[union-attr]
            out[table] = spec.sharding_type
    return out
