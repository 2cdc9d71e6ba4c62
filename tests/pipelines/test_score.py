"""`ranker score`: unlabeled raw parquet -> scores equal to the evaluation's, split over processes, resumable."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipelines.cli import main
from pipelines.evaluate import evaluate_model
from pipelines.metrics import EvalConfig
from ranker.export import export_digest
from tests import readme
from tests.helpers import build_tiny_export
from tests.helpers_mlflow import register_export

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pl.DataFrame]:
    """(export, folder of two unlabeled raw parquet files in small row groups, the evaluation's predictions)."""
    root = tmp_path_factory.mktemp("score")
    export_dir, features = build_tiny_export(root)
    evaluate_model(export_dir, features, root / "eval", eval_config=EvalConfig(n_bootstrap=2))
    reference = pl.read_parquet(root / "eval" / "predictions.parquet")
    raw = pl.read_parquet(features.parent / "raw" / "test.parquet").drop("click", "buy")
    inputs = root / "new"
    inputs.mkdir()
    raw.head(60).write_parquet(inputs / "a.parquet", row_group_size=16)
    raw.slice(60).write_parquet(inputs / "b.parquet", row_group_size=16)
    return export_dir, inputs, reference


def _scores(out: Path) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))])


def test_scores_equal_the_evaluation_and_a_rerun_is_skipped(exported, tmp_path: Path, capsys) -> None:
    export_dir, inputs, reference = exported
    out = tmp_path / "scores"
    args = ["score", "--model", str(export_dir.parent), "--input", f"{inputs}/*.parquet", "--out", str(out)]
    assert main([*args, "--keep", "country", "--batch-size", "7"]) == 0
    scores = _scores(out)
    raw = pl.concat([pl.read_parquet(inputs / "a.parquet"), pl.read_parquet(inputs / "b.parquet")])
    assert scores.columns == ["user", "item", "country", "score_click", "score_buy", "model_uri", "model_fingerprint"]
    assert scores.select("user", "item", "country").equals(raw.select("user", "item", "country"))
    np.testing.assert_allclose(
        scores.select("score_click", "score_buy").to_numpy(),
        reference.select("score_click", "score_buy").to_numpy(),
        rtol=0,
        atol=1e-6,
    )
    assert set(scores["model_fingerprint"]) == {export_digest(export_dir)}
    assert set(scores["model_uri"]) == {str(export_dir.resolve())}
    manifest = json.loads((out / "manifest.json").read_text())["results"]
    assert manifest["rows_in"] == manifest["rows_out"] == raw.height == 100
    assert [i["rows"] for i in manifest["inputs"]] == [60, 40] and manifest["rows_per_s"] > 0
    assert "scored 100 rows of 2 file(s)" in capsys.readouterr().out
    # Same inputs, model and options: the finished step is kept as it is.
    before = (out / "manifest.json").read_text()
    assert main([*args, "--keep", "country"]) == 0
    assert (out / "manifest.json").read_text() == before
    # Another model (a changed export) scores again.
    assert main([*args, "--keep", "country", "--force"]) == 0
    assert (out / "manifest.json").read_text() != before


def test_readme_command_with_two_processes_writes_what_one_writes(exported, tmp_path: Path, monkeypatch) -> None:
    """The README's `ranker score ... --nproc 2`, run as written where its paths hold the tiny export and rows."""
    export_dir, inputs, _ = exported
    (command,) = readme.commands("Batch scoring")
    shutil.copytree(export_dir, tmp_path / "runs" / "demo-movielens" / "train" / "export")
    source = tmp_path / "data" / "features" / "movielens-100k" / "source"
    source.mkdir(parents=True)
    raw = pl.concat([pl.read_parquet(inputs / "a.parquet"), pl.read_parquet(inputs / "b.parquet")])
    raw.write_parquet(source / "test.parquet", row_group_size=16)
    monkeypatch.chdir(tmp_path)
    assert main(command) == 0
    out = tmp_path / "runs" / "scores"
    assert len(list(out.glob("part-*.parquet"))) == 2
    assert main(["score", "--model", str(export_dir), "--input", str(inputs), "--out", "one", "--nproc", "1"]) == 0
    two, one = _scores(out).drop("model_uri"), _scores(tmp_path / "one").drop("model_uri")
    scores = [c for c in one.columns if c.startswith("score_")]
    assert two.drop(scores).equals(one.drop(scores))  # the same rows, in the same order, from the same model
    # Each process scores its own batches: with AVX-512 kernels the BLAS blocking, and so the fp32 rounding of a
    # row's score, depends on the batch's size (1 ULP seen, 6e-8), so scores agree to float precision, not bitwise.
    for column in scores:
        np.testing.assert_allclose(two[column].to_numpy(), one[column].to_numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop("price"), r"b.parquet: missing column(s) ['price']"),
        (lambda df: df.with_columns(pl.col("user").cast(pl.String)), "b.parquet: column 'user' has type String"),
        (lambda df: df.drop("item"), "b.parquet: missing column(s) ['item']"),
    ],
    ids=["missing", "wrong-type", "missing-key"],
)
def test_bad_input_is_one_line_naming_file_and_column(exported, tmp_path: Path, capsys, change, message) -> None:
    export_dir, inputs, _ = exported
    bad = tmp_path / "bad"
    bad.mkdir()
    pl.read_parquet(inputs / "a.parquet").write_parquet(bad / "a.parquet")
    change(pl.read_parquet(inputs / "b.parquet")).write_parquet(bad / "b.parquet")
    code = main(["score", "--model", str(export_dir), "--input", str(bad), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("ranker: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_registered_model_scores_like_its_export(exported, tmp_path: Path, monkeypatch) -> None:
    from pipelines import tracking

    export_dir, inputs, _ = exported
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.default_uri(tmp_path / "runs"))
    monkeypatch.setenv("RANKER_RUNS", str(tmp_path / "runs"))
    register_export(export_dir, pl.read_parquet(inputs / "a.parquet").head(3).to_pandas(), "ranker-score-test")
    argv = ["score", "--input", str(inputs)]
    assert main([*argv, "--model", "models:/ranker-score-test@champion", "--out", str(tmp_path / "reg")]) == 0
    assert main([*argv, "--model", str(export_dir), "--out", str(tmp_path / "dir")]) == 0
    registered, local = _scores(tmp_path / "reg"), _scores(tmp_path / "dir")
    assert registered.drop("model_uri").equals(local.drop("model_uri"))
    assert set(registered["model_uri"]) == {"models:/ranker-score-test/1"}
    model = json.loads((tmp_path / "reg" / "manifest.json").read_text())["results"]["model"]
    assert model["requested"] == "models:/ranker-score-test@champion" and model["version"] == "1"
    assert main([*argv, "--model", "models:/ranker-score-test@nosuch", "--out", str(tmp_path / "x")]) == 2
