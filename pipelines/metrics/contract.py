"""The predictions contract (column names), the metric names and what they mean, and the evaluation settings."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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


# Why each metric family can be undefined: the ``reason`` of a null value in the results.
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
