"""The pyfunc model on a Spark DataFrame (pyspark local[2], Java 17) scores like `ranker score`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main
from tests.helpers import build_tiny_export
from tests.helpers_mlflow import register_export

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_spark_udf_scores_equal_ranker_score(tmp_path: Path, monkeypatch, recwarn) -> None:
    from pipelines import tracking
    from pipelines.spark import local_session, score_dataframe

    export_dir, features = build_tiny_export(tmp_path)
    raw = pl.read_parquet(features.parent / "raw" / "test.parquet").drop("click", "buy").with_row_index("row_id")
    # Null lists fail pyfunc's input check in Spark unless coalesced; `ranker score` reads them natively.
    raw = raw.with_columns(pl.when(pl.col("row_id") % 7 == 0).then(None).otherwise(pl.col("tags")).alias("tags"))
    (tmp_path / "new").mkdir()
    raw.write_parquet(tmp_path / "new" / "rows.parquet", row_group_size=32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.default_uri(tmp_path / "runs"))
    monkeypatch.setenv("RANKER_RUNS", str(tmp_path / "runs"))
    register_export(export_dir, raw.drop("row_id").slice(1, 3).to_pandas(), "ranker-spark-test")
    uri = "models:/ranker-spark-test@champion"
    argv = ["score", "--model", uri, "--input", str(tmp_path / "new"), "--keep", "row_id", "--out", str(tmp_path / "s")]
    assert main(argv) == 0
    expected = pl.read_parquet(tmp_path / "s" / "part-00000.parquet").sort("row_id")

    spark = local_session()
    try:
        scored = score_dataframe(spark.read.parquet(str(tmp_path / "new")), uri)
        assert scored.columns == [*raw.columns, "score_click", "score_buy"]  # inputs untouched, scores added
        scored.write.parquet(str(tmp_path / "spark"))  # as a job would; toPandas() warns under pandas 3
    finally:
        spark.stop()
    got = pl.read_parquet(tmp_path / "spark" / "*.parquet").sort("row_id")
    assert got["tags"].null_count() == raw["tags"].null_count() > 0
    assert got["row_id"].to_list() == expected["row_id"].to_list()
    np.testing.assert_allclose(
        got.select("score_click", "score_buy").to_numpy(),
        expected.select("score_click", "score_buy").to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    noise = [f"{w.filename}: {w.message}" for w in recwarn if "pyspark" in str(w.filename)]
    assert not noise, noise
