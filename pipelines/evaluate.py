"""The evaluation step: exported model + processed split -> predictions parquet -> metrics, summary and report.

Scoring streams the processed parquet row group by row group (bounded memory) and writes one predictions row per
input row, in input order: ``group_id``, ``item_id``, ``label_<task>``, ``score_<task>``, ``is_cold`` (when the data
has items), ``is_cold_<entity>`` per cold entity of the feature map (group, item, declared entities) and the
schema's slice columns. Metrics, ``summary.md`` and ``report.html`` come from the predictions
alone (``pipelines.metrics``, ``pipelines.report``).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from features.loader import BatchBuilder
from features.processor import COLD_PREFIX, FEATURE_MAP, SLICE_PREFIX, FeatureMap, processed_files
from pipelines import metrics as M
from pipelines import steps
from pipelines.report import run_evaluation
from ranker.export import load_exported

PREDICTIONS = "predictions.parquet"


def score_split(export_dir: Path, features_dir: Path, split: str, out_path: Path, batch_size: int = 8192) -> int:
    """Writes the predictions parquet of ``split``; returns the number of rows scored."""
    model_map = json.loads((export_dir / FEATURE_MAP).read_text())
    data_map = json.loads((features_dir / FEATURE_MAP).read_text())
    if model_map != data_map:
        raise ValueError(
            f"{features_dir / FEATURE_MAP} differs from the model's {export_dir / FEATURE_MAP}: the split was "
            "transformed by another feature pipeline; transform it with the model's feature map first"
        )
    fmap = FeatureMap.load(export_dir)
    model = load_exported(export_dir)
    files = processed_files(features_dir, split)
    available = pq.ParquetFile(files[0]).schema_arrow.names
    builder = BatchBuilder(fmap, available)
    slices = [f"{SLICE_PREFIX}{c}" for c in fmap.slices if f"{SLICE_PREFIX}{c}" in available]
    cold = [f"{COLD_PREFIX}{e}" for e in fmap.cold_entities if f"{COLD_PREFIX}{e}" in available]
    writer: pq.ParquetWriter | None = None
    rows = 0
    total = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    with torch.no_grad(), tqdm(total=total, desc=f"score {split}", unit="row", unit_scale=True) as bar:
        for path in files:
            source = pq.ParquetFile(path)
            for group in range(source.metadata.num_row_groups):
                table = source.read_row_group(group, columns=builder.columns + slices + cold)
                for lo in range(0, table.num_rows, batch_size):
                    part = table.slice(lo, batch_size)
                    batch = builder(part)
                    probs = torch.sigmoid(model(batch)).numpy()  # (B, K)
                    columns: dict[str, Any] = {"group_id": batch.group_ids.numpy(), "item_id": batch.item_ids.numpy()}
                    for k, task in enumerate(fmap.labels):
                        columns[f"label_{task}"] = batch.labels[:, k].numpy().astype("int8")
                        columns[f"score_{task}"] = probs[:, k]
                    if fmap.item:
                        columns["is_cold"] = batch.is_cold.numpy()
                    for name in slices:
                        columns[name.removeprefix(SLICE_PREFIX)] = part.column(name)
                    for name in cold:
                        columns[name] = part.column(name)
                    out = pa.table(columns)
                    if writer is None:
                        writer = pq.ParquetWriter(out_path, out.schema, compression="zstd")
                    writer.write_table(out)
                    rows += part.num_rows
                    bar.update(part.num_rows)
    if writer is not None:
        writer.close()
    return rows


def _training_curves(run_dir: Path) -> list[dict[str, float]] | None:
    results = run_dir / "results.json"
    if not results.exists():
        return None
    history = json.loads(results.read_text()).get("history", [])
    return [{k.replace("/", " "): v for k, v in row.items() if k != "epoch"} for row in history]


def evaluate_model(
    export_dir: Path,
    features_dir: Path,
    out_dir: Path,
    split: str = "test",
    eval_config: M.EvalConfig | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Scores ``split`` with the exported model and writes predictions, metrics.json, summary.md and report.html."""
    export_dir, features_dir, out_dir = Path(export_dir), Path(features_dir), Path(out_dir)
    cfg = eval_config or M.EvalConfig()
    config = {"export": str(export_dir.resolve()), "features": str(features_dir.resolve()), "split": split,
              "eval": asdict(cfg)}  # fmt: skip
    fp = steps.fingerprint(config, [export_dir / "model.pt", *processed_files(features_dir, split)])
    if not force and steps.is_complete(out_dir, "evaluate", fp):
        return steps.read_manifest(out_dir) or {}
    started = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = out_dir / PREDICTIONS
    rows = score_split(export_dir, features_dir, split, predictions)
    fmap = FeatureMap.load(export_dir)
    model_config = json.loads((export_dir / "model_config.json").read_text())
    map_id = steps.fingerprint(json.loads((export_dir / FEATURE_MAP).read_text()))
    data_version = f"{fmap.schema_name} / {split} / feature map {map_id}"
    paths = run_evaluation(
        predictions,
        out_dir,
        slice_columns=list(fmap.slices),
        eval_config=cfg,
        model_config=model_config,
        data_version=data_version,
        training_curves=_training_curves(export_dir.parent),
    )
    metrics = json.loads(paths["json"].read_text())
    overall = {t: (e.get("metrics") or {}) for t, e in metrics["overall"]["tasks"].items()}
    results = {
        "rows": rows,
        "predictions": str(predictions),
        "report": str(paths["report"]),
        "metrics_json": str(paths["json"]),
        "summary": str(paths["markdown"]),
        "overall": {
            t: {k: v.get("value") if isinstance(v, dict) else v for k, v in m.items()} for t, m in overall.items()
        },
    }
    manifest = steps.write_manifest(out_dir, "evaluate", fp, config, results, started)
    _log_to_training_run(export_dir.parent, split, results["overall"], paths)
    return manifest


def _log_to_training_run(run_dir: Path, split: str, overall: dict[str, dict[str, Any]], paths: dict[str, Path]) -> None:
    """Metrics, metrics.json, summary.md and report.html into the MLflow run that trained the model, if any."""
    if not (run_dir / "results.json").exists():
        return
    from pipelines import tracking

    metrics = {f"eval.{split}.{task}.{k}": v for task, values in overall.items() for k, v in values.items()}
    artifacts = [paths["json"], paths["markdown"], paths["report"]]
    line = tracking.log_to_training_run(run_dir, metrics, artifacts, f"eval-{split}")
    if line:
        print(f"[evaluate] {line}", flush=True)
