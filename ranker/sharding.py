"""Sharding the ranker with TorchRec: the planner picks a plan, DistributedModelParallel applies it.

On CPU (gloo) the planner may choose table-wise, column-wise, table-column-wise or data-parallel sharding;
row-wise sharding needs CUDA and becomes available there with no code change, because the plan always comes
from ``EmbeddingShardingPlanner`` over a ``Topology`` of the actual device type.

Every embedding table is trained by the configured sparse optimiser (``rowwise_adagrad``, ``adagrad`` or ``sgd``:
what FBGEMM's CPU kernels support), whatever sharding the planner picks:

- sharded tables (table-/column-/row-wise) use FBGEMM's fused optimiser, applied in the backward pass;
- data-parallel tables live in FBGEMM's *dense* kernel, one flat weight tensor per group of tables, for which
  TorchRec provides no optimiser (left alone they would fall into the dense Adam group, with its learning rate,
  weight decay and clipping). :class:`DataParallelTablesOptimizer` applies the same update rule to them, table by
  table, after DDP has averaged their gradients over ranks.

One semantic difference is TorchRec's own: with column-wise sharding, row-wise Adagrad keeps one accumulator per
row *and column shard* (the mean of squared gradients over the shard's columns, not the whole row).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.composable.table_batched_embedding_slice import TableBatchedEmbeddingSlice
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import KernelConfig, ParameterConstraints, TopologyFactory, TrainerConfig
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

SHARDING_TYPES = ("data_parallel", "table_wise", "column_wise", "table_column_wise", "row_wise", "table_row_wise")
CPU_SHARDING_TYPES = ("table_wise", "column_wise", "table_column_wise", "data_parallel")  # the rest need CUDA


SPARSE_EPS = 1e-8
STORAGE_RESERVATION = 0.15  # share of each device's memory the planner leaves for activations and dense state

SPARSE_OPTIMIZERS = {
    "rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD,
    "adagrad": EmbOptimType.EXACT_ADAGRAD,
    "sgd": EmbOptimType.EXACT_SGD,
}


def sharder(
    sparse_lr: float, optimizer: str = "rowwise_adagrad", eps: float = SPARSE_EPS
) -> EmbeddingBagCollectionSharder:
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
    topology = TopologyFactory.create_topology(
        TrainerConfig(world_size=pg.size()), kernel_config=KernelConfig(compute_device=device.type)
    )
    planner = EmbeddingShardingPlanner(
        topology=topology,
        batch_size=batch_size,
        constraints=constraints,
        # The default heuristic reservation over-estimates dense sizes on meta-device models (TorchRec's warning).
        storage_reservation=FixedPercentageStorageReservation(STORAGE_RESERVATION),
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


class DataParallelTablesOptimizer(torch.optim.Optimizer):
    """FBGEMM's exact sparse update rules, for the data-parallel tables that TorchRec leaves without one.

    Each parameter is one table (``rows x D``: a slice of FBGEMM's dense kernel weights, with its own ``.grad``
    after DDP averaged it over ranks). With ``w`` a row's weights and ``g`` its gradient (the sum over the
    batch's occurrences of the row, as in the fused kernels):

    - ``sgd``: ``w -= lr * g``;
    - ``adagrad``: ``s += g**2``; ``w -= lr * g / (sqrt(s) + eps)`` (one accumulator per weight);
    - ``rowwise_adagrad``: ``s += mean(g**2)``; ``w -= lr * g / (sqrt(s) + eps)`` (one accumulator per row).

    A row absent from the batch has a zero gradient and stays unchanged, as with the fused kernels. Accumulators
    are created eagerly, so that a checkpoint loads into them in place.

    Args:
        params: the tables, each ``rows x D``.
        kind: ``sgd``, ``adagrad`` or ``rowwise_adagrad``.
        lr: learning rate.
        eps: added to the accumulator's square root.
    """

    def __init__(self, params: Iterable[torch.Tensor], kind: str, lr: float, eps: float = SPARSE_EPS) -> None:
        if kind not in SPARSE_OPTIMIZERS:
            raise ValueError(f"unknown sparse optimizer {kind!r}; choose from {sorted(SPARSE_OPTIMIZERS)}")
        super().__init__(list(params), {"lr": lr, "eps": eps})
        self.kind = kind
        for group in self.param_groups:
            for table in group["params"]:
                if kind == "adagrad":
                    self.state[table]["sum"] = torch.zeros_like(table, dtype=torch.float32)
                elif kind == "rowwise_adagrad":
                    self.state[table]["sum"] = torch.zeros(table.shape[0], dtype=torch.float32, device=table.device)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("DataParallelTablesOptimizer does not take a closure")
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for table in group["params"]:
                grad = table.grad
                if grad is None:
                    continue
                if self.kind == "sgd":
                    table.add_(grad, alpha=-lr)
                    continue
                acc = self.state[table]["sum"]
                if self.kind == "adagrad":
                    acc.addcmul_(grad, grad)
                    table.addcdiv_(grad, acc.sqrt().add_(eps).to(table.dtype), value=-lr)
                else:
                    acc.add_(grad.float().square().mean(dim=1))  # (rows,)
                    table.addcdiv_(grad, acc.sqrt().add_(eps).unsqueeze(1).to(table.dtype), value=-lr)


def data_parallel_tables(dmp: nn.Module) -> dict[str, torch.Tensor]:
    """Parameter name -> ``rows x D`` table, for every data-parallel table of ``dmp``.

    They are the tables TorchRec exposes as slices of its dense kernel's weights with no in-backward optimiser.
    """
    return {
        name: p
        for name, p in in_backward_optimizer_filter(dmp.named_parameters())
        if isinstance(p, TableBatchedEmbeddingSlice)
    }


@dataclass
class Optimizers:
    """Everything one training step needs; ``combined`` steps, zeroes and checkpoints all of them.

    ``dense`` is the dense part's optimiser (for the learning-rate schedule) and ``dense_params`` its parameters
    (for gradient clipping); no embedding table is in either.
    """

    combined: CombinedOptimizer
    dense: KeyedOptimizer
    dense_params: list[torch.Tensor]


def build_optimizers(
    dmp: DistributedModelParallel,
    dense_factory: Callable[[list[torch.Tensor]], torch.optim.Optimizer],
    sparse_optimizer: str,
    sparse_lr: float,
) -> Optimizers:
    """The sparse optimiser for every table (fused, or :class:`DataParallelTablesOptimizer`) plus the dense one.

    ``sparse_optimizer`` and ``sparse_lr`` must be those given to :func:`distribute` (the fused tables' rule).
    """
    tables = data_parallel_tables(dmp)
    dense_named = {name: p for name, p in in_backward_optimizer_filter(dmp.named_parameters()) if name not in tables}
    dense = KeyedOptimizerWrapper(dense_named, dense_factory)
    parts: list[KeyedOptimizer] = [dmp.fused_optimizer]
    if tables:
        parts.append(
            KeyedOptimizerWrapper(
                tables, lambda params: DataParallelTablesOptimizer(params, sparse_optimizer, sparse_lr)
            )
        )
    parts.append(dense)
    return Optimizers(CombinedOptimizer(parts), dense, [p for p in dense_named.values() if p.requires_grad])
