"""Scopes (overall, slices, cold/warm), the JSON layout shared with ``compare``, and ``evaluate``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import polars as pl

from pipelines.metrics.contract import (
    _REASONS,
    GROUP_COLUMN,
    NULL_SLICE_KEY,
    SCHEMA_VERSION,
    SCORE_PREFIX,
    EvalConfig,
    metric_names,
)
from pipelines.metrics.intervals import _bootstrap, _interval, _metric_vector, _ratio, _roc_points, _task_stats
from pipelines.metrics.kernels import _as_weights, _finite_or_none, reliability_curve
from pipelines.metrics.read import PredictionsSource, _Columns, _dense_codes, _load


@dataclass(frozen=True)
class _RawTask:
    """Unformatted results of one task in one scope; ``points``/``replicates`` have one entry per model."""

    counts: dict[str, Any]
    points: list[np.ndarray] | None  # None when the scope is empty or below the minimum size
    replicates: list[np.ndarray] | None  # None when n_bootstrap == 0
    curves: dict[str, Any] | None


def _evaluate_scope(
    cols: _Columns, tasks: Sequence[str], rows: np.ndarray | None, key: str, cfg: EvalConfig, sized: bool, curves: bool
) -> tuple[dict[str, Any], dict[str, _RawTask]]:
    """Scope header (rows, groups, status) and raw task results for the rows ``rows`` (None = all)."""

    def take(a: np.ndarray) -> np.ndarray:
        return a if rows is None else a[rows]

    if rows is None:
        groups, n_groups = cols.groups, cols.n_groups
    else:
        groups, n_groups = _dense_codes(pl.Series(cols.groups[rows]))
    n_rows = len(groups)
    status = "empty" if n_rows == 0 else "below_min_size" if sized and n_rows < cfg.min_slice_size else "ok"
    weights = None if cols.weights is None else take(cols.weights)
    raw: dict[str, _RawTask] = {}
    for task in tasks:
        labels = take(cols.labels[task])
        w = _as_weights(weights, n_rows)
        weight_sum = float(w.sum())
        counts: dict[str, Any] = {
            "n_rows": n_rows,
            "n_positive": int(labels.sum(dtype=np.int64)),
            "weight_sum": weight_sum,
            "base_rate": _finite_or_none(_ratio(float(np.dot(w, labels)), weight_sum)),
        }
        if status != "ok":
            raw[task] = _RawTask(counts, None, None, None)
            continue
        stats = [_task_stats(groups, n_groups, take(s[task]), labels, weights, cfg) for s in cols.scores]
        counts |= {
            "gauc_groups": stats[0].n_gauc_groups,
            "gauc_groups_single_class": n_groups - stats[0].n_gauc_groups,
            "ranking_groups": stats[0].n_ranking_groups,
            "ranking_groups_no_positive": n_groups - stats[0].n_ranking_groups,
        }
        ones = np.ones(n_groups)
        raw[task] = _RawTask(
            counts=counts,
            points=[_metric_vector(st, ones) for st in stats],
            replicates=_bootstrap(stats, n_groups, cfg, key) if cfg.n_bootstrap else None,
            curves={
                "roc": _roc_points(stats[0], cfg.roc_points),
                "reliability": reliability_curve(take(cols.scores[0][task]), labels, weights, cfg.calibration_bins),
            }
            if curves
            else None,
        )
    return {"n_rows": n_rows, "n_groups": n_groups, "status": status}, raw


def _slice_key(value: Any) -> str:
    return NULL_SLICE_KEY if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _all_scopes(
    cols: _Columns,
    tasks: Sequence[str],
    cfg: EvalConfig,
    format_task: Any,
    curves: bool,
) -> dict[str, Any]:
    """``overall``, ``slices``, ``cold_warm`` and ``cold_warm_by_entity`` sections, each scope formatted by
    ``format_task(_RawTask)``."""

    def scope(rows: np.ndarray | None, key: str, sized: bool, with_curves: bool) -> dict[str, Any]:
        header, raw = _evaluate_scope(cols, tasks, rows, key, cfg, sized, with_curves)
        return header | {"tasks": {t: format_task(r) for t, r in raw.items()}}

    slices = {
        column: {
            _slice_key(value): scope(np.flatnonzero(codes == i), f"slice/{column}/{_slice_key(value)}", True, False)
            for i, value in enumerate(values)
        }
        for column, (codes, values) in cols.slices.items()
    }

    def cold_warm(flags: np.ndarray, key: str, with_curves: bool) -> dict[str, Any]:
        return {
            name: scope(np.flatnonzero(flags == is_cold), f"{key}/{name}", True, with_curves)
            for name, is_cold in (("cold", True), ("warm", False))
        }

    return {
        "overall": scope(None, "overall", False, curves),
        "slices": slices,
        "cold_warm": None if cols.is_cold is None else cold_warm(cols.is_cold, "cold_warm", curves),
        "cold_warm_by_entity": {e: cold_warm(f, f"cold_warm/{e}", False) for e, f in cols.cold_by.items()},
    }


def _header(kind: str, cfg: EvalConfig, cols: _Columns, tasks: Sequence[str], sources: list[Any]) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "config": asdict(cfg) | {"ks": list(cfg.ks), "metrics": metric_names(cfg.ks), "resampling_unit": GROUP_COLUMN},
        "data": {
            "sources": [None if isinstance(s, pl.DataFrame) else str(s) for s in sources],
            "n_rows": len(cols.groups),
            "n_groups": cols.n_groups,
            "tasks": list(tasks),
            "slice_columns": list(cols.slices),
            "weighted": cols.weights is not None,
            "has_is_cold": cols.is_cold is not None,
            "cold_entities": list(cols.cold_by),
            # Share of rows whose entity (item for is_cold) was not seen in training.
            "cold_share": ({"item": float(cols.is_cold.mean())} if cols.is_cold is not None else {})
            | {e: float(f.mean()) for e, f in cols.cold_by.items()},
        },
    }


def evaluate(
    predictions: PredictionsSource,
    *,
    tasks: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (),
    config: EvalConfig | None = None,
    score_prefix: str = SCORE_PREFIX,
) -> dict[str, Any]:
    """Evaluate one model's predictions; the result is what ``metrics.json`` holds.

    Args:
        predictions: parquet path (or a polars DataFrame with the same columns).
        tasks: task names; default: every ``t`` with ``label_<t>`` and ``<score_prefix><t>`` columns.
        slice_columns: columns to slice by (each distinct value, nulls included, is a slice).
        config: evaluation settings (default ``EvalConfig()``).
        score_prefix: prefix of the score columns.

    Returns:
        ``{"schema_version", "kind": "evaluation", "config", "data", "overall", "slices", "cold_warm",
        "cold_warm_by_entity"}``; see ``docs/evaluation.md`` for the full layout.
    """
    cfg = config or EvalConfig()
    cols, task_names = _load([(predictions, score_prefix)], tasks, slice_columns)
    names = metric_names(cfg.ks)

    def format_task(raw: _RawTask) -> dict[str, Any]:
        if raw.points is None:
            return {"counts": raw.counts, "metrics": None}
        metrics = {}
        for j, name in enumerate(names):
            value = _finite_or_none(raw.points[0][j])
            lo, hi = (
                _interval(raw.replicates[0][:, j], cfg.ci_level)
                if raw.replicates and value is not None
                else (None, None)
            )
            metrics[name] = {
                "value": value,
                "ci_low": lo,
                "ci_high": hi,
                "reason": None if value is not None else _REASONS[name.split("@")[0]],
            }
        return {"counts": raw.counts, "metrics": metrics} | (raw.curves or {})

    return _header("evaluation", cfg, cols, task_names, [predictions]) | _all_scopes(
        cols, task_names, cfg, format_task, True
    )
