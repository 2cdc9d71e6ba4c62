"""Offline evaluation metrics for ranking predictions: exact, deterministic, sliced, with bootstrap intervals.

Input is the predictions parquet written by the scoring step (one row per impression):

* ``group_id`` (int64): user or request id, the unit of GAUC/NDCG/Recall and of bootstrap resampling;
* ``item_id`` (int64);
* per task ``t``: ``label_<t>`` (0/1) and ``score_<t>`` (probability);
* optional ``weight`` (float, default 1), optional ``is_cold`` (bool: item unseen in training), optional
  ``is_cold_<entity>`` (bool: the row's user, item or other entity unseen in training), optional slice columns.

Metrics per task and scope (overall, each value of each slice column, cold and warm items, cold and warm rows of
each entity):

* ``auc``: exact weighted ROC AUC; tied scores count one half (average ranks).
* ``logloss``: weighted mean binary cross entropy (natural log), scores clipped to ``[eps, 1 - eps]``.
* ``ne``: normalised entropy, logloss / entropy of the weighted base rate (lower is better, 1 = constant predictor).
* ``calibration``: sum(w * p) / sum(w * y) (1 is perfect).
* ``gauc``: mean of per-group weighted AUC, each group weighted by its impressions (sum of row weights); groups
  with a single class (including one-item groups) are skipped and counted.
* ``ndcg@k``, ``recall@k``: per group (items ranked by descending score, binary gain, log2 discount), uniform mean
  over groups with at least one positive; groups without positives are skipped and counted. Tied scores are
  averaged over all their orderings (as sklearn's ``ndcg_score``), so results never depend on row order.
  Row weights do not enter the ranking metrics. Recall@k divides by all positives of the group.

Intervals: a cluster bootstrap that resamples groups (not rows) with replacement, ``n_bootstrap`` replicates, for
every metric including the row-level ones, since rows of one user are correlated. The percentile interval at
``ci_level`` is reported. Each scope draws from ``numpy.random.default_rng([seed, crc32(scope key)])``, so the same
seed gives the same intervals and a scope's interval does not depend on which other scopes exist. ``compare``
applies the same resampled groups to both models (paired bootstrap).

Memory: only the needed columns are read (column projection); per row about 8 bytes group code, 1 byte label,
4-8 bytes score, 8 bytes weight when present and 25 bytes of sort structure for the task being computed. Global
AUC costs one O(N log N) sort plus O(N) per replicate; everything else per replicate is O(groups).
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

SCHEMA_VERSION = 1
LABEL_PREFIX = "label_"
SCORE_PREFIX = "score_"
GROUP_COLUMN = "group_id"
ITEM_COLUMN = "item_id"
WEIGHT_COLUMN = "weight"
COLD_COLUMN = "is_cold"
ENTITY_COLD_PREFIX = "is_cold_"
NULL_SLICE_KEY = "__null__"

# Reasons given when a metric is undefined; stable strings that a gate may match on.
REASON_SINGLE_CLASS = "labels have a single class"
REASON_NO_POSITIVE = "no positive labels"
REASON_NO_GAUC_GROUP = "no group has both classes"
REASON_NO_RANKING_GROUP = "no group has a positive label"


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation; written to ``metrics.json`` under ``config``.

    Args:
        ks: cut-offs for NDCG@k and Recall@k.
        min_slice_size: slices (and cold/warm) with fewer rows get counts but no metrics.
        n_bootstrap: bootstrap replicates (groups resampled); 0 disables intervals.
        ci_level: coverage of the percentile interval, e.g. 0.95.
        seed: bootstrap seed.
        calibration_bins: number of equal-count score bins of the reliability curve.
        eps: scores are clipped to ``[eps, 1 - eps]`` for logloss/NE.
        roc_points: at most this many points of the ROC curve are stored.
    """

    ks: tuple[int, ...] = (5, 10)
    min_slice_size: int = 1000
    n_bootstrap: int = 200
    ci_level: float = 0.95
    seed: int = 0
    calibration_bins: int = 10
    eps: float = 1e-7
    roc_points: int = 200

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks must be positive cut-offs, got {self.ks}")
        if not 0.0 < self.ci_level < 1.0:
            raise ValueError(f"ci_level must be in (0, 1), got {self.ci_level}")
        if self.n_bootstrap < 0 or self.calibration_bins < 1 or self.min_slice_size < 0:
            raise ValueError("n_bootstrap, min_slice_size must be >= 0 and calibration_bins >= 1")
        if not 0.0 < self.eps < 0.5:
            raise ValueError(f"eps must be in (0, 0.5), got {self.eps}")


def metric_names(ks: Sequence[int]) -> list[str]:
    """Names of the metrics reported per task, in ``metrics.json`` order."""
    return ["auc", "gauc", "logloss", "ne", "calibration"] + [f"ndcg@{k}" for k in ks] + [f"recall@{k}" for k in ks]


# ---------------------------------------------------------------------------------------------------------------
# Array-level metrics. Each takes 1-D arrays of equal length: scores in [0, 1], labels 0/1, optional weights >= 0.
# ---------------------------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------------------------
# Reading predictions.
# ---------------------------------------------------------------------------------------------------------------

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

    Two distinct sources are joined 1:1 on (group_id, item_id); labels, weights and slices come from the first and
    the second must carry the same labels.
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
            raise ValueError(f"{keys} must be unique in both prediction files to compare them 1:1") from err
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


# ---------------------------------------------------------------------------------------------------------------
# Point estimates and bootstrap replicates of one task in one scope.
# ---------------------------------------------------------------------------------------------------------------

