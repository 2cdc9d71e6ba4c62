"""Post-training compression of an exported ranker: every result is again an export (``ranker.export``).

Techniques (each an option of :class:`CompressConfig`, applied in this order):

- ``prune_last``: the last attention layer of a model trained without ``prune_last`` is rebuilt to update the task
  tokens only. Exact: the task-token outputs of the unpruned layer are computed from the same weights (the
  trailing K token slices of every per-token weight, the trailing K·out_dim rows of a composite query).
- ``low_rank``: truncated SVD to a rank chosen by an energy threshold or given as a budget, the largest rank any
  layer needs (one rank per kind, as the model config has one). Exact up to float rounding at the current rank.
  Hiformer: every composite projection (``CompositeLinear``, full or already factorised); keys [and composite
  queries] share ``rank_k``, values ``rank_v``. DCN-v2: every cross layer's ``N x N`` matrix ``W_l`` (N = T·D)
  becomes ``U_l V_l`` (``N x r``, ``r x N``), the paper's low-rank cross, served as torchrec's ``LowRankCrossNet``
  (the model's ``low_rank`` option); ``rank`` is the budget.
- ``finetune``: a short, single-process, deterministic fine-tune of the compressed model on the training split
  with the model's own loss (``RankerTrain``), Adam on all weights.
- ``dense_dtype: bfloat16``: the interaction and the heads hold and compute in bf16 (embeddings stay fp32; the
  attention softmax stays fp32, see ``ranker.interactions.attention.attend``). Recorded in the export's
  ``compression.json``, which :func:`ranker.export.load_exported` applies.

The low-rank and pruning changes are plain ``ModelConfig`` changes (``rank_k``, ``rank_v``, ``prune_last``), so
the output folder loads, evaluates and serves like any export.
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ranker.build import ModelConfig
from ranker.interactions.attention import AttentionInteraction, CompositeLinear
from ranker.model import Ranker

COMPRESSION_FILE = "compression.json"  # what was applied; read by load_exported (dense dtype, table dtype)
DENSE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Embedding table storage (fbgemm's IntN TBE through torchrec's quantised EBC); rows are padded to 16 bytes.
EMBEDDING_DTYPES = {"float32": None, "float16": torch.float16, "int8": torch.qint8, "int4": torch.quint4x2}


@dataclass(frozen=True)
class LowRankConfig:
    """Rank choice for the truncated SVD: ``energy`` (keep the smallest rank holding this share of the squared
    singular values) unless a budget gives the rank outright: ``rank_k`` / ``rank_v`` (Hiformer's key and value
    projections) or ``rank`` (DCN-v2's cross layers)."""

    energy: float = 0.99
    rank_k: int | None = None
    rank_v: int | None = None
    rank: int | None = None

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"low_rank.energy must be in (0, 1], got {self.energy}")
        for name in ("rank_k", "rank_v", "rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"low_rank.{name} must be >= 1, got {value}")


@dataclass(frozen=True)
class FinetuneConfig:
    """A short fine-tune on the training split of ``features`` (the model's feature folder)."""

    features: str
    steps: int = 200
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ValueError("finetune: steps must be >= 0, batch_size >= 1 and lr > 0")


@dataclass(frozen=True)
class PruneConfig:
    """Structured pruning: keep ``heads`` attention heads per layer and ``ffn_hidden`` FFN units (None: all), ranked
    by first-order importance on ``batches`` training batches of ``features`` (``ranker.structured_prune``)."""

    features: str
    heads: int | None = None
    ffn_hidden: int | None = None
    batches: int = 8
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batches < 1 or self.batch_size < 1:
            raise ValueError("prune: batches and batch_size must be >= 1")
        if self.heads is None and self.ffn_hidden is None:
            raise ValueError("prune: give heads and/or ffn_hidden (how many to keep)")


@dataclass(frozen=True)
class ServeConfig:
    """The served artefact written beside the weights (``ranker.serving``)."""

    program: bool = True  # serve/model.pt2: torch.export program over plain tensors, loads with torch alone
    aoti: bool = False  # serve/model_aoti.pt2: AOTInductor package for *this* CPU type (needs a C++ compiler)


@dataclass(frozen=True)
class CompressConfig:
    """``ranker compress --config compress.yaml``: unknown keys are rejected."""

    prune_last: bool = False
    prune: PruneConfig | None = None
    low_rank: LowRankConfig | None = None
    finetune: FinetuneConfig | None = None
    dense_dtype: str = "float32"
    embedding_dtype: str = "float32"
    serve: ServeConfig = ServeConfig()
    tracking: bool = True  # `ranker compress` logs the compressed export as an MLflow model (pipelines.registry)

    def __post_init__(self) -> None:
        if self.dense_dtype not in DENSE_DTYPES:
            raise ValueError(f"dense_dtype must be one of {sorted(DENSE_DTYPES)}, got {self.dense_dtype!r}")
        if self.embedding_dtype not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding_dtype must be one of {sorted(EMBEDDING_DTYPES)}, got {self.embedding_dtype!r}")
        if self.embedding_dtype != "float32" and self.serve.aoti:
            raise ValueError(
                "serve.aoti cannot compile quantised tables (AOTInductor fails on the quantised lookup's data-"
                "dependent permute); use serve.program, or keep embedding_dtype: float32 for a compiled model"
            )


ATTENTION = ("hiformer", "hetero_attention", "transformer")
# Which options apply to which interactions; any other combination is a one-line config error (check_applies).
_APPLIES = {
    "prune_last": ATTENTION,
    "prune": ATTENTION,
    "low_rank": ("hiformer", "dcnv2"),  # composite projections, cross matrices
    "low_rank.rank_k": ("hiformer",),
    "low_rank.rank_v": ("hiformer",),
    "low_rank.rank": ("dcnv2",),
}


def check_applies(cfg: CompressConfig, interaction: str) -> None:
    """Raises ``ValueError`` naming the first option of ``cfg`` that does not apply to an ``interaction`` model."""
    given = {"prune_last": cfg.prune_last, "prune": cfg.prune is not None, "low_rank": cfg.low_rank is not None}
    if cfg.low_rank is not None:
        given |= {f"low_rank.{k}": getattr(cfg.low_rank, k) is not None for k in ("rank_k", "rank_v", "rank")}
    for key, models in _APPLIES.items():
        if given.get(key) and interaction not in models:
            raise ValueError(f"compress: {key} does not apply to a {interaction!r} model, only to {', '.join(models)}")


def _attention(model: Ranker) -> AttentionInteraction | None:
    return model.interaction if isinstance(model.interaction, AttentionInteraction) else None


def last_layer_pruned(model: Ranker) -> bool:
    """Whether the model's last attention layer already updates the task tokens only."""
    attention = _attention(model)
    return attention is not None and attention.layers[-1].query.out_tokens == attention.num_tasks


def prune_last_layer(model: Ranker, cfg: ModelConfig, build: Any) -> tuple[Ranker, ModelConfig]:
    """The model with its last attention layer pruned to the task tokens (exact).

    ``build(cfg) -> Ranker`` builds an uninitialised model of a config (weights are all copied over).
    """
    attention = _attention(model)
    if attention is None:
        raise ValueError(f"prune_last: {cfg.interaction!r} has no attention layers to prune")
    if last_layer_pruned(model):
        raise ValueError("prune_last: the last layer is already pruned to the task tokens")
    new_cfg = _with_kwargs(cfg, prune_last=True)
    pruned = build(new_cfg)
    old_state = model.state_dict()
    state = {}
    for name, target in pruned.state_dict().items():
        source = old_state[name]
        if source.shape != target.shape:
            # Per-token weights (Q x in x out, Q x out) and composite rows (Q·out x r) are token-major: the
            # pruned layer keeps the trailing (task) tokens' slices along the first dimension.
            if source.shape[1:] != target.shape[1:] or target.shape[0] > source.shape[0]:
                raise ValueError(f"prune_last: cannot map {name} {tuple(source.shape)} -> {tuple(target.shape)}")
            source = source[source.shape[0] - target.shape[0] :]
        state[name] = source.clone()
    pruned.load_state_dict(state, strict=True)
    return pruned.eval(), new_cfg


def _matrix(proj: CompositeLinear) -> torch.Tensor:
    """The effective ``(Q·out) x (S·in)`` matrix of a composite projection, in float64."""
    if isinstance(proj.proj, nn.Linear):
        return proj.proj.weight.detach().double()
    first, second = proj.proj[0], proj.proj[1]  # type: ignore[index]
    return second.weight.detach().double() @ first.weight.detach().double()


def _energy_rank(singular: torch.Tensor, energy: float) -> int:
    share = (singular**2).cumsum(0) / (singular**2).sum().clamp(min=1e-300)
    return int(min(int((share < energy - 1e-12).sum().item()) + 1, singular.numel()))


def _current_rank(proj: CompositeLinear) -> int:
    matrix_rows, matrix_cols = _matrix(proj).shape
    return proj.rank if proj.rank is not None else min(matrix_rows, matrix_cols)


def _factorise(
    matrices: dict[str, tuple[torch.Tensor, int]], energy: float, budget: int | None
) -> tuple[int, dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Truncated SVD of a group of matrices that share one rank.

    Args:
        matrices: name -> (``out x in`` matrix in float64, its current rank).
        energy: the rank is the largest any member needs to keep this share of its squared singular values ...
        budget: ... unless given outright; never above a member's current rank.

    Returns:
        The rank r, each member's factors ``(r x in, out x r)`` whose product (second @ first) is its rank-r
        truncated SVD (the singular values split evenly between them), and a report per member.
    """
    svds = {name: torch.linalg.svd(matrix, full_matrices=False) for name, (matrix, _) in matrices.items()}
    wanted = max(_energy_rank(s, energy) for _, s, _ in svds.values())
    rank = min(budget if budget is not None else wanted, *(current for _, current in matrices.values()))
    factors, report = {}, {}
    for name, (u, s, vh) in svds.items():
        half = s[:rank].sqrt()
        factors[name] = (half[:, None] * vh[:rank], u[:, :rank] * half[None, :])
        kept = float((s[:rank] ** 2).sum() / (s**2).sum().clamp(min=1e-300))
        report[name] = {
            "current_rank": matrices[name][1],
            "energy_rank": _energy_rank(s, energy),
            "rank": rank,
            "energy_kept": round(kept, 6),
        }
    return rank, factors, report


def _with_kwargs(cfg: ModelConfig, **changes: Any) -> ModelConfig:
    """``cfg`` with hyper-parameters of its chosen interaction changed."""
    kwargs = cfg.chosen_kwargs() | changes
    return replace(cfg, interaction_kwargs={**cfg.interaction_kwargs, cfg.interaction: kwargs})


def low_rank(model: Ranker, cfg: ModelConfig, lr_cfg: LowRankConfig, build: Any) -> tuple[Ranker, ModelConfig, dict]:
    """Truncated SVD of every composite projection (Hiformer) or cross matrix (DCN-v2); returns the model, its
    config and what was chosen (``ranks`` and a report per matrix). ``build(cfg) -> Ranker`` as for pruning."""
    check_applies(CompressConfig(low_rank=lr_cfg), cfg.interaction)
    low = _low_rank_hiformer if cfg.interaction == "hiformer" else _low_rank_cross
    state, new_cfg, report = low(model, cfg, lr_cfg)
    target = build(new_cfg)
    target.load_state_dict(state, strict=True)  # copy_ casts to the target's dtype
    return target.eval(), new_cfg, report


def _low_rank_hiformer(model: Ranker, cfg: ModelConfig, lr_cfg: LowRankConfig) -> tuple[dict, ModelConfig, dict]:
    attention = _attention(model)
    assert attention is not None
    composite_query = cfg.chosen_kwargs().get("query_mode", "hetero") == "composite"
    groups: dict[str, dict[str, CompositeLinear]] = {"rank_k": {}, "rank_v": {}}
    for i, layer in enumerate(attention.layers):
        groups["rank_k"][f"layers.{i}.key"] = layer.key
        groups["rank_v"][f"layers.{i}.value"] = layer.value
        if composite_query:
            groups["rank_k"][f"layers.{i}.query"] = layer.query
    ranks: dict[str, int] = {}
    report: dict[str, Any] = {"projections": {}}
    state = model.state_dict()
    for label, members in groups.items():
        matrices = {name: (_matrix(proj), _current_rank(proj)) for name, proj in members.items()}
        ranks[label], factors, report_part = _factorise(matrices, lr_cfg.energy, getattr(lr_cfg, label))
        report["projections"] |= report_part
        for name, (first, second) in factors.items():
            root = f"interaction.{name}.proj"
            for key in [k for k in state if k.startswith(root + ".")]:
                del state[key]
            state[f"{root}.0.weight"], state[f"{root}.1.weight"] = first, second
    report["ranks"] = ranks
    return state, _with_kwargs(cfg, **ranks), report


def _low_rank_cross(model: Ranker, cfg: ModelConfig, lr_cfg: LowRankConfig) -> tuple[dict, ModelConfig, dict]:
    """DCN-v2: ``W_l`` (``N x N``, or ``U_l V_l`` already) -> ``W_kernels.l`` (``N x r``) @ ``V_kernels.l``
    (``r x N``); the biases move from torchrec ``CrossNet``'s ``N x 1`` to ``LowRankCrossNet``'s ``N``."""
    from torchrec.modules.crossnet import LowRankCrossNet

    cross = model.interaction.cross
    prefix = "interaction.cross."
    state = model.state_dict()
    matrices = {}
    for i in range(len(cross.bias)):
        if isinstance(cross, LowRankCrossNet):
            w, v = cross.W_kernels[i].detach().double(), cross.V_kernels[i].detach().double()
            matrices[f"cross.{i}"] = (w @ v, int(w.shape[1]))
            del state[f"{prefix}W_kernels.{i}"], state[f"{prefix}V_kernels.{i}"]
        else:
            kernel = cross.kernels[i].detach().double()
            matrices[f"cross.{i}"] = (kernel, int(kernel.shape[0]))
            del state[f"{prefix}kernels.{i}"]
    rank, factors, layers = _factorise(matrices, lr_cfg.energy, lr_cfg.rank)
    for i in range(len(cross.bias)):
        first, second = factors[f"cross.{i}"]
        state[f"{prefix}V_kernels.{i}"], state[f"{prefix}W_kernels.{i}"] = first, second
        state[f"{prefix}bias.{i}"] = state[f"{prefix}bias.{i}"].reshape(-1)
    return state, _with_kwargs(cfg, low_rank=rank), {"layers": layers, "ranks": {"low_rank": rank}}


def _train_batches(features: str, fmap: Any, batch_size: int, seed: int) -> Any:
    """Seeded, shuffled training batches of the feature folder ``features`` (one epoch per call of ``set_epoch``)."""
    from pathlib import Path

    from features.loader import RankLoader
    from features.processor import processed_files

    return RankLoader(processed_files(Path(features), "train"), fmap, batch_size, shuffle=True, seed=seed, prefetch=0)


def _prune(model: Ranker, cfg: ModelConfig, pc: PruneConfig, build: Any, fmap: Any) -> tuple[Ranker, ModelConfig, dict]:
    from itertools import islice

    from ranker.structured_prune import importance, prune_structured

    torch.manual_seed(pc.seed)
    scores = importance(model, islice(iter(_train_batches(pc.features, fmap, pc.batch_size, pc.seed)), pc.batches))
    return prune_structured(model, cfg, build, scores, pc.heads, pc.ffn_hidden)


def finetune(model: Ranker, ft: FinetuneConfig, fmap: Any) -> dict[str, Any]:
    """Fine-tunes ``model`` in place for ``ft.steps`` steps; returns the first and last losses."""
    from ranker.model import RankerTrain

    torch.manual_seed(ft.seed)
    loader = _train_batches(ft.features, fmap, ft.batch_size, ft.seed)
    wrapped = RankerTrain(model).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=ft.lr)
    losses: list[float] = []
    epoch = 0
    while len(losses) < ft.steps:
        loader.set_epoch(epoch)
        for batch in loader:
            loss, _ = wrapped(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if len(losses) >= ft.steps:
                break
        epoch += 1
    model.eval()
    head = losses[: min(20, len(losses))]
    tail = losses[-min(20, len(losses)) :]
    return {
        "steps": len(losses),
        "loss_first20": sum(head) / max(len(head), 1),
        "loss_last20": sum(tail) / max(len(tail), 1),
    }


def apply_dense_dtype(model: Ranker, dtype: str) -> Ranker:
    """Interaction and heads in ``dtype`` (tokens are cast on the way in, logits back to fp32 on the way out)."""
    target = DENSE_DTYPES[dtype]
    model.dense_dtype = target
    model.interaction.to(target)
    model.heads.to(target)
    return model


def compress_model(
    model: Ranker, model_cfg: ModelConfig, cfg: CompressConfig, build: Any, fmap: Any = None
) -> tuple[Ranker, ModelConfig, dict[str, Any]]:
    """Applies the techniques of ``cfg`` to a copy of ``model``; returns the model, its config and what was done."""
    check_applies(cfg, model_cfg.interaction)
    model = copy.deepcopy(model).eval()
    applied: dict[str, Any] = {"parameters_before": count_parameters(model)}
    if cfg.prune_last and last_layer_pruned(model):
        # Hiformer's registered default trains with the last layer pruned: nothing is left to prune.
        applied["prune_last"] = "already pruned when trained"
    elif cfg.prune_last:
        model, model_cfg = prune_last_layer(model, model_cfg, build)
        applied["prune_last"] = True
    if cfg.prune is not None:
        model, model_cfg, applied["prune"] = _prune(model, model_cfg, cfg.prune, build, fmap)
    if cfg.low_rank is not None:
        model, model_cfg, applied["low_rank"] = low_rank(model, model_cfg, cfg.low_rank, build)
    if cfg.finetune is not None and cfg.finetune.steps > 0:
        applied["finetune"] = finetune(model, cfg.finetune, fmap)
    if cfg.dense_dtype != "float32":
        apply_dense_dtype(model, cfg.dense_dtype)
        applied["dense_dtype"] = cfg.dense_dtype
    tables_before = embedding_bytes(model)
    if cfg.embedding_dtype != "float32":
        quantize_tables(model, cfg.embedding_dtype)
        applied["embedding_dtype"] = cfg.embedding_dtype
    applied["embedding_bytes"] = {"before": tables_before, "after": embedding_bytes(model)}
    applied["parameters_after"] = count_parameters(model)
    return model, model_cfg, applied


def quantize_tables(model: Ranker, dtype: str) -> Ranker:
    """Swaps the model's embedding-bag collections for TorchRec's quantised ones storing rows in ``dtype``, in place.

    Row-wise quantisation (int8 / int4 rows carry their own fp16 scale and bias) by fbgemm; inference only. The
    lookup needs ``fbgemm_gpu`` at load time, also in a served program.
    """
    from torchrec.inference.modules import quantize_embeddings

    with warnings.catch_warnings():
        # TorchRec 1.9's quantize_embeddings goes through torch.ao.quantization's module swap, which torch 2.14
        # deprecates in favour of torchao; the swap itself is TorchRec's and works (test: equal to a naive
        # row-wise dequantisation).
        warnings.filterwarnings("ignore", message="torch.ao.quantization is deprecated", category=DeprecationWarning)
        quantize_embeddings(model, dtype=EMBEDDING_DTYPES[dtype], inplace=True)
    return model


def embedding_bytes(model: nn.Module) -> int:
    """Bytes the sparse tables occupy: fbgemm's packed rows for quantised tables, padding and per-row scale/bias
    included (read from the plain storage, since a quantised table's ``state_dict`` view reports int4 columns)."""
    from torchrec.modules.embedding_modules import EmbeddingBagCollectionInterface

    prefixes = tuple(
        f"{name}.embedding_bags." for name, m in model.named_modules() if isinstance(m, EmbeddingBagCollectionInterface)
    )
    return sum(v.numel() * v.element_size() for k, v in plain_state(model).items() if k.startswith(prefixes))


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model.state_dict()`` with TorchRec's packed int4/int2 tensor subclasses as their plain uint8 storage, so the
    file loads with ``weights_only=True`` (:func:`restore_packed` undoes it against a quantised model)."""
    from torchrec.tensor_types import UIntXTensor

    return {k: v.view(torch.uint8) if isinstance(v, UIntXTensor) else v for k, v in model.state_dict().items()}


def restore_packed(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` with plain uint8 tensors rewrapped where ``model`` (quantised) holds packed int4/int2 tensors."""
    from torchrec.tensor_types import UIntXTensor

    current = model.state_dict()
    return {
        k: type(current[k])(v) if isinstance(current.get(k), UIntXTensor) else v  # type: ignore[call-arg]
        for k, v in state.items()
    }


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def write_compression(out_dir: Any, cfg: CompressConfig, applied: dict[str, Any]) -> None:
    from common.config import to_dict

    record = {
        "dense_dtype": cfg.dense_dtype,
        "embedding_dtype": cfg.embedding_dtype,
        "config": to_dict(cfg),
        "applied": applied,
    }
    (out_dir / COMPRESSION_FILE).write_text(json.dumps(record, indent=2, default=str) + "\n")


def read_dtypes(export_dir: Any) -> tuple[str, str]:
    """(dense dtype, embedding dtype) an export was compressed to; float32 for an uncompressed export."""
    path = export_dir / COMPRESSION_FILE
    record = json.loads(path.read_text()) if path.exists() else {}
    return record.get("dense_dtype", "float32"), record.get("embedding_dtype", "float32")


__all__ = [
    "CompressConfig",
    "FinetuneConfig",
    "LowRankConfig",
    "PruneConfig",
    "ServeConfig",
    "check_applies",
    "compress_model",
    "low_rank",
    "prune_last_layer",
]
