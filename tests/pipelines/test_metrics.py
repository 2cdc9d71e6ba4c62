"""pipelines.metrics against independent implementations: sklearn, torchmetrics, torchrec.metrics, naive loops."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score, roc_curve

from pipelines import metrics as M
from pipelines.metrics import intervals, read

pytestmark = pytest.mark.unit


def synthetic_predictions(
    n_rows: int = 3000,
    n_groups: int = 200,
    seed: int = 0,
    tasks: tuple[str, ...] = ("click", "like"),
    weighted: bool = True,
    score_decimals: int | None = 2,
) -> pl.DataFrame:
    """Predictions in the scoring contract: informative scores, optional ties (rounding), slices, cold items.

    Scores stay inside [0.01, 0.99] so that no reference implementation's clipping comes into play.
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, object] = {
        "group_id": rng.integers(0, n_groups, n_rows).astype(np.int64) * 7 + 3,  # sparse, non-contiguous ids
        "item_id": np.arange(n_rows, dtype=np.int64),
    }
    for i, task in enumerate(tasks):
        label = (rng.random(n_rows) < 0.25 / (i + 1)).astype(np.int8)
        score = 1.0 / (1.0 + np.exp(-(rng.normal(-1.2 - i, 1.0, n_rows) + 1.3 * label)))
        if score_decimals is not None:
            score = score.round(score_decimals)
        columns[f"label_{task}"] = label
        columns[f"score_{task}"] = np.clip(score, 0.01, 0.99)
    if weighted:
        columns["weight"] = rng.choice([0.5, 1.0, 2.0, 3.0], n_rows)
    columns["is_cold"] = rng.random(n_rows) < 0.15
    columns["country"] = [["DE", "FR", "US", None][c] for c in rng.choice(4, n_rows, p=[0.45, 0.3, 0.2, 0.05])]
    columns["surface"] = rng.integers(0, 3, n_rows).astype(np.int64)
    return pl.DataFrame(columns)


def _distinct_scores(df: pl.DataFrame, task: str) -> pl.DataFrame:
    """Rows whose score is not clipped, hence (with unrounded scores) distinct: for references without ties."""
    return df.filter(pl.col(f"score_{task}").is_between(0.01, 0.99, closed="none"))


def _codes(df: pl.DataFrame) -> np.ndarray:
    return np.unique(df["group_id"].to_numpy(), return_inverse=True)[1]


FAST = M.EvalConfig(n_bootstrap=20, min_slice_size=50, ks=(1, 3, 10))


# ------------------------------------------------------------------------------------------------------------
# Whole-population metrics.
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("decimals", [1, 2, None])  # 1 decimal: massive ties; None: (almost) none
def test_auc_logloss_match_sklearn(weighted: bool, decimals: int | None) -> None:
    df = synthetic_predictions(weighted=weighted, score_decimals=decimals)
    result = M.evaluate(df, config=FAST)
    w = df["weight"].to_numpy() if weighted else None
    for task in ("click", "like"):
        y, s = df[f"label_{task}"].to_numpy(), df[f"score_{task}"].to_numpy()
        got = result["overall"]["tasks"][task]["metrics"]
        assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12)
        assert got["logloss"]["value"] == pytest.approx(log_loss(y, s, sample_weight=w), rel=1e-12)
        assert M.auc(s, y, w) == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12)


def test_ne_and_calibration_match_definitions_and_torchrec() -> None:
    torch = pytest.importorskip("torch")
    ne_mod = pytest.importorskip("torchrec.metrics.ne")
    cal_mod = pytest.importorskip("torchrec.metrics.calibration")
    df = synthetic_predictions()
    y, s, w = (df[c].to_numpy() for c in ("label_click", "score_click", "weight"))
    got = M.evaluate(df, config=FAST)["overall"]["tasks"]["click"]["metrics"]

    base = np.average(y, weights=w)
    naive_ne = log_loss(y, s, sample_weight=w) / -(base * math.log(base) + (1 - base) * math.log(1 - base))
    assert got["ne"]["value"] == pytest.approx(naive_ne, rel=1e-12)
    assert got["calibration"]["value"] == pytest.approx(np.sum(w * s) / np.sum(w * y), rel=1e-12)

    t = {name: torch.tensor(a, dtype=torch.float64) for name, a in (("y", y), ("s", s), ("w", w))}
    ce_sum = ne_mod.compute_cross_entropy(t["y"], t["s"], t["w"], eta=1e-12).sum()
    pos, neg = (t["w"] * t["y"]).sum(), (t["w"] * (1 - t["y"])).sum()
    torchrec_ne = ne_mod.compute_ne(ce_sum, t["w"].sum(), pos, neg, eta=1e-12)
    assert got["ne"]["value"] == pytest.approx(float(torchrec_ne), rel=1e-9)
    torchrec_cal = cal_mod.compute_calibration((t["w"] * t["s"]).sum(), pos)
    assert got["calibration"]["value"] == pytest.approx(float(torchrec_cal), rel=1e-12)