# Columns of the per-group sum matrix; NDCG@k then Recall@k columns follow, one per k.
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


# ---------------------------------------------------------------------------------------------------------------
# Scopes (overall, slices, cold/warm) and the JSON layout.
# ---------------------------------------------------------------------------------------------------------------

_REASONS = {
    "auc": REASON_SINGLE_CLASS,
    "gauc": REASON_NO_GAUC_GROUP,
    "logloss": "total weight is zero",
    "ne": REASON_SINGLE_CLASS,
    "calibration": REASON_NO_POSITIVE,
    "ndcg": REASON_NO_RANKING_GROUP,
    "recall": REASON_NO_RANKING_GROUP,
}

# Which direction of a metric is an improvement; copied into comparison results for promotion gates.
DIRECTIONS = {
    "auc": "higher",
    "gauc": "higher",
    "logloss": "lower",
    "ne": "lower",
    "calibration": "closer_to_1",
    "ndcg": "higher",
    "recall": "higher",
}


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


# ---------------------------------------------------------------------------------------------------------------
# Writing results.
# ---------------------------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(low: float | None, high: float | None) -> str:
    return "" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]"


def _scope_rows(scopes: dict[str, dict[str, Any]], task: str, metric: str, comparison: bool) -> list[str]:
    """One markdown table row per scope (slice value, cold/warm) for one task and metric."""
    rows = []
    for name, scope in scopes.items():
        entry = scope["tasks"][task]
        if entry["metrics"] is None:
            cells = [scope["status"]] + [""] * (3 if comparison else 1)
        else:
            m = entry["metrics"][metric]
            value = [_fmt(m["a"]), _fmt(m["b"]), _fmt(m["delta"])] if comparison else [_fmt(m["value"])]
            cells = value + [_fmt_ci(m["ci_low"], m["ci_high"])]
        rows.append(f"| {name} | {scope['n_rows']} | {entry['counts']['n_positive']} | " + " | ".join(cells) + " |")
    return rows


def summary_markdown(result: dict[str, Any], slice_metrics: Sequence[str] = ("auc", "ne")) -> str:
    """Short markdown summary of an ``evaluate`` or ``compare`` result (overall table, slices, cold/warm)."""
    comparison = result["kind"] == "comparison"
    cfg, data = result["config"], result["data"]
    pct = round(100 * cfg["ci_level"])
    if comparison:
        a, b = result["models"]["a"]["name"], result["models"]["b"]["name"]
        lines = [f"# Comparison: {b} vs {a}", "", f"Deltas are {b} - {a}; intervals are paired ({pct}% bootstrap)."]
        value_head, value_rule = f"{a} | {b} | delta | {pct}% CI of delta", "---:|---:|---:|---"
    else:
        lines = ["# Offline evaluation"]
        value_head, value_rule = f"value | {pct}% CI", "---:|---"
    lines += [
        "",
        f"{data['n_rows']} rows, {data['n_groups']} groups, tasks {', '.join(data['tasks'])}; "
        f"{cfg['n_bootstrap']} bootstrap replicates over groups, seed {cfg['seed']}.",
    ]
    if data.get("cold_share"):
        shares = ", ".join(f"{name} {100 * share:.1f}%" for name, share in data["cold_share"].items())
        lines += ["", f"Cold rows (their value was not seen in training), share of all rows: {shares}."]
    for task in data["tasks"]:
        entry = result["overall"]["tasks"][task]
        counts = entry["counts"]
        lines += [
            "",
            f"## Task `{task}`",
            "",
            f"{counts['n_positive']} positives, base rate {_fmt(counts['base_rate'])}; GAUC over "
            f"{counts['gauc_groups']} groups ({counts['gauc_groups_single_class']} single-class skipped); ranking "
            f"metrics over {counts['ranking_groups']} groups ({counts['ranking_groups_no_positive']} without "
            "positives skipped).",
            "",
            f"| metric | {value_head} |",
            f"|---|{value_rule}|",
        ]
        for name, m in entry["metrics"].items():
            value = f"{_fmt(m['a'])} | {_fmt(m['b'])} | {_fmt(m['delta'])}" if comparison else _fmt(m["value"])
            note = f" ({m['reason']})" if m["reason"] else ""
            lines.append(f"| {name} | {value} | {_fmt_ci(m['ci_low'], m['ci_high'])}{note} |")
        sections = [(f"slice `{col}`", scopes) for col, scopes in result["slices"].items()]
        if result["cold_warm"] is not None:
            sections.append(("cold vs warm items", result["cold_warm"]))
        sections += [(f"cold vs warm `{e}`", scopes) for e, scopes in result.get("cold_warm_by_entity", {}).items()]
        for title, scopes in sections:
            for metric in slice_metrics:
                lines += ["", f"### {title}: {metric}", "", f"| value | rows | positives | {value_head} |"]
                lines += [f"|---|---:|---:|{value_rule}|", *_scope_rows(scopes, task, metric, comparison)]
    return "\n".join(lines) + "\n"


def write_results(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write ``metrics.json`` + ``summary.md`` (evaluation) or ``comparison.json`` + ``comparison.md``.

    Returns:
        ``{"json": path, "markdown": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = "comparison" if result["kind"] == "comparison" else "metrics"
    paths = {
        "json": out / f"{stem}.json",
        "markdown": out / ("comparison.md" if stem == "comparison" else "summary.md"),
    }
    # allow_nan=False: undefined values must already be null, never NaN (not valid JSON).
    paths["json"].write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    paths["markdown"].write_text(summary_markdown(result))
    return paths
