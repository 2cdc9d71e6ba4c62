"""Real ``mlflow server`` and ``mlflow models serve`` processes for tests, on 127.0.0.1 and a free port.

Both are started in a session of their own and stopped by their PID's process group (the server starts uvicorn
children), so nothing outlives the test session. See ../shared/reference/mlflow-serving.md for the measured
start-up times: about 8 s to ``/health`` with one worker and the job runner off, 5-7 s to ``/ping`` for serve, on an
idle machine; the deadline is 120 s because a 2-core machine under load 10 once took over 60 s.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
# Clients in tests give up on a dead server in seconds (MLflow's defaults retry for about 4 minutes).
CLIENT_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_ok(url: str, proc: subprocess.Popen[bytes], log: Path, deadline_s: float = 120.0) -> None:
    """Polls ``url`` until it answers 200; fails with the process's log when it exits or the deadline passes."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    stop(proc)
    raise TimeoutError(f"{url} not ready within {deadline_s:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group of ``proc`` (it and its children), SIGKILL after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


@contextmanager
def tracking_server(root: Path) -> Iterator[str]:
    """``mlflow server`` with a sqlite store and an artifact folder under ``root``; yields its URL."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    args = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    args += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")]
    proc = _start(args, root / "server.log", env)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/health", proc, root / "server.log")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


@contextmanager
def model_server(model_uri: str, tracking_uri: str, log: Path) -> Iterator[str]:
    """``mlflow models serve`` of ``model_uri`` (env-manager local); yields its URL."""
    port = free_port()
    # serve runs `exec uvicorn` by bare name, so the venv's bin must be on PATH.
    env = os.environ | CLIENT_ENV | {"MLFLOW_TRACKING_URI": tracking_uri}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    args = [str(VENV_BIN / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager", "local"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    proc = _start(args, log, env)
    try:
        wait_until_ok(f"http://127.0.0.1:{port}/ping", proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