def test_auc_matches_torchrec_without_ties() -> None:
    torch = pytest.importorskip("torch")
    auc_mod = pytest.importorskip("torchrec.metrics.auc")
    df = _distinct_scores(synthetic_predictions(score_decimals=None), "like")
    y, s, w = (torch.tensor(df[c].to_numpy(), dtype=torch.float64) for c in ("label_like", "score_like", "weight"))
    # torchrec breaks ties arbitrarily (no tie correction), so compare on distinct scores only.
    assert len(torch.unique(s)) == len(s)
    expected = float(auc_mod.compute_auc(1, [s[None]], [y[None]], [w[None]])[0])  # n_tasks x n_examples
    assert M.auc(s.numpy(), y.numpy(), w.numpy()) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("weighted", [False, True])
def test_roc_curve_matches_sklearn(weighted: bool) -> None:
    df = synthetic_predictions(weighted=weighted, score_decimals=2)  # ties: thresholds are distinct scores
    result = M.evaluate(df, config=M.EvalConfig(n_bootstrap=0, roc_points=10_000))
    y, s = df["label_click"].to_numpy(), df["score_click"].to_numpy()
    fpr, tpr, _ = roc_curve(y, s, sample_weight=df["weight"].to_numpy() if weighted else None, drop_intermediate=False)
    roc = result["overall"]["tasks"]["click"]["roc"]
    np.testing.assert_allclose(roc["fpr"], fpr, atol=1e-12)
    np.testing.assert_allclose(roc["tpr"], tpr, atol=1e-12)
    thinned = M.evaluate(df, config=M.EvalConfig(n_bootstrap=0, roc_points=20))["overall"]["tasks"]["click"]["roc"]
    assert len(thinned["fpr"]) <= 21 and thinned["fpr"][0] == 0.0 and thinned["tpr"][-1] == pytest.approx(1.0)


def test_logloss_clips_scores_of_zero_and_one() -> None:
    scores, labels = np.array([0.0, 1.0, 0.5]), np.array([1, 0, 1])
    eps = 1e-7
    expected = (-math.log(eps) - math.log(eps) - math.log(0.5)) / 3
    # 1 - (1 - eps) is not exactly eps in float64, hence the looser tolerance.
    assert M.log_loss(scores, labels, eps=eps) == pytest.approx(expected, rel=1e-9)


def test_reliability_curve_matches_naive_binning() -> None:
    df = synthetic_predictions()
    y, s, w = (df[c].to_numpy() for c in ("label_click", "score_click", "weight"))
    curve = M.reliability_curve(s, y, w, n_bins=8)
    edges = curve["bin_edges"]
    assert sum(curve["count"]) == len(s)
    for i in range(len(edges) - 1):
        last = i == len(edges) - 2
        mask = (s >= edges[i]) & ((s <= edges[i + 1]) if last else (s < edges[i + 1]))
        assert curve["count"][i] == mask.sum()
        assert curve["weight"][i] == pytest.approx(w[mask].sum())
        assert curve["mean_score"][i] == pytest.approx(np.average(s[mask], weights=w[mask]))
        assert curve["positive_rate"][i] == pytest.approx(np.average(y[mask], weights=w[mask]))


def test_single_class_gives_null_with_reason_not_a_crash() -> None:
    df = synthetic_predictions(tasks=("click",)).with_columns(pl.lit(0, dtype=pl.Int8).alias("label_click"))
    result = M.evaluate(df, config=FAST)
    metrics = result["overall"]["tasks"]["click"]["metrics"]
    for name in ("auc", "gauc", "ne", "calibration", "ndcg@3", "recall@3"):
        assert metrics[name]["value"] is None and metrics[name]["reason"], name
        assert metrics[name]["ci_low"] is None and metrics[name]["ci_high"] is None
    assert metrics["logloss"]["value"] is not None
    assert M.auc(np.array([0.2, 0.3]), np.array([1, 1])) is None
    json.dumps(result, allow_nan=False)


