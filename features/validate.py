"""Checks of raw input against its schema, with errors that name the file, the column and the problem.

File-level problems (a missing, truncated, empty or non-parquet file, repeated column names, a missing column, a
wrong type) always stop the run. Row-level problems (nulls where not allowed, NaN/inf in dense features and in the
source columns of derived labels, labels outside {0, 1}, ids out of range or negative) are described per row by
:func:`row_problem`: the run stops with a count and the first offending row, or, when the schema says
``bad_rows: quarantine``, the rows go to a quarantine parquet with their reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from features.schema import Label, Schema, SparseFeature

ROW_COLUMN = "_row"
REASON_COLUMN = "_reason"


class DataError(ValueError):
    """Input data that does not match its schema; the message names file, column and problem."""


def _kind_ok(dtype: pl.DataType, allowed: str) -> bool:
    if allowed == "id":
        return dtype.is_integer() or dtype == pl.String or dtype == pl.Categorical
    if allowed == "integer":
        return dtype.is_integer()
    if allowed == "numeric":
        return dtype.is_numeric() or dtype == pl.Boolean
    if allowed == "list":
        return isinstance(dtype, pl.List) and _kind_ok(dtype.inner, "id")
    return True


def open_parquet(path: Path) -> pl.Schema:
    """Checks that ``path`` is a readable, non-empty parquet file with unique column names; returns its schema."""
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        meta = pq.ParquetFile(path).metadata
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file (truncated or another format?): {err}") from err
    if meta.num_rows == 0:
        raise DataError(f"{path}: empty file (0 rows)")
    names = meta.schema.to_arrow_schema().names
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DataError(f"{path}: column name(s) {repeated} appear more than once; rename them apart")
    return pl.read_parquet_schema(path)


def _sparse_kind(f: SparseFeature) -> str:
    if f.encoding == "bucket":
        return "numeric"
    return "list" if f.kind == "multi" else "id"


def _label_kind(lb: Label) -> str:
    return "id" if lb.values else "numeric"


def check_file(path: Path, schema: Schema) -> pl.Schema:
    """File-level checks of one raw parquet file holding every column of ``schema``; returns its polars schema."""
    file_schema = open_parquet(path)
    missing = [c for c in schema.feature_columns if c not in file_schema]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; the file has {list(file_schema)}")
    check_types(path, file_schema, schema)
    return file_schema


def check_types(path: Path, file_schema: pl.Schema, schema: Schema) -> None:
    """Type checks of the schema's columns that ``file_schema`` (the schema of ``path``) holds."""
    expectations = (
        [(f.column, _sparse_kind(f), f"sparse feature {f.name!r}") for f in schema.sparse]
        + [(f.column, "numeric", f"dense feature {f.name!r}") for f in schema.dense]
        + [(lb.column, _label_kind(lb), f"label {lb.name!r}") for lb in schema.labels]
        + [(schema.group, "id", "group")]
        + ([(schema.item, "integer" if schema.image else "id", "item")] if schema.item else [])
        + [(e, "id", "entity") for e in schema.entities]
    )
    for column, kind, role in expectations:
        if column not in file_schema:
            continue
        dtype = file_schema[column]
        if not _kind_ok(dtype, kind):
            want = {
                "id": "an integer or string",
                "integer": "an integer (items with images need integer ids)",
                "numeric": "a number",
                "list": "a list of integers or strings",
            }
            raise DataError(f"{path}: column {column!r} ({role}) has type {dtype}; expected {want[kind]}")
    for f in schema.sparse:
        if f.column not in file_schema or not (f.encoding == "identity" or f.non_negative):
            continue
        dtype = file_schema[f.column]
        inner = dtype.inner if isinstance(dtype, pl.List) else dtype
        if not inner.is_integer():
            why = "identity-encoded" if f.encoding == "identity" else "non-negative ids of"
            raise DataError(f"{path}: column {f.column!r} ({why} {f.name!r}) must hold integers")


