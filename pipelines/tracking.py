"""MLflow tracking: the only module that imports mlflow.

The tracking store defaults to a SQLite database and artifact folder under ``./runs`` (MLflow 3 deprecates the
file store); ``$MLFLOW_TRACKING_URI`` points it elsewhere, e.g. at an ``mlflow server`` on 127.0.0.1.
Secrets never reach MLflow: parameters are the run's config, and a value whose key looks like a credential
(password, token, secret, key, credential, auth) is replaced by ``[redacted]``; environment variables are never
logged, and a URI is shown without its user and password.

MLflow's HTTP client retries a dead server for about 4 minutes (connection refused) or 20 minutes (a server that
accepts and never answers) by default. :func:`bound_retries` sets tighter defaults (:data:`RETRY_DEFAULTS`) for a
job's processes, leaving every value the user set; :func:`check_store` is the launching process's check that the
store answers, so that a dead server stops a job before training, in seconds, with one line.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import mlflow
import pandas as pd

# MLflow's INFO lines (a model version created, the SQLite store's schema migrations) and the artifact download
# progress bar (log_model downloads the model again to check its input example) tell a user nothing to act on;
# MLflow's warnings still show. Set in the environment too, so the processes a job starts inherit it; a value the
# user set wins.
if "MLFLOW_LOGGING_LEVEL" not in os.environ:
    os.environ["MLFLOW_LOGGING_LEVEL"] = "WARNING"
    logging.getLogger("mlflow").setLevel(logging.WARNING)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

_MAX_PARAM = 500
# 3 attempts of at most 4 s each, with 0 s and 2 s (+ up to 1 s jitter) between them: a server that accepts and
# never answers is given up after about 15 s, a refused connection after about 3 s. MLflow's requests are small
# (an artifact upload's timeout counts from the end of its body), so 4 s without an answer means a dead server.
RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "4",
}
_VERSIONED = ("torch", "torchrec", "polars", "pyarrow", "mlflow")


def default_uri(root: Path = Path("runs")) -> str:
    return f"sqlite:///{root.resolve() / 'mlflow.db'}"


def bound_retries(env: MutableMapping[str, str] = os.environ) -> None:
    """Sets :data:`RETRY_DEFAULTS` in ``env`` where the user has not set them (child processes inherit them)."""
    for key, value in RETRY_DEFAULTS.items():
        env.setdefault(key, value)


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the SQLite store under ``$RANKER_RUNS`` (default ``runs``)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_uri(Path(os.environ.get("RANKER_RUNS", "runs")))


def is_server(uri: str) -> bool:
    """Whether ``uri`` names a tracking server (HTTP), rather than a store on this machine's file system."""
    return urlsplit(uri).scheme in ("http", "https")


def shown_uri(uri: str) -> str:
    """``uri`` without a user or password, for messages and records."""
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def connect() -> str:
    """Points MLflow at :func:`tracking_uri` with bounded retries (the default store's folder created); its URI."""
    bound_retries()
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        Path(os.environ.get("RANKER_RUNS", "runs")).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    return uri


def _use_experiment(experiment: str) -> str:
    """Points MLflow at :func:`tracking_uri` and creates ``experiment`` if needed; returns the URI."""
    uri = connect()
    root = Path(os.environ.get("RANKER_RUNS", "runs"))
    if mlflow.get_experiment_by_name(experiment) is None:
        artifacts = (root / "mlartifacts").resolve().as_uri() if uri.startswith("sqlite:") else None
        mlflow.create_experiment(experiment, artifact_location=artifacts)
    mlflow.set_experiment(experiment)
    return uri


_CAUSES = (
    "Connection refused",
    "Read timed out",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
    "Connection reset by peer",
    "Remote end closed connection without response",
)


def failure_reason(err: BaseException) -> str:
    """A short reason for a failed MLflow call: the network cause when there is one, else the first line."""
    text = str(err)
    for cause in _CAUSES:
        if cause in text:
            return cause.lower()
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(err).__name__}: {first[:200]}"


def _ping() -> str:
    uri = connect()
    mlflow.search_experiments(max_results=1)
    return uri


