"""Training end to end through the `ranker train` launcher (torchrun, 2 ranks, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.build_features import build_features
from pipelines.data import build_dataset
from tests import readme
from tests.helpers import write_tiny_dataset

pytestmark = [pytest.mark.e2e, pytest.mark.dist]
ROOT = Path(__file__).parents[2]


def _train(config: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2", *extra]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=run_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _config(path: Path, features: Path, out_dir: Path, **overrides: object) -> Path:
    cfg = {
        "features": str(features),
        "out_dir": str(out_dir),
        "model": {"interaction": "hiformer", "embedding_dim": 8, "interaction_kwargs": {"hiformer": {"num_layers": 1}}},
        "batch_size": 32,
        "epochs": 2,
        "eval_every": 4,
        "tracking": False,
        **overrides,
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow  # 3 two-rank launches; the default suite resumes through the README's training commands
def test_resume_reaches_the_same_result(tmp_path: Path) -> None:
    schema = write_tiny_dataset(tmp_path / "raw", n=400)
    features = tmp_path / "features"
    build_features(schema, features, progress=False)
    full = _config(tmp_path / "full.yaml", features, tmp_path / "full", patience=100)
    _train(full)
    a = json.loads((tmp_path / "full" / "results.json").read_text())
    # keep_checkpoints (default 2): the newest two complete checkpoints and the best one survive, nothing else.
    kept = sorted(p.name for p in (tmp_path / "full" / "checkpoints").glob("step-*"))
    saved = [f"step-{h['step']:08d}" for h in a["history"]]
    assert len(saved) > 3, "the run must checkpoint often enough to have deleted some"
    assert kept == sorted({*saved[-2:], f"step-{a['best_step']:08d}"})
    parts = _config(tmp_path / "parts.yaml", features, tmp_path / "parts", patience=100)
    # An interruption right after the checkpoint at step 8 (7 steps per epoch: one step into the second epoch) ...
    subprocess_env = {"RANKER_STOP_AT_STEP": "8"}
    _train(parts, env=subprocess_env)
    assert not (tmp_path / "parts" / "results.json").exists()
    checkpoints = sorted(p.name for p in (tmp_path / "parts" / "checkpoints").glob("step-*"))
    assert checkpoints[-1] == "step-00000008"
    # ... then --resume finishes the run.
    _train(parts, "--resume")
    b = json.loads((tmp_path / "parts" / "results.json").read_text())
    assert a["steps"] == b["steps"] == 14
    assert a["history"] == b["history"]
    assert a["test"] == b["test"]


@pytest.mark.slow  # two two-rank launches, one of them compiling the dense part (about a minute per rank)
def test_compile_trains_like_eager(tmp_path: Path) -> None:
    """`compile: true` (torch.compile of interaction + heads under DMP/DDP, 2 ranks) follows the eager run's loss
    and metrics step by step up to float rounding, and exports the same parameters under the same names."""
    schema = write_tiny_dataset(tmp_path / "raw", n=400)
    features = tmp_path / "features"
    build_features(schema, features, progress=False)
    runs = {}
    for compiled in (False, True):
        name = "compiled" if compiled else "eager"
        _train(_config(tmp_path / f"{name}.yaml", features, tmp_path / name, patience=100, compile=compiled))
        runs[name] = json.loads((tmp_path / name / "results.json").read_text())
    eager, compiled_run = runs["eager"]["history"], runs["compiled"]["history"]
    assert [h["step"] for h in eager] == [h["step"] for h in compiled_run]
    for a, b in zip(eager, compiled_run, strict=True):
        for key in ("train/loss", "valid/click/auc", "valid/click/logloss"):
            assert b[key] == pytest.approx(a[key], abs=2e-3), (a["step"], key)
    state = {n: torch.load(tmp_path / n / "export" / "model.pt", weights_only=True) for n in ("eager", "compiled")}
    assert state["eager"].keys() == state["compiled"].keys()
    # The compiled path did run: one graph for the 32-row training batches, one for each epoch's last, shorter one.
    assert runs["compiled"]["compiled_graphs"] >= 1 and "compiled_graphs" not in runs["eager"]


@pytest.fixture(scope="module")
def movielens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """MovieLens-100k features, built once for the tests of this module."""
    root = tmp_path_factory.mktemp("movielens")
    build_dataset("movielens-100k", root / "raw")
    build_features(root / "raw" / "schema.yaml", root / "features", progress=False)
    return root / "features"


def _readme_train(command: list[str], *extra: str, env: dict[str, str] | None = None) -> str:
    """A README `ranker train` command as written (its config relative to the checkout), then ``extra``."""
    cmd = [sys.executable, "-m", "pipelines.cli", *command, *extra]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, env=run_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def test_readme_training_commands(movielens: Path, tmp_path: Path) -> None:
    """The README's three `ranker train` commands on the shipped config, shortened to 20 steps.

    The first is stopped right after its checkpoint at step 10 (as an interruption would), the second finishes it
    with --resume, the third trains DCN-v2 instead of Hiformer on one process.
    """
    two, resume, dcnv2 = readme.commands("Training")
    assert "--resume" in resume and "model.interaction=dcnv2" in dcnv2
    short = ["--set", "max_steps=20", "--set", "eval_every=5", "--set", "tracking=false"]
    here = ["--set", f"features={movielens}", "--set", f"out_dir={tmp_path / 'run'}"]
    _readme_train(two, *here, *short, env={"RANKER_STOP_AT_STEP": "10"})
    assert not (tmp_path / "run" / "results.json").exists()
    _readme_train(resume, *here, *short)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 20 and [h["step"] for h in results["history"]] == [5, 10, 15, 20]
    out = _readme_train(dcnv2, "--set", f"features={movielens}", "--set", f"out_dir={tmp_path / 'dcn'}", *short)
    saved = json.loads((tmp_path / "dcn" / "export" / "model_config.json").read_text())
    assert saved["interaction"] == "dcnv2" and saved["interaction_kwargs"]["dcnv2"] == {"structure": "parallel"}
    results = json.loads((tmp_path / "dcn" / "results.json").read_text())
    assert results["steps"] == 20 and results["test"]["like/auc"] is not None
    assert "test metrics of the exported model" in out


@pytest.mark.slow  # a full MovieLens epoch, ~60-90 s
def test_movielens_trains_to_a_useful_auc(movielens: Path, tmp_path: Path) -> None:
    features = movielens
    cfg = _config(
        tmp_path / "ml.yaml",
        features,
        tmp_path / "run",
        batch_size=256,
        epochs=1,
        eval_every=0,
        tracking=True,
        model={"interaction": "hiformer", "embedding_dim": 16, "interaction_kwargs": {"hiformer": {"num_layers": 2}}},
    )
    out = _train(cfg, env={"RANKER_RUNS": str(tmp_path / "mlruns")})
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # Guards against the known failure of recommender examples silently training to AUC 0.5.
    assert results["test"]["like/auc"] > 0.65, results["test"]
    assert results["test"]["like/ne"] < 0.97
    assert "test metrics of the exported model" in out.stdout
    assert (tmp_path / "mlruns" / "mlflow.db").exists()
    # The export is logged as a pyfunc model of the run, with 5 raw test rows as its input example.
    assert results["model_uri"].startswith("models:/m-"), results.get("model_uri")
    example = list((tmp_path / "mlruns" / "mlartifacts").rglob("serving_input_example.json"))
    assert len(example) == 1 and len(json.loads(example[0].read_text())["dataframe_split"]["data"]) == 5
    assert set(results["sharding_plan"].values()) <= {"table_wise", "column_wise", "table_column_wise", "data_parallel"}
