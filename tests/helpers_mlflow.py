"""A real ``mlflow server`` on 127.0.0.1 for tests: free port, SQLite store, one worker, no GenAI job runner."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_DEADLINE_S = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MlflowServer:
    """``mlflow server`` in a process group of its own (uvicorn is a child: stopping means the whole group)."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.db = root / "mlflow.db"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        cmd = [
            str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", "1", "--backend-store-uri", f"sqlite:///{self.db}",
            "--artifacts-destination", str(root / "artifacts"),
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.log = (root / "server.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_DEADLINE_S
        while not self.healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Sends ``sig`` to the server's process group and waits for its leader."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.log.close()


@contextlib.contextmanager
def mlflow_server(root: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(root)
    try:
        yield server
    finally:
        server.stop()


def register_export(export_dir: Path, example: object, name: str, alias: str = "champion") -> None:
    """Logs ``export_dir`` as a pyfunc model in the current store, registers it as ``name`` and sets ``alias``.

    ``example``: a few raw rows (pandas). The store is ``$MLFLOW_TRACKING_URI`` (with ``$RANKER_RUNS`` for a
    SQLite store's artifacts), which the caller points at a temporary folder.
    """
    import mlflow

    from pipelines import tracking

    tracking.start_run("tests", export_dir.parent)  # creates the experiment with its artifact folder
    info = tracking.log_model(export_dir, example, registered_name=name)
    tracking.end_run()
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(info.registered_model_version))
