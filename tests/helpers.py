"""Test data builders shared across test packages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import yaml

TINY_SCHEMA: dict[str, Any] = {
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
    """Raw rows whose click depends on user, item and price, so that a model has something to learn."""
    rng = np.random.default_rng(seed)
    tags_pool = ["a", "b", "c", "d", "e"]
    user = rng.integers(0, 40, n)
    item = rng.integers(100, 130, n)
    price = rng.exponential(10.0, n)
    logit = 0.8 * np.sin(user) + 0.8 * np.cos(item) - 0.05 * price
    return pl.DataFrame(
        {
            "user": user,
            "item": item,
            "tags": [list(rng.choice(tags_pool, size=rng.integers(0, 4), replace=False)) for _ in range(n)],
            "city": [f"city{c}" for c in rng.integers(0, 20, n)],
            "slot": rng.integers(0, 5, n),
            "price": price,
            "age": rng.normal(40, 10, n),
            "country": rng.choice(["DE", "FR"], n),
            "click": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8),
        },
        schema_overrides={"tags": pl.List(pl.String)},
    )


def write_tiny_dataset(folder: Path, n: int = 400, **schema_overrides: Any) -> Path:
    """train/valid/test parquet (n, n/4, n/4 rows) and schema.yaml in ``folder``; returns the schema path."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, split in enumerate(("train", "valid", "test")):
        make_frame(n if split == "train" else n // 4, seed=i).write_parquet(folder / f"{split}.parquet")
    schema_path = folder / "schema.yaml"
    schema_path.write_text(yaml.safe_dump({**TINY_SCHEMA, **schema_overrides}))
    return schema_path
