"""MLflow tracking of training: what a run records, a dead server before training, a server lost mid-run."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from pipelines.build_features import build_features
from pipelines.steps import read_manifest
from tests.helpers import descendants, write_tiny_dataset
from tests.helpers_mlflow import free_port, mlflow_server

ROOT = Path(__file__).parents[2]
RETRY_KEYS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tracking")
    build_features(write_tiny_dataset(root / "raw", n=400), root / "features", progress=False)
    return root / "features"


def _config(tmp_path: Path, features: Path, **overrides: object) -> Path:
    cfg = {
        "features": str(features),
        "out_dir": str(tmp_path / "run"),
        "model": {"interaction": "hiformer", "embedding_dim": 8, "interaction_kwargs": {"hiformer": {"num_layers": 1}}},
        "batch_size": 32,
        "epochs": 2,
        "eval_every": 4,
        "patience": 100,
        "experiment": "tracking-test",
        **overrides,
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _env(uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in RETRY_KEYS}
    return {**env, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1", **extra}


def _cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.mark.unit
def test_retry_bounds_leave_user_settings_alone() -> None:
    from pipelines import tracking

    env = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    tracking.bound_retries(env)
    assert env == {**tracking.RETRY_DEFAULTS, "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
    assert tracking.shown_uri("https://me:pw@mlflow.example:5000/x") == "https://mlflow.example:5000/x"


@pytest.mark.e2e
@pytest.mark.slow  # train + evaluate + compress, ~70 s (test_run's main job also logs to the embedded store)
def test_embedded_store_records_the_run_evaluation_and_compression(
    features: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No server: the SQLite store under $RANKER_RUNS holds what training, `evaluate` and `compress` logged."""
    import mlflow

    from common.config import from_dict
    from pipelines.compress import compress_export
    from pipelines.evaluate import evaluate_model
    from pipelines.metrics import EvalConfig
    from ranker.compress import CompressConfig

    env = {k: v for k, v in _env("").items() if k != "MLFLOW_TRACKING_URI"} | {"RANKER_RUNS": str(tmp_path / "runs")}
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(_config(tmp_path, features))]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test: MLflow exports it
    evaluate_model(run / "export", features, run / "eval", eval_config=EvalConfig(n_bootstrap=2))
    cfg = from_dict(CompressConfig, {"dense_dtype": "bfloat16", "serve": {"program": False}}, "test")
    compress_export(run / "export", cfg, tmp_path / "small")

    client = mlflow.MlflowClient(tracking_uri=results["mlflow"]["tracking_uri"])
    logged = client.get_run(results["mlflow"]["run_id"])
    assert logged.info.status == "FINISHED"
    assert logged.data.params["model.embedding_dim"] == "8" and logged.data.tags["host"]
    (dataset,) = logged.inputs.dataset_inputs
    assert dataset.dataset.digest == read_manifest(features)["fingerprint"]
    assert {t.key: t.value for t in dataset.tags}["rows.train"] == "400"
    history = [m.step for m in client.get_metric_history(logged.info.run_id, "valid.click.auc")]
    assert history == [h["step"] for h in results["history"]]
    assert logged.data.metrics["test.click.auc"] == pytest.approx(results["test"]["click/auc"])
    assert "eval.test.click.auc" in logged.data.metrics
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id)}
    assert {"results.json", "feature_map.json", "eval-test", "compress-small"} <= artifacts
    # The export is stored once, as the run's logged model, not also as a plain artifact of the run.
    assert "export" not in artifacts and results["model_uri"].startswith("models:/")
    model = Path(mlflow.artifacts.download_artifacts(results["model_uri"], dst_path=str(tmp_path / "model")))
    assert {"model.pt", "feature_map.json"} <= set(os.listdir(model / "artifacts" / "export"))
    assert {a.path for a in client.list_artifacts(logged.info.run_id, "eval-test")} == {
        "eval-test/metrics.json", "eval-test/summary.md", "eval-test/report.html"
    }  # fmt: skip
    assert [a.path for a in client.list_artifacts(logged.info.run_id, "compress-small")] == [
        "compress-small/compression.json"
    ]
    assert not (run / "mlflow_missed.jsonl").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("server", ["refuses", "never-answers"])