# ------------------------------------------------------------------------------------------------------------
# Per-group metrics.
# ------------------------------------------------------------------------------------------------------------


def test_gauc_matches_naive_loop_and_counts_skipped_groups() -> None:
    df = synthetic_predictions(n_rows=1500, n_groups=400)  # many one-item and single-class groups
    result = M.evaluate(df, config=FAST)
    for task in ("click", "like"):
        num = den = 0.0
        skipped = 0
        for _, part in df.group_by("group_id"):
            y, s, w = (part[c].to_numpy() for c in (f"label_{task}", f"score_{task}", "weight"))
            if len(np.unique(y)) < 2:
                skipped += 1
                continue
            num += w.sum() * roc_auc_score(y, s, sample_weight=w)
            den += w.sum()
        entry = result["overall"]["tasks"][task]
        assert entry["metrics"]["gauc"]["value"] == pytest.approx(num / den, rel=1e-12)
        assert entry["counts"]["gauc_groups_single_class"] == skipped
        assert entry["counts"]["gauc_groups"] + skipped == df["group_id"].n_unique()


def test_ndcg_matches_sklearn_per_group_with_ties() -> None:
    df = synthetic_predictions(score_decimals=1)  # coarse scores: ties inside most groups
    ks = (1, 3, 10)
    ranking = M.group_ranking(_codes(df), df["score_click"].to_numpy(), df["label_click"].to_numpy(), None, ks)
    codes = _codes(df)
    for k in ks:
        expected, no_positive = [], 0
        for g in range(codes.max() + 1):
            y, s = df["label_click"].to_numpy()[codes == g], df["score_click"].to_numpy()[codes == g]
            if y.sum() == 0:
                no_positive += 1
            elif len(y) == 1:
                expected.append(1.0)  # sklearn refuses one-document queries; a lone positive is a perfect ranking
            else:
                expected.append(ndcg_score([y], [s], k=k))
        got = ranking.ndcg[k]
        assert np.isnan(got).sum() == no_positive
        np.testing.assert_allclose(got[~np.isnan(got)], expected, rtol=1e-12)


def _recall_by_permutation(y: np.ndarray, s: np.ndarray, k: int) -> float:
    """Recall@k averaged over every ordering of the items that is consistent with descending scores."""
    hits = []
    for perm in itertools.permutations(range(len(y))):
        if all(s[perm[i]] >= s[perm[i + 1]] for i in range(len(perm) - 1)):
            hits.append(sum(y[j] for j in perm[:k]) / y.sum())
    return float(np.mean(hits))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 1), st.sampled_from([0.1, 0.2, 0.3, 0.7])), min_size=1, max_size=6),
    st.integers(1, 5),
)
def test_recall_with_ties_is_the_mean_over_tie_orderings(rows: list[tuple[int, float]], k: int) -> None:
    y = np.array([r[0] for r in rows], dtype=np.int8)
    s = np.array([r[1] for r in rows])
    ranking = M.group_ranking(np.zeros(len(y), dtype=np.int32), s, y, None, [k])
    if y.sum() == 0:
        assert np.isnan(ranking.recall[k][0]) and np.isnan(ranking.ndcg[k][0])
    else:
        assert ranking.recall[k][0] == pytest.approx(_recall_by_permutation(y, s, k), rel=1e-12)