def check_store(experiment: str | None = None) -> None:
    """Raises ``ValueError`` (one line) unless the tracking store answers; creates ``experiment`` there if given.

    Runs in the launching process before any rank starts, with :func:`bound_retries` applied, so a dead server
    ends the job in seconds instead of after MLflow's default retries.
    """
    started = time.monotonic()
    retries = logging.getLogger("urllib3.connectionpool")  # its "Retrying ..." lines: the error below sums them up
    level = retries.level
    retries.setLevel(logging.ERROR)
    try:
        uri = _use_experiment(experiment) if experiment else _ping()
    except Exception as err:  # MlflowException, or a requests error the REST client lets through
        settings = ", ".join(f"{k.removeprefix('MLFLOW_HTTP_REQUEST_')}={os.environ[k]}" for k in RETRY_DEFAULTS)
        raise ValueError(
            f"MLflow tracking store {shown_uri(tracking_uri())} does not answer ({failure_reason(err)}; gave up "
            f"after {time.monotonic() - started:.1f} s with {settings}); start the server, fix "
            "MLFLOW_TRACKING_URI, or train without tracking (--set tracking=false)"
        ) from None
    finally:
        retries.setLevel(level)
    mlflow.set_tracking_uri(uri)


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def run_tags() -> dict[str, str]:
    """Where the run ran: git commit (in a git checkout), host, Python and the main packages' versions."""
    tags = {"host": platform.node(), "version.python": platform.python_version()}
    for name in _VERSIONED:
        try:
            tags[f"version.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def start_run(experiment: str, out_dir: Path, run_name: str | None = None) -> Any:
    """Starts a run (creating the experiment if needed), tagged with :func:`run_tags` and ``out_dir``."""
    _use_experiment(experiment)
    return mlflow.start_run(run_name=run_name, tags={"out_dir": str(out_dir), **run_tags(), **parent_run_tags()})


def run_record(run: Any) -> dict[str, str]:
    """What finds ``run`` again later (``ranker evaluate`` logs to the training run): id, experiment, store."""
    return {
        "run_id": run.info.run_id,
        "experiment_id": run.info.experiment_id,
        "tracking_uri": shown_uri(tracking_uri()),
    }


def log_features(features_dir: Path, context: str = "training") -> None:
    """Logs the processed feature folder as the run's dataset input, without reading the data.

    The digest is the feature build's fingerprint (``manifest.json``: schema, config and raw input files), so two
    runs on the same build share it; the tags hold the row counts per split.
    """
    from pipelines import steps

    manifest = steps.read_manifest(features_dir) or {}
    fmap = json.loads((features_dir / "feature_map.json").read_text())
    digest = manifest.get("fingerprint") or steps.fingerprint(fmap)
    splits = (manifest.get("results") or {}).get("splits") or {}
    tags = {f"rows.{split}": str(rep["rows_out"]) for split, rep in splits.items()}
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    source = LocalArtifactDatasetSource(str(features_dir.resolve()))
    mlflow.log_input(MetaDataset(source, name=fmap["schema_name"], digest=digest), context=context, tags=tags)


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


_UNSAFE = re.compile(r"[^\w\-. :]")  # MLflow also allows "/", which we turn into "." (valid/auc -> valid.auc)


def numeric_metrics(values: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of ``values`` under MLflow-safe names; ``None`` is left out.

    ``/`` becomes ``.``, ``@`` becomes ``_at`` (``ndcg@10`` -> ``ndcg_at10``), anything else MLflow refuses ``_``.
    """
    safe = {k: _UNSAFE.sub("_", k.replace("/", ".").replace("@", "_at")) for k in values}
    return {safe[k]: float(v) for k, v in values.items() if isinstance(v, int | float)}


def log_metrics(values: dict[str, Any], step: int) -> None:
    numeric = numeric_metrics(values)
    if numeric:
        mlflow.log_metrics(numeric, step=step)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    if path.is_dir():
        mlflow.log_artifacts(str(path), artifact_path=f"{artifact_path}/{path.name}" if artifact_path else path.name)
    else:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


def end_run(status: str = "FINISHED") -> None:
    """Ends the active run as ``FINISHED``, ``FAILED`` or ``KILLED`` (MLflow's run statuses)."""
    mlflow.end_run(status)


def log_to_training_run(run_dir: Path, metrics: dict[str, Any], artifacts: list[Path], artifact_path: str) -> str:
    """Adds ``metrics`` and ``artifacts`` (under ``artifact_path``) to the training run of ``run_dir``, if tracked.

    The run is the one ``run_dir/results.json`` records (``mlflow``: :func:`run_record`); the store is
    ``$MLFLOW_TRACKING_URI`` if set, else the recorded one. Returns one line saying where the outputs went, or why
    not (a step's outputs never depend on MLflow); empty when the run was not tracked.
    """
    results = run_dir / "results.json"
    record = json.loads(results.read_text()).get("mlflow") if results.exists() else None
    if not record:
        return ""
    bound_retries()
    try:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI") or record["tracking_uri"])
        with mlflow.start_run(run_id=record["run_id"]):
            log_metrics(metrics, step=0)
            for path in artifacts:
                log_artifact(path, artifact_path)
    except Exception as err:  # a dead store must not fail the step whose outputs are already written
        return f"MLflow: not logged to training run {record['run_id']} ({failure_reason(err)})"
    return f"MLflow: logged to training run {record['run_id']} under {artifact_path}/"


_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[0-9]+))?$")


def download_export(uri: str, dst: Path) -> tuple[Path, dict[str, str]]:
    """Downloads the export folder of the pyfunc model ``uri`` into ``dst``; returns it and what was resolved.

    ``uri``: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/m-<id>`` (a LoggedModel). An alias is
    resolved once, to a version, before the download, so a promotion during the download cannot mix two models.
    Only the export travels (not the model's code or environment): the caller scores with
    :class:`ranker.predict.Predictor`, without pyfunc's per-row input checks. Raises ``ValueError`` (one line).
    """
    match = _MODEL_URI.match(uri)
    if match is None:
        raise ValueError(f"--model {uri}: expected models:/NAME@ALIAS, models:/NAME/VERSION or models:/m-<id>")
    bound_retries()
    mlflow.set_tracking_uri(tracking_uri())
    name, alias, version = match["name"], match["alias"], match["version"]
    info = {"requested": uri, "uri": uri, "name": name, "version": version or ""}
    try:
        if alias or version:
            client = mlflow.MlflowClient()
            found = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
            info.update(uri=f"models:/{name}/{found.version}", version=str(found.version), source=str(found.source))
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{info['uri']}/artifacts/{EXPORT_ARTIFACT}", dst_path=str(dst)
        )
    except Exception as err:  # MlflowException (unknown name, alias or version), or a dead store
        raise ValueError(
            f"--model {uri}: could not be resolved in the MLflow store {shown_uri(tracking_uri())} "
            f"({failure_reason(err)})"
        ) from None
    return Path(local), info


