"""The README's "Sweeps" commands, run as written on MovieLens-100k (the full sweep with fewer runs and steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipelines import cli
from pipelines.build_features import build_features
from pipelines.data import build_dataset
from pipelines.sweep import load_sweep, trial_list
from tests import readme

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).parents[2]
# Fewer runs and steps than the README's sweep: the commands stay the README's, the run stays short.
SWEEP_OVERRIDES = ["--set", "trials=2", "--set", "fixed.max_steps=6", "--set", "fixed.eval_every=3"]


def _commands() -> list[list[str]]:
    return readme.commands("Sweeps")


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory as the README assumes: MovieLens-100k features under data/, the repository's configs."""
    build_dataset("movielens-100k", tmp_path / "data" / "raw" / "movielens-100k")
    build_features(
        tmp_path / "data" / "raw" / "movielens-100k" / "schema.yaml",
        tmp_path / "data" / "features" / "movielens-100k",
        progress=False,
    )
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the training ranks import this checkout's packages
    # The default store (runs/mlflow.db here); MLflow exports MLFLOW_TRACKING_URI when the sweep sets it, which
    # the test must not leave behind: recorded as unset, it is removed again afterwards.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("RANKER_RUNS", raising=False)
    return tmp_path


def test_readme_shows_three_commands() -> None:
    commands = _commands()
    assert [c[0] for c in commands] == ["sweep", "sweep", "train"]
    assert "--dry-run" in commands[0] and "--max-parallel" in commands[1]


def test_readme_dry_run_lists_the_twelve_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dry_run = _commands()[0]
    assert cli.main(dry_run) == 0
    listing = [line.split() for line in capsys.readouterr().out.splitlines() if line.startswith("  ")]
    trials = trial_list(load_sweep(ROOT / dry_run[1]))
    assert [row[0] for row in listing] == [f"{t.id}-s0" for t in trials] and len(trials) == 12
    assert all(row[1:3] == ["to", "train"] for row in listing)
    assert not (workdir / "runs" / "sweep-movielens-hiformer").exists()  # checked and listed, nothing trained


@pytest.mark.slow
@pytest.mark.dist
def test_readme_sweep_and_best_yaml(workdir: Path) -> None:
    _, sweep, train = _commands()
    assert cli.main(sweep + SWEEP_OVERRIDES) == 0
    out = workdir / "runs" / "sweep-movielens-hiformer"
    result = json.loads((out / "sweep.json").read_text())
    assert len(result["trials"]) == 2 and result["metric"] == "valid/like/auc"
    assert cli.main(train) == 0
    picked = json.loads((out / "runs" / f"{result['best']['trial']}-s0" / "results.json").read_text())
    rerun = json.loads((out / "best" / "results.json").read_text())
    assert rerun["history"] == picked["history"] and rerun["steps"] == 6
    assert (workdir / "runs" / "mlflow.db").is_file()
