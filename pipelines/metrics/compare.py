"""Model B against model A on the same impressions: paired bootstrap intervals of B - A and verdicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pipelines.metrics.contract import _REASONS, DIRECTIONS, SCORE_PREFIX, EvalConfig, metric_names
from pipelines.metrics.evaluation import _all_scopes, _header, _RawTask
from pipelines.metrics.intervals import _interval
from pipelines.metrics.kernels import _finite_or_none
from pipelines.metrics.read import PredictionsSource, _load


def verdict(direction: str, a: float | None, b: float | None, ci_low: float | None, ci_high: float | None) -> str:
    """``"better"``/``"worse"`` for B when the interval of B - A excludes 0, else ``"inconclusive"``.

    Args:
        direction: ``DIRECTIONS`` entry of the metric. For ``"closer_to_1"`` (calibration) a significant change
            is better when B's point estimate is nearer 1 than A's.
        a, b: point estimates; ci_low, ci_high: interval of B - A.
    """
    if a is None or b is None or ci_low is None or ci_high is None or ci_low <= 0.0 <= ci_high:
        return "inconclusive"
    increased = ci_low > 0.0
    if direction == "closer_to_1":
        return "better" if abs(b - 1.0) < abs(a - 1.0) else "worse"
    return "better" if increased == (direction == "higher") else "worse"


def compare(
    predictions_a: PredictionsSource,
    predictions_b: PredictionsSource | None = None,
    *,
    tasks: Sequence[str] | None = None,
    slice_columns: Sequence[str] = (),
    config: EvalConfig | None = None,
    score_prefix_a: str = SCORE_PREFIX,
    score_prefix_b: str = SCORE_PREFIX,
    names: tuple[str, str] = ("A", "B"),
) -> dict[str, Any]:
    """Compare model B against model A on the same impressions, with paired bootstrap intervals of B - A.

    Args:
        predictions_a: predictions of the baseline (labels, weights and slices are taken from here).
        predictions_b: predictions of the candidate, joined 1:1 on (group_id, item_id); ``None`` when both score
            columns are in ``predictions_a`` (then ``score_prefix_b`` must differ from ``score_prefix_a``).
        tasks, slice_columns, config: as for ``evaluate``.
        score_prefix_a, score_prefix_b: score column prefixes of A and B.
        names: display names of A and B.

    Returns:
        ``{"schema_version", "kind": "comparison", "config", "data", "models", "directions", "overall", "slices",
        "cold_warm", "cold_warm_by_entity"}``. Each task of a scope holds ``metrics[name] = {"a", "b", "delta",
        "ci_low", "ci_high", "prob_delta_positive", "verdict", "reason"}``: delta = B - A, its percentile interval
        from the same resampled groups for both models, the share of replicates where B - A > 0, and ``verdict``
        (see ``verdict``).
    """
    cfg = config or EvalConfig()
    source_b = predictions_a if predictions_b is None else predictions_b
    if predictions_b is None and score_prefix_a == score_prefix_b:
        raise ValueError("comparing within one file needs two different score prefixes")
    cols, task_names = _load([(predictions_a, score_prefix_a), (source_b, score_prefix_b)], tasks, slice_columns)
    metric_list = metric_names(cfg.ks)

    def format_task(raw: _RawTask) -> dict[str, Any]:
        if raw.points is None:
            return {"counts": raw.counts, "metrics": None}
        metrics = {}
        for j, name in enumerate(metric_list):
            a, b = raw.points[0][j], raw.points[1][j]
            delta = _finite_or_none(b - a)
            lo = hi = prob = None
            if raw.replicates and delta is not None:
                deltas = raw.replicates[1][:, j] - raw.replicates[0][:, j]
                lo, hi = _interval(deltas, cfg.ci_level)
                finite = deltas[np.isfinite(deltas)]
                prob = float(np.mean(finite > 0)) if finite.size else None
            metrics[name] = {
                "a": _finite_or_none(a),
                "b": _finite_or_none(b),
                "delta": delta,
                "ci_low": lo,
                "ci_high": hi,
                "prob_delta_positive": prob,
                "verdict": verdict(DIRECTIONS[name.split("@")[0]], _finite_or_none(a), _finite_or_none(b), lo, hi),
                "reason": None if delta is not None else _REASONS[name.split("@")[0]],
            }
        return {"counts": raw.counts, "metrics": metrics}

    header = _header("comparison", cfg, cols, task_names, [predictions_a, source_b])
    header |= {
        "models": {
            "a": {"name": names[0], "score_prefix": score_prefix_a},
            "b": {"name": names[1], "score_prefix": score_prefix_b},
        },
        "directions": {name: DIRECTIONS[name.split("@")[0]] for name in metric_list},
    }
    return header | _all_scopes(cols, task_names, cfg, format_task, False)
