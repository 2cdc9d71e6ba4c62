"""Reading predictions: one or two prediction sources -> aligned numpy arrays, with the contract checked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipelines.metrics.contract import (
    COLD_COLUMN,
    ENTITY_COLD_PREFIX,
    GROUP_COLUMN,
    ITEM_COLUMN,
    LABEL_PREFIX,
    SCORE_PREFIX,
    WEIGHT_COLUMN,
)

PredictionsSource = str | Path | pl.DataFrame


@dataclass
class _Columns:
    """The projected columns of one evaluation, as numpy arrays (row order of the file)."""

    groups: np.ndarray  # dense codes of group_id, sorted by id
    n_groups: int
    weights: np.ndarray | None
    labels: dict[str, np.ndarray]  # task -> int8
    scores: list[dict[str, np.ndarray]]  # model -> task -> score
    slices: dict[str, tuple[np.ndarray, list[Any]]]  # column -> (codes, values in code order; None = null)
    is_cold: np.ndarray | None
    cold_by: dict[str, np.ndarray]  # entity -> bool per row (value unseen in training)


def _schema(source: PredictionsSource) -> list[str]:
    if isinstance(source, pl.DataFrame):
        return source.columns
    return pl.scan_parquet(source).collect_schema().names()


def _read(source: PredictionsSource, columns: list[str]) -> pl.DataFrame:
    # Column projection keeps memory to the needed columns; a plain scan + select keeps the file's row order.
    if isinstance(source, pl.DataFrame):
        return source.select(columns)
    return pl.scan_parquet(source).select(columns).collect()


def discover_tasks(columns: Iterable[str], score_prefix: str = SCORE_PREFIX) -> list[str]:
    """Tasks ``t`` that have both ``label_<t>`` and ``<score_prefix><t>`` columns, in column order."""
    names = list(columns)
    return [
        c[len(LABEL_PREFIX) :]
        for c in names
        if c.startswith(LABEL_PREFIX) and score_prefix + c[len(LABEL_PREFIX) :] in names
    ]


def _dense_codes(values: pl.Series) -> tuple[np.ndarray, int]:
    """Codes ``0..n-1`` in ascending value order (nulls get ``n``) and ``n``, the number of distinct non-null values.

    polars' rank keeps the sort's temporaries off the numpy heap.
    """
    ranks = values.rank("dense")
    n = int(ranks.max() or 0)
    return (ranks - 1).fill_null(n).cast(pl.Int32).to_numpy(), n


def _non_null(df: pl.DataFrame, name: str) -> pl.Series:
    column = df.get_column(name)
    if column.null_count():
        raise ValueError(f"column {name!r} has {column.null_count()} nulls")
    return column


def _numeric(df: pl.DataFrame, name: str, dtype: type) -> np.ndarray:
    return _non_null(df, name).to_numpy().astype(dtype, copy=False)


def _check_task(labels: np.ndarray, scores: list[np.ndarray], task: str) -> None:
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise ValueError(f"label_{task} must be 0/1")
    for score in scores:
        if score.size and not (np.isfinite(score).all() and score.min() >= 0.0 and score.max() <= 1.0):
            raise ValueError(f"scores of task {task!r} must be finite probabilities in [0, 1]")


def _slice_codes(column: pl.Series) -> tuple[np.ndarray, list[Any]]:
    """Dense codes in sorted value order, nulls last (as their own value)."""
    codes, _ = _dense_codes(column)
    values: list[Any] = column.drop_nulls().unique().sort().to_list()
    if column.null_count():
        values.append(None)
    return codes, values


def _load(
    sources: Sequence[tuple[PredictionsSource, str]], tasks: Sequence[str] | None, slice_columns: Sequence[str]
) -> tuple[_Columns, list[str]]:
    """Read one or two prediction sources (``(source, score_prefix)`` per model) into aligned arrays.

    Two distinct sources are joined 1:1 on (group_id, item_id), or row by row when those keys repeat and both files
    list them in the same order; labels, weights and slices come from the first and the second must carry the same
    labels.
    """
    first, prefix_a = sources[0]
    names = _schema(first)
    tasks = list(tasks) if tasks is not None else discover_tasks(names, prefix_a)
    if not tasks:
        raise ValueError(f"no tasks: need label_<t> and {prefix_a}<t> columns, got {names}")
    optional = [c for c in (WEIGHT_COLUMN, COLD_COLUMN) if c in names]
    optional += [c for c in names if c.startswith(ENTITY_COLD_PREFIX)]
    base = [GROUP_COLUMN, *optional, *slice_columns, *(LABEL_PREFIX + t for t in tasks)]
    same_source = all(src is first for src, _ in sources)
    score_cols = [[f"{prefix}{t}" for t in tasks] for _, prefix in sources]
    if same_source:
        df = _read(first, list(dict.fromkeys(base + [c for cols in score_cols for c in cols])))
    else:
        keys = [GROUP_COLUMN, ITEM_COLUMN]
        df = _read(first, list(dict.fromkeys([ITEM_COLUMN, *base, *score_cols[0]])))
        renamed = {c: f"__b__{c}" for c in [*score_cols[1], *(LABEL_PREFIX + t for t in tasks)]}
        other = _read(sources[1][0], keys + list(renamed)).rename(renamed)
        try:
            joined = df.join(other, on=keys, how="inner", validate="1:1", maintain_order="left")
        except pl.exceptions.ComputeError as err:
            # Repeated keys (an impression logged twice) pair unambiguously only row by row: both files must then
            # list the same keys in the same order, as two evaluations of the same split do.
            if df.height != other.height or not df.select(keys).equals(other.select(keys)):
                raise ValueError(
                    f"{keys} repeat, so the two prediction files can only be compared row by row, and their "
                    f"{keys} differ in order or content: compare predictions of the same split"
                ) from err
            joined = pl.concat([df, other.drop(keys)], how="horizontal")
        if joined.height != df.height or joined.height != other.height:
            raise ValueError(f"predictions do not match 1:1 on {keys}: {df.height} vs {other.height} rows")
        for t in tasks:
            if not (joined[LABEL_PREFIX + t] == joined[renamed[LABEL_PREFIX + t]]).all():
                raise ValueError(f"label_{t} differs between the two prediction files")
        df = joined
        score_cols[1] = [renamed[c] for c in score_cols[1]]

    if df.height == 0:
        raise ValueError("the predictions have no rows")
    groups, n_groups = _dense_codes(_non_null(df, GROUP_COLUMN))
    labels = {t: _numeric(df, LABEL_PREFIX + t, np.int8) for t in tasks}
    # float32 scores stay float32 (half the memory); ties are judged at the stored precision.
    scores = [
        {
            t: _numeric(df, c, np.float32 if df.schema[c] == pl.Float32 else np.float64)
            for t, c in zip(tasks, cols, strict=True)
        }
        for cols in score_cols
    ]
    for t in tasks:
        _check_task(labels[t], [s[t] for s in scores], t)
    weights = _numeric(df, WEIGHT_COLUMN, np.float64) if WEIGHT_COLUMN in optional else None
    if weights is not None and weights.size and not (np.isfinite(weights).all() and weights.min() >= 0):
        raise ValueError("weights must be finite and >= 0")
    columns = _Columns(
        groups=groups,
        n_groups=n_groups,
        weights=weights,
        labels=labels,
        scores=scores,
        slices={c: _slice_codes(df.get_column(c)) for c in slice_columns},
        is_cold=_numeric(df, COLD_COLUMN, bool) if COLD_COLUMN in optional else None,
        cold_by={
            c.removeprefix(ENTITY_COLD_PREFIX): _numeric(df, c, bool)
            for c in optional
            if c.startswith(ENTITY_COLD_PREFIX)
        },
    )
    return columns, tasks
