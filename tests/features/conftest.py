"""A small synthetic raw data set on disk, in the shape users bring: parquet + schema YAML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

SCHEMA = {
    "name": "tiny",
    "files": {"train": "train.parquet", "valid": "valid.parquet", "test": "test.parquet"},
    "labels": [{"name": "click", "column": "click"}],
    "group": "user",
    "item": "item",
    "sparse": [
        {"name": "user", "column": "user", "encoding": "vocab", "min_count": 2},
        {"name": "item", "column": "item", "encoding": "vocab"},
        {"name": "tags", "column": "tags", "kind": "multi", "encoding": "vocab"},
        {"name": "city", "column": "city", "encoding": "hash", "buckets": 50},
        {"name": "slot", "column": "slot", "encoding": "identity", "num_ids": 5},
    ],
    "dense": [
        {"name": "price", "column": "price", "transform": "log1p"},
        {"name": "age", "column": "age"},
    ],
    "slices": ["country"],
}


def make_frame(n: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    tags_pool = ["a", "b", "c", "d", "e"]
    return pl.DataFrame(
        {
            "user": rng.integers(0, 40, n),
            "item": rng.integers(100, 130, n),
            "tags": [list(rng.choice(tags_pool, size=rng.integers(0, 4), replace=False)) for _ in range(n)],
            "city": [f"city{c}" for c in rng.integers(0, 20, n)],
            "slot": rng.integers(0, 5, n),
            "price": rng.exponential(10.0, n),
            "age": rng.normal(40, 10, n),
            "country": rng.choice(["DE", "FR"], n),
            "click": rng.integers(0, 2, n).astype(np.int8),
        },
        schema_overrides={"tags": pl.List(pl.String)},
    )


@pytest.fixture
def tiny_data(tmp_path: Path) -> Callable[..., Path]:
    """Writes train/valid/test parquet and schema.yaml; returns the schema path. Keyword args edit the schema."""

    def build(n: int = 400, **schema_overrides: object) -> Path:
        raw = tmp_path / "raw"
        raw.mkdir(exist_ok=True)
        for i, split in enumerate(("train", "valid", "test")):
            make_frame(n if split == "train" else n // 4, seed=i).write_parquet(raw / f"{split}.parquet")
        schema_path = raw / "schema.yaml"
        schema_path.write_text(yaml.safe_dump({**SCHEMA, **schema_overrides}))
        return schema_path

    return build