def test_dead_server_stops_the_job_before_training(features: Path, tmp_path: Path, server: str) -> None:
    """The job fails in the launching process with one line, within 30 s on an idle machine.

    Wall time on 2 shared cores says little (the same run takes 20 s idle and 150 s at load 10), so the bound is
    on what an idle machine would take: the process's CPU time plus MLflow's wait (which is sleeping on sockets).
    """
    port = free_port()
    with socket.socket() as listener:
        if server == "never-answers":  # the kernel accepts connections into the backlog; nobody ever reads them
            listener.bind(("127.0.0.1", port))
            listener.listen(16)
        cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(_config(tmp_path, features))]
        started, before = time.monotonic(), _children_cpu()
        out = subprocess.run(cmd, cwd=ROOT, env=_env(f"http://127.0.0.1:{port}"), capture_output=True, text=True,
                             timeout=600)  # fmt: skip
        seconds, cpu = time.monotonic() - started, _children_cpu() - before
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    waited = float(re.search(r"gave up after ([0-9.]+) s", lines[-1]).group(1))  # type: ignore[union-attr]
    print(f"{server}: the job failed after {seconds:.1f} s (CPU {cpu:.1f} s), of which MLflow waited {waited:.1f} s")
    assert waited < 20 and cpu + waited < 30, (cpu, waited, lines[-1])
    cause = "connection refused" if server == "refuses" else "read timed out"
    assert lines[-1].startswith(
        f"ranker: error: MLflow tracking store http://127.0.0.1:{port} does not answer ({cause}"
    )
    assert "Traceback" not in out.stderr and "[train]" not in out.stdout  # no rank ever started
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow
def test_server_lost_mid_run_costs_no_checkpoint(features: Path, tmp_path: Path) -> None:
    """The server is killed while rank 0 waits after step 5: later metrics go to the missed file, training ends."""
    import mlflow

    go = tmp_path / "go"
    with mlflow_server(tmp_path / "server") as server:
        cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(_config(tmp_path, features)),
               "--nproc", "2"]  # fmt: skip
        env = _env(server.uri, RANKER_FAULT=f"pause:0:5:{go}")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        log = []
        for line in proc.stdout:
            log.append(line)
            if "paused after step 5" in line:
                server.stop(signal.SIGKILL)
                assert not server.healthy()
                go.touch()
        code = proc.wait(timeout=600)
    text = "".join(log)
    assert code == 0, text[-4000:]
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 14
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*") if (p / "COMPLETE").exists())
    assert ckpts[-1] == "step-00000014"
    missed = [json.loads(line) for line in (run / "mlflow_missed.jsonl").read_text().splitlines()]
    metric_steps = [m["step"] for m in missed if m["kind"] == "metrics" and "valid.click.auc" in m["values"]]
    assert metric_steps == [h["step"] for h in results["history"] if h["step"] > 5]
    assert [m["kind"] for m in missed][-1] == "end" and any(m["kind"] == "artifact" for m in missed)
    summary = [line for line in log if line.startswith("[train] MLflow:")]
    assert len(summary) == 1 and f"{len(missed)} record(s) not logged" in summary[0], text[-3000:]
    # What reached the server before it died is in its store: params, tags, the dataset, step 4's metrics.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{server.db}")
    (logged,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert logged.data.params["batch_size"] == "32" and logged.data.tags["out_dir"] == str(run)
    assert logged.data.tags["mlflow.source.git.commit"] and logged.data.tags["version.torch"]
    (dataset,) = logged.inputs.dataset_inputs
    assert dataset.dataset.digest == read_manifest(features)["fingerprint"]
    assert [m.step for m in client.get_metric_history(logged.info.run_id, "valid.click.auc")] == [4]


@pytest.mark.e2e
# Ctrl-C takes the same abort path as SIGTERM once in Python (KeyboardInterrupt instead of SystemExit): slow, to keep
# the default suite under 15 minutes.
@pytest.mark.parametrize("stop", [pytest.param("ctrl-c", marks=pytest.mark.slow), "sigterm"])
def test_an_interrupted_run_ends_killed_not_running(features: Path, tmp_path: Path, stop: str) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) or SIGTERM to the rank (a scheduler's
    preemption) while rank 0 waits after step 3: the job fails and its MLflow run is KILLED, not left RUNNING."""
    import mlflow

    db = tmp_path / "mlflow.db"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--config", str(_config(tmp_path, features))]
    env = _env(f"sqlite:///{db}", RANKER_FAULT=f"pause:0:3:{tmp_path / 'never'}")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    assert proc.stdout is not None
    log = []
    try:
        for line in proc.stdout:
            log.append(line)
            if "paused after step 3" in line:
                if stop == "ctrl-c":
                    os.killpg(proc.pid, signal.SIGINT)
                else:
                    cmdlines = {p: _cmdline(p) for p in descendants(proc.pid)}
                    (rank,) = [p for p, c in cmdlines.items() if "pipelines.train" in c and "distributed.run" not in c]
                    os.kill(rank, signal.SIGTERM)
        code = proc.wait(timeout=300)
    finally:  # a failing test must not leave a job paused for ever
        if proc.poll() is None:
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    text = "".join(log)
    assert code != 0 and any("paused after step 3" in line for line in log), text[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("tracking-test").experiment_id])
    assert run.info.status == "KILLED", text[-3000:]
    assert run.info.end_time is not None
    if stop == "sigterm":
        assert log[-1].startswith("ranker: error: training failed: rank 0 was stopped by SIGTERM"), text[-3000:]
