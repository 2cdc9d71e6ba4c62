"""MLflow tracking: the only module that imports mlflow.

The tracking store defaults to a SQLite database and artifact folder under ``./runs`` (MLflow 3 deprecates the
file store); ``$MLFLOW_TRACKING_URI`` points it elsewhere, e.g. at an ``mlflow server`` on 127.0.0.1.
Secrets never reach MLflow: parameters are the run's config, and a value whose key looks like a credential
(password, token, secret, key, credential, auth) is replaced by ``[redacted]``; environment variables are never
logged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import mlflow

_MAX_PARAM = 500


def default_uri(root: Path = Path("runs")) -> str:
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def start_run(experiment: str, out_dir: Path, run_name: str | None = None) -> Any:
    """Starts (or reuses) an experiment and a run; artifacts go beside the store unless the URI says otherwise."""
    root = Path(os.environ.get("RANKER_RUNS", "runs"))
    root.mkdir(parents=True, exist_ok=True)
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(root)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = (root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return mlflow.start_run(run_name=run_name, tags={"out_dir": str(out_dir)})


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_CREDENTIAL = re.compile(r"passw|secret|token|credential|auth|api.?key|private.?key|access.?key|(^|[._-])key$", re.I)
REDACTED = "[redacted]"


def redact(params: dict[str, Any]) -> dict[str, Any]:
    """Flattened ``params`` with the value of every credential-like key replaced by ``[redacted]``."""
    return {k: REDACTED if _CREDENTIAL.search(k) else v for k, v in _flatten(params).items()}


def log_params(params: dict[str, Any]) -> None:
    mlflow.log_params({k: str(v)[:_MAX_PARAM] for k, v in redact(params).items()})


def log_metrics(values: dict[str, Any], step: int) -> None:
    numeric = {k.replace("/", "."): float(v) for k, v in values.items() if isinstance(v, int | float) and v is not None}
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifact(path: Path) -> None:
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=path.name)
    else:
        mlflow.log_artifact(str(path))


def end_run() -> None:
    mlflow.end_run()