def test_ndcg_and_recall_match_torchmetrics_without_ties() -> None:
    torch = pytest.importorskip("torch")
    retrieval = pytest.importorskip("torchmetrics.retrieval")
    df = _distinct_scores(synthetic_predictions(score_decimals=None), "click")
    assert df["score_click"].n_unique() == df.height  # torchmetrics breaks ties by position
    result = M.evaluate(df, config=FAST)["overall"]["tasks"]["click"]
    preds = torch.tensor(df["score_click"].to_numpy())
    target = torch.tensor(df["label_click"].to_numpy()).bool()
    indexes = torch.tensor(_codes(df))
    for k in FAST.ks:
        # Binary labels: torchmetrics' linear gain and the 2^rel - 1 convention agree. 'skip' drops groups
        # without positives, as we do; the default 'neg' would count them as 0.
        ndcg = retrieval.RetrievalNormalizedDCG(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        recall = retrieval.RetrievalRecall(top_k=k, empty_target_action="skip")(preds, target, indexes=indexes)
        assert result["metrics"][f"ndcg@{k}"]["value"] == pytest.approx(float(ndcg), rel=1e-6)
        assert result["metrics"][f"recall@{k}"]["value"] == pytest.approx(float(recall), rel=1e-6)
    no_positive = sum(1 for _, part in df.group_by("group_id") if part["label_click"].sum() == 0)
    assert result["counts"]["ranking_groups_no_positive"] == no_positive


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.integers(0, 4), st.floats(0.1, 5.0), st.integers(0, 3)),
        min_size=2,
        max_size=40,
    )
)
def test_auc_properties(rows: list[tuple[int, int, float, int]]) -> None:
    y = np.array([r[0] for r in rows], dtype=np.int8)
    s = np.array([r[1] for r in rows], dtype=np.float64) / 4.0  # few distinct values: many ties
    w = np.array([r[2] for r in rows])
    value = M.auc(s, y, w)
    if len(np.unique(y)) < 2:
        assert value is None
        return
    assert value == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12, abs=1e-12)
    assert M.auc(1.0 - s, y, w) == pytest.approx(1.0 - value, abs=1e-12)  # reversing the order mirrors AUC
    assert M.auc(s**3, y, w) == pytest.approx(value, abs=1e-12)  # only the order matters
    order = np.random.default_rng(len(rows)).permutation(len(y))
    assert M.auc(s[order], y[order], w[order]) == pytest.approx(value, abs=1e-12)  # row order does not


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 4))
def test_group_ranking_is_independent_of_chunking(seed: int, chunk_rows: int) -> None:
    df = synthetic_predictions(n_rows=60, n_groups=15, seed=seed)
    args = (_codes(df), df["score_click"].to_numpy(), df["label_click"].to_numpy(), df["weight"].to_numpy(), (2, 5))
    whole, chunked = M.group_ranking(*args), M.group_ranking(*args, chunk_rows=chunk_rows)
    np.testing.assert_allclose(chunked.auc, whole.auc, rtol=1e-12)
    for k in (2, 5):
        np.testing.assert_allclose(chunked.ndcg[k], whole.ndcg[k], rtol=1e-12)
        np.testing.assert_allclose(chunked.recall[k], whole.recall[k], rtol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Slices, cold/warm, bootstrap.
# ------------------------------------------------------------------------------------------------------------


def test_slices_equal_evaluating_the_filtered_rows() -> None:
    df = synthetic_predictions()
    cfg = M.EvalConfig(n_bootstrap=0, min_slice_size=200, ks=(3,))
    result = M.evaluate(df, slice_columns=["country", "surface"], config=cfg)
    assert list(result["slices"]["country"]) == ["DE", "FR", "US", M.NULL_SLICE_KEY]
    assert list(result["slices"]["surface"]) == ["0", "1", "2"]
    for key, mask in [("DE", pl.col("country") == "DE"), (M.NULL_SLICE_KEY, pl.col("country").is_null())]:
        sub = df.filter(mask)
        scope = result["slices"]["country"][key]
        assert scope["n_rows"] == sub.height and scope["n_groups"] == sub["group_id"].n_unique()
        if sub.height < cfg.min_slice_size:
            assert scope["status"] == "below_min_size"
            assert scope["tasks"]["click"]["metrics"] is None
            assert scope["tasks"]["click"]["counts"]["n_positive"] == sub["label_click"].sum()
        else:
            expected = M.evaluate(sub, config=cfg)["overall"]["tasks"]["click"]["metrics"]
            assert scope["tasks"]["click"]["metrics"] == expected
    cold = df.filter(pl.col("is_cold"))
    cold_metrics = result["cold_warm"]["cold"]["tasks"]["like"]["metrics"]
    y, s, w = (cold[c].to_numpy() for c in ("label_like", "score_like", "weight"))
    assert cold_metrics["auc"]["value"] == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12)


def test_empty_cold_scope_and_missing_optional_columns() -> None:
    df = synthetic_predictions(weighted=False).with_columns(pl.lit(False).alias("is_cold"))
    result = M.evaluate(df, config=FAST)
    assert result["cold_warm"]["cold"]["status"] == "empty"
    assert result["cold_warm"]["cold"]["tasks"]["click"]["counts"]["n_rows"] == 0
    assert result["cold_warm"]["warm"]["status"] == "ok"
    assert result["data"]["weighted"] is False
    assert M.evaluate(df.drop("is_cold"), config=FAST)["cold_warm"] is None


