"""MovieLens-100k: the real data read in place, built through the source: path (label rule, temporal split)."""

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


@pytest.fixture(scope="module")
def features(movielens: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ml") / "feat"
    return out, build_features(movielens / "schema.yaml", out, progress=False)


def test_split_is_temporal_and_complete(features: tuple[Path, dict]) -> None:
    out, manifest = features
    parts = {s: pl.read_parquet(out / "source" / f"{s}.parquet") for s in ("train", "valid", "test")}
    assert [parts[s].height for s in parts] == [80_000, 10_000, 10_000]
    counts = manifest["results"]["source"]["split"]["counts"]
    # The split made in Python before the source: path existed had these rates (80k/10k/10k rows, same order).
    assert [round(counts[s]["positive_rate_like"], 3) for s in parts] == [0.551, 0.567, 0.563]
    assert manifest["results"]["source"]["split"]["temporal_leak"] is False
    assert parts["train"]["timestamp"].max() <= parts["valid"]["timestamp"].min()
    assert parts["valid"]["timestamp"].max() <= parts["test"]["timestamp"].min()
    # Within the boundary second, rows follow (timestamp, user, movie).
    joined = pl.concat(parts.values())
    assert joined.select("timestamp", "user_id", "movie_id").equals(
        joined.select("timestamp", "user_id", "movie_id").sort(pl.all())
    )
    ratings = pl.read_parquet(source_dir() / "MovieLens100k_data.parquet.brotli")
    assert (
        joined.select("user_id", "movie_id", "timestamp")
        .sort(pl.all())
        .equals(ratings.select("user_id", "movie_id", "timestamp").sort(pl.all()))
    )
    # Label rule, checked against the source ratings, row by row through the processed split.
    for split, part in parts.items():
        processed = pl.read_parquet(out / split / "*.parquet")
        assert (processed["label_like"] == (part["rating"] >= 4).cast(pl.Int8)).all()


def test_features_build_and_resume(movielens: Path, tmp_path: Path) -> None:
    first = build_features(movielens / "schema.yaml", tmp_path / "feat", progress=False)
    assert first["results"]["splits"]["test"]["rows_out"] == 10_000
    assert first["results"]["rows_quarantined"] == 0
    again = build_features(movielens / "schema.yaml", tmp_path / "feat", progress=False)
    assert again["finished_at"] == first["finished_at"], "an unchanged step must be skipped"
