"""The batch scoring step: ``ranker score --model M --input 'RAW/*.parquet' --out DIR`` (resumable).

Scores **unlabeled raw rows** (the columns training read from the user's parquet) with an export, the same way as
``ranker evaluate`` and the MLflow pyfunc model (:class:`ranker.predict.Predictor`), streaming the input in chunks of
:data:`READ_ROWS` rows, row group by row group, so memory is bounded by the chunk and the model, not the input.

Output folder::

    part-00000.parquet ...  one part per process (``--nproc``), each in input order; the parts in name order are
                            the input in order. Columns: the key columns (the feature map's group and item columns,
                            then every ``--keep`` column, with their input values and types), ``score_<task>``
                            (float32 probability) per task, ``model_uri`` and ``model_fingerprint``.
    manifest.json           inputs (path, bytes, rows), rows in/out, rows/s, the model (as given, resolved URI,
                            version, fingerprint of the export's files), parts, seconds.

``--model`` is an export folder (``RUN/export``, or ``RUN`` itself, or a ``ranker compress`` output) or a registered
model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION``): an alias is resolved once, at the start, and the
model's export is downloaded and scored with the ``Predictor`` directly. Going through ``pyfunc.predict`` instead
would check every row's list columns against the signature in Python (~17x the model's own time).

Every input file's columns and types are checked against the model before anything is scored: a missing column or
a wrong type is one error naming the file and the column. The output is written into a temporary folder and
renamed at the end; a finished step with the same inputs, model and options is skipped (``--force`` re-runs it).
"""

from __future__ import annotations

import glob
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.processor import FeatureMap, conform_inputs
from features.validate import DataError
from pipelines import steps
from ranker.export import MODEL_FILE, export_digest, find_export

STEP = "score"
READ_ROWS = 65_536  # rows read from the input at a time, per process


@dataclass(frozen=True)
class Unit:
    """One row group of one input file, the smallest piece of work a process takes."""

    path: str
    row_group: int
    rows: int


def input_files(pattern: str) -> list[Path]:
    """The parquet files of ``pattern``: a glob (``**`` allowed), one file, or a folder (its ``*.parquet``)."""
    path = Path(pattern)
    if path.is_dir():
        files = sorted(path.glob("*.parquet"))
    else:
        files = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not files:
        raise FileNotFoundError(f"--input {pattern}: no parquet file matches")
    return files


def key_columns(fmap: FeatureMap, keep: tuple[str, ...] = ()) -> list[str]:
    """The columns copied from the input to the scores: the group and item columns, then ``keep``."""
    return list(dict.fromkeys([fmap.group, *([fmap.item] if fmap.item else []), *keep]))


