"""Fit/transform round trips against naive recomputation from the raw rows."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from fractions import Fraction
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from features.processor import (
    FeatureMap,
    _exact_moments,
    _quantile_edges,
    fit,
    hash_ids,
    processed_files,
    stable_hash,
    transform,
)
from features.schema import FIRST_ID, MISSING_ID, OOV_ID, SparseFeature, load_schema
from tests.helpers import TINY_SCHEMA, make_frame

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


def _exact_mean(values: list[float]) -> float:
    return float(sum(map(Fraction, values), Fraction(0)) / len(values))


def test_fit_matches_a_naive_computation(tmp_path: Path) -> None:
    """Every fitted number of a two-file training split (one file with bad rows, set aside) against a recomputation
    from the good rows in plain Python: vocabularies (min_count cut, order), quantile and declared bucket edges,
    dense statistics, positive rates, row count and the cold entities' training values."""
    raw = tmp_path / "raw"
    (raw / "train").mkdir(parents=True)
    frame = make_frame(700, seed=3).with_columns(
        pl.when(pl.int_range(pl.len()) % 9 == 0).then(None).otherwise(pl.col("age")).alias("age")
    )
    bad = {400, 555, 690}  # rows of the second file: NaN price (bad input, quarantined)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in(list(bad))).then(float("nan")).otherwise(pl.col("price")).alias("price")
    )
    frame[:400].write_parquet(raw / "train" / "a.parquet")
    frame[400:].write_parquet(raw / "train" / "b.parquet", row_group_size=100)
    for split in ("valid", "test"):
        make_frame(50, seed=9).write_parquet(raw / f"{split}.parquet")
    spec = {
        **TINY_SCHEMA,
        "files": {"train": "train/*.parquet", "valid": "valid.parquet", "test": "test.parquet"},
        "labels": [{"name": "click", "column": "click"}, {"name": "late", "column": "slot", "threshold": 3}],
        "sparse": [
            *TINY_SCHEMA["sparse"],
            {"name": "price_bucket", "column": "price", "encoding": "bucket", "quantiles": 7},
            {"name": "age_bucket", "column": "age", "encoding": "bucket", "edges": [30, 40.5, 50]},
        ],
        "dense": [
            {"name": "price", "column": "price", "transform": "log1p"},
            {"name": "age", "column": "age", "fill_null": 35.5},
        ],
        "entities": ["city"],
        "bad_rows": "quarantine",
    }
    (raw / "schema.yaml").write_text(yaml.safe_dump(spec))
    fmap = fit(load_schema(raw / "schema.yaml"), tmp_path / "feat")

    good = [row for i, row in enumerate(frame.iter_rows(named=True)) if i not in bad]
    assert fmap.train_rows == len(good) == 697
    states = {s.name: s for s in fmap.sparse}
    for name, values, min_count in [
        ("user", [r["user"] for r in good], 2),
        ("item", [r["item"] for r in good], 1),
        ("tags", [t for r in good for t in r["tags"]], 1),
    ]:
        counts = Counter(values)
        kept = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
        vocab = pl.read_parquet(tmp_path / "feat" / f"vocab/{name}.parquet")
        assert vocab["value"].to_list() == kept
        assert vocab["count"].to_list() == [counts[v] for v in kept]
        assert vocab["id"].to_list() == list(range(FIRST_ID, FIRST_ID + len(kept)))
        assert states[name].num_embeddings == FIRST_ID + len(kept)

    # Quantile edges: bit for bit polars' in-memory linear quantile of the good values; numpy agrees closely.
    prices = [r["price"] for r in good]
    reference = sorted({pl.Series(prices).quantile(i / 7, interpolation="linear") for i in range(1, 7)})
    assert list(states["price_bucket"].edges) == reference
    np.testing.assert_allclose(states["price_bucket"].edges, np.quantile(prices, [i / 7 for i in range(1, 7)]))
    assert states["age_bucket"].edges == (30, 40.5, 50)  # mixed int/float edges (once a polars type error)

    dense = {d.name: d for d in fmap.dense}
    log_prices = [math.log1p(p) for p in prices]
    ages = [35.5 if r["age"] is None else r["age"] for r in good]
    for name, values in [("price", log_prices), ("age", ages)]:
        assert dense[name].mean == _exact_mean(values)  # the exact mean, correctly rounded
        exact_std = statistics.pstdev(values)  # exact sums, a correctly rounded square root
        assert abs(dense[name].std - exact_std) <= math.ulp(exact_std)
    assert fmap.positive_rate == {
        "click": sum(r["click"] for r in good) / len(good),
        "late": sum(r["slot"] >= 3 for r in good) / len(good),
    }
    for entity in ("user", "item", "city"):
        seen = pl.read_parquet(tmp_path / "feat" / "train_values" / f"{entity}.parquet")[entity].to_list()
        assert seen == sorted({r[entity] for r in good})


def _edges_today(values: list[float | None], quantiles: int) -> list[float]:
    """The quantile edges as fit computed them before it streamed: polars' in-memory linear quantiles."""
    col = pl.col("x")
    qs = [col.quantile(i / quantiles, interpolation="linear") for i in range(1, quantiles)]
    frame = pl.DataFrame({"x": values}, schema={"x": pl.Float64})
    return frame.select(pl.concat_list(qs).list.unique().list.sort())[0, 0].to_list()


_finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
# Values a few units in the last place apart share their first 48 bits: every selection pass is needed.
_close = st.lists(st.integers(0, 40), min_size=1, max_size=200).map(lambda ks: [1.0 + k * math.ulp(1.0) for k in ks])


@settings(max_examples=60, deadline=None)
@given(
    values=st.one_of(st.lists(st.one_of(_finite, st.none()), min_size=1, max_size=300), _close),
    quantiles=st.integers(2, 12),
)
def test_quantile_edges_equal_polars_in_memory_quantiles(values: list[float | None], quantiles: int) -> None:
    present = [v for v in values if v is not None]
    assume(present)
    feature = SparseFeature("b", "x", encoding="bucket", quantiles=quantiles)
    frame = pl.LazyFrame({"x": values}, schema={"x": pl.Float64})
    assert list(_quantile_edges(feature, frame, len(present), len(values) - len(present))) == _edges_today(
        values, quantiles
    )


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.floats(min_value=-1e150, max_value=1e150, width=64), min_size=1, max_size=200))
def test_exact_moments_are_exact(values: list[float]) -> None:
    n, total, squares = _exact_moments(pl.LazyFrame({"v": values}, schema={"v": pl.Float64}))
    assert n == len(values)
    assert total == sum(map(Fraction, values), Fraction(0))
    assert squares == sum((Fraction(v) ** 2 for v in values), Fraction(0))


def test_quantile_edges_of_an_empty_column_are_an_error() -> None:
    feature = SparseFeature("price_bucket", "price", encoding="bucket", quantiles=4)
    with pytest.raises(ValueError, match="'price_bucket': column 'price' has no values in the training split"):
        _quantile_edges(feature, pl.LazyFrame({"price": [None]}, schema={"price": pl.Float64}), 0, 1)
