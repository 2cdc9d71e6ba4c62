"""The evaluation step: export -> streamed scoring -> predictions parquet -> metrics and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import roc_auc_score

from features.loader import RankLoader
from features.processor import FeatureMap, fit, processed_files, transform
from features.schema import load_schema
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig
from ranker.build import ModelConfig, build_ranker
from ranker.export import load_exported
from ranker.model import RankerTrain
from tests.helpers import build_tiny_export, write_tiny_dataset

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_tiny_export(tmp_path_factory.mktemp("eval"))


def test_export_round_trips(exported) -> None:
    export_dir, features = exported
    fmap = FeatureMap.load(export_dir)
    model = load_exported(export_dir)
    assert fmap.labels == ("click", "buy")
    torch.manual_seed(0)  # the fixture's initialisation, rebuilt independently of the export
    reference = RankerTrain(
        build_ranker(fmap, ModelConfig(embedding_dim=8, interaction_kwargs={"hiformer": {"num_layers": 1}}))
    )
    batch = next(iter(RankLoader(processed_files(features, "test"), fmap, 50, prefetch=0)))
    torch.testing.assert_close(model(batch), reference.model.eval()(batch))


def test_predictions_and_metrics(exported, tmp_path: Path) -> None:
    export_dir, features = exported
    manifest = evaluate_model(export_dir, features, tmp_path / "eval", eval_config=EvalConfig(n_bootstrap=20))
    preds = pl.read_parquet(tmp_path / "eval" / "predictions.parquet")
    processed = pl.read_parquet(processed_files(features, "test"))
    assert preds.height == processed.height == manifest["results"]["rows"]
    assert preds["group_id"].to_list() == processed["group_id"].to_list()
    assert preds["country"].to_list() == processed["slice_country"].to_list()
    # Scores equal the exported model's outputs on the same rows, batch by batch.
    model = load_exported(export_dir)
    fmap = FeatureMap.load(export_dir)
    with torch.no_grad():
        probs = torch.cat([torch.sigmoid(model(b)) for b in RankLoader(processed_files(features, "test"), fmap, 37)])
    np.testing.assert_allclose(preds.select("score_click", "score_buy").to_numpy(), probs.numpy(), rtol=1e-6)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for task in ("click", "buy"):
        want = roc_auc_score(preds[f"label_{task}"], preds[f"score_{task}"])
        assert metrics["overall"]["tasks"][task]["metrics"]["auc"]["value"] == pytest.approx(want, abs=1e-12)
    assert set(metrics["slices"]["country"]) == {"DE", "FR"}
    # Cold users and items: a user or item of the test split unseen in the train split (a naive set lookup).
    train = pl.read_parquet(processed_files(features, "train"))
    for entity, column in (("user", "group_id"), ("item", "item_id")):
        seen = set(train[column].to_list())
        assert preds[f"is_cold_{entity}"].to_list() == [v not in seen for v in preds[column].to_list()]
    shares = metrics["data"]["cold_share"]
    assert shares["user"] == pytest.approx(preds["is_cold_user"].mean()) and set(metrics["cold_warm_by_entity"]) == {
        "user", "item"
    }  # fmt: skip
    report = (tmp_path / "eval" / "report.html").read_text()
    assert "<img" in report and f"{100 * shares['user']:.1f}% of the rows" in report
    assert "Cold vs warm <code>user</code>" in report
    again = evaluate_model(export_dir, features, tmp_path / "eval", eval_config=EvalConfig(n_bootstrap=20))
    assert again["finished_at"] == manifest["finished_at"], "an unchanged evaluation is skipped"


def test_refuses_features_from_another_pipeline(exported, tmp_path: Path) -> None:
    export_dir, _ = exported
    schema = load_schema(write_tiny_dataset(tmp_path / "raw", n=200))
    other = tmp_path / "features"
    fmap = fit(schema, other)
    transform(schema, other, "test", fmap)
    with pytest.raises(ValueError, match="differs from the model's"):
        evaluate_model(export_dir, other, tmp_path / "eval")