def test_cold_users_and_other_entities() -> None:
    """is_cold_<entity> columns give cold/warm scopes equal to evaluating the filtered rows, and the cold share."""
    df = synthetic_predictions().with_columns(
        (pl.col("group_id") % 3 == 0).alias("is_cold_user_id"), (pl.col("item_id") % 5 == 0).alias("is_cold_seller")
    )
    cfg = M.EvalConfig(n_bootstrap=0, ks=(3,), min_slice_size=10)
    result = M.evaluate(df, config=cfg)
    assert list(result["cold_warm_by_entity"]) == ["user_id", "seller"]
    assert result["data"]["cold_entities"] == ["user_id", "seller"]
    users = df["group_id"].to_numpy()
    assert result["data"]["cold_share"]["user_id"] == pytest.approx(np.mean(users % 3 == 0), abs=1e-12)
    assert result["data"]["cold_share"]["item"] == pytest.approx(df["is_cold"].mean(), abs=1e-12)
    for name, mask in (("cold", users % 3 == 0), ("warm", users % 3 != 0)):
        sub = df.filter(pl.Series(mask))
        scope = result["cold_warm_by_entity"]["user_id"][name]
        assert scope["n_rows"] == sub.height
        y, s, w = (sub[c].to_numpy() for c in ("label_click", "score_click", "weight"))
        auc = scope["tasks"]["click"]["metrics"]["auc"]["value"]
        assert auc == pytest.approx(roc_auc_score(y, s, sample_weight=w), rel=1e-12)
    summary = M.summary_markdown(result)
    share = 100 * np.mean(users % 3 == 0)
    assert f"user_id {share:.1f}%" in summary and "cold vs warm `user_id`" in summary
    assert M.evaluate(df.drop("is_cold_user_id", "is_cold_seller"), config=cfg)["cold_warm_by_entity"] == {}


def test_bootstrap_replicate_equals_metrics_of_resampled_groups() -> None:
    """A replicate is the metric of the data rebuilt from the drawn groups (each copy a new group)."""
    df = synthetic_predictions(n_rows=600, n_groups=40, tasks=("click",))
    cfg = M.EvalConfig(n_bootstrap=1, ks=(3,))
    codes = _codes(df)
    n_groups = codes.max() + 1
    drawn = np.random.default_rng(intervals._scope_rng_seed(cfg, "overall")).integers(0, n_groups, n_groups)
    parts = [
        df.filter(pl.Series(codes == g)).with_columns(pl.lit(copy).alias("group_id")) for copy, g in enumerate(drawn)
    ]
    resampled = pl.concat(parts)
    expected = M.evaluate(resampled, config=M.EvalConfig(n_bootstrap=0, ks=(3,)))["overall"]["tasks"]["click"]

    cols, _ = read._load([(df, M.SCORE_PREFIX)], None, [])
    stats = intervals._task_stats(
        cols.groups, cols.n_groups, cols.scores[0]["click"], cols.labels["click"], cols.weights, cfg
    )
    replicate = intervals._bootstrap([stats], cols.n_groups, cfg, "overall")[0][0]
    for j, name in enumerate(M.metric_names(cfg.ks)):
        assert replicate[j] == pytest.approx(expected["metrics"][name]["value"], rel=1e-10), name


def test_bootstrap_is_deterministic_and_seeded() -> None:
    df = synthetic_predictions()
    first = M.evaluate(df, slice_columns=["country"], config=FAST)
    again = M.evaluate(df, slice_columns=["country"], config=FAST)
    other = M.evaluate(df, slice_columns=["country"], config=M.EvalConfig(**{**FAST.__dict__, "seed": 1}))
    assert json.dumps(first) == json.dumps(again)
    auc_a, auc_b = (
        first["overall"]["tasks"]["click"]["metrics"]["auc"],
        other["overall"]["tasks"]["click"]["metrics"]["auc"],
    )
    assert auc_a["value"] == auc_b["value"] and auc_a["ci_low"] != auc_b["ci_low"]
    assert auc_a["ci_low"] < auc_a["value"] < auc_a["ci_high"]


# ------------------------------------------------------------------------------------------------------------
# Comparison, I/O, validation.
# ------------------------------------------------------------------------------------------------------------


