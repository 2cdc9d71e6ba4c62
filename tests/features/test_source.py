"""The schema's source: part on raw tables generated here: every option against a naive reference."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.schema import FIRST_ID, MISSING_ID
from pipelines.build_features import build_features
from tests.helpers import RAW_SCHEMA, write_raw_tables

pytestmark = pytest.mark.unit
SPLITS = ("train", "valid", "test")


def _build(schema: Path, out: Path) -> dict:
    return build_features(schema, out, progress=False)["results"]


def _split(out: Path, split: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The staged raw rows of a split and its processed rows (same order)."""
    return pl.read_parquet(out / "source" / f"{split}.parquet"), pl.read_parquet(out / split / "*.parquet")


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:
    raw = tmp_path_factory.mktemp("shop")
    schema = write_raw_tables(raw / "raw", n=2000)
    return raw / "raw", raw / "feat", _build(schema, raw / "feat")


def test_rows_add_up_and_split_is_temporal(shop: tuple[Path, Path, dict]) -> None:
    raw, out, results = shop
    events = pl.read_parquet(raw / "events" / "*.parquet")
    source = results["source"]
    assert source["rows_in"] == events.height == source["rows_out"] + source["rows_quarantined"]
    counts = {s: source["split"]["counts"][s]["rows"] for s in SPLITS}
    assert counts == {"train": 1600, "valid": 200, "test": 200}
    assert {s: results["splits"][s]["rows_out"] for s in SPLITS} == counts
    assert source["split"]["temporal_leak"] is False
    parts = {s: _split(out, s)[0] for s in SPLITS}
    assert parts["train"]["ts"].max() <= parts["valid"]["ts"].min() <= parts["valid"]["ts"].max()
    assert parts["valid"]["ts"].max() <= parts["test"]["ts"].min()
    assert source["joins"][0] | {"table": ""} == {
        "table": "", "key": "user_id", "how": "left", "rows_matched": 2000, "rows_unmatched": 0
    }  # fmt: skip


def test_labels_joins_and_derived_columns_match_a_naive_reference(shop: tuple[Path, Path, dict]) -> None:
    raw, out, _ = shop
    users = {r["user_id"]: r for r in pl.read_parquet(raw / "users.parquet").to_dicts()}
    items = {r["item_id"]: r for r in pl.read_parquet(raw / "items.parquet").to_dicts()}
    for split in SPLITS:
        staged, processed = _split(out, split)
        for i, row in enumerate(staged.head(60).to_dicts()):
            got = processed.row(i, named=True)
            when = datetime.strptime(row["ts"], "%Y-%m-%d %H:%M:%S")
            assert got["label_like"] == int(row["rating"] >= 4)
            assert got["label_engaged"] == int(row["event"] in ("click", "buy"))
            assert row["age"] == users[row["user_id"]]["age"] and row["category"] == items[row["item_id"]]["category"]
            assert (row["hour"], row["weekday"]) == (when.hour, when.weekday())
            assert got["hour"] == FIRST_ID + when.hour and got["weekday"] == FIRST_ID + when.weekday()
            assert row["item_age"] == max(0, when.year - items[row["item_id"]]["release_year"])


def test_buckets_fill_null_and_cold_flags(shop: tuple[Path, Path, dict]) -> None:
    _, out, _ = shop
    train_raw, train = _split(out, "train")
    prices = train_raw["price"].drop_nulls().to_numpy()
    edges = np.quantile(prices, [0.25, 0.5, 0.75])  # numpy's default is linear interpolation, as the fit's
    test_raw, test = _split(out, "test")
    for raw_rows, rows in ((train_raw, train), (test_raw, test)):
        price = raw_rows["price"].to_numpy()
        want = np.where(np.isnan(price), MISSING_ID, FIRST_ID + np.searchsorted(edges, price, side="right"))
        assert (rows["price_bucket"].to_numpy() == want).all()
        position = FIRST_ID + np.searchsorted([1, 3, 10], raw_rows["position"].to_numpy(), side="right")
        assert (rows["position"].to_numpy() == position).all()
    # A user without a country gets the vocabulary id of the declared fill value, not the missing id.
    assert train_raw["country"].null_count() > 0
    assert (train.filter(train_raw["country"].is_null())["country"] > MISSING_ID).all()
    for entity in ("user_id", "item_id", "category"):  # the group, the item and a declared entity
        seen = set(train_raw[entity].to_list())
        assert test[f"is_cold_{entity}"].to_list() == [v not in seen for v in test_raw[entity].to_list()]


