"""Per-rank batches from processed parquet, built from Arrow buffers with background prefetch.

Sharding: the split's row groups are laid end to end (in a seeded, per-epoch order when shuffling) and rank ``r``
of ``W`` takes the contiguous row range ``[r * P, (r + 1) * P)``, so shares are disjoint and every rank reads only
the row groups its range touches. Every rank gets the same number of rows ``P`` and therefore **the same number
of batches** (DistributedModelParallel's all-to-alls hang otherwise):

- ``mode="train"``: ``P = T // W``; the ``T mod W`` (< W) last rows of the epoch's order are skipped, a different
  set each shuffled epoch, and counted in :attr:`RankLoader.rows_skipped`.
- ``mode="eval"``: ``P = ceil(T / W)``; the last rank is padded with weight-0 copies of its last row, so no row is
  lost and padding never counts in metrics.

Batches are cut from Arrow tables with vectorised numpy (no Python loop over rows); a background thread keeps
``prefetch`` batches ready.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.batch import RankBatch
from features.processor import FeatureMap
from features.schema import OOV_ID


@dataclass(frozen=True)
class _Unit:
    file: int
    row_group: int
    rows: int


def _column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


class BatchBuilder:
    """Turns an Arrow table of processed rows into a :class:`RankBatch`.

    Args:
        fmap: the fitted feature map (which columns are sparse single/multi, dense, labels).
        available: the processed columns present (labels, group, item and image columns are optional: scoring
            raw rows has no labels, and batches then carry zeros there and -1 for absent ids).
    """

    def __init__(self, fmap: FeatureMap, available: Sequence[str]) -> None:
        self.sparse = [(s.name, s.kind == "multi") for s in fmap.sparse]
        self.dense = fmap.dense_names
        self.labels = fmap.label_names
        self.has_labels = all(name in available for name in self.labels)
        self.has_group = "group_id" in available
        self.has_item = "item_id" in available
        self.has_image = "image_index" in available
        self.columns = [n for n, _ in self.sparse] + self.dense + (self.labels if self.has_labels else [])
        self.columns += [c for c in ("group_id", "item_id", "image_index", "is_cold") if c in available]

    def __call__(self, table: pa.Table, weights: np.ndarray | None = None) -> RankBatch:
        n = table.num_rows
        values, lengths = [], []
        for name, multi in self.sparse:
            col = table.column(name).combine_chunks()
            if multi:
                values.append(col.flatten().to_numpy())
                lengths.append(col.value_lengths().to_numpy().astype(np.int32))
            else:
                values.append(col.to_numpy())
                lengths.append(np.ones(n, dtype=np.int32))
        per_key = [len(v) for v in values]
        # Lengths per key are known here, so the KJT needs no torch reduction to find them (from_lengths_sync's
        # sum costs milliseconds of thread start-up per batch on a busy CPU).
        kjt = KeyedJaggedTensor(
            keys=[name for name, _ in self.sparse],
            values=torch.from_numpy(np.concatenate(values).astype(np.int64, copy=False)),
            lengths=torch.from_numpy(np.concatenate(lengths)),
            stride=n,
            length_per_key=per_key,
            offset_per_key=[0, *np.cumsum(per_key).tolist()],
        )
        dense = np.empty((n, len(self.dense)), dtype=np.float32)  # (B, Fd)
        for j, name in enumerate(self.dense):
            dense[:, j] = _column(table, name)
        labels = np.zeros((n, len(self.labels)), dtype=np.float32)  # (B, K)
        for j, name in enumerate(self.labels if self.has_labels else ()):
            labels[:, j] = _column(table, name)
        minus_one = np.full(n, -1, dtype=np.int64)
        return RankBatch(
            dense=torch.from_numpy(dense),
            sparse=kjt,
            labels=torch.from_numpy(labels),
            weights=torch.from_numpy(np.ones(n, np.float32) if weights is None else weights),
            group_ids=torch.from_numpy(
                _column(table, "group_id").astype(np.int64) if self.has_group else minus_one.copy()
            ),
            item_ids=torch.from_numpy(_column(table, "item_id").astype(np.int64) if self.has_item else minus_one),
            image_index=torch.from_numpy(
                _column(table, "image_index").astype(np.int64) if self.has_image else minus_one.copy()
            ),
            is_cold=torch.from_numpy(
                _column(table, "is_cold").astype(bool) if "is_cold" in table.column_names else np.zeros(n, bool)
            ),
        )


def check_id_dropout(fmap: FeatureMap, id_dropout: Mapping[str, float]) -> dict[str, float]:
    """``id_dropout`` checked against the feature map: single-valued sparse features, probabilities in [0, 1)."""
    kinds = {s.name: s.kind for s in fmap.sparse}
    for name, p in id_dropout.items():
        if name not in kinds:
            raise ValueError(f"id_dropout: {name!r} is not a sparse feature; the features are {sorted(kinds)}")
        if kinds[name] != "single":
            raise ValueError(f"id_dropout: {name!r} is multi-valued; only single-valued features can drop their id")
        if not 0.0 <= p < 1.0:
            raise ValueError(f"id_dropout: the probability of {name!r} must be in [0, 1), got {p}")
    return dict(id_dropout)


def drop_ids(batch: RankBatch, id_dropout: Mapping[str, float], rng: np.random.Generator) -> RankBatch:
    """Replaces each row's id of every feature in ``id_dropout`` by the out-of-vocabulary id with its probability
    (in place: the batch's id tensor is its own). Features must be single-valued (one id per row)."""
    values = batch.sparse.values()
    offsets = dict(zip(batch.sparse.keys(), batch.sparse.offset_per_key(), strict=False))
    for name, p in id_dropout.items():
        start = offsets[name]
        drop = torch.from_numpy(rng.random(batch.batch_size) < p)  # (B,)
        values[start : start + batch.batch_size][drop] = OOV_ID
    return batch


class RankLoader:
    """Iterates one rank's share of a processed split as :class:`RankBatch` es.

    Args:
        files: processed parquet files of one split.
        fmap: the fitted feature map.
        batch_size: rows per batch (the last batch of an epoch may be smaller, equally on every rank).
        rank: this process's rank.
        world_size: number of ranks.
        shuffle: shuffle row-group order (per epoch, same on all ranks) and rows within a shuffle buffer.
        seed: base seed; epoch ``e`` uses ``(seed, e)`` for row-group order and ``(seed, e, rank)`` within a rank.
        mode: ``"train"`` (skip < W rows) or ``"eval"`` (pad with weight-0 rows); see the module docstring.
        prefetch: batches prepared ahead in a background thread (0: no thread).
        id_dropout: single-valued sparse feature -> probability that a row's id is replaced by the
            out-of-vocabulary id (``mode="train"`` only; DropoutNet-style, so that the model learns to score rows
            whose id has no embedding of its own, e.g. cold items, from their other tokens such as the image).
            Drawn from ``(seed, epoch, rank)`` apart from the shuffling: the same seed drops the same ids.
    """

    def __init__(
        self,
        files: Sequence[Path],
        fmap: FeatureMap,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        mode: Literal["train", "eval"] = "train",
        prefetch: int = 4,
        id_dropout: Mapping[str, float] | None = None,
    ) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside [0, {world_size})")
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.files = [pq.ParquetFile(f) for f in files]
        if not self.files:
            raise ValueError("no processed files given")
        available = self.files[0].schema_arrow.names
        self.builder = BatchBuilder(fmap, available)
        self.id_dropout = check_id_dropout(fmap, id_dropout or {}) if mode == "train" else {}
        self.units = [
            _Unit(i, g, f.metadata.row_group(g).num_rows)
            for i, f in enumerate(self.files)
            for g in range(f.metadata.num_row_groups)
        ]
        self.total_rows = sum(u.rows for u in self.units)
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.seed, self.mode, self.prefetch = shuffle, seed, mode, prefetch
        self.epoch = 0
        if mode == "train":
            self.rows_per_rank = self.total_rows // world_size
        else:
            self.rows_per_rank = -(-self.total_rows // world_size)
        if self.rows_per_rank == 0:
            raise ValueError(f"{self.total_rows} rows cannot give every one of {world_size} ranks a row")
        self.rows_skipped = self.total_rows - self.rows_per_rank * world_size if mode == "train" else 0

    def __len__(self) -> int:
        return -(-self.rows_per_rank // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _unit_order(self) -> list[_Unit]:
        if not self.shuffle:
            return list(self.units)
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units))
        return [self.units[i] for i in perm]

    def _tables(self) -> Iterator[pa.Table]:
        """This rank's rows as a stream of Arrow tables (slices of row groups)."""
        start = self.rank * self.rows_per_rank
        stop = min(start + self.rows_per_rank, self.total_rows)
        offset = 0
        for unit in self._unit_order():
            lo, hi = max(start, offset), min(stop, offset + unit.rows)
            if lo < hi:
                table = self.files[unit.file].read_row_group(unit.row_group, columns=self.builder.columns)
                yield table.slice(lo - offset, hi - lo)
            offset += unit.rows
            if offset >= stop:
                break

    def _batches(self) -> Iterator[RankBatch]:
        if not self.id_dropout:
            yield from self._built_batches()
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 1])  # not the shuffle's stream
        for batch in self._built_batches():
            yield drop_ids(batch, self.id_dropout, rng)

    def _built_batches(self) -> Iterator[RankBatch]:
        rng = np.random.default_rng([self.seed, self.epoch, self.rank])
        pending: pa.Table | None = None
        emitted = 0
        for table in self._tables():
            pending = table if pending is None else pa.concat_tables([pending, table])
            if self.shuffle:
                pending = pending.take(pa.array(rng.permutation(pending.num_rows)))
            while pending.num_rows >= self.batch_size:
                yield self.builder(pending.slice(0, self.batch_size))
                emitted += self.batch_size
                pending = pending.slice(self.batch_size)
        real = pending.num_rows if pending is not None else 0
        pad = self.rows_per_rank - emitted - real
        if real == 0 and pad == 0:
            return
        if pending is None or real == 0:
            # A rank whose range is empty still needs rows to copy for its weight-0 padding.
            pending = self.files[0].read_row_group(0, columns=self.builder.columns).slice(0, 0)
            template = self.files[0].read_row_group(0, columns=self.builder.columns).slice(0, 1)
        else:
            template = pending.slice(real - 1, 1)
        weights = np.ones(real + pad, dtype=np.float32)
        if pad:
            # Weight-0 copies of a row keep batch counts equal across ranks without touching metrics.
            pending = pa.concat_tables([pending, template.take(pa.array(np.zeros(pad, dtype=np.int64)))])
            weights[real:] = 0.0
        for lo in range(0, pending.num_rows, self.batch_size):
            part = pending.slice(lo, self.batch_size)
            yield self.builder(part, weights[lo : lo + part.num_rows])

    def __iter__(self) -> Iterator[RankBatch]:
        if self.prefetch <= 0:
            yield from self._batches()
            return
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for batch in self._batches():
                    if stop.is_set():
                        return
                    q.put(batch)
                q.put(done)
            except BaseException as err:  # handed to the consumer, which re-raises it
                q.put(err)

        thread = threading.Thread(target=produce, daemon=True, name="rank-loader-prefetch")
        thread.start()
        try:
            while True:
                item = q.get()
                if item is done:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    q.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)
