"""Scoring raw rows with an export: the same feature transform as training, no labels, no feature build.

:class:`Predictor` is what the MLflow pyfunc model, ``ranker score`` and a user's own Python share. It reads an
export folder (``ranker.export``) and turns a frame of **raw** columns, the ones training read from the user's
parquet (``FeatureMap.input_columns``), into probabilities::

    predictor = Predictor("runs/demo-movielens/export")
    scores = predictor.predict(pl.read_parquet("new_rows.parquet"))   # (B, K) float32, K tasks

Unknown categories map to the out-of-vocabulary id, nulls to the missing id (or the column's declared fill value),
exactly as in ``features.processor.transform``; a missing column or a type that cannot stand for the training type is
a :class:`features.validate.DataError` naming the column. Rows are scored in batches of ``batch_size`` so memory is
bounded by the batch, not the frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from features.images import ITEMS
from features.loader import BatchBuilder
from features.processor import FeatureMap, conform_inputs, model_inputs
from ranker.export import load_exported


class Predictor:
    """An export loaded for scoring raw rows.

    Args:
        export_dir: an export folder (``RUN/export`` or the output of ``ranker compress``).
        batch_size: rows per forward pass.
    """

    def __init__(self, export_dir: str | Path, batch_size: int = 8192) -> None:
        self.export_dir = Path(export_dir)
        self.fmap = FeatureMap.load(self.export_dir)
        self.model = load_exported(self.export_dir)
        self.items = pl.read_parquet(self.export_dir / ITEMS) if self.fmap.num_images else None
        self.batch_size = batch_size

    @property
    def tasks(self) -> list[str]:
        return list(self.fmap.labels)

    @property
    def input_columns(self) -> list[str]:
        return self.fmap.input_columns

    def to_frame(self, rows: Any) -> pl.DataFrame:
        """A polars frame of ``rows`` (polars, pandas or anything ``pl.DataFrame`` accepts)."""
        if isinstance(rows, pl.DataFrame):
            return rows
        if type(rows).__module__.startswith("pandas"):
            return pl.from_pandas(rows)
        return pl.DataFrame(rows)

    def predict(self, rows: Any, where: str = "input") -> np.ndarray:
        """Probabilities ``(B, K)`` float32 of the ``B`` rows of ``rows`` for the export's ``K`` tasks, in row order.

        ``where`` names the input in error messages (a file, "request body").
        """
        frame = self.to_frame(rows)
        conformed = conform_inputs(self.fmap, frame, where)
        out = np.empty((frame.height, len(self.fmap.labels)), dtype=np.float32)  # (B, K)
        with torch.no_grad():
            for lo in range(0, frame.height, self.batch_size):
                processed = model_inputs(
                    self.fmap, self.export_dir, conformed.slice(lo, self.batch_size), self.items
                ).to_arrow()
                batch = BatchBuilder(self.fmap, processed.column_names)(processed)
                out[lo : lo + batch.batch_size] = torch.sigmoid(self.model(batch)).float().numpy()
        return out
