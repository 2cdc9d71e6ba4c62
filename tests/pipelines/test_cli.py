"""The `ranker` console script: help text and the data/features/compare subcommands, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from pipelines import metrics as M
from tests.pipelines.test_metrics import synthetic_predictions

pytestmark = pytest.mark.e2e


def _ranker(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.cli", "--data-dir", str(cwd / "data"), *args]
    return subprocess.run(cmd, cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=600)


def test_help_lists_the_subcommands(tmp_path: Path) -> None:
    out = _ranker("--help", cwd=tmp_path)
    assert out.returncode == 0
    for word in ("data", "features", "demo"):
        assert word in out.stdout


def test_data_and_features_from_the_command_line(tmp_path: Path) -> None:
    built = _ranker("data", "build", "movielens-100k", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    schema = tmp_path / "data" / "raw" / "movielens-100k" / "schema.yaml"
    feats = _ranker("features", "build", str(schema), cwd=tmp_path)
    assert feats.returncode == 0, feats.stderr
    assert "test   rows in     10,000" in feats.stdout
    shown = _ranker("features", "show", str(tmp_path / "data" / "features" / "movielens-100k"), cwd=tmp_path)
    assert "blake2b-64" in shown.stdout and "genres" in shown.stdout


def test_bad_schema_is_a_clean_error(tmp_path: Path) -> None:
    schema = tmp_path / "schema.yaml"
    schema.write_text("name: x\nfilez: {}\n")
    out = _ranker("features", "build", str(schema), cwd=tmp_path)
    assert out.returncode == 2
    assert "filez" in out.stderr and str(schema) in out.stderr and "Traceback" not in out.stderr


def test_compare_two_prediction_sets(tmp_path: Path) -> None:
    """`ranker compare B OUT --baseline A` writes both reports, with the numbers of the library functions."""
    baseline, candidate = tmp_path / "champion.parquet", tmp_path / "challenger.parquet"
    df = synthetic_predictions(n_rows=1500, n_groups=120)
    df.write_parquet(baseline)
    df.with_columns(pl.col("score_click") * 0.7 + pl.col("label_click") * 0.25).write_parquet(candidate)
    out = tmp_path / "gate"
    flags = ["--slice", "country", "--bootstrap", "20", "--ks", "3", "10", "--min-slice-size", "300", "--seed", "4"]
    done = _ranker("compare", str(candidate), str(out), "--baseline", str(baseline), *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    names = ["metrics.json", "summary.md", "report.html", "comparison.json", "comparison.md", "comparison.html"]
    assert all((out / name).stat().st_size > 0 for name in names)
    assert all(str(out / name) in done.stdout for name in names)

    cfg = M.EvalConfig(n_bootstrap=20, ks=(3, 10), min_slice_size=300, seed=4)
    expected = M.compare(baseline, candidate, slice_columns=["country"], config=cfg, names=("champion", "challenger"))
    assert json.loads((out / "comparison.json").read_text()) == json.loads(json.dumps(expected))
    evaluated = M.evaluate(candidate, slice_columns=["country"], config=cfg)
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(evaluated))
    assert expected["overall"]["tasks"]["click"]["metrics"]["auc"]["verdict"] == "better"  # the data differ

    missing = _ranker("compare", str(candidate), str(tmp_path / "x"), "--baseline", str(tmp_path / "no.parquet"),
                      cwd=tmp_path)  # fmt: skip
    assert missing.returncode == 2 and "no.parquet: predictions file not found" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "x").exists()
