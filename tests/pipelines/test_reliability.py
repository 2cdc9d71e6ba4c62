"""Faults injected for real (SIGKILL, flipped bytes, a full tmpfs, a second job, a stuck rank) and what survives.

The table of faults and promises is docs/reliability.md. Training runs are the tiny data set on 2 gloo ranks,
through `python -m pipelines.cli train` as a user runs them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
import yaml

from pipelines import checkpoints, launch
from pipelines.build_features import build_features
from tests.helpers import write_tiny_dataset

ROOT = Path(__file__).parents[2]
STEPS = 14  # 7 steps per epoch, 2 epochs; checkpoints at 4, 7, 8, 12, 14


def _cli(config: Path, *extra: str, env: dict[str, str] | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2", *extra]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=run_env)


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1]


def _config(folder: Path, features: Path, name: str, **overrides: object) -> Path:
    cfg = {
        "features": str(features),
        "out_dir": str(folder / name),
        "model": {"interaction": "hiformer", "embedding_dim": 8, "interaction_kwargs": {"hiformer": {"num_layers": 1}}},
        "batch_size": 32,
        "epochs": 2,
        "eval_every": 4,
        "patience": 100,
        "tracking": False,
        **overrides,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    build_features(write_tiny_dataset(root / "raw", n=400), root / "features", progress=False)
    return root / "features"


@pytest.fixture(scope="module")
def uninterrupted(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """results.json of the run every interrupted run must end equal to."""
    folder = tmp_path_factory.mktemp("reference")
    _ok(_cli(_config(folder, tiny, "run")))
    return json.loads((folder / "run" / "results.json").read_text())


def _same_result(run: Path, reference: dict) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == reference["steps"] == STEPS
    assert results["history"] == reference["history"]
    assert results["test"] == reference["test"]


def _saved(folder: Path, step: int) -> Path:
    path = folder / f"step-{step:08d}"
    dcp.save({"w": torch.arange(4096, dtype=torch.float32) * step}, checkpoint_id=str(path), no_dist=True)
    checkpoints.seal(path)
    return path


@pytest.mark.unit
@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_checkpoint_is_named_and_passed_over(tmp_path: Path, damage: str, capsys) -> None:
    old, new = _saved(tmp_path, 4), _saved(tmp_path, 8)
    interrupted = tmp_path / "step-00000012"  # saved files, never sealed: killed mid-save
    dcp.save({"w": torch.zeros(4)}, checkpoint_id=str(interrupted), no_dist=True)
    assert checkpoints.newest_intact(tmp_path) == new
    data = sorted(new.glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF
    else:
        raw = raw[: len(raw) // 2]
    data.write_bytes(bytes(raw))
    with pytest.raises(checkpoints.DamagedCheckpoint, match=str(data)):
        checkpoints.verify(new)
    assert checkpoints.newest_intact(tmp_path) == old
    assert str(data) in capsys.readouterr().out
    (old / checkpoints.FILES).unlink()
    with pytest.raises(FileNotFoundError, match="no complete, intact checkpoint"):
        checkpoints.newest_intact(tmp_path)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_killed_while_saving_and_corrupted_checkpoint(tiny: Path, uninterrupted: dict, tmp_path: Path) -> None:
    """Rank 0 SIGKILLed while saving step 12: that folder is never taken; step 8 corrupted: resume uses step 7."""
    config = _config(tmp_path, tiny, "run")
    line = _error_line(_cli(config, env={"RANKER_FAULT": "kill-saving:0:12"}))
    assert "training failed: rank 0 was killed by SIGKILL" in line, line
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step-00000012").is_dir() and not (ckpts / "step-00000012" / checkpoints.COMPLETE).exists()
    data = sorted((ckpts / "step-00000008").glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    out = _ok(_cli(config, "--resume"))
    assert f"{data} does not match its saved checksum" in out.stdout + out.stderr
    assert "resume from step 7" in out.stdout
    _same_result(tmp_path / "run", uninterrupted)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_rank_killed_mid_epoch_then_resume(tiny: Path, uninterrupted: dict, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny, "run")
    line = _error_line(_cli(config, env={"RANKER_FAULT": "kill:1:10"}))  # between the checkpoints 8 and 12
    assert line.startswith("ranker: error: training failed: rank 1 was killed by SIGKILL"), line
    assert "ranker train --resume" in line
    out = _ok(_cli(config, "--resume"))
    assert "resume from step 8" in out.stdout
    _same_result(tmp_path / "run", uninterrupted)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_max_restarts_resumes_by_itself(tiny: Path, uninterrupted: dict, tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    config = _config(tmp_path, tiny, "run")
    out = _ok(_cli(config, "--max-restarts", "1", env={"RANKER_FAULT": f"kill:1:10:{marker}"}))
    assert marker.exists()
    assert "resume from step 8" in out.stdout
    _same_result(tmp_path / "run", uninterrupted)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_stuck_rank_ends_the_job_after_the_timeout(tiny: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny, "run", dist_timeout=10)
    started = time.time()
    line = _error_line(_cli(config, env={"RANKER_FAULT": "hang:1:5"}, timeout=600))
    assert time.time() - started < 300
    assert "training failed: rank 0 exited with code 1" in line and "timed out" in line.lower(), line


@pytest.mark.e2e
@pytest.mark.dist
def test_second_run_into_the_same_out_dir_is_refused(tiny: Path, tmp_path: Path) -> None:
    """The first job is stuck (a rank sleeps); the second into its out_dir refuses; once it is gone, the lock is."""
    config = _config(tmp_path, tiny, "run", max_steps=2, epochs=1)
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANKER_FAULT": "hang:1:1"}
    # Its own session, so that the whole job (launcher, torchrun, ranks) can be killed at the end.
    first = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    lock = tmp_path / "run" / launch.LOCK
    try:
        deadline = time.time() + 120
        while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
            time.sleep(0.2)
        line = _error_line(_cli(config, timeout=120))
        assert line.startswith(f"ranker: error: out_dir {tmp_path / 'run'} is in use by another training run"), line
        assert f"pid {first.pid}" in line
        assert not (tmp_path / "run" / "results.json").exists()
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.communicate()
    with launch.exclusive(tmp_path / "run"):  # the kernel released the dead launcher's lock: nothing is stale
        assert lock.read_text().strip() == str(os.getpid())
