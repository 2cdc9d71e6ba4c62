"""The `ranker` console script: help text and the data/features subcommands, run as a user would."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
