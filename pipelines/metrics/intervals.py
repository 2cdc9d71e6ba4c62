"""Point estimates and bootstrap replicates of one task in one scope, and percentile intervals."""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from pipelines.metrics.contract import EvalConfig, metric_names
from pipelines.metrics.kernels import (
    _as_weights,
    _binary_entropy,
    _finite_or_none,
    _row_logloss,
    _Ties,
    _weighted_auc_sorted,
    group_ranking,
)
from pipelines.metrics.read import _dense_codes

_W, _WY, _WP, _WLL, _GAUC_NUM, _GAUC_DEN, _RANK_GROUPS = range(7)


@dataclass(frozen=True)
class _TaskStats:
    """What the point estimate and every bootstrap replicate of one task, model and scope need.

    Every metric except AUC is a ratio of per-group sums, so a replicate (groups drawn with multiplicity c) is
    ``c @ group_sums``; AUC re-weights the rows, kept sorted by score, by their group's multiplicity.
    """

    group_sums: np.ndarray  # n_groups x (7 + 2 * len(ks))
    sorted_groups: np.ndarray  # rows sorted by ascending score: group code,
    sorted_labels: np.ndarray  # label (int8) and
    sorted_weights: np.ndarray | None  # weight (None when unweighted);
    ties: _Ties
    n_gauc_groups: int
    n_ranking_groups: int


def _task_stats(
    groups: np.ndarray,
    n_groups: int,
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    cfg: EvalConfig,
) -> _TaskStats:
    w = _as_weights(weights, len(scores))
    ranking = group_ranking(groups, scores, labels, weights, cfg.ks, n_groups)
    gauc_ok = ~np.isnan(ranking.auc)
    rank_ok = ranking.n_positive > 0
    sums = [
        np.bincount(groups, w, minlength=n_groups),
        np.bincount(groups, w * labels, minlength=n_groups),
        np.bincount(groups, w * scores, minlength=n_groups),
        np.bincount(groups, w * _row_logloss(scores, labels, cfg.eps), minlength=n_groups),
        np.where(gauc_ok, ranking.group_weight * np.nan_to_num(ranking.auc), 0.0),
        np.where(gauc_ok, ranking.group_weight, 0.0),
        rank_ok.astype(np.float64),
    ]
    sums += [np.nan_to_num(ranking.ndcg[k]) for k in cfg.ks] + [np.nan_to_num(ranking.recall[k]) for k in cfg.ks]
    order = np.argsort(scores, kind="stable")
    return _TaskStats(
        group_sums=np.asfortranarray(np.column_stack(sums)),  # column-major: group_sums.T @ c is the fast product
        sorted_groups=groups[order],
        sorted_labels=labels[order],
        sorted_weights=None if weights is None else weights[order],
        ties=_Ties.of(scores[order]),
        n_gauc_groups=int(gauc_ok.sum()),
        n_ranking_groups=int(rank_ok.sum()),
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else math.nan


def _metric_vector(stats: _TaskStats, multiplicity: np.ndarray) -> np.ndarray:
    """All metrics (``metric_names`` order, NaN = undefined) with group ``g`` counted ``multiplicity[g]`` times."""
    s = stats.group_sums.T @ multiplicity
    row_mult = multiplicity[stats.sorted_groups]
    if stats.sorted_weights is not None:
        row_mult = row_mult * stats.sorted_weights
    logloss = _ratio(s[_WLL], s[_W])
    return np.array(
        [
            _weighted_auc_sorted(stats.sorted_labels, row_mult, stats.ties),
            _ratio(s[_GAUC_NUM], s[_GAUC_DEN]),
            logloss,
            logloss / _binary_entropy(_ratio(s[_WY], s[_W])),
            _ratio(s[_WP], s[_WY]),
            *(_ratio(v, s[_RANK_GROUPS]) for v in s[_RANK_GROUPS + 1 :]),  # NDCG@k then Recall@k, as the columns
        ]
    )


def _roc_points(stats: _TaskStats, max_points: int) -> dict[str, list[float]]:
    """ROC curve (threshold sweeping down from the top score), thinned to about ``max_points`` points."""
    mult = np.ones(len(stats.sorted_labels)) if stats.sorted_weights is None else stats.sorted_weights
    pos = mult * stats.sorted_labels
    # Thresholds sit between runs of tied scores: keep the first row of each run, sweeping from the top score down.
    run_first = np.ones(len(pos), dtype=bool)
    run_first[stats.ties.rows] = stats.ties.rows == stats.ties.first
    # Rows at or above row i's score are the suffix from i: true/false positives at that threshold.
    tp = np.append(0.0, np.cumsum(pos[::-1])[::-1][run_first][::-1])
    fp = np.append(0.0, np.cumsum((mult - pos)[::-1])[::-1][run_first][::-1])
    tpr, fpr = tp / max(tp[-1], 1e-300), fp / max(fp[-1], 1e-300)
    if len(tpr) > max_points:
        # Evenly spaced along the curve (fpr + tpr grows monotonically from 0 to 2), endpoints kept.
        along = np.searchsorted(fpr + tpr, np.linspace(0.0, 2.0, max_points)).clip(0, len(tpr) - 1)
        keep = np.union1d(along, [0, len(tpr) - 1])
        tpr, fpr = tpr[keep], fpr[keep]
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def _scope_rng_seed(cfg: EvalConfig, scope_key: str) -> list[int]:
    return [cfg.seed, zlib.crc32(scope_key.encode())]


def _bootstrap(stats: Sequence[_TaskStats], n_groups: int, cfg: EvalConfig, scope_key: str) -> list[np.ndarray]:
    """``n_bootstrap x n_metrics`` replicates per entry of ``stats``, all on the same resampled groups.

    The generator is re-seeded from (seed, scope) on every call, so every task and model of a scope sees the
    same draws (a paired bootstrap) without holding all of them in memory at once.
    """
    rng = np.random.default_rng(_scope_rng_seed(cfg, scope_key))
    out = [np.empty((cfg.n_bootstrap, len(metric_names(cfg.ks)))) for _ in stats]
    for b in range(cfg.n_bootstrap):
        multiplicity = np.bincount(rng.integers(0, n_groups, n_groups), minlength=n_groups).astype(np.float64)
        for st, replicates in zip(stats, out, strict=True):
            replicates[b] = _metric_vector(st, multiplicity)
    return out


def _interval(replicates: np.ndarray, level: float) -> tuple[float | None, float | None]:
    """Percentile interval over the replicates where the metric is defined."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return None, None
    lo, hi = np.quantile(finite, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def point_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    config: EvalConfig | None = None,
) -> dict[str, float | None]:
    """Every metric of one task on in-memory arrays, without intervals (e.g. a validation step in training).

    Args:
        scores, labels, weights: per row, as in the predictions contract.
        groups: group ids per row (any sortable values); None puts all rows in one group.
        config: only ``ks`` and ``eps`` are used.

    Returns:
        ``{metric name: value or None when undefined}`` in ``metric_names`` order, equal to ``evaluate``'s values.
    """
    cfg = config or EvalConfig()
    codes, n_groups = _dense_codes(pl.Series(np.zeros(len(scores), np.int32) if groups is None else groups))
    labels = np.asarray(labels, dtype=np.int8)
    stats = _task_stats(codes, n_groups, np.asarray(scores), labels, weights, cfg)
    values = _metric_vector(stats, np.ones(n_groups))
    return {name: _finite_or_none(v) for name, v in zip(metric_names(cfg.ks), values, strict=True)}