def check_inputs(fmap: FeatureMap, files: list[Path], keep: tuple[str, ...]) -> list[Unit]:
    """Checks every file's columns and types against the model (schemas only); returns its row groups as units.

    Raises :class:`DataError` naming the file and the column that is missing or of the wrong type.
    """
    units = []
    for path in files:
        try:
            source = pq.ParquetFile(path)
        except (OSError, pa.ArrowInvalid) as err:
            raise DataError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from err
        empty = pl.from_arrow(source.schema_arrow.empty_table())
        assert isinstance(empty, pl.DataFrame)
        conform_inputs(fmap, empty, str(path))
        missing = [c for c in key_columns(fmap, keep) if c not in empty.columns]
        if missing:
            raise DataError(f"{path}: missing key column(s) {missing} (the group and item columns and --keep)")
        meta = source.metadata
        units += [Unit(str(path), g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
    return units


def split_units(units: list[Unit], parts: int) -> list[list[Unit]]:
    """``units`` cut into at most ``parts`` contiguous runs of about equal rows (empty runs dropped)."""
    total = sum(u.rows for u in units)
    runs: list[list[Unit]] = [[] for _ in range(parts)]
    done = 0
    for unit in units:
        # The run a unit goes to follows the rows before it, so runs stay contiguous and in input order.
        runs[min(parts - 1, done * parts // max(total, 1))].append(unit)
        done += unit.rows
    return [run for run in runs if run]


def score_units(
    export_dir: str, units: list[Unit], out_path: str, keys: list[str], model: dict[str, str], batch_size: int,
    threads: int,
) -> dict[str, Any]:  # fmt: skip
    """Scores ``units`` in order into the parquet ``out_path``; returns its rows and seconds (one process's work).

    ``model``: ``uri`` and ``fingerprint``, written as constant columns so each row says which model scored it.
    """
    import torch

    from ranker.predict import Predictor

    torch.set_num_threads(threads)
    started = time.time()
    predictor = Predictor(export_dir, batch_size)
    read = list(dict.fromkeys([*keys, *predictor.input_columns]))
    writer: pq.ParquetWriter | None = None
    rows = 0
    by_file: dict[str, list[int]] = {}
    for unit in units:
        by_file.setdefault(unit.path, []).append(unit.row_group)
    try:
        for path, groups in by_file.items():
            for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, row_groups=groups, columns=read):
                frame = pl.from_arrow(batch)
                assert isinstance(frame, pl.DataFrame)
                scores = predictor.predict(frame, where=path)  # (B, K)
                columns: dict[str, Any] = {k: batch.column(k) for k in keys}
                columns.update({f"score_{t}": scores[:, i] for i, t in enumerate(predictor.tasks)})
                columns["model_uri"] = pa.array(np.full(batch.num_rows, model["uri"]))
                columns["model_fingerprint"] = pa.array(np.full(batch.num_rows, model["fingerprint"]))
                table = pa.table(columns)
                if writer is None:
                    writer = pq.ParquetWriter(out_path, table.schema, compression="zstd")
                writer.write_table(table)
                rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    return {"part": Path(out_path).name, "rows": rows, "seconds": round(time.time() - started, 3)}


def _resolve(model: str, scratch: Path) -> tuple[Path, dict[str, str]]:
    """The export folder of ``--model`` and what it was resolved to."""
    if model.startswith("models:/"):
        from pipelines import tracking

        return tracking.download_export(model, scratch)
    found = find_export(Path(model))
    if found is not None:
        return found, {"requested": model, "uri": str(found.resolve())}
    raise FileNotFoundError(
        f"--model {model}: neither an export folder (no {MODEL_FILE}) nor a run with one, nor a models:/ URI"
    )


def score(
    model: str,
    pattern: str,
    out_dir: Path,
    nproc: int = 1,
    batch_size: int = 8192,
    keep: tuple[str, ...] = (),
    force: bool = False,
) -> dict[str, Any]:
    """Scores the raw parquet files of ``pattern`` with ``model`` into ``out_dir``; returns the step manifest."""
    if nproc < 1 or batch_size < 1:
        raise ValueError(f"--nproc and --batch-size must be >= 1, got {nproc} and {batch_size}")
    out_dir = Path(out_dir)
    files = input_files(pattern)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ranker-score-") as scratch:
        export_dir, resolved = _resolve(model, Path(scratch))
        fmap = FeatureMap.load(export_dir)
        resolved["fingerprint"] = export_digest(export_dir)
        config = {"model": resolved["fingerprint"], "keep": list(keep), "inputs": [str(f.resolve()) for f in files]}
        fp = steps.fingerprint(config, files)
        if not force and steps.is_complete(out_dir, STEP, fp):
            return steps.read_manifest(out_dir) or {}
        units = check_inputs(fmap, files, keep)
        runs = split_units(units, nproc)
        keys = key_columns(fmap, keep)
        threads = max(1, (os.cpu_count() or 1) // len(runs)) if runs else 1
        with steps.staged(out_dir) as partial:
            jobs = [
                (str(export_dir), run, str(partial / f"part-{i:05d}.parquet"), keys, resolved, batch_size, threads)
                for i, run in enumerate(runs)
            ]
            if len(jobs) <= 1:
                parts = [score_units(*job) for job in jobs]
            else:
                # spawn: a forked torch process can deadlock on the parent's thread pools
                with multiprocessing.get_context("spawn").Pool(len(jobs)) as pool:
                    parts = pool.starmap(score_units, jobs)
            rows_in = sum(u.rows for u in units)
            rows_out = sum(p["rows"] for p in parts)
            if rows_out != rows_in:
                raise RuntimeError(f"scored {rows_out} rows of {rows_in}: a part is incomplete")
            seconds = time.time() - started
            results = {
                "model": resolved,
                "inputs": [
                    {"path": str(f), "bytes": f.stat().st_size, "rows": pq.ParquetFile(f).metadata.num_rows}
                    for f in files
                ],
                "rows_in": rows_in,
                "rows_out": rows_out,
                "rows_per_s": round(rows_out / max(seconds, 1e-9), 1),
                "nproc": len(jobs),
                "parts": parts,
                "key_columns": keys,
                "score_columns": [f"score_{t}" for t in fmap.labels],
            }
            steps.write_manifest(partial, STEP, fp, config, results, started)
    return steps.read_manifest(out_dir) or {}
