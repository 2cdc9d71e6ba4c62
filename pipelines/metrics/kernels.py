"""Array-level metrics. Each takes 1-D arrays of equal length: scores in [0, 1], labels 0/1, optional weights >= 0."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _tie_starts(sorted_keys: Sequence[np.ndarray]) -> np.ndarray:
    """Start index of every run of equal key tuples in arrays that are already sorted by those keys."""
    n = len(sorted_keys[0])
    change = np.zeros(n, dtype=bool)
    change[:1] = True
    for key in sorted_keys:
        change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


@dataclass(frozen=True)
class _Ties:
    """Rows of score-sorted data that share their score with a neighbour, with their run's first and last row.

    Only these rows need more than a running sum, and they are usually few.
    """

    rows: np.ndarray
    first: np.ndarray
    last: np.ndarray

    @classmethod
    def of(cls, sorted_scores: np.ndarray) -> _Ties:
        starts = _tie_starts([sorted_scores])
        length = np.diff(np.append(starts, len(sorted_scores)))
        tied = length > 1
        first = np.repeat(starts[tied], length[tied])
        return cls(
            rows=np.flatnonzero(np.repeat(tied, length)),
            first=first,
            last=first + np.repeat(length[tied], length[tied]) - 1,
        )


def _weighted_auc_sorted(labels: np.ndarray, mult: np.ndarray, ties: _Ties) -> float:
    """AUC of rows sorted by ascending score, with per-row multiplicity (weight) ``mult``.

    Each positive counts the negatives below its score plus half of those tied with it. Unweighted inputs only sum
    integers in float64, so the result is exact below 2**53 pairs. ``mult`` is overwritten (callers pass a fresh
    array: it is as long as the data).
    """
    pos = mult * labels
    neg = np.subtract(mult, pos, out=mult)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return math.nan
    cum = np.cumsum(neg)  # negatives at or below each row
    # A tied run [first, last] sees the negatives below it plus half of its own: (cum_before_run + cum[last]) / 2.
    tied = 0.5 * (cum[ties.first] - neg[ties.first] + cum[ties.last])
    below = np.subtract(cum, np.multiply(neg, 0.5, out=neg), out=cum)  # an untied row: cum - neg / 2
    below[ties.rows] = tied
    return float(np.dot(pos, below) / (total_pos * total_neg))


def _as_weights(weights: np.ndarray | None, n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float64) if weights is None else np.asarray(weights, dtype=np.float64)


def auc(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float | None:
    """Exact weighted ROC AUC; ``None`` when the labels have a single class (AUC undefined)."""
    order = np.argsort(scores, kind="stable")
    sorted_scores = np.asarray(scores)[order]
    value = _weighted_auc_sorted(
        np.asarray(labels, dtype=np.float64)[order], _as_weights(weights, len(order))[order], _Ties.of(sorted_scores)
    )
    return None if math.isnan(value) else value


def _row_logloss(scores: np.ndarray, labels: np.ndarray, eps: float) -> np.ndarray:
    p = np.clip(np.asarray(scores, dtype=np.float64), eps, 1.0 - eps)
    # Probability given to the observed label; computed in place to keep one float64 array per row.
    np.subtract(1.0, p, out=p, where=labels == 0)
    np.log(p, out=p)
    return np.negative(p, out=p)


def log_loss(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, eps: float = 1e-7) -> float:
    """Weighted mean binary cross entropy in nats, scores clipped to ``[eps, 1 - eps]``."""
    w = _as_weights(weights, len(scores))
    return float(np.dot(w, _row_logloss(scores, labels, eps)) / w.sum())


def _binary_entropy(p: float) -> float:
    """Entropy (nats) of a Bernoulli(p); NaN unless 0 < p < 1, where NE is undefined."""
    return -(p * math.log(p) + (1.0 - p) * math.log1p(-p)) if 0.0 < p < 1.0 else math.nan


def reliability_curve(
    scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None, n_bins: int = 10
) -> dict[str, list[float]]:
    """Reliability (calibration) curve over equal-count score bins.

    Equal-count bins keep every bin populated when scores crowd near 0, as click rates do. Bin ``i`` holds
    scores in ``[edges[i], edges[i + 1])``, the last bin also its upper edge; duplicate edges from ties are merged.

    Returns:
        ``bin_edges`` (n + 1), and per bin ``count`` (rows), ``weight`` (sum of weights), ``mean_score`` and
        ``positive_rate`` (both weighted).
    """
    scores = np.asarray(scores, dtype=np.float64)
    w = _as_weights(weights, len(scores))
    edges = np.unique(np.quantile(scores, np.linspace(0.0, 1.0, n_bins + 1))) if len(scores) else np.zeros(1)
    n = max(len(edges) - 1, 1)
    # searchsorted on the inner edges assigns each score to its bin; the top edge belongs to the last bin.
    bins = np.searchsorted(edges[1:-1], scores, side="right")
    count = np.bincount(bins, minlength=n)
    weight = np.bincount(bins, w, minlength=n)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_score = np.bincount(bins, w * scores, minlength=n) / weight
        positive_rate = np.bincount(bins, w * labels, minlength=n) / weight
    return {
        "bin_edges": edges.tolist(),
        "count": count.tolist(),
        "weight": weight.tolist(),
        "mean_score": _nan_to_none(mean_score),
        "positive_rate": _nan_to_none(positive_rate),
    }


def _finite_or_none(value: float) -> float | None:
    """JSON-safe value: undefined metrics (NaN) become None."""
    return float(value) if math.isfinite(value) else None


def _nan_to_none(values: np.ndarray) -> list[float | None]:
    return [_finite_or_none(v) for v in values]


@dataclass(frozen=True)
class GroupRanking:
    """Per-group metrics of one task; arrays are indexed by dense group code, NaN where a group is skipped.

    Attributes:
        group_weight: sum of row weights per group (its impressions when unweighted).
        auc: per-group weighted AUC, NaN for single-class groups.
        n_positive: positive rows per group.
        ndcg: ``{k: per-group NDCG@k}``, NaN for groups without positives.
        recall: ``{k: per-group Recall@k}``, NaN for groups without positives.
    """

    group_weight: np.ndarray
    auc: np.ndarray
    n_positive: np.ndarray
    ndcg: dict[int, np.ndarray]
    recall: dict[int, np.ndarray]


def _rank_sorted_groups(
    g: np.ndarray, s: np.ndarray, y: np.ndarray, w: np.ndarray, n_groups: int, ks: Sequence[int]
) -> GroupRanking:
    """``group_ranking`` of rows already sorted by (group code, descending score), codes in ``[0, n_groups)``."""
    group_start_rows = _tie_starts([g])
    starts = _tie_starts([g, s])  # runs of tied scores inside a group
    run_group = g[starts]
    run_size = np.diff(np.append(starts, len(g)))
    run_group_idx = np.searchsorted(group_start_rows, starts, side="right") - 1  # index among present groups
    run_rank = starts - group_start_rows[run_group_idx]  # first 0-based rank of each run inside its group

    pos_w = np.add.reduceat(w * y, starts)
    neg_w = np.add.reduceat(w, starts) - pos_w
    group_pos_w = np.bincount(run_group, pos_w, minlength=n_groups)
    group_neg_w = np.bincount(run_group, neg_w, minlength=n_groups)
    # Negatives ranked above a run = cumulative negatives before it minus those before its group's first run.
    neg_cum_before = np.cumsum(neg_w) - neg_w
    group_first_run = np.searchsorted(starts, group_start_rows)
    neg_above = neg_cum_before - neg_cum_before[group_first_run[run_group_idx]]
    neg_below = group_neg_w[run_group] - neg_above - neg_w
    auc_num = np.bincount(run_group, pos_w * (neg_below + 0.5 * neg_w), minlength=n_groups)
    both = (group_pos_w > 0) & (group_neg_w > 0)
    group_auc = np.full(n_groups, np.nan)
    group_auc[both] = auc_num[both] / (group_pos_w[both] * group_neg_w[both])

    # Ranking metrics use binary gains: the positive fraction of a tie run is spread over the run's ranks.
    run_pos = np.add.reduceat(y, starts)
    n_positive = np.bincount(run_group, run_pos, minlength=n_groups)
    has_pos = n_positive > 0
    run_gain = run_pos / run_size
    ndcg: dict[int, np.ndarray] = {}
    recall: dict[int, np.ndarray] = {}
    for k in ks:
        # cum_discount[r] = sum of 1/log2(i + 2) over ranks i < min(r, k).
        cum_discount = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
        lo, hi = np.minimum(run_rank, k), np.minimum(run_rank + run_size, k)
        dcg = np.bincount(run_group, run_gain * (cum_discount[hi] - cum_discount[lo]), minlength=n_groups)
        hits = np.bincount(run_group, run_gain * (hi - lo), minlength=n_groups)
        ideal = cum_discount[np.minimum(n_positive, k).astype(np.int64)]
        ndcg[k] = np.where(has_pos, dcg / np.where(has_pos, ideal, 1.0), np.nan)
        recall[k] = np.where(has_pos, hits / np.where(has_pos, n_positive, 1.0), np.nan)
    return GroupRanking(
        group_weight=np.bincount(run_group, pos_w + neg_w, minlength=n_groups),
        auc=group_auc,
        n_positive=n_positive,
        ndcg=ndcg,
        recall=recall,
    )


def group_ranking(
    groups: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None,
    ks: Sequence[int],
    n_groups: int | None = None,
    chunk_rows: int = 1 << 20,
) -> GroupRanking:
    """Per-group AUC, NDCG@k and Recall@k from one sort by (group, descending score).

    Args:
        groups: dense group codes in ``[0, n_groups)``.
        scores, labels, weights: per row; weights only enter the per-group AUC and the group weight.
        ks: cut-offs.
        n_groups: number of groups (default ``groups.max() + 1``).
        chunk_rows: rows are processed in chunks of whole groups of about this size, which bounds the ~150 bytes
            per row of temporaries.
    """
    if n_groups is None:
        n_groups = int(groups.max()) + 1 if len(groups) else 0
    order = np.lexsort((-np.asarray(scores), groups))
    # Sorted rows of group c are order[offsets[c]:offsets[c + 1]]; chunks start at the group holding every
    # chunk_rows-th row, so they hold whole groups.
    offsets = np.concatenate([[0], np.cumsum(np.bincount(groups, minlength=n_groups))])
    chunk_starts = np.searchsorted(offsets, np.arange(0, len(order), chunk_rows), side="right") - 1
    cuts = np.unique(np.concatenate([[0], chunk_starts, [n_groups]]))
    parts = []
    for lo, hi in zip(cuts[:-1], cuts[1:], strict=True):
        rows = order[offsets[lo] : offsets[hi]]
        parts.append(
            _rank_sorted_groups(
                np.asarray(groups)[rows] - lo,
                np.asarray(scores)[rows],
                np.asarray(labels)[rows].astype(np.float64),
                np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)[rows],
                int(hi - lo),
                ks,
            )
        )
    return GroupRanking(
        group_weight=np.concatenate([p.group_weight for p in parts]),
        auc=np.concatenate([p.auc for p in parts]),
        n_positive=np.concatenate([p.n_positive for p in parts]),
        ndcg={k: np.concatenate([p.ndcg[k] for p in parts]) for k in ks},
        recall={k: np.concatenate([p.recall[k] for p in parts]) for k in ks},
    )
