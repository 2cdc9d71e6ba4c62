"""The batch type that flows from the loader into the model.

Shapes: B batch rows, Fd dense features, K tasks (labels). Sparse features travel as a TorchRec
``KeyedJaggedTensor`` so that the model can hand them straight to an ``EmbeddingBagCollection`` (and TorchRec's
train pipelines can overlap the copy and the input all-to-all)::

    #          i = 0      i = 1     i = 2   <-- batch rows
    # "user"   [17]       [4]       [0]           single-id feature (0 = missing)
    # "genres" [3, 8]     [0]       [5, 9, 2]     multi-id feature
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class RankBatch(Pipelineable):
    """One batch of processed rows.

    Args:
        dense: ``B x Fd`` float32 standardised dense features.
        sparse: keyed jagged ids, one key per sparse feature.
        labels: ``B x K`` float32 labels in {0, 1}.
        weights: ``B`` float32; 1 for real rows, 0 for padding rows (evaluation pads ranks to equal batch counts).
        group_ids: ``B`` int64 group (user or request) ids.
        item_ids: ``B`` int64 item ids (-1 where the data set has no item column).
        image_index: ``B`` int64 row into the image array (-1: no image).
        is_cold: ``B`` bool, item unseen in training.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    weights: torch.Tensor
    group_ids: torch.Tensor
    item_ids: torch.Tensor
    image_index: torch.Tensor
    is_cold: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> RankBatch:
        return RankBatch(
            dense=self.dense.to(device, non_blocking=non_blocking),
            sparse=self.sparse.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            weights=self.weights.to(device, non_blocking=non_blocking),
            group_ids=self.group_ids.to(device, non_blocking=non_blocking),
            item_ids=self.item_ids.to(device, non_blocking=non_blocking),
            image_index=self.image_index.to(device, non_blocking=non_blocking),
            is_cold=self.is_cold.to(device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        for t in (self.dense, self.labels, self.weights, self.group_ids, self.item_ids, self.image_index, self.is_cold):
            t.record_stream(stream)  # type: ignore[arg-type]
        self.sparse.record_stream(stream)  # type: ignore[arg-type]

    def pin_memory(self) -> RankBatch:
        return RankBatch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            weights=self.weights.pin_memory(),
            group_ids=self.group_ids.pin_memory(),
            item_ids=self.item_ids.pin_memory(),
            image_index=self.image_index.pin_memory(),
            is_cold=self.is_cold.pin_memory(),
        )
