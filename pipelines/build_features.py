"""The feature step: schema + raw parquet -> feature map + processed parquet per split (resumable)."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tqdm import tqdm

from features import processor
from features.schema import SPLITS, load_schema
from features.strict_yaml import to_dict
from pipelines import steps


def build_features(
    schema_path: Path,
    out_dir: Path,
    row_group_size: int = processor.DEFAULT_ROW_GROUP,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Fits on train and transforms every split the schema names; writes ``out_dir/manifest.json``.

    Returns the manifest; its ``results`` hold per-split row counts, quarantined rows and their reasons.
    """
    schema = load_schema(schema_path)
    out_dir = Path(out_dir)
    splits = [s for s in SPLITS if s in schema.files]
    inputs = [Path(schema_path)] + [p for s in splits for p in schema.split_files(s)]
    if schema.image:
        inputs += [schema.resolve(schema.image.items)] + (
            [schema.resolve(schema.image.array)] if schema.image.array else []
        )
    config = {"schema": to_dict(schema), "row_group_size": row_group_size}
    fp = steps.fingerprint(config, inputs)
    if not force and steps.is_complete(out_dir, "features", fp):
        return steps.read_manifest(out_dir) or {}
    started = time.time()
    fmap = processor.fit(schema, out_dir)
    reports = {}
    for split in tqdm(splits, desc=f"transform {schema.name}", disable=not progress, unit="split"):
        reports[split] = asdict(processor.transform(schema, out_dir, split, fmap, row_group_size=row_group_size))
    results = {
        "schema_name": schema.name,
        "splits": reports,
        "rows_quarantined": sum(r["rows_quarantined"] for r in reports.values()),
        "num_embeddings": {s.name: s.num_embeddings for s in fmap.sparse},
        "dense": fmap.dense_names,
        "labels": list(fmap.labels),
    }
    return steps.write_manifest(out_dir, "features", fp, config, results, started)