def row_problem(schema: Schema, known_items: pl.Series | None, origin: Mapping[str, str] | None = None) -> pl.Expr:
    """An expression giving, per row, the first problem found (a string naming the column) or null.

    ``known_items``: the ids of the image items table (``schema.image``), which every row's item must be among.
    ``origin`` maps columns that come from a side table to that table's file, which the reason then names.
    """
    where = origin or {}

    def name(column: str) -> str:
        return f"column {column!r}" + (f" of {where[column]}" if column in where else "")

    checks: list[tuple[pl.Expr, str]] = []
    for lb in schema.labels:
        col = pl.col(lb.column)
        checks.append((col.is_null(), f"{name(lb.column)} (label {lb.name!r}): null"))
        if lb.threshold is not None:
            checks.append((col.cast(pl.Float64).is_nan(), f"{name(lb.column)} (label {lb.name!r}): NaN"))
            checks.append((col.cast(pl.Float64).is_infinite(), f"{name(lb.column)} (label {lb.name!r}): inf"))
        elif not lb.values:
            outside = ~col.cast(pl.Float64).is_in([0.0, 1.0])
            checks.append((outside, f"{name(lb.column)} (label): value outside {{0, 1}}"))
    # Ids before values: a bad id (say negative, so unmatched in a side table) is the cause to report.
    checks.append((pl.col(schema.group).is_null(), f"{name(schema.group)} (group): null"))
    if schema.item:
        item = pl.col(schema.item)
        checks.append((item.is_null(), f"{name(schema.item)} (item): null"))
        if known_items is not None and schema.image is not None:
            table = schema.resolve(schema.image.items)
            checks.append(
                (~item.is_in(known_items.implode()), f"{name(schema.item)} (item): id not in the items table {table}")
            )
    for f in schema.sparse:
        col = pl.col(f.column)
        if not f.nullable and f.fill_null is None:
            checks.append((col.is_null(), f"{name(f.column)} (sparse): null"))
        lowest, highest = (col.list.min(), col.list.max()) if f.kind == "multi" else (col, col)
        if f.non_negative:
            checks.append(((lowest < 0).fill_null(False), f"{name(f.column)} (sparse): negative id"))
        if f.encoding == "identity":
            bad = (lowest < 0) | (highest >= f.num_ids)
            checks.append((bad.fill_null(False), f"{name(f.column)} (sparse): id outside [0, {f.num_ids})"))
        if f.encoding == "bucket":
            checks.append((col.cast(pl.Float64).is_nan(), f"{name(f.column)} (sparse, bucket): NaN"))
    for f in schema.dense:
        col = pl.col(f.column).cast(pl.Float64)
        if f.fill_null is None:
            checks.append((col.is_null(), f"{name(f.column)} (dense): null"))
        else:
            col = col.fill_null(f.fill_null)
        checks.append((col.is_nan(), f"{name(f.column)} (dense): NaN"))
        checks.append((col.is_infinite(), f"{name(f.column)} (dense): inf"))
        if f.transform == "log1p":
            checks.append((col <= -1.0, f"{name(f.column)} (dense, log1p): value <= -1"))
    expr = pl.lit(None, dtype=pl.String)
    for cond, reason in reversed(checks):
        expr = pl.when(cond.fill_null(False)).then(pl.lit(reason)).otherwise(expr)
    return expr.alias(REASON_COLUMN)


def summarise_problems(flagged: pl.LazyFrame) -> pl.DataFrame:
    """Counts of bad rows per reason, with the first row index of each (empty when the file is clean)."""
    return (
        flagged.filter(pl.col(REASON_COLUMN).is_not_null())
        .group_by(REASON_COLUMN)
        .agg(pl.len().alias("rows"), pl.col(ROW_COLUMN).min().alias("first_row"))
        .sort("first_row")
        .collect(engine="streaming")  # a file of any size: memory bounded by the reasons, not the rows
    )


def raise_for_problems(path: Path, problems: pl.DataFrame) -> None:
    if problems.height == 0:
        return
    lines = [f"  {r[REASON_COLUMN]}: {r['rows']} row(s), first at row {r['first_row']}" for r in problems.to_dicts()]
    total = int(problems["rows"].sum())
    raise DataError(
        f"{path}: {total} bad row(s)\n" + "\n".join(lines) + "\n(set `bad_rows: quarantine` in the schema to set "
        "such rows aside in a quarantine file instead of stopping)"
    )