def _challenger(df: pl.DataFrame) -> pl.DataFrame:
    """Same impressions with a better click model (scores nudged towards the labels)."""
    return df.with_columns(
        (pl.col("score_click") * 0.7 + pl.col("label_click").cast(pl.Float64) * 0.25).alias("score_click"),
    )


def test_compare_deltas_are_paired_and_match_separate_evaluations(tmp_path: Path) -> None:
    df = synthetic_predictions()
    better = _challenger(df)
    path_a, path_b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    df.write_parquet(path_a)
    better.sample(fraction=1.0, shuffle=True, seed=3).write_parquet(path_b)  # row order must not matter
    comparison = M.compare(path_a, path_b, slice_columns=["country"], config=FAST, names=("champion", "challenger"))
    eval_a, eval_b = M.evaluate(path_a, config=FAST), M.evaluate(better, config=FAST)
    for name in M.metric_names(FAST.ks):
        entry = comparison["overall"]["tasks"]["click"]["metrics"][name]
        a, b = (
            eval_a["overall"]["tasks"]["click"]["metrics"][name],
            eval_b["overall"]["tasks"]["click"]["metrics"][name],
        )
        assert entry["a"] == pytest.approx(a["value"], rel=1e-12) and entry["b"] == pytest.approx(b["value"], rel=1e-12)
        assert entry["delta"] == pytest.approx(b["value"] - a["value"], rel=1e-9, abs=1e-15)
    auc = comparison["overall"]["tasks"]["click"]["metrics"]["auc"]
    assert auc["delta"] > 0 and auc["ci_low"] > 0 and auc["prob_delta_positive"] == 1.0
    assert (
        auc["verdict"] == "better" and comparison["overall"]["tasks"]["click"]["metrics"]["ne"]["verdict"] == "better"
    )
    assert comparison["directions"]["ne"] == "lower" and comparison["models"]["b"]["name"] == "challenger"
    # The like task is unchanged: paired replicates give exactly zero deltas.
    like_auc = comparison["overall"]["tasks"]["like"]["metrics"]["auc"]
    assert like_auc["delta"] == 0.0 and like_auc["ci_low"] == like_auc["ci_high"] == 0.0
    assert like_auc["verdict"] == "inconclusive"

    same_file = M.compare(
        df.with_columns(better["score_click"].alias("score_v2_click"), pl.col("score_like").alias("score_v2_like")),
        score_prefix_b="score_v2_",
        slice_columns=["country"],
        config=FAST,
        names=("champion", "challenger"),
    )
    assert same_file["overall"] == comparison["overall"] and same_file["slices"] == comparison["slices"]


@pytest.mark.parametrize(
    ("direction", "a", "b", "ci", "expected"),
    [
        ("higher", 0.70, 0.72, (0.01, 0.03), "better"),
        ("higher", 0.70, 0.68, (-0.03, -0.01), "worse"),
        ("lower", 0.90, 0.88, (-0.03, -0.01), "better"),
        ("lower", 0.90, 0.92, (0.01, 0.03), "worse"),
        ("higher", 0.70, 0.71, (-0.01, 0.03), "inconclusive"),
        ("closer_to_1", 1.10, 1.02, (-0.09, -0.07), "better"),
        ("closer_to_1", 0.98, 0.90, (-0.09, -0.07), "worse"),
        ("higher", 0.70, 0.72, (None, None), "inconclusive"),
    ],
)
def test_verdict(direction: str, a: float, b: float, ci: tuple, expected: str) -> None:
    assert M.verdict(direction, a, b, *ci) == expected


def test_compare_rejects_mismatched_inputs() -> None:
    df = synthetic_predictions(n_rows=300)
    with pytest.raises(ValueError, match="1:1"):
        M.compare(df, df.head(200), config=FAST)
    with pytest.raises(ValueError, match="label_click differs"):
        M.compare(df, df.with_columns((1 - pl.col("label_click")).alias("label_click")), config=FAST)
    with pytest.raises(ValueError, match="two different score prefixes"):
        M.compare(df, config=FAST)
    with pytest.raises(ValueError, match="differ in order or content"):
        M.compare(df, pl.concat([df.head(299), df.head(1)]), config=FAST)
    with pytest.raises(ValueError, match="no rows"):
        M.evaluate(df.head(0), config=FAST)


