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

from pipelines.metrics.compare import compare, verdict
from pipelines.metrics.contract import (
    COLD_COLUMN,
    DIRECTIONS,
    ENTITY_COLD_PREFIX,
    GROUP_COLUMN,
    ITEM_COLUMN,
    LABEL_PREFIX,
    NULL_SLICE_KEY,
    REASON_NO_GAUC_GROUP,
    REASON_NO_POSITIVE,
    REASON_NO_RANKING_GROUP,
    REASON_SINGLE_CLASS,
    SCHEMA_VERSION,
    SCORE_PREFIX,
    WEIGHT_COLUMN,
    EvalConfig,
    metric_names,
)
from pipelines.metrics.evaluation import evaluate
from pipelines.metrics.intervals import point_metrics
from pipelines.metrics.kernels import GroupRanking, auc, group_ranking, log_loss, reliability_curve
from pipelines.metrics.read import PredictionsSource, discover_tasks
from pipelines.metrics.render import summary_markdown, write_results

__all__ = [
    "COLD_COLUMN",
    "DIRECTIONS",
    "ENTITY_COLD_PREFIX",
    "GROUP_COLUMN",
    "ITEM_COLUMN",
    "LABEL_PREFIX",
    "NULL_SLICE_KEY",
    "REASON_NO_GAUC_GROUP",
    "REASON_NO_POSITIVE",
    "REASON_NO_RANKING_GROUP",
    "REASON_SINGLE_CLASS",
    "SCHEMA_VERSION",
    "SCORE_PREFIX",
    "WEIGHT_COLUMN",
    "EvalConfig",
    "GroupRanking",
    "PredictionsSource",
    "auc",
    "compare",
    "discover_tasks",
    "evaluate",
    "group_ranking",
    "log_loss",
    "metric_names",
    "point_metrics",
    "reliability_curve",
    "summary_markdown",
    "verdict",
    "write_results",
]
