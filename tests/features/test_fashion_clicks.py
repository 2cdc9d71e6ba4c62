"""Tests of the fashion-clicks generator: output contract, cold items, slates, splits, reproducibility, Bayes AUC,
metadata noise, the visual effect and bounded memory."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from features.datasets import fashion_clicks as fc
from features.datasets.fashion_mnist import CLASS_NAMES, load_all

pytestmark = pytest.mark.unit

ROWS = 10_000
SLATE = 10
SPLITS = ("train", "valid", "test")
ROW_DTYPES = {
    "request_id": pl.Int64,
    "user_id": pl.Int64,
    "item_id": pl.Int64,
    "position": pl.Int8,
    "ts": pl.Int64,
    "hour": pl.Int8,
    "weekday": pl.Int8,
    "surface": pl.String,
    "device": pl.String,
    "user_age_bucket": pl.String,
    "user_gender": pl.String,
    "user_region": pl.String,
    "user_segment": pl.String,
    "item_category": pl.String,
    "click": pl.Int8,
    "true_p": pl.Float64,
    "is_cold": pl.Boolean,
}


@pytest.fixture(scope="module")
def fashion_mnist() -> tuple[np.ndarray, np.ndarray]:
    return load_all()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fc_seed0")
    return out, fc.build_fashion_clicks(out, rows=ROWS, seed=0, slate_size=SLATE)


def _frames(out: Path) -> dict[str, pl.DataFrame]:
    return {split: pl.read_parquet(out / f"{split}.parquet") for split in SPLITS}


def _file_digests(out: Path) -> dict[str, str]:
    names = [f"{split}.parquet" for split in SPLITS] + ["items.parquet", "images.npy"]
    return {name: hashlib.sha256((out / name).read_bytes()).hexdigest() for name in names}


def test_output_contract(built: tuple[Path, dict[str, Any]], fashion_mnist: tuple[np.ndarray, np.ndarray]) -> None:
    out, manifest = built
    frames = _frames(out)
    for split, df in frames.items():
        assert dict(df.schema) == ROW_DTYPES, split
        assert df.height == manifest["rows"][split]
    assert sum(manifest["rows"].values()) == ROWS
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["bayes_auc"] == manifest["bayes_auc"] and on_disk["name"] == "fashion-clicks"

    items = pl.read_parquet(out / "items.parquet")
    assert dict(items.schema) == {
        "item_id": pl.Int64,
        "image_index": pl.Int64,
        "item_category": pl.String,
        "true_class": pl.Int8,
    }
    n_items = manifest["n_items"]
    assert items["item_id"].to_list() == list(range(n_items))
    assert sorted(items["image_index"].to_list()) == list(range(n_items))
    images = np.load(out / "images.npy")
    assert images.shape == (n_items, 28, 28) and images.dtype == np.uint8

    # Every item is a distinct real photo, and true_class is that photo's Fashion-MNIST label.
    all_images, all_labels = fashion_mnist
    label_of = {}
    for image, label in zip(all_images, all_labels, strict=True):
        label_of.setdefault(image.tobytes(), set()).add(int(label))
    photos = [images[i].tobytes() for i in items["image_index"].to_list()]
    assert all(photo in label_of for photo in photos)
    assert all(int(c) in label_of[p] for p, c in zip(photos, items["true_class"].to_list(), strict=True))
    assert set(items["item_category"].drop_nulls().to_list()) <= set(CLASS_NAMES)

    all_rows = pl.concat(frames.values())
    assert all_rows["item_id"].is_between(0, n_items - 1).all()
    assert all_rows["user_id"].is_between(0, manifest["n_users"] - 1).all()
    assert all_rows["true_p"].is_between(0.0, 1.0, closed="none").all()
    assert set(all_rows["click"].unique().to_list()) == {0, 1}
    # A row's observed category is its item's observed category.
    joined = all_rows.select("item_id", "item_category").join(items, on="item_id", suffix="_item")
    assert joined.filter(pl.col("item_category").ne_missing(pl.col("item_category_item"))).height == 0


def test_cold_items_only_in_test(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    frames = _frames(out)
    seen = set(frames["train"]["item_id"].to_list()) | set(frames["valid"]["item_id"].to_list())
    test = frames["test"]
    cold_in_test = set(test.filter(pl.col("is_cold"))["item_id"].to_list())
    assert cold_in_test and not cold_in_test & seen
    assert not frames["train"]["is_cold"].any() and not frames["valid"]["is_cold"].any()
    # Besides the cold items, only warm tail items that by chance were never drawn before test are unseen there.
    unseen_warm = set(test.filter(~pl.col("is_cold"))["item_id"].to_list()) - seen
    assert manifest["n_warm_items_unseen_before_test"] == len(unseen_warm)
    assert manifest["n_test_items"] == test["item_id"].n_unique()
    assert manifest["n_cold_items"] == round(0.1 * manifest["n_items"])
    assert len(cold_in_test) <= manifest["n_cold_items"]


def test_slates(built: tuple[Path, dict[str, Any]]) -> None:
    out, _ = built
    per_request = (
        pl.concat(_frames(out).values())
        .group_by("request_id")
        .agg(
            pl.len().alias("n"),
            pl.col("item_id").n_unique().alias("items"),
            pl.col("position").sort().alias("positions"),
            *(pl.col(c).n_unique().alias(c) for c in ("user_id", "ts", "hour", "weekday", "surface", "device")),
        )
    )
    assert (per_request["n"] == SLATE).all() and (per_request["items"] == SLATE).all()
    assert all(p == list(range(SLATE)) for p in per_request["positions"].to_list())
    for column in ("user_id", "ts", "hour", "weekday", "surface", "device"):
        assert (per_request[column] == 1).all(), column


def test_temporal_split(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    frames = _frames(out)
    for earlier, later in zip(SPLITS, SPLITS[1:], strict=False):
        assert frames[earlier]["ts"].max() <= frames[later]["ts"].min()
        assert frames[earlier]["request_id"].max() < frames[later]["request_id"].min()
    everything = pl.concat(frames.values())
    assert everything["request_id"].unique(maintain_order=True).to_list() == list(range(ROWS // SLATE))
    assert everything["ts"].diff().drop_nulls().min() >= 0
    n_requests = ROWS // SLATE
    assert [manifest["requests"][s] for s in SPLITS] == [
        int(0.8 * n_requests),
        int(0.9 * n_requests) - int(0.8 * n_requests),
        n_requests - int(0.9 * n_requests),
    ]
    ts = everything["ts"].to_numpy()
    assert (everything["hour"].to_numpy() == (ts % 86_400) // 3600).all()
    # 2024-01-01, the first day of the log, was a Monday (weekday 0).
    assert (everything["weekday"].to_numpy() == ((ts - fc.START_TS) // 86_400) % 7).all()


def test_reproducible_by_seed_whatever_chunk_rows(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = built
    same_small_chunks = fc.build_fashion_clicks(tmp_path / "a", rows=ROWS, seed=0, chunk_rows=777)
    same = fc.build_fashion_clicks(tmp_path / "b", rows=ROWS, seed=0)
    other = fc.build_fashion_clicks(tmp_path / "c", rows=ROWS, seed=1)

    assert pq.ParquetFile(tmp_path / "a" / "train.parquet").metadata.num_row_groups == math.ceil(
        manifest["rows"]["train"] / 777
    )
    assert same_small_chunks == manifest == same
    reference = _frames(out)
    for split, df in _frames(tmp_path / "a").items():
        assert df.equals(reference[split]), split
    assert _file_digests(tmp_path / "b") == _file_digests(out)

    different = _frames(tmp_path / "c")
    assert not different["train"].equals(reference["train"])
    assert other["bayes_auc"] != manifest["bayes_auc"]
    assert not np.array_equal(np.load(tmp_path / "c" / "images.npy"), np.load(out / "images.npy"))


def test_bayes_auc_matches_sklearn(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    test = pl.read_parquet(out / "test.parquet")
    for name, part in {
        "overall": test,
        "cold": test.filter(pl.col("is_cold")),
        "warm": test.filter(~pl.col("is_cold")),
    }.items():
        expected = roc_auc_score(part["click"].to_numpy(), part["true_p"].to_numpy())
        assert manifest["bayes_auc"][name] == pytest.approx(expected, abs=1e-12), name
    assert 0.6 < manifest["bayes_auc"]["overall"] < 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5)), min_size=2, max_size=60))
def test_roc_auc_with_ties_matches_sklearn(pairs: list[tuple[bool, int]]) -> None:
    labels = np.array([label for label, _ in pairs], dtype=np.int8)
    scores = np.array([score for _, score in pairs], dtype=np.float64) / 5
    auc = fc.roc_auc(labels, scores)
    if labels.min() == labels.max():
        assert auc is None
    else:
        assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_ctr_and_position_bias(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    for split, df in _frames(out).items():
        assert manifest["ctr"][split] == pytest.approx(df["click"].mean(), abs=1e-12)
        assert 0.03 <= manifest["ctr"][split] <= 0.15, split
    train = pl.read_parquet(out / "train.parquet")
    by_position = train.group_by("position").agg(pl.col("true_p").mean()).sort("position")["true_p"]
    assert by_position[0] > by_position[SLATE // 2] > by_position[SLATE - 1]


def test_metadata_noise_shares(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    params = manifest["params"]
    items = pl.read_parquet(out / "items.parquet")
    n_items = items.height
    missing = items["item_category"].is_null()
    observed = items.filter(~missing)
    wrong = observed["item_category"] != pl.Series([CLASS_NAMES[c] for c in observed["true_class"].to_list()])
    assert missing.sum() == round(params["category_missing_share"] * n_items)
    assert wrong.sum() == round(params["category_wrong_share"] * n_items)

    users = pl.concat(_frames(out).values()).group_by("user_id").agg(pl.col("user_gender").first())
    assert users["user_gender"].null_count() / users.height == pytest.approx(params["gender_missing_share"], abs=0.04)


def _naive_visual_score(images: np.ndarray, classes: np.ndarray, projection: np.ndarray) -> np.ndarray:
    """Independent, per-image re-implementation of the visual score described in docs/fashion_clicks.md."""
    stats = []
    for image in images:
        x = image.astype(np.float64) / 255.0
        total = x.sum() + 1e-6
        ink = x[x > 0.1]
        stats.append(
            [
                x.mean(),
                ink.mean() if ink.size else 0.0,
                -np.abs(x - np.fliplr(x)).mean(),
                (x[:14].sum() - x[14:].sum()) / total,
                np.abs(np.diff(x, axis=0)).mean() + np.abs(np.diff(x, axis=1)).mean(),
                x[7:21, 7:21].sum() / total,
            ]
        )
    stats_arr = np.array(stats)
    score = np.zeros(len(images))
    for c in np.unique(classes):
        rows = classes == c
        z = (stats_arr[rows] - stats_arr[rows].mean(0)) / stats_arr[rows].std(0)
        raw = z @ projection
        score[rows] = (raw - raw.mean()) / raw.std()
    return score


def test_visual_effect_beyond_class(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    items = pl.read_parquet(out / "items.parquet").sort("item_id")
    images = np.load(out / "images.npy")[items["image_index"].to_numpy()]
    classes = items["true_class"].to_numpy()
    score = _naive_visual_score(images, classes, np.array(manifest["effects"]["visual_projection"]))

    rows = pl.concat(_frames(out).values()).with_columns(logit=(pl.col("true_p") / (1 - pl.col("true_p"))).log())
    per_item = rows.group_by("item_id").agg(pl.col("logit").mean()).sort("item_id")
    item_ids = per_item["item_id"].to_numpy()
    mean_logit, item_score, item_class = per_item["logit"].to_numpy(), score[item_ids], classes[item_ids]
    # Within every class (so the class explains none of it) the pixel score drives the click probability.
    for c in np.unique(item_class):
        in_class = item_class == c
        assert np.corrcoef(item_score[in_class], mean_logit[in_class])[0, 1] > 0.4, CLASS_NAMES[c]

    # Without the pixel score, even a perfect model of everything else ranks clearly worse.
    blind = rows["logit"].to_numpy() - manifest["params"]["visual_weight"] * score[rows["item_id"].to_numpy()]
    click = rows["click"].to_numpy()
    assert roc_auc_score(click, rows["logit"].to_numpy()) - roc_auc_score(click, blind) > 0.04


# Runs one build in a fresh interpreter, so that the arrow pool's peak belongs to that build alone. The catalogue is
# pinned to its floor (1000 items, 200 users) so that only the number of streamed rows changes between runs.
_MEMORY_PROBE = """
import json, sys, tracemalloc
from pathlib import Path
import pyarrow as pa
from features.datasets import fashion_clicks as fc
params = fc.SimParams(rows_per_item=10**9, rows_per_user=10**9)
photos = fc.load_all()
fc.load_all = lambda: photos  # the 110 MB Fashion-MNIST read is the same for every size
out, rows = Path(sys.argv[1]), int(sys.argv[2])
fc.build_fashion_clicks(out / "warm-up", rows=200, params=params)  # lazy imports and caches
tracemalloc.start()
fc.build_fashion_clicks(out, rows=rows, chunk_rows=4_000, params=params)
print(json.dumps({"numpy": tracemalloc.get_traced_memory()[1], "arrow": pa.default_memory_pool().max_memory()}))
"""


def _peak_bytes(out: Path, rows: int) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(out), str(rows)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.splitlines()[-1])


def test_memory_bounded_by_chunks(tmp_path: Path) -> None:
    small_rows, big_rows = 100_000, 500_000
    small, big = _peak_bytes(tmp_path / "small", small_rows), _peak_bytes(tmp_path / "big", big_rows)
    assert pq.ParquetFile(tmp_path / "big" / "train.parquet").metadata.num_row_groups == 0.8 * big_rows / 4_000
    # Holding the extra rows would take at least 60 bytes each (four int64, a float64, seven string offsets...);
    # streamed, neither the Python/numpy peak nor the arrow pool's peak may grow by a tenth of that.
    extra_data = 60 * (big_rows - small_rows)
    for pool in ("numpy", "arrow"):
        assert big[pool] - small[pool] < 0.1 * extra_data, (pool, small, big)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="requests"):
        fc.build_fashion_clicks(tmp_path, rows=50, slate_size=10)
    with pytest.raises(ValueError, match="cold_item_share"):
        fc.build_fashion_clicks(tmp_path, rows=ROWS, cold_item_share=1.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        fc.build_fashion_clicks(tmp_path, rows=ROWS, chunk_rows=0)
    with pytest.raises(ValueError, match="rows_per_user"):
        fc.build_fashion_clicks(tmp_path, rows=ROWS, params=fc.SimParams(rows_per_user=0))
    for strength in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="interaction_strength"):
            fc.build_fashion_clicks(tmp_path, rows=ROWS, params=fc.SimParams(interaction_strength=strength))


# Content of train/valid/test at ROWS rows, seed 0, default arguments, computed with the generator as of commit
# e601574 (before the interaction-strength switch and the logit terms existed), by ``_content_digest``: the digest of
# every non-float column, and the sum of each float column. The float column (``true_p``, analysis only) differs in
# its last bit between CPUs (numpy's exp takes AVX-512 or AVX2 code paths: an AVX2 machine pinned a different
# all-column digest), so it is pinned by its sums; the clicks and features drawn from it are the same bits.
GENERATOR_1_0_DIGEST = "6e57e6c8959e3a3f7deba3ec407eba4e43cc0a110add516144e18c3f7f5f3189"
GENERATOR_1_0_FLOAT_SUMS = {
    "train.true_p": 603.784767147775,
    "valid.true_p": 68.21472997365098,
    "test.true_p": 71.39760825750514,
}


def _content_digest(out: Path) -> tuple[str, dict[str, float]]:
    """Library-version-proof digest of every split's non-float values (JSON of each column's Python values), and
    the sum of every float column (``split.column``): float columns are equal across CPUs only to the last bit."""
    digest, sums = hashlib.sha256(), {}
    for split in SPLITS:
        table = pq.read_table(out / f"{split}.parquet")
        for name in table.column_names:
            if pa.types.is_floating(table.schema.field(name).type):
                sums[f"{split}.{name}"] = float(sum(table[name].to_pylist()))
            else:
                digest.update(json.dumps([name, table[name].to_pylist()]).encode())
    return digest.hexdigest(), sums


def _test_rows(out: Path) -> pl.DataFrame:
    """test.parquet with its row-aligned logit terms."""
    return pl.concat(
        [pl.read_parquet(out / "test.parquet"), pl.read_parquet(out / "test_logit_terms.parquet")], how="horizontal"
    )


@pytest.fixture(scope="module")
def built_100k(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("fc_100k")
    return out, fc.build_fashion_clicks(out, rows=100_000, seed=0)


def test_defaults_reproduce_generator_1_0_data(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = built
    digest, sums = _content_digest(out)
    assert digest == GENERATOR_1_0_DIGEST
    assert sums.keys() == GENERATOR_1_0_FLOAT_SUMS.keys()
    for column, total in GENERATOR_1_0_FLOAT_SUMS.items():
        assert sums[column] == pytest.approx(total, rel=1e-12, abs=0), column
    explicit = fc.SimParams(rows_per_user=50, interaction_strength=1.0)
    assert fc.build_fashion_clicks(tmp_path, rows=ROWS, seed=0, slate_size=SLATE, params=explicit) == manifest
    reference = _frames(out)
    for split, df in _frames(tmp_path).items():
        assert df.equals(reference[split]), split


def test_logit_terms_are_those_of_true_p(built: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built
    test = _test_rows(out)
    assert test.height == manifest["rows"]["test"]
    np.testing.assert_array_equal(1.0 / (1.0 + np.exp(-test["logit"].to_numpy())), test["true_p"].to_numpy())
    # The interaction term is the manifest's table at (segment, hour bucket, true class), recomputed from columns.
    items = pl.read_parquet(out / "items.parquet").select("item_id", "true_class")
    test = test.join(items, on="item_id", how="left", maintain_order="left")
    table = np.array(manifest["effects"]["segment_hour_class"])
    segment = np.array([fc.SEGMENTS.index(s) for s in test["user_segment"].to_list()])
    expected = table[segment, test["hour"].to_numpy() // 6, test["true_class"].to_numpy()]
    np.testing.assert_array_equal(test["interaction"].to_numpy(), expected)
    # Every row of a user carries the same bias; an item's popularity term is the same wherever it is shown.
    assert (test.group_by("user_id").agg(pl.col("user_bias").n_unique())["user_bias"] == 1).all()
    assert (test.group_by("item_id").agg(pl.col("popularity").n_unique())["popularity"] == 1).all()


def test_observable_ceilings_match_sklearn(built_100k: tuple[Path, dict[str, Any]]) -> None:
    out, manifest = built_100k
    test = _test_rows(out)
    cold = test["is_cold"].to_numpy()
    click = test["click"].to_numpy()
    expected = manifest["expected_unobserved_terms"]
    assert expected["user_bias"] == expected["user_taste"] == 0.0
    # Independent recomputation of the unknown-users ceiling, term by term, scored with sklearn.
    score = (
        test["logit"].to_numpy()
        - np.where(cold, test["popularity"].to_numpy() - expected["cold_popularity"], 0.0)
        - test["user_bias"].to_numpy()
        - test["user_taste"].to_numpy()
    )
    for scope, rows in {"overall": np.ones_like(cold), "cold": cold, "warm": ~cold}.items():
        want = roc_auc_score(click[rows], score[rows])
        assert manifest["observable_auc_unknown_users"][scope] == pytest.approx(want, abs=1e-9), scope
    # The expected cold popularity is the mean over the cold slots actually drawn, up to sampling noise.
    realised = test.filter(pl.col("is_cold")).select(pl.col("popularity").mean()).item()
    assert realised == pytest.approx(expected["cold_popularity"], abs=0.05)


def test_ceiling_ordering(built_100k: tuple[Path, dict[str, Any]]) -> None:
    _, manifest = built_100k
    bayes, known, unknown = (
        manifest[k] for k in ("bayes_auc", "observable_auc_known_users", "observable_auc_unknown_users")
    )
    # Warm rows hide nothing from a model with full history: the known-users ceiling is the Bayes AUC there.
    assert known["warm"] == pytest.approx(bayes["warm"], abs=1e-12)
    for scope in ("overall", "cold"):
        assert bayes[scope] >= known[scope] > unknown[scope] + 0.01, scope
    assert known["warm"] > unknown["warm"] + 0.01


def test_ceilings_equal_bayes_when_the_hidden_terms_have_no_variance(tmp_path: Path) -> None:
    no_popularity = fc.build_fashion_clicks(tmp_path / "a", rows=20_000, params=fc.SimParams(popularity_weight=0.0))
    assert no_popularity["expected_unobserved_terms"]["cold_popularity"] == 0.0
    assert no_popularity["observable_auc_known_users"] == pytest.approx(no_popularity["bayes_auc"], abs=1e-12)
    assert no_popularity["observable_auc_unknown_users"]["overall"] < no_popularity["bayes_auc"]["overall"] - 0.01

    nothing_hidden = fc.SimParams(
        popularity_weight=0.0, user_bias_sd=0.0, user_class_taste_sd=0.0, user_visual_taste_sd=0.0
    )
    manifest = fc.build_fashion_clicks(tmp_path / "b", rows=20_000, params=nothing_hidden)
    for ceiling in ("observable_auc_known_users", "observable_auc_unknown_users"):
        assert manifest[ceiling] == pytest.approx(manifest["bayes_auc"], abs=1e-12), ceiling


def test_interaction_strength_scales_only_the_interaction(built: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    out, manifest = built
    default = _test_rows(out)
    for strength in (0.0, 2.0):
        other = fc.build_fashion_clicks(
            tmp_path / str(strength), rows=ROWS, params=fc.SimParams(interaction_strength=strength)
        )
        assert other["params"]["interaction_strength"] == strength
        assert other["effects"]["segment_hour_class"] == manifest["effects"]["segment_hour_class"]
        rows = _test_rows(tmp_path / str(strength))
        # Same requests, users, items and positions; only the interaction term (and so true_p and clicks) moves.
        for column in ("request_id", "user_id", "item_id", "position", "ts", "popularity", "user_bias", "user_taste"):
            assert rows[column].equals(default[column]), column
        np.testing.assert_array_equal(rows["interaction"].to_numpy(), strength * default["interaction"].to_numpy())
        np.testing.assert_allclose(
            rows["logit"].to_numpy() - rows["interaction"].to_numpy(),
            default["logit"].to_numpy() - default["interaction"].to_numpy(),
            rtol=0,
            atol=1e-12,
        )
    assert (default["interaction"] != 0).mean() > 0.99


def test_rows_per_user_sets_the_history_length(tmp_path: Path) -> None:
    rows_per_seen_user = {}
    for rows_per_user in (20, 200):
        params = fc.SimParams(rows_per_user=rows_per_user, min_users=10)
        manifest = fc.build_fashion_clicks(tmp_path / str(rows_per_user), rows=ROWS, params=params)
        assert manifest["n_users"] == ROWS // rows_per_user and manifest["params"]["rows_per_user"] == rows_per_user
        users = pl.concat(_frames(tmp_path / str(rows_per_user)).values())["user_id"]
        assert users.max() < manifest["n_users"]
        rows_per_seen_user[rows_per_user] = ROWS / users.n_unique()
    # Skewed activity leaves some users without a request, so a seen user has at least rows_per_user rows on average.
    assert rows_per_seen_user[20] >= 20 and rows_per_seen_user[200] > 5 * rows_per_seen_user[20]