def spark_udf(spark: Any, uri: str) -> tuple[Any, list[str]]:
    """The pyfunc model ``uri`` as a Spark UDF run in this interpreter's environment, and its input column names.

    ``env_manager="local"``: executors use ``PYSPARK_PYTHON`` (which must have the project installed) rather than
    building a virtualenv per executor. The UDF returns a struct of ``score_<task>`` doubles (the signature).
    """
    bound_retries()
    mlflow.set_tracking_uri(tracking_uri())
    udf = mlflow.pyfunc.spark_udf(spark, uri, env_manager="local")
    signature = mlflow.models.get_model_info(uri).signature
    return udf, signature.inputs.input_names()


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
            code_paths=[str(root / p) for p in ("common", "features", "ranker", "vision_towers", "pipelines")],
            pip_requirements=_requirements(),
            registered_model_name=registered_name,
        )


# -- Registry: versions, aliases and tags of registered models --------------------------------------------------------


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


def version_exists(name: str, version: int) -> bool:
    """Whether version ``version`` of the registered model ``name`` exists in the current store."""
    try:
        mlflow.MlflowClient().get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        return False
    return True


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


# -- Sweeps: one parent run per `ranker sweep`, each training run it launches a child --------------------------------

PARENT_RUN_ENV = "RANKER_MLFLOW_PARENT_RUN_ID"  # set by the sweep for the training runs it launches


def parent_run_tags() -> dict[str, str]:
    """MLflow's nesting tag for a run that a sweep launched (the sweep sets ``PARENT_RUN_ENV`` to its run id)."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    parent = os.environ.get(PARENT_RUN_ENV)
    return {MLFLOW_PARENT_RUN_ID: parent} if parent else {}


def start_parent_run(experiment: str, out_dir: Path, run_name: str, run_id: str | None = None) -> str:
    """Starts a sweep's run, or re-opens ``run_id`` so that a re-run sweep keeps one parent; returns the run's id.

    ``run_id`` goes through ``$MLFLOW_RUN_ID``, MLflow's own way to continue a run (``start_run`` reads and clears it);
    a run that is gone (deleted, or another store) gives way to a new one.
    """
    if run_id:
        os.environ["MLFLOW_RUN_ID"] = run_id
    try:
        return start_run(experiment, out_dir, run_name).info.run_id
    except mlflow.exceptions.MlflowException:
        os.environ.pop("MLFLOW_RUN_ID", None)
        return start_run(experiment, out_dir, run_name).info.run_id