def test_compare_pairs_repeated_keys_row_by_row() -> None:
    """Repeated (group, item) keys in the same order in both files pair by row: the comparison equals the one of
    the same rows with unique item ids (the metrics never read item ids)."""
    df = synthetic_predictions(n_rows=300)
    scores_b = pl.Series("score_click", np.random.default_rng(1).permutation(df["score_click"].to_numpy()))
    repeated = df.with_columns(pl.lit(7, dtype=pl.Int64).alias("item_id"))  # every key repeats within its group
    other = repeated.with_columns(scores_b)
    got = M.compare(repeated, other, config=FAST)
    assert got["overall"] == M.compare(df, df.with_columns(scores_b), config=FAST)["overall"]
    with pytest.raises(ValueError, match="differ in order or content"):
        M.compare(repeated, other.reverse(), config=FAST)


def test_write_results_json_keys_and_markdown(tmp_path: Path) -> None:
    df = synthetic_predictions()
    path = tmp_path / "predictions.parquet"
    df.write_parquet(path)
    result = M.evaluate(path, slice_columns=["country"], config=FAST)
    paths = M.write_results(result, tmp_path / "out")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["schema_version"] == M.SCHEMA_VERSION and loaded["kind"] == "evaluation"
    # Keys are only ever added (cold_warm_by_entity came with cold users), so existing readers keep working.
    assert set(loaded) == {"schema_version", "kind", "config", "data", "overall", "slices", "cold_warm",
                           "cold_warm_by_entity"}  # fmt: skip
    assert loaded["data"]["tasks"] == ["click", "like"] and loaded["data"]["sources"] == [str(path)]
    task = loaded["overall"]["tasks"]["click"]
    assert set(task) == {"counts", "metrics", "roc", "reliability"}
    assert list(task["metrics"]) == M.metric_names(FAST.ks)
    assert set(task["metrics"]["auc"]) == {"value", "ci_low", "ci_high", "reason"}
    assert task["roc"]["fpr"][0] == 0.0 and task["roc"]["tpr"][-1] == pytest.approx(1.0)
    summary = paths["markdown"].read_text()
    assert "| auc |" in summary and "slice `country`" in summary and "cold vs warm" in summary

    comparison_paths = M.write_results(M.compare(df, _challenger(df), config=FAST), tmp_path / "cmp")
    assert comparison_paths["json"].name == "comparison.json"
    assert "delta" in comparison_paths["markdown"].read_text()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (pl.lit(2, dtype=pl.Int8).alias("label_click"), "0/1"),
        (pl.lit(1.5).alias("score_click"), "probabilities"),
        (pl.lit(None, dtype=pl.Float64).alias("score_click"), "nulls"),
        (pl.lit(-1.0).alias("weight"), "weights"),
    ],
)
def test_invalid_predictions_are_rejected(change: pl.Expr, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        M.evaluate(synthetic_predictions(n_rows=100).with_columns(change), config=FAST)


def test_tasks_are_discovered_from_columns() -> None:
    df = synthetic_predictions(n_rows=100).with_columns(pl.lit(0, dtype=pl.Int8).alias("label_orphan"))
    assert M.discover_tasks(df.columns) == ["click", "like"]
    assert M.evaluate(df, tasks=["like"], config=FAST)["data"]["tasks"] == ["like"]


def test_point_metrics_on_arrays_equal_evaluate() -> None:
    df = synthetic_predictions()
    expected = M.evaluate(df, config=FAST)["overall"]["tasks"]["like"]["metrics"]
    got = M.point_metrics(
        df["score_like"].to_numpy(),
        df["label_like"].to_numpy(),
        df["group_id"].to_numpy(),
        df["weight"].to_numpy(),
        FAST,
    )
    assert got == {name: entry["value"] for name, entry in expected.items()}
    ungrouped = M.point_metrics(df["score_like"].to_numpy(), df["label_like"].to_numpy())
    assert ungrouped["gauc"] == pytest.approx(ungrouped["auc"], rel=1e-12)  # one group: GAUC is AUC


def test_boolean_and_integer_slice_columns() -> None:
    df = synthetic_predictions(n_rows=500).with_columns((pl.col("surface") == 1).alias("is_home"))
    result = M.evaluate(df, slice_columns=["is_home"], config=M.EvalConfig(n_bootstrap=0, min_slice_size=1))
    scopes = result["slices"]["is_home"]
    assert list(scopes) == ["false", "true"]
    assert scopes["true"]["n_rows"] == df["is_home"].sum()
