"""Faults injected for real (SIGKILL, flipped bytes, a full tmpfs, a second job, a stuck rank) and what survives.

The table of faults and promises is docs/reliability.md. Training runs are the tiny data set on 2 gloo ranks,
through `python -m pipelines.cli train` as a user runs them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
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
from tests.helpers import descendants, listening, tiny_train_config, write_tiny_dataset

ROOT = Path(__file__).parents[2]
STEPS = 14  # 7 steps per epoch, 2 epochs; checkpoints at 4, 7, 8, 12, 14


def _cli(
    config: Path, *extra: str, env: dict[str, str] | None = None, timeout: int = 900
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2", *extra]
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=run_env)


def _ok(out: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _error_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode == 2, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    build_features(write_tiny_dataset(root / "raw", n=400), root / "features", progress=False)
    return root / "features"


@pytest.fixture(scope="module")
def uninterrupted(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """results.json of the run every interrupted run must end equal to."""
    folder = tmp_path_factory.mktemp("reference")
    _ok(_cli(tiny_train_config(folder, tiny, "run")))
    return json.loads((folder / "run" / "results.json").read_text())


def _same_result(run: Path, reference: dict) -> None:
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == reference["steps"] == STEPS
    assert results["history"] == reference["history"]
    assert results["test"] == reference["test"]


def _resumed(config: Path, step: int, reference: dict) -> str:
    """Runs `--resume`, checks it started at ``step`` and ended like ``reference``; returns its output."""
    out = _ok(_cli(config, "--resume"))
    assert f"resume from step {step}" in out.stdout
    _same_result(Path(yaml.safe_load(config.read_text())["out_dir"]), reference)
    return out.stdout + out.stderr


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
    config = tiny_train_config(tmp_path, tiny, "run")
    line = _error_line(_cli(config, env={"RANKER_FAULT": "kill-saving:0:12"}))
    assert "training failed: rank 0 was killed by SIGKILL" in line, line
    ckpts = tmp_path / "run" / "checkpoints"
    assert (ckpts / "step-00000012").is_dir() and not (ckpts / "step-00000012" / checkpoints.COMPLETE).exists()
    data = sorted((ckpts / "step-00000008").glob("*.distcp"))[0]
    raw = bytearray(data.read_bytes())
    raw[100] ^= 0x01
    data.write_bytes(bytes(raw))
    output = _resumed(config, 7, uninterrupted)
    assert f"{data} does not match its saved checksum" in output


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_rank_killed_mid_epoch_then_resume(tiny: Path, uninterrupted: dict, tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, tiny, "run")
    line = _error_line(_cli(config, env={"RANKER_FAULT": "kill:1:10"}))  # between the checkpoints 8 and 12
    assert line.startswith("ranker: error: training failed: rank 1 was killed by SIGKILL"), line
    assert "ranker train --resume" in line
    _resumed(config, 8, uninterrupted)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_max_restarts_resumes_by_itself(tiny: Path, uninterrupted: dict, tmp_path: Path) -> None:
    marker = tmp_path / "died-once"
    config = tiny_train_config(tmp_path, tiny, "run")
    out = _ok(_cli(config, "--max-restarts", "1", env={"RANKER_FAULT": f"kill:1:10:{marker}"}))
    assert marker.exists()
    assert "resume from step 8" in out.stdout
    _same_result(tmp_path / "run", uninterrupted)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_stuck_rank_ends_the_job_after_the_timeout(tiny: Path, tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, tiny, "run", dist_timeout=10)
    started = time.time()
    line = _error_line(_cli(config, env={"RANKER_FAULT": "hang:1:5"}, timeout=600))
    assert time.time() - started < 300
    assert "training failed: rank 0 exited with code 1" in line and "timed out" in line.lower(), line


@pytest.mark.e2e
@pytest.mark.dist
def test_second_run_into_the_same_out_dir_is_refused(tiny: Path, tmp_path: Path) -> None:
    """While a job trains, a second one into its out_dir refuses at once; the first finishes undisturbed."""
    config = tiny_train_config(tmp_path, tiny, "run")
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "first.log").open("w")  # a file, not a pipe, that no one reads while the second runs
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    lock = tmp_path / "run" / launch.LOCK
    # Until the first job holds the lock there is nothing to test; on a loaded CI machine its imports alone can take
    # minutes (a 120 s wait once let the second job start first and train).
    deadline = time.time() + 600
    while not (lock.exists() and lock.read_text().strip()) and time.time() < deadline:
        assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        time.sleep(0.2)
    assert lock.exists() and lock.read_text().strip() == str(first.pid), "the first job never took the lock"
    line = _error_line(_cli(config, timeout=300))
    assert first.poll() is None, "the first job ended before the second tried: nothing was tested"
    assert line.startswith(f"ranker: error: out_dir {tmp_path / 'run'} is in use by another training run"), line
    assert f"pid {first.pid}" in line
    assert first.wait(timeout=900) == 0, (tmp_path / "first.log").read_text()[-3000:]
    log.close()
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == STEPS


def test_listening_sockets_are_read_from_proc() -> None:
    with (
        socket.create_server(("0.0.0.0", 0)) as everywhere,
        socket.create_server(("::1", 0), family=socket.AF_INET6) as local,
    ):
        found = listening([os.getpid()])
        assert (os.getpid(), "0.0.0.0", everywhere.getsockname()[1]) in found
        assert (os.getpid(), "::1", local.getsockname()[1]) in found


@pytest.mark.e2e
@pytest.mark.dist
def test_one_node_job_listens_on_loopback_only(tiny: Path, tmp_path: Path) -> None:
    """Every socket a one-node job listens on (torchrun's agent, rank 0's store, the ranks' gloo pairs) is bound
    to a loopback address; nothing is reachable from another machine."""
    marker = tmp_path / "hung"  # rank 1 creates it when it hangs after step 2: every rank is in the group by then
    config = tiny_train_config(tmp_path, tiny, "run", dist_timeout=60)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RANKER_FAULT": f"hang:1:2:{marker}"}
    env.pop("GLOO_SOCKET_IFNAME", None)  # set for the tests (conftest); the launcher must choose loopback itself
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), "--nproc", "2"]
    log = (tmp_path / "job.log").open("w")
    job = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    tree: list[int] = []
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert job.poll() is None and time.time() < deadline, (tmp_path / "job.log").read_text()[-3000:]
            time.sleep(0.2)
        tree = [job.pid, *descendants(job.pid)]
        sockets = listening(tree)
    finally:
        for pid in reversed(tree or [job.pid]):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        job.wait()
        log.close()
    assert len(tree) >= 4, tree  # the launcher, torchrun's agent and two ranks
    listeners = {pid for pid, _, _ in sockets}
    # tree[1] is torchrun's agent: it listens on nothing; the two ranks do (rank 0's store, gloo).
    assert len(listeners) == 2 and not listeners & {job.pid, tree[1]}, (tree, sockets)
    assert all(ipaddress.ip_address(address).is_loopback for _, address, _ in sockets), sockets


@pytest.mark.unit
def test_lock_of_a_killed_holder_is_not_stale(tmp_path: Path) -> None:
    """A holder killed with SIGKILL leaves its lock file behind, but the kernel released the lock itself."""
    code = (
        "import sys, time; from pathlib import Path; from pipelines.launch import exclusive\n"
        f"with exclusive(Path({str(tmp_path)!r})):\n    print('held', flush=True); time.sleep(600)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(ValueError, match=f"in use by another training run \\(pid {holder.pid} "):
        with launch.exclusive(tmp_path):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with launch.exclusive(tmp_path):  # taken at once: no stale lock to clear by hand
        assert (tmp_path / launch.LOCK).read_text().strip() == str(os.getpid())


def _fill(folder: Path) -> None:
    """Writes into ``folder`` until its file system is full (the real ENOSPC)."""
    with (folder / "filler").open("wb") as f, pytest.raises(OSError, match="No space left"):
        while True:
            f.write(b"\0" * (1 << 16))
            f.flush()


@pytest.fixture
def small_disk(tmp_path: Path):
    folder = tmp_path / "disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); the disk-full test needs one")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_disk_full_while_checkpointing_and_exporting(tiny: Path, small_disk: Path) -> None:
    from features.processor import FeatureMap
    from pipelines.train import load_config
    from ranker import export

    config = tiny_train_config(small_disk, tiny, "run")
    _ok(_cli(config, env={"RANKER_STOP_AT_STEP": "4"}))
    ckpts = small_disk / "run" / "checkpoints"
    exported = export.export_checkpoint(
        ckpts / "step-00000004", FeatureMap.load(tiny), tiny, load_config(config).model, {}, small_disk / "export"
    )
    before = (exported / export.MODEL_FILE).read_bytes()
    _fill(small_disk)
    line = _error_line(_cli(config, "--resume"))
    assert f"checkpoint {ckpts / 'step-00000007'}: could not be saved" in line and "No space left" in line, line
    checkpoints.verify(ckpts / "step-00000004")  # the previous one is intact
    assert checkpoints.complete(ckpts) == [ckpts / "step-00000004"]
    with pytest.raises(OSError, match=f"export {small_disk / 'export'}: could not be written .* bytes free"):
        export.export_checkpoint(
            ckpts / "step-00000004", FeatureMap.load(tiny), tiny, load_config(config).model, {}, small_disk / "export"
        )
    assert sorted(p.name for p in small_disk.iterdir()) == ["export", "filler", "run", "run.yaml"]
    assert (exported / export.MODEL_FILE).read_bytes() == before  # the previous export is untouched
    export.load_exported(exported)


@pytest.mark.e2e
@pytest.mark.slow
def test_feature_build_killed_midway_then_rerun(tmp_path: Path) -> None:
    schema = write_tiny_dataset(tmp_path / "raw", n=200_000)
    out = tmp_path / "features"
    code = f"from pipelines.build_features import build_features; build_features({str(schema)!r}, {str(out)!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".features.partial-*/feature_map.json")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # mid-way: fitted, transforming
    proc.wait()
    assert list(tmp_path.glob(".features.partial-*")), "the kill came too late to test anything"
    assert not out.exists()  # nothing a later step could take as finished
    manifest = build_features(schema, out, progress=False)
    assert manifest["step"] == "features" and (out / "manifest.json").exists()


@pytest.mark.e2e
def test_training_refuses_features_whose_data_changed(tiny: Path, tmp_path: Path) -> None:
    from pipelines.train import load_config, preflight

    config = load_config(tiny_train_config(tmp_path, tiny, "run"))
    preflight(config)
    raw = tiny.parent / "raw" / "valid.parquet"
    stamp = raw.stat()
    raw.write_bytes(raw.read_bytes() + b"\0")
    try:
        with pytest.raises(ValueError, match=rf"no longer match their data.*{raw.name} \(size or modification"):
            preflight(config)
    finally:
        raw.write_bytes(raw.read_bytes()[:-1])
        os.utime(raw, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    preflight(config)


@pytest.mark.unit
def test_a_file_that_is_not_a_model_is_refused(tiny: Path, tmp_path: Path) -> None:
    from features.processor import FeatureMap
    from ranker import export
    from ranker.build import ModelConfig, build_ranker

    fmap = FeatureMap.load(tiny)
    model = build_ranker(fmap, ModelConfig(embedding_dim=8))
    folder = tmp_path / "export"
    folder.mkdir()
    for name in ("feature_map.json", "vocab"):
        (folder / name).symlink_to(tiny / name)
    (folder / "model_config.json").write_text(json.dumps({"embedding_dim": 8}))
    torch.save(model.state_dict(), folder / export.MODEL_FILE)
    export.load_exported(folder)
    for payload, reason in (
        (b"PK\x03\x04 not a torch file", "does not load as plain tensors"),
        ({"weights": [1, 2]}, "not a state dict of tensors"),
        ({"other.weight": torch.zeros(2)}, "weight\\(s\\) missing"),
    ):
        if isinstance(payload, bytes):
            (folder / export.MODEL_FILE).write_bytes(payload)
        else:
            torch.save(payload, folder / export.MODEL_FILE)
        with pytest.raises(ValueError, match=f"{folder / export.MODEL_FILE} is not the model file.*{reason}"):
            export.load_exported(folder)


@pytest.mark.unit
def test_no_secrets_in_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import tracking

    monkeypatch.setenv("RANKER_RUNS", str(tmp_path / "runs"))
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI to the process environment; setting it through
    # monkeypatch first makes the teardown remove it again, so later tests' subprocesses do not inherit this store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking.default_uri(tmp_path / "runs"))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value")
    params = {"db": {"password": "pw-value", "host": "127.0.0.1"}, "api_token": "tok-value", "lr": 0.1}
    run = tracking.start_run("secrets", tmp_path / "out")
    tracking.log_params(params)
    tracking.end_run()
    import mlflow

    logged = mlflow.get_run(run.info.run_id).data.params
    assert logged == {"db.password": "[redacted]", "db.host": "127.0.0.1", "api_token": "[redacted]", "lr": "0.1"}
    stored = b"".join(p.read_bytes() for p in (tmp_path / "runs").rglob("*") if p.is_file())
    for secret in (b"pw-value", b"tok-value", b"env-secret-value"):
        assert secret not in stored


def _resources() -> tuple[int, int, int]:
    """Open files, threads and resident bytes of this process."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    rss = int(status["VmRSS"].split()[0]) * 1024
    return len(os.listdir("/proc/self/fd")), int(status["Threads"]), rss


SOAK_RUNS = int(os.environ.get("RANKER_SOAK_RUNS", 20))


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(300 * SOAK_RUNS)  # 30 s to 3 min a run on a busy shared 2-core machine
def test_soak_consecutive_runs_do_not_grow(tiny: Path, tmp_path: Path) -> None:
    """SOAK_RUNS short training (2 ranks, launched from here) + in-process evaluation runs: this process's open
    files, threads and RSS after the last run are within 10% of those after the second (the first warms caches)."""
    from pipelines.evaluate import evaluate_model
    from pipelines.metrics import EvalConfig

    assert SOAK_RUNS >= 3
    seen = []
    for i in range(SOAK_RUNS):
        config = tiny_train_config(tmp_path, tiny, f"run{i}", epochs=1, max_steps=4)
        _ok(_cli(config))
        evaluate_model(
            tmp_path / f"run{i}" / "export", tiny, tmp_path / f"eval{i}", eval_config=EvalConfig(n_bootstrap=10)
        )
        seen.append(_resources())
        print(f"soak run {i + 1}: open files, threads, RSS bytes = {seen[-1]}")  # shown by `pytest -rP`
    (fds, threads, rss), (fds_end, threads_end, rss_end) = seen[1], seen[-1]
    assert fds_end <= fds * 1.1 and threads_end <= threads * 1.1, seen
    assert rss_end <= rss * 1.1, seen
