"""MovieLens-100k: the real data read in place, the label rule and the temporal split."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from features.datasets.movielens import source_dir
from pipelines.build_features import build_features
from pipelines.data import build_dataset

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ml") / "raw"
    build_dataset("movielens-100k", out)
    return out


def test_split_is_temporal_and_complete(movielens: Path) -> None:
    parts = {s: pl.read_parquet(movielens / f"{s}.parquet") for s in ("train", "valid", "test")}
    assert [parts[s].height for s in parts] == [80_000, 10_000, 10_000]
    assert parts["train"]["timestamp"].max() <= parts["valid"]["timestamp"].min()
    assert parts["valid"]["timestamp"].max() <= parts["test"]["timestamp"].min()
    ratings = pl.read_parquet(source_dir() / "MovieLens100k_data.parquet.brotli")
    joined = pl.concat(parts.values())
    assert (
        joined.select("user_id", "movie_id", "timestamp")
        .sort(pl.all())
        .equals(ratings.select("user_id", "movie_id", "timestamp").sort(pl.all()))
    )
    # Label rule, checked against the source ratings.
    both = joined.join(ratings, on=["user_id", "movie_id", "timestamp"], suffix="_src")
    assert (both["label"] == (both["rating_src"] >= 4).cast(pl.Int8)).all()


def test_features_build_and_resume(movielens: Path, tmp_path: Path) -> None:
    first = build_features(movielens / "schema.yaml", tmp_path / "feat", progress=False)
    assert first["results"]["splits"]["test"]["rows_out"] == 10_000
    assert first["results"]["rows_quarantined"] == 0
    again = build_features(movielens / "schema.yaml", tmp_path / "feat", progress=False)
    assert again["finished_at"] == first["finished_at"], "an unchanged step must be skipped"
