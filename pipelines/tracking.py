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
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

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


# -- Packaging: an export as an MLflow pyfunc model ------------------------------------------------------------------

MODEL_NAME = "ranker"  # the LoggedModel's name within a run
EXPORT_ARTIFACT = "export"  # key (and folder under the model's artifacts/) of the export folder
_PYFUNC_PACKAGES = ("torch", "torchrec", "fbgemm-gpu-cpu", "polars", "pyarrow", "pandas", "numpy", "mlflow", "timm")


class RankerPyfunc(mlflow.pyfunc.PythonModel):
    """An export as a pyfunc model: raw columns in (pandas, as MLflow passes them), ``score_<task>`` columns out.

    The export folder travels as the model's artifact; scoring is :class:`ranker.predict.Predictor`, the same
    feature transform as training, so ``predict`` needs no labels and no feature build. Unknown categories map to the
    out-of-vocabulary id; a missing column or a wrong type is a ``DataError`` naming the column.
    """

    def load_context(self, context: Any) -> None:
        from ranker.predict import Predictor

        self.predictor = Predictor(context.artifacts[EXPORT_ARTIFACT])

    # pandas hints: MLflow infers no signature from them (the explicit one stands) and stops asking for hints.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from features.validate import DataError

        if len(model_input) == 0:  # a 4xx for a request without rows, rather than an empty 200
            raise DataError("model input: no rows to score")
        scores = self.predictor.predict(model_input, where="model input")  # (B, K)
        return pd.DataFrame({f"score_{t}": scores[:, k].astype("float64") for k, t in enumerate(self.predictor.tasks)})


def _mlflow_type(dtype: str) -> Any:
    from mlflow.types import DataType
    from mlflow.types.schema import Array

    if dtype.startswith("List("):
        return Array(_mlflow_type(dtype[5:-1]))
    if dtype.startswith(("Int", "UInt")):
        return DataType.long
    if dtype.startswith("Float"):
        return DataType.double
    if dtype == "Boolean":
        return DataType.boolean
    return DataType.string


def model_signature(export_dir: Path) -> Any:
    """Inputs: the export's raw input columns in their training types; outputs: one double score per task."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    from features.processor import FeatureMap

    fmap = FeatureMap.load(export_dir)
    if not fmap.input_dtypes:
        raise ValueError(f"{export_dir}: the feature map predates recorded input types; rebuild the features")
    inputs = Schema([ColSpec(_mlflow_type(fmap.input_dtypes[c]), c) for c in fmap.input_columns])
    outputs = Schema([ColSpec("double", f"score_{t}") for t in fmap.labels])
    return ModelSignature(inputs=inputs, outputs=outputs)


def _requirements() -> list[str]:
    from importlib import metadata

    pins = []
    for name in _PYFUNC_PACKAGES:
        try:
            pins.append(f"{name}=={metadata.version(name).split('+')[0]}")
        except metadata.PackageNotFoundError:
            continue
    return pins


# Models-from-code: MLflow runs this file to build the model, so nothing is pickled; it is written at log time
# (not a repository module) so that pipelines/tracking.py stays the one module importing mlflow.
_MODEL_CODE = """import mlflow

from pipelines.tracking import RankerPyfunc

mlflow.models.set_model(RankerPyfunc())
"""


def log_model(export_dir: Path, input_example: Any | None, registered_name: str | None = None) -> Any:
    """Logs ``export_dir`` as a pyfunc LoggedModel (in the active run, if any); returns MLflow's ``ModelInfo``.

    ``input_example``: a few raw rows (pandas) stored with the model, or None; ``info.model_uri`` is
    ``models:/m-...``. The project's packages travel as ``code_paths``, so a fresh process needs only the pinned
    requirements.
    """
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "ranker_model.py"
        code.write_text(_MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(code),
            artifacts={EXPORT_ARTIFACT: str(export_dir)},
            signature=model_signature(export_dir),
            input_example=input_example,
            code_paths=[str(root / p) for p in ("features", "ranker", "vision_towers", "pipelines")],
            pip_requirements=_requirements(),
            registered_model_name=registered_name,
        )


# -- Registry: versions, aliases and tags of registered models --------------------------------------------------------


def connect() -> str:
    """Points MLflow at ``$MLFLOW_TRACKING_URI`` (or the default store under ``$RANKER_RUNS``); returns the URI."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_uri(Path(os.environ.get("RANKER_RUNS", "runs")))
    mlflow.set_tracking_uri(uri)
    return uri


def logged_model_exists(model_uri: str) -> bool:
    """Whether ``models:/m-...`` names a LoggedModel of the current tracking store."""
    model_id = model_uri.removeprefix("models:/")
    if not model_id.startswith("m-"):
        return False
    try:
        mlflow.get_logged_model(model_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True


def register(model_uri: str, name: str, tags: dict[str, str]) -> int:
    """Registers ``model_uri`` under ``name`` (created on first use); returns the new version number."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    return int(version.version)


def aliases(name: str) -> dict[str, int]:
    """Alias -> version of the registered model ``name`` (the REST store returns strings, sqlite ints)."""
    try:
        model = mlflow.MlflowClient().get_registered_model(name)
    except mlflow.exceptions.MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ValueError(f"no registered model {name!r} at {mlflow.get_tracking_uri()}") from err
    return {alias: int(v) for alias, v in model.aliases.items()}


def set_alias(name: str, alias: str, version: int) -> None:
    mlflow.MlflowClient().set_registered_model_alias(name, alias, str(version))


def delete_alias(name: str, alias: str) -> None:
    mlflow.MlflowClient().delete_registered_model_alias(name, alias)


def version_tags(name: str, version: int) -> dict[str, str]:
    return dict(mlflow.MlflowClient().get_model_version(name, str(version)).tags)


def set_version_tags(name: str, version: int, tags: dict[str, str]) -> None:
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def load_predictor(model_uri: str) -> Any:
    """The :class:`ranker.predict.Predictor` of a logged ranker model (no per-row schema enforcement)."""
    return mlflow.pyfunc.load_model(model_uri).unwrap_python_model().predictor


def log_gate_run(
    experiment: str, run_name: str, tags: dict[str, str], metrics: dict[str, float], artifacts: list[Path]
) -> str:
    """Records one gate decision as a run of ``experiment``; returns the run id."""
    run = start_run(experiment, artifacts[0].parent, run_name=run_name)
    try:
        mlflow.set_tags(tags)
        if metrics:
            mlflow.log_metrics(metrics)
        for path in artifacts:
            log_artifact(path)
    finally:
        end_run()
    return str(run.info.run_id)


def gate_runs(experiment: str, name: str, version: int) -> list[dict[str, str]]:
    """Tags of every gate run of ``experiment`` that decided on version ``version`` of ``name``."""
    found = mlflow.search_runs(
        experiment_names=[experiment],
        filter_string=f"tags.`gate.model` = '{name}' and tags.`gate.version` = '{version}'",
        output_format="list",
    )
    return [dict(r.data.tags) for r in found]
