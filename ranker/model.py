"""The ranker's parts and their composition (shape vocabulary in :mod:`ranker`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.batch import RankBatch
from vision_towers import prepare_images


class SparseArch(nn.Module):
    """Pooled embeddings of the sparse features, one table per feature.

    Row 0 of every table is the learned "missing" embedding and row 1 the out-of-vocabulary one (the feature
    pipeline's id layout), so a missing feature is a learned token, not a zero vector.

    Args:
        features: ``(name, num_embeddings, multi)`` per sparse feature, in token order.
        dim: embedding dimension D.
        device: where to build the tables (``meta`` when DistributedModelParallel materialises them).

    Example::

        arch = SparseArch([("user", 10, False), ("tags", 6, True)], dim=4)
        kjt = KeyedJaggedTensor.from_lengths_sync(["user", "tags"], torch.tensor([3, 5, 2, 0, 4]),
                                                  torch.tensor([1, 1, 2, 1], dtype=torch.int32))
        arch(kjt).shape  # (2, 2, 4)
    """

    def __init__(self, features: list[tuple[str, int, bool]], dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.feature_names = [name for name, _, _ in features]
        self.dim = dim
        tables = [
            EmbeddingBagConfig(
                name=f"t_{name}",
                embedding_dim=dim,
                num_embeddings=num,
                feature_names=[name],
                pooling=PoolingType.MEAN if multi else PoolingType.SUM,
            )
            for name, num, multi in features
        ]
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)

    def forward(self, sparse: KeyedJaggedTensor) -> torch.Tensor:
        """Returns ``B x F x D``."""
        pooled = self.ebc(sparse)  # KeyedTensor, keys in table order
        values = torch.cat([pooled[name] for name in self.feature_names], dim=1)  # (B, F * D)
        return values.view(values.shape[0], len(self.feature_names), self.dim)  # (B, F, D)


class DenseArch(nn.Module):
    """Dense features to ``num_tokens`` tokens through one projection (Hiformer's dense tokens).

    Args:
        num_dense: Fd.
        num_tokens: tokens produced.
        dim: D.

    Example::

        DenseArch(3, 2, 8)(torch.randn(5, 3)).shape  # (5, 2, 8)
    """

    def __init__(self, num_dense: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_tokens, self.dim = num_tokens, dim
        self.proj = nn.Linear(num_dense, num_tokens * dim)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        """``B x Fd`` -> ``B x num_tokens x D``."""
        return self.proj(dense).view(dense.shape[0], self.num_tokens, self.dim)  # (B, n, D)


class _ImageTokens(nn.Module):
    """Shared tail of the vision archs: ``B x De`` image embeddings -> ``B x N x D`` tokens, a learned token
    for rows without an image.

    Args:
        embed_dim: De, the image embedding width.
        num_tokens: N, image tokens per row.
        dim: D.
    """

    def __init__(self, embed_dim: int, num_tokens: int, dim: int) -> None:
        super().__init__()
        self.num_tokens, self.dim = num_tokens, dim
        self.proj = nn.Linear(embed_dim, num_tokens * dim)
        self.no_image = nn.Parameter(torch.randn(num_tokens, dim) * 0.02)

    def tokens(self, embedded: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """``B x De`` embeddings and ``B`` has-an-image flags -> ``B x N x D``."""
        tokens = self.proj(embedded).view(-1, self.num_tokens, self.dim)  # (B, N, D)
        return torch.where(valid[:, None, None], tokens, self.no_image.expand_as(tokens))


class VisionArch(_ImageTokens):
    """Item images to ``N`` tokens per row through a tower trained with the ranker (fine-tuned).

    The tower runs once per **unique** image of each batch, and the result is gathered back to the rows.

    Args:
        tower: a registered vision tower (``forward: B x C x H x W -> B x De``).
        images: ``n_images x C x H x W`` uint8 item photos (kept as a non-persistent buffer: data, not weights).
        num_tokens: N, image tokens per row (a projection of the tower's embedding).
        dim: D.

    Example::

        photos = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
        arch = VisionArch(create_tower("convformer_fm", num_classes=0), photos, num_tokens=2, dim=8)
        arch(torch.tensor([0, 3, 3, -1])).shape  # (4, 2, 8); -1 = no image -> learned token
    """

    def __init__(self, tower: nn.Module, images: torch.Tensor, num_tokens: int, dim: int) -> None:
        super().__init__(int(tower.embed_dim), num_tokens, dim)
        self.tower = tower
        self.register_buffer("images", images, persistent=False)

    def forward(self, image_index: torch.Tensor) -> torch.Tensor:
        """``B`` image rows (-1: none) -> ``B x N x D``."""
        unique, inverse = torch.unique(image_index.clamp(min=0), return_inverse=True)
        pixels = prepare_images(self.images[unique], int(self.tower.in_chans), int(self.tower.img_size))
        embedded = self.tower(pixels.to(self.proj.weight.device))[inverse]  # (B, De): cost per distinct image
        return self.tokens(embedded, image_index >= 0)


class FrozenVisionArch(_ImageTokens):
    """Item images to ``N`` tokens per row from a frozen tower's precomputed catalogue embeddings.

    The model holds the ``n_images x De`` embedding table (built once per tower version, see
    ``ranker.build.cached_item_embeddings``), never the photos or the tower.

    Args:
        item_embeddings: ``n_images x De`` float table (a non-persistent buffer: exports store it beside the
            weights as ``item_embeddings.npy``).
        num_tokens: N.
        dim: D.

    Example::

        arch = FrozenVisionArch(torch.randn(4, 32), num_tokens=2, dim=8)
        arch(torch.tensor([0, 3, 3, -1])).shape  # (4, 2, 8)
    """

    def __init__(self, item_embeddings: torch.Tensor, num_tokens: int, dim: int) -> None:
        super().__init__(int(item_embeddings.shape[1]), num_tokens, dim)
        self.register_buffer("item_embeddings", item_embeddings, persistent=False)

    def forward(self, image_index: torch.Tensor) -> torch.Tensor:
        """``B`` image rows (-1: none) -> ``B x N x D``."""
        embedded = self.item_embeddings[image_index.clamp(min=0)]  # (B, De)
        return self.tokens(embedded, image_index >= 0)


class TaskHeads(nn.Module):
    """One MLP per task on that task's interaction output; biases start at the logit of the base rate.

    Args:
        in_dim: the interaction's ``out_dim``.
        hidden: hidden width of each head.
        base_rates: positive rate per task on the training split (K values).

    Example::

        TaskHeads(16, 32, [0.1, 0.5])(torch.randn(4, 2, 16)).shape  # (4, 2)
    """

    def __init__(self, in_dim: int, hidden: int, base_rates: list[float]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1)) for _ in base_rates
        )
        with torch.no_grad():
            for head, rate in zip(self.heads, base_rates, strict=True):
                rate = min(max(rate, 1e-4), 1 - 1e-4)
                head[-1].bias.fill_(math.log(rate / (1 - rate)))  # type: ignore[index]

    def forward(self, task_states: torch.Tensor) -> torch.Tensor:
        """``B x K x out_dim`` -> ``B x K`` logits."""
        return torch.cat([head(task_states[:, k]) for k, head in enumerate(self.heads)], dim=1)


class Ranker(nn.Module):
    """Tokens from dense, sparse and image inputs -> interaction -> per-task logits.

    Token order (fixed, since Hiformer's token-specific weights are not permutation-equivariant): dense tokens,
    then one token per sparse feature in feature-map order, then image tokens.

    Args:
        sparse_arch: KJT -> ``B x F x D``.
        dense_arch: ``B x Fd`` -> ``B x n x D``, or None when the data has no dense features.
        vision_arch: image rows -> ``B x N x D``, or None.
        interaction: ``B x T x D`` -> ``B x K x out_dim`` (``ranker.interactions.create``).
        heads: ``B x K x out_dim`` -> ``B x K``.
    """

    def __init__(
        self,
        sparse_arch: SparseArch,
        dense_arch: DenseArch | None,
        vision_arch: VisionArch | FrozenVisionArch | None,
        interaction: nn.Module,
        heads: TaskHeads,
    ) -> None:
        super().__init__()
        self.sparse_arch, self.dense_arch, self.vision_arch = sparse_arch, dense_arch, vision_arch
        self.interaction, self.heads = interaction, heads
        # Interaction and heads compute in this dtype (bf16 after `ranker compress --dense-dtype`); logits are fp32.
        self.dense_dtype = torch.float32
        self._compiled_score: Callable[[torch.Tensor], torch.Tensor] | None = None

    def tokens(self, batch: RankBatch) -> torch.Tensor:
        """``B x T x D`` interaction input."""
        return self.join_tokens(batch.dense, self.sparse_arch(batch.sparse), batch.image_index)

    def join_tokens(
        self, dense: torch.Tensor | None, sparse_tokens: torch.Tensor, image_index: torch.Tensor | None
    ) -> torch.Tensor:
        """``B x Fd`` dense features, ``B x F x D`` pooled sparse tokens and ``B`` image rows -> ``B x T x D``,
        in the fixed token order (dense, sparse, image); also used by the serving wrappers."""
        parts = []
        if self.dense_arch is not None:
            assert dense is not None, "the model has dense features"
            parts.append(self.dense_arch(dense))
        parts.append(sparse_tokens)
        if self.vision_arch is not None:
            assert image_index is not None, "the model has an image arch"
            parts.append(self.vision_arch(image_index))
        return torch.cat(parts, dim=1)  # (B, T, D)

    def forward(self, batch: RankBatch) -> torch.Tensor:
        """Returns ``B x K`` logits."""
        return self.score_tokens(self.tokens(batch))

    def compile_dense(self) -> None:
        """Scores through ``torch.compile`` in training mode (``ranker train``'s ``compile: true``).

        Only the interaction and heads are compiled: the sparse part is TorchRec's sharded lookup. Evaluation keeps
        the eager path, so validation batches (another size, no gradients) cost no further compilation; the
        parameters and their state-dict names are unchanged, so checkpoints and exports are those of an eager run.
        """
        self._compiled_score = torch.compile(self._score)

    def score_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``B x T x D`` tokens -> ``B x K`` fp32 logits (interaction and heads in ``dense_dtype``)."""
        if self.training and self._compiled_score is not None:
            return self._compiled_score(tokens)
        return self._score(tokens)

    def _score(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.dense_dtype != torch.float32:
            return self.heads(self.interaction(tokens.to(self.dense_dtype))).float()
        return self.heads(self.interaction(tokens))


class RankerTrain(nn.Module):
    """Adds the weighted binary cross-entropy (padding rows have weight 0), TorchRec-style outputs.

    Args:
        model: the :class:`Ranker`.

    Example::

        loss, (loss_d, logits, labels) = RankerTrain(model)(batch)
    """

    def __init__(self, model: Ranker) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: RankBatch) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        logits = self.model(batch)
        per_row = nn.functional.binary_cross_entropy_with_logits(logits, batch.labels, reduction="none").sum(dim=1)
        loss = (per_row * batch.weights).sum() / batch.weights.sum().clamp(min=1.0)
        return loss, (loss.detach(), logits.detach(), batch.labels.detach())