def test_cutoff_split(tmp_path: Path) -> None:
    split = {"kind": "temporal", "cutoffs": {"valid": "2024-03-01", "test": "2024-03-16 12:00"}}
    schema = write_raw_tables(tmp_path / "raw", source={**RAW_SCHEMA["source"], "split": split})
    results = _build(schema, tmp_path / "feat")
    stamps = {s: _split(tmp_path / "feat", s)[0]["ts"] for s in SPLITS}
    assert stamps["train"].max() < "2024-03-01" <= stamps["valid"].min()
    assert stamps["valid"].max() < "2024-03-16 12:00:00" <= stamps["test"].min()
    assert sum(results["source"]["split"]["counts"][s]["rows"] for s in SPLITS) == 2000


@pytest.mark.parametrize("by", [None, "user_id"])
def test_random_split_is_seeded(tmp_path: Path, by: str | None) -> None:
    def users_per_split(seed: int, name: str) -> dict[str, set[int]]:
        split = {"kind": "random", "fractions": [0.6, 0.2, 0.2], "seed": seed, "by": by}
        source = {**RAW_SCHEMA["source"], "split": split}
        schema = write_raw_tables(tmp_path / name, source=source)
        results = _build(schema, tmp_path / f"{name}-feat")
        if by is None:
            assert [results["source"]["split"]["counts"][s]["rows"] for s in SPLITS] == [1200, 400, 400]
        return {s: set(_split(tmp_path / f"{name}-feat", s)[0]["user_id"].to_list()) for s in SPLITS}

    first, again, other = users_per_split(1, "a"), users_per_split(1, "b"), users_per_split(2, "c")
    assert first == again and first != other
    if by:  # a user's rows stay in one split; 60 users cut 36 / 12 / 12
        assert [len(first[s]) for s in SPLITS] == [36, 12, 12]
        assert not (first["train"] & first["valid"] or first["train"] & first["test"] or first["valid"] & first["test"])


def test_given_files_split(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    write_raw_tables(raw)
    events = pl.read_parquet(raw / "events" / "*.parquet")
    for split, part in zip(SPLITS, (events[:1500], events[1500:1750], events[1750:]), strict=True):
        part.write_parquet(raw / f"{split}.parquet")
    files = {s: f"{s}.parquet" for s in SPLITS}
    source = {**RAW_SCHEMA["source"], "interactions": "", "split": {"kind": "files", "files": files}}
    schema = write_raw_tables(raw, source=source)
    results = _build(schema, tmp_path / "feat")
    assert [results["source"]["split"]["counts"][s]["rows"] for s in SPLITS] == [1500, 250, 250]
    assert _split(tmp_path / "feat", "valid")[0]["ts"].equals(events[1500:1750]["ts"])


def test_join_on_a_key_that_is_no_feature(tmp_path: Path) -> None:
    """item_id only links the items table: it is read for the join and not staged."""
    sparse = [f for f in RAW_SCHEMA["sparse"] if f["name"] != "item"]
    schema = write_raw_tables(tmp_path / "raw", item=None, sparse=sparse)
    _build(schema, tmp_path / "feat")
    events = pl.read_parquet(tmp_path / "raw" / "events" / "*.parquet")
    category = dict(pl.read_parquet(tmp_path / "raw" / "items.parquet").select("item_id", "category").iter_rows())
    staged = pl.concat([_split(tmp_path / "feat", s)[0] for s in SPLITS])
    assert "item_id" not in staged.columns
    assert sorted(staged["category"].to_list()) == sorted(category[i] for i in events["item_id"].to_list())
