"""The feature step: schema + raw parquet -> feature map + processed parquet per split (resumable).

A schema's ``source:`` (raw tables) is first checked, joined, labelled and split (:mod:`features.source`); a
``files:`` schema names its splits directly. Either way the step writes into a temporary sibling folder and renames
it onto ``out_dir`` only when everything succeeded, so a failed build never leaves a folder that looks finished (a
previous complete build stays as it was).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl
from tqdm import tqdm

from common.config import to_dict
from features import processor, source
from features.schema import SPLITS, Schema, load_schema
from features.validate import DataError
from pipelines import steps


def source_files(schema: Schema) -> list[Path]:
    """Every raw file the build reads."""
    if schema.source is None:
        paths = [p for s in SPLITS if s in schema.files for p in schema.split_files(s)]
    else:
        src = schema.source
        patterns = list(src.split.files.values()) or [src.interactions]
        paths = [p for pat in patterns + [j.table for j in src.joins] for p in schema.matching(pat, pat)]
    if schema.image:
        paths += [schema.resolve(schema.image.items)] + (
            [schema.resolve(schema.image.array)] if schema.image.array else []
        )
    return paths


def _check_splits(schema: Schema, origin: str, reports: dict[str, dict[str, Any]], out_dir: Path) -> None:
    """Stops when quarantine took more than ``max_bad_share`` of a split, or a label is constant in a split."""
    for split, rep in reports.items():
        share = rep["rows_quarantined"] / max(rep["rows_in"], 1)
        if share > schema.max_bad_share:
            lines = "\n".join(f"  {reason}: {n} row(s)" for reason, n in rep["reasons"].items())
            raise DataError(
                f"{origin}: {rep['rows_quarantined']} of {rep['rows_in']} rows of split {split!r} ({share:.1%}) are "
                f"bad, more than max_bad_share {schema.max_bad_share:.1%}; nothing was built\n{lines}"
            )
        names = [f"label_{lb.name}" for lb in schema.labels]
        files = processor.processed_files(out_dir, split)
        extremes = [pl.col(n).min().alias(f"{n}.min") for n in names] + [
            pl.col(n).max().alias(f"{n}.max") for n in names
        ]
        bounds = pl.scan_parquet(files).select(extremes).collect().row(0, named=True)
        for lb, name in zip(schema.labels, names, strict=True):
            if bounds[f"{name}.min"] == bounds[f"{name}.max"]:
                raise DataError(
                    f"{origin}: label {lb.name!r} ({lb.rule}) is {bounds[f'{name}.min']} in every one of the "
                    f"{rep['rows_out']} rows of split {split!r}; a split needs both classes to train on and to "
                    "evaluate"
                )


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
    if schema.source is None and sorted(schema.files) != sorted(SPLITS):
        raise DataError(
            f"{schema_path}: files names the split(s) {sorted(schema.files)}, but training needs {list(SPLITS)} "
            "(valid for early stopping, test for the final metrics); name the missing ones under files:, or "
            "describe the raw tables under source: with a split"
        )
    config = {"schema": to_dict(schema), "row_group_size": row_group_size}
    inputs = [Path(schema_path), *source_files(schema)]
    fp = steps.fingerprint(config, inputs)
    if not force and steps.is_complete(out_dir, "features", fp):
        return steps.read_manifest(out_dir) or {}
    started = time.time()
    with steps.staged(out_dir) as partial:
        results = _build(schema, partial, row_group_size, progress)
        results["inputs"] = steps.input_stamps(inputs)  # training refuses features whose data changed since
        steps.write_manifest(partial, "features", fp, config, results, started)
    return steps.read_manifest(out_dir) or {}


def _build(schema: Schema, out_dir: Path, row_group_size: int, progress: bool) -> dict[str, Any]:
    """Stages the source (if any), fits, transforms every split and checks the outcome; returns the results."""
    source_report = None
    origin = ", ".join(str(p) for s in SPLITS for p in schema.split_files(s)) if schema.source is None else ""
    if schema.source is not None:
        schema, source_report = source.stage(schema, out_dir)
        origin = ", ".join(source_report["interactions"])
    fmap = processor.fit(schema, out_dir)
    reports = {}
    for split in tqdm(SPLITS, desc=f"transform {schema.name}", disable=not progress, unit="split"):
        reports[split] = asdict(processor.transform(schema, out_dir, split, fmap, row_group_size=row_group_size))
    missed = {s: r["reasons"] for s, r in reports.items() if r["rows_quarantined"]}
    if source_report is not None and missed:  # the source stage ran every row check on the user's rows already
        raise RuntimeError(f"internal: staged source rows failed checks that the source stage ran: {missed}")
    _check_splits(schema, origin, reports, out_dir)
    return {
        "schema_name": schema.name,
        "source": source_report,
        "splits": reports,
        "rows_quarantined": sum(r["rows_quarantined"] for r in reports.values())
        + (source_report["rows_quarantined"] if source_report else 0),
        "num_embeddings": {s.name: s.num_embeddings for s in fmap.sparse},
        "dense": fmap.dense_names,
        "labels": list(fmap.labels),
        "label_rules": list(fmap.label_rules),
    }
