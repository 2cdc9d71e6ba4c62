"""The `ranker` console script: help text and the data/features/compare subcommands, run as a user would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch

from pipelines import metrics as M
from pipelines.cli import main
from tests.pipelines.test_metrics import synthetic_predictions
from vision_towers.pretrain import pretrain

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


def test_fashion_clicks_history_length_and_interaction_strength(tmp_path: Path) -> None:
    out = tmp_path / "fc"
    args = ("data", "build", "fashion-clicks", "--rows", "20000", "--out", str(out))
    built = _ranker(*args, "--rows-per-user", "40", "--interaction-strength", "0", cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["rows_per_user"] == 40 and manifest["config"]["interaction_strength"] == 0.0
    results = manifest["results"]
    assert results["n_users"] == 20_000 // 40 and results["params"]["interaction_strength"] == 0.0
    assert set(results["observable_auc_unknown_users"]) == {"overall", "cold", "warm"}
    assert not pq.read_table(out / "test_logit_terms.parquet", columns=["interaction"])["interaction"].to_numpy().any()

    refused = _ranker("data", "build", "movielens-100k", "--interaction-strength", "2", cwd=tmp_path)
    assert refused.returncode == 2 and "fashion-clicks only" in refused.stderr and "Traceback" not in refused.stderr


def test_pretrain_tower_with_a_teacher(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    teacher, student = tmp_path / "teacher.pt", tmp_path / "student.pt"
    pretrain("vit_fm", teacher, n_train=32, epochs=1, batch_size=32)
    small = ("--n-train", "32", "--n-eval", "32")
    done = _ranker(
        "pretrain-tower",
        "eet_vit_fm",
        "--out",
        str(student),
        "--teacher",
        str(teacher),
        "--cos-weight",
        "2",
        *small,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "Fashion-MNIST test accuracy" in done.stdout
    transfer = torch.load(student, weights_only=True)["meta"]["transfer"]
    assert transfer == {
        "ce_weight": 0.1,
        "mask_weight": 0.1,
        "cos_weight": 2.0,
        "kl_weight": 0.0,
        "temperature": 1.0,
        "mask_top": 4,
    }

    wrong = _ranker(
        "pretrain-tower",
        "eet_vit_fm",
        "--out",
        str(tmp_path / "x.pt"),
        "--teacher",
        str(student.with_name("nope.pt")),
        *small,
        cwd=tmp_path,
    )
    assert (
        wrong.returncode == 2
        and wrong.stderr.startswith("ranker: error: --teacher ")
        and "Traceback" not in wrong.stderr
    )
    assert main(["pretrain-tower", "eet_vit_fm", "--out", str(tmp_path / "y.pt"), "--kl-weight", "1"]) == 2
    assert "--kl-weight: only with --teacher" in capsys.readouterr().err


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
