"""Fit/transform round trips against naive recomputation from the raw rows."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.processor import FeatureMap, fit, hash_ids, processed_files, stable_hash, transform
from features.schema import FIRST_ID, MISSING_ID, OOV_ID, load_schema

pytestmark = pytest.mark.unit


def test_stable_hash_is_pinned() -> None:
    # Fixed expected values: a change of algorithm, key layout or byte order must break this test.
    assert stable_hash("user_42", 0) == 355006681296020221
    assert stable_hash("user_42", 7) == 7107835326923254360
    assert stable_hash("", 0) == 4331143152044847043
    ids = hash_ids(pl.Series(["user_42", "x"]), buckets=1000, seed=0)
    assert ids[0] == FIRST_ID + 355006681296020221 % 1000


def _fit_transform(schema_path: Path, out: Path) -> FeatureMap:
    schema = load_schema(schema_path)
    fmap = fit(schema, out)
    for split in ("train", "valid", "test"):
        transform(schema, out, split)
    return fmap


def test_round_trip_matches_naive(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    out = tmp_path / "feat"
    fmap = _fit_transform(schema_path, out)
    raw_train = pl.read_parquet(schema_path.parent / "train.parquet")
    raw_test = pl.read_parquet(schema_path.parent / "test.parquet")
    test = pl.read_parquet(processed_files(out, "test"))
    assert test.height == raw_test.height

    # Vocabulary: values with count >= min_count, ordered by count desc then value, from train only.
    counts = Counter(raw_train["user"].to_list())
    kept = sorted((v for v, c in counts.items() if c >= 2), key=lambda v: (-counts[v], v))
    expected_id = {v: FIRST_ID + i for i, v in enumerate(kept)}
    got = test["user"].to_list()
    for raw, mapped in zip(raw_test["user"].to_list(), got, strict=True):
        assert mapped == expected_id.get(raw, OOV_ID)
    assert next(s for s in fmap.sparse if s.name == "user").num_embeddings == FIRST_ID + len(kept)

    # Multi-hot: each element mapped, empty lists become [missing].
    tag_counts = Counter(t for row in raw_train["tags"].to_list() for t in row)
    tag_ids = {v: FIRST_ID + i for i, v in enumerate(sorted(tag_counts, key=lambda v: (-tag_counts[v], v)))}
    for raw, mapped in zip(raw_test["tags"].to_list(), test["tags"].to_list(), strict=True):
        assert mapped == ([tag_ids.get(t, OOV_ID) for t in raw] or [MISSING_ID])

    # Hash and identity encodings.
    assert test["city"].to_list() == [FIRST_ID + stable_hash(c, 0) % 50 for c in raw_test["city"].to_list()]
    assert test["slot"].to_list() == [FIRST_ID + s for s in raw_test["slot"].to_list()]

    # Dense: standardised with train statistics (after log1p where declared).
    price_train = np.log1p(raw_train["price"].to_numpy())
    want = (np.log1p(raw_test["price"].to_numpy()) - price_train.mean()) / price_train.std()
    np.testing.assert_allclose(test["price"].to_numpy(), want, rtol=1e-5, atol=1e-5)
    # Labels, groups, slices and cold flags.
    assert test["label_click"].to_list() == raw_test["click"].to_list()
    assert test["group_id"].to_list() == raw_test["user"].to_list()
    assert test["slice_country"].to_list() == raw_test["country"].to_list()
    train_items = set(raw_train["item"].to_list())
    assert test["is_cold"].to_list() == [i not in train_items for i in raw_test["item"].to_list()]


def test_missing_values_get_the_missing_id(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    raw = schema_path.parent / "test.parquet"
    df = pl.read_parquet(raw)
    df = df.with_columns(
        pl.when(pl.int_range(pl.len()) < 5).then(None).otherwise(pl.col("city")).alias("city"),
        pl.when(pl.int_range(pl.len()) < 3).then(None).otherwise(pl.col("tags")).alias("tags"),
    )
    df.write_parquet(raw)
    out = tmp_path / "feat"
    _fit_transform(schema_path, out)
    test = pl.read_parquet(processed_files(out, "test"))
    assert test["city"][:5].to_list() == [MISSING_ID] * 5
    assert test["tags"][:3].to_list() == [[MISSING_ID]] * 3


def test_transform_is_deterministic(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    a = _fit_transform(schema_path, tmp_path / "a")
    b = _fit_transform(schema_path, tmp_path / "b")
    assert a == b
    for split in ("train", "test"):
        assert pl.read_parquet(processed_files(tmp_path / "a", split)).equals(
            pl.read_parquet(processed_files(tmp_path / "b", split))
        )


def test_feature_map_round_trips_through_json(tiny_data, tmp_path: Path) -> None:
    fmap = _fit_transform(tiny_data(), tmp_path / "feat")
    loaded = FeatureMap.load(tmp_path / "feat")
    assert loaded == fmap
    assert math.isclose(loaded.positive_rate["click"], fmap.positive_rate["click"])


def test_row_groups_follow_the_requested_size(tiny_data, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    schema_path = tiny_data(n=1000)
    schema = load_schema(schema_path)
    out = tmp_path / "feat"
    fmap = fit(schema, out)
    transform(schema, out, "train", fmap, row_group_size=128)
    meta = pq.ParquetFile(processed_files(out, "train")[0]).metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert sum(sizes) == 1000 and max(sizes) <= 128 and len(sizes) >= 8


def test_windows_give_the_same_output(tiny_data, tmp_path: Path) -> None:
    schema = load_schema(tiny_data(n=1000))
    fmap = fit(schema, tmp_path / "a")
    fit(schema, tmp_path / "b")
    whole = transform(schema, tmp_path / "a", "train", fmap)
    windowed = transform(schema, tmp_path / "b", "train", fmap, window_rows=96)
    assert whole == windowed
    assert len(processed_files(tmp_path / "b", "train")) == 11  # ceil(1000 / 96) windows, in input order
    assert pl.read_parquet(processed_files(tmp_path / "a", "train")).equals(
        pl.read_parquet(processed_files(tmp_path / "b", "train"))
    )
