"""Scoring raw rows with an export (``ranker.predict``): same scores as the evaluation, clear input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.processor import FeatureMap, conform_inputs, model_inputs
from features.schema import MISSING_ID, OOV_ID
from features.validate import DataError
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig
from ranker.predict import Predictor
from tests.helpers import build_tiny_export

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_export(tmp_path_factory.mktemp("predict"))


def test_raw_rows_score_like_the_evaluation(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    evaluate_model(export_dir, features, tmp_path / "eval", eval_config=EvalConfig(n_bootstrap=2))
    reference = pl.read_parquet(tmp_path / "eval" / "predictions.parquet").select("score_click", "score_buy")
    raw = pl.read_parquet(features.parent / "raw" / "test.parquet").drop("click", "buy")  # unlabeled
    predictor = Predictor(export_dir, batch_size=37)
    np.testing.assert_allclose(predictor.predict(raw), reference.to_numpy(), rtol=0, atol=1e-6)
    # pandas in, extra columns and another column order change nothing.
    shuffled = raw.with_columns(pl.lit("x").alias("extra")).select(list(reversed(raw.columns)) + ["extra"])
    np.testing.assert_array_equal(predictor.predict(shuffled.to_pandas()), predictor.predict(raw))
    assert predictor.predict(raw.head(0)).shape == (0, 2)


def test_unknown_and_missing_values_map_to_their_ids(exported) -> None:
    export_dir, _ = exported
    fmap = FeatureMap.load(export_dir)
    rows = pl.DataFrame(
        {
            "user": [10_000, None],  # never seen / missing
            "item": [100, 100],
            "tags": [["zzz", "a"], None],
            "city": ["nowhere", None],
            "slot": [1, 2],
            "price": [1.0, 2.0],
            "age": [30.0, 40.0],
        },
        schema_overrides={"tags": pl.List(pl.String)},
    )
    processed = model_inputs(fmap, export_dir, conform_inputs(fmap, rows, "rows"), None)
    vocab = pl.read_parquet(export_dir / "vocab" / "tags.parquet")
    a_id = vocab.filter(pl.col("value") == "a")["id"].item()
    assert processed["user"].to_list() == [OOV_ID, MISSING_ID]
    assert processed["tags"].to_list() == [[OOV_ID, a_id], [MISSING_ID]]
    assert processed["city"][1] == MISSING_ID and processed["city"][0] >= 2  # hashed, never OOV
    assert "label_click" not in processed.columns


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("price"), r"missing column\(s\) \['price'\]"),
        (
            lambda df: df.with_columns(pl.col("user").cast(pl.String)),
            r"column 'user' has type String \(string\); "
            r"the model was trained on Int64 \(integer\)",
        ),  # fmt: skip
        (lambda df: df.with_columns(pl.col("city").str.len_chars()), r"column 'city' has type UInt32"),
        (lambda df: df.with_columns(pl.col("tags").list.first()), r"column 'tags' has type String"),
    ],
    ids=["missing", "string-for-int", "int-for-string", "scalar-for-list"],
)
def test_bad_columns_are_named(exported, change, message: str) -> None:
    export_dir, features = exported
    raw = pl.read_parquet(features.parent / "raw" / "test.parquet")
    with pytest.raises(DataError, match=r"^request: " + message):
        Predictor(export_dir).predict(change(raw), where="request")


def test_compatible_types_are_cast(exported) -> None:
    export_dir, features = exported
    raw = pl.read_parquet(features.parent / "raw" / "test.parquet")
    predictor = Predictor(export_dir)
    narrow = raw.with_columns(pl.col("user", "item", "slot").cast(pl.Int32), pl.col("age").round().cast(pl.Int64))
    want = predictor.predict(raw.with_columns(pl.col("age").round()))
    np.testing.assert_allclose(predictor.predict(narrow), want, atol=1e-7)
    nulls = raw.with_columns(pl.lit(None).alias("city"))
    processed = model_inputs(predictor.fmap, export_dir, conform_inputs(predictor.fmap, nulls, "x"), None)
    assert set(processed["city"].to_list()) == {MISSING_ID}
