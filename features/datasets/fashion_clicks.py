"""``fashion-clicks``: a semi-synthetic click log over real product photos.

The items are real Fashion-MNIST photos; users, requests, slates and clicks are simulated by a seeded generative
model whose click probability depends on the pixels beyond the item's class, on users, context, popularity,
slate position and a segment x hour x category interaction. The model, its parameters and how to read the
Bayes-optimal AUC are documented in docs/fashion_clicks.md.

Rows are simulated in fixed blocks of requests, each with its own random stream derived from ``(seed, block)``,
and streamed to Parquet, so the data depend only on ``(rows, seed, cold_item_share, slate_size, params)``, never
on ``chunk_rows``, and memory stays bounded by the catalogue plus one block plus one write chunk.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from features.datasets.fashion_mnist import CLASS_NAMES, load_all

NAME = "fashion-clicks"
GENERATOR_VERSION = "1.1.0"  # 1.1: logit terms, observable ceilings, interaction_strength; default data as 1.0
SPLITS = ("train", "valid", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)

AGE_BUCKETS = ("18-24", "25-34", "35-44", "45-54", "55+")
AGE_PROBS = (0.18, 0.30, 0.24, 0.16, 0.12)
GENDERS = ("female", "male")
GENDER_PROBS = (0.55, 0.45)
REGIONS = ("DE", "FR", "IT", "ES", "NL", "PL", "SE")
REGION_PROBS = (0.30, 0.18, 0.14, 0.12, 0.10, 0.09, 0.07)
SEGMENTS = ("bargain", "trend", "classic", "casual")
SEGMENT_PROBS = (0.30, 0.25, 0.25, 0.20)
DEVICES = ("mobile", "desktop", "tablet")
DEVICE_PROBS = (0.65, 0.28, 0.07)
SURFACES = ("home", "search", "category")
SURFACE_PROBS = (0.50, 0.30, 0.20)
VISUAL_STATS = ("ink_mass", "brightness", "symmetry", "top_bottom", "edge_energy", "centre_mass")
# Relative request volume per UTC hour: quiet nights, evening peak. Only shapes timestamps (and so hour/weekday).
HOURLY_TRAFFIC = (
    0.35, 0.22, 0.15, 0.12, 0.12, 0.18, 0.35, 0.60, 0.80, 0.90, 0.95, 1.00,
    1.05, 1.00, 0.95, 0.95, 1.00, 1.10, 1.30, 1.50, 1.60, 1.50, 1.10, 0.65,
)  # fmt: skip
HOURS_PER_BUCKET = 6  # the interaction table uses night / morning / afternoon / evening
START_TS = 1_704_067_200  # 2024-01-01 00:00:00 UTC, a Monday
INK_THRESHOLD = 0.1  # a pixel (scaled to [0, 1]) above this counts as ink for ``brightness``

# Rows per simulation block (rounded down to whole requests). A constant, so that chunk_rows cannot change the data.
BLOCK_ROWS = 16_384
MAX_ROW_GROUP_ROWS = 131_072
N_PHOTOS = 70_000

ROW_SCHEMA = pa.schema(
    [
        ("request_id", pa.int64()),
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("position", pa.int8()),
        ("ts", pa.int64()),
        ("hour", pa.int8()),
        ("weekday", pa.int8()),
        ("surface", pa.string()),
        ("device", pa.string()),
        ("user_age_bucket", pa.string()),
        ("user_gender", pa.string()),
        ("user_region", pa.string()),
        ("user_segment", pa.string()),
        ("item_category", pa.string()),
        ("click", pa.int8()),
        ("true_p", pa.float64()),
        ("is_cold", pa.bool_()),
    ]
)
# The test split's true logit and the terms of it that a model cannot observe for every row (row-aligned with
# test.parquet): what the observable ceilings are computed from, and analysis-only like ``true_p``.
TERMS_SCHEMA = pa.schema(
    [
        ("logit", pa.float64()),
        ("popularity", pa.float64()),  # popularity_weight * pop_i
        ("user_bias", pa.float64()),  # b_u
        ("user_taste", pa.float64()),  # q_u . e_i
        ("interaction", pa.float64()),  # interaction_strength * H[segment, hour bucket, class]
    ]
)
ITEM_SCHEMA = pa.schema(
    [
        ("item_id", pa.int64()),
        ("image_index", pa.int64()),
        ("item_category", pa.string()),
        ("true_class", pa.int8()),
    ]
)


@dataclass(frozen=True)
class SimParams:
    """Knobs of the generative model (all recorded in the manifest). Effect tables are drawn from the seed."""

    base_logit: float = -3.2
    visual_weight: float = 1.5  # logit per within-class standard deviation of the visual score
    popularity_weight: float = 0.4  # logit per exposure-weighted standard deviation of log popularity
    zipf_exponent: float = 1.0  # popularity weight of the item with rank k (0-based) is (k + 1) ** -exponent
    class_effect_sd: float = 0.3
    latent_dim: int = 8
    user_class_taste_sd: float = 0.6  # sd of the user-latent x class-embedding term
    user_visual_taste_sd: float = 0.5  # sd of the user-latent x visual-features term
    user_bias_sd: float = 0.5
    demographic_effect_sd: float = 0.15  # age bucket, gender (incl. unknown), region
    context_effect_sd: float = 0.25  # surface, device, weekday
    hour_amplitude: float = 0.25  # cosine over the day, peak at ``hour_peak``
    hour_peak: float = 20.0
    interaction_sd: float = 0.6  # segment x hour bucket x true class table
    interaction_strength: float = 1.0  # multiplies that table's logit term (0 = off); the table is drawn regardless
    position_decay: float = 0.35  # logit - position_decay * log2(1 + position)
    category_missing_share: float = 0.15  # items whose observed category is null
    category_wrong_share: float = 0.05  # items whose observed category is another class
    gender_missing_share: float = 0.05
    primary_device_share: float = 0.9  # requests made from the user's usual device
    user_activity_sigma: float = 1.0  # request share per user is lognormal(0, sigma)
    cold_slot_share: float = 0.25  # share of test-period slots that show new (cold) items
    rows_per_item: int = 50
    min_items: int = 1_000
    rows_per_user: int = 50
    min_users: int = 200
    max_users: int = 1_000_000
    requests_per_day: int = 4_000
    min_days: int = 14
    max_days: int = 90


@dataclass(frozen=True)
class _World:
    """Everything fixed before the first request: catalogue, users and effect tables."""

    item_image: np.ndarray  # item_id -> row of images.npy
    true_class: np.ndarray  # item_id -> class 0..9
    observed_category: np.ndarray  # item_id -> class code, -1 = missing
    is_cold: np.ndarray  # item_id -> bool
    item_logit: np.ndarray  # item_id -> base + popularity + visual + class effect
    item_popularity: np.ndarray  # item_id -> popularity_weight * pop_i, the popularity part of item_logit
    item_latent: np.ndarray  # item_id -> latent_dim vector (class embedding + projected visual features)
    pools: tuple[tuple[np.ndarray, np.ndarray], ...]  # (item ids, cumulative exposure) for warm and cold items
    user_cdf: np.ndarray  # cumulative request share per user
    user_cols: dict[str, np.ndarray]  # age, gender (len(GENDERS) = unknown), region, segment, device, bias
    user_latent: np.ndarray
    effects: dict[str, np.ndarray]


def visual_stats(images: np.ndarray) -> np.ndarray:
    """Per-image pixel statistics (columns as in ``VISUAL_STATS``) of ``uint8`` images ``n x 28 x 28``."""
    x = images.astype(np.float32) / 255.0
    total = x.sum(axis=(1, 2)) + 1e-6
    ink = x > INK_THRESHOLD
    half = x.shape[1] // 2
    quarter = x.shape[1] // 4
    return np.stack(
        [
            x.mean(axis=(1, 2)),
            (x * ink).sum(axis=(1, 2)) / np.maximum(ink.sum(axis=(1, 2)), 1),
            -np.abs(x - x[:, :, ::-1]).mean(axis=(1, 2)),
            (x[:, :half].sum(axis=(1, 2)) - x[:, half:].sum(axis=(1, 2))) / total,
            np.abs(np.diff(x, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(x, axis=2)).mean(axis=(1, 2)),
            x[:, quarter:-quarter, quarter:-quarter].sum(axis=(1, 2)) / total,
        ],
        axis=1,
    ).astype(np.float64)


def standardise_within_class(values: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Z-scores of ``values`` (n or n x k) within each class, so that class membership explains none of them."""
    out = np.zeros_like(values, dtype=np.float64)
    for c in np.unique(classes):
        rows = classes == c
        out[rows] = (values[rows] - values[rows].mean(axis=0)) / (values[rows].std(axis=0) + 1e-9)
    return out


def _visual_stats_chunked(images: np.ndarray, chunk: int = 1_024) -> np.ndarray:
    # The float copy of the whole catalogue would be 220 MB at 70k items; chunks keep it near 3 MB.
    return np.concatenate([visual_stats(images[i : i + chunk]) for i in range(0, len(images), chunk)])


def _cdf(weights: np.ndarray) -> np.ndarray:
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _draw(rng: np.random.Generator, cdf: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(cdf, rng.random(n), side="right")


def catalogue_sizes(rows: int, params: SimParams) -> tuple[int, int]:
    """(n_items, n_users) for a log of ``rows`` rows."""
    n_items = int(np.clip(rows // params.rows_per_item, params.min_items, N_PHOTOS))
    n_users = int(np.clip(rows // params.rows_per_user, params.min_users, params.max_users))
    return n_items, n_users


def _build_world(
    rng: np.random.Generator,
    photos: np.ndarray,
    labels: np.ndarray,
    n_users: int,
    cold_item_share: float,
    slate_size: int,
    params: SimParams,
) -> _World:
    n_items = len(photos)
    n_classes = len(CLASS_NAMES)
    d = params.latent_dim
    # images.npy holds the photos in drawn order; item ids are a shuffle of it, so that item_id != image_index.
    item_image = rng.permutation(n_items)
    true_class = labels[item_image].astype(np.int8)

    z = standardise_within_class(_visual_stats_chunked(photos)[item_image], true_class)
    projection = rng.normal(size=len(VISUAL_STATS))
    projection /= np.linalg.norm(projection)
    visual_score = standardise_within_class(z @ projection, true_class)

    # Zipf-like popularity: a random rank per item, independent of its looks. Its logit term is standardised
    # over impressions (exposure-weighted), so the average CTR does not drift with the catalogue size.
    log_pop = -params.zipf_exponent * np.log1p(rng.permutation(n_items))
    exposure = np.exp(log_pop) / np.exp(log_pop).sum()
    pop_mean = exposure @ log_pop
    pop_z = (log_pop - pop_mean) / math.sqrt(exposure @ (log_pop - pop_mean) ** 2)

    n_cold = round(cold_item_share * n_items)
    is_cold = np.zeros(n_items, dtype=bool)
    is_cold[rng.choice(n_items, n_cold, replace=False)] = True
    pool_ids = [np.flatnonzero(~is_cold), np.flatnonzero(is_cold)]
    if len(pool_ids[0]) < slate_size or 0 < n_cold < slate_size:
        raise ValueError(f"{n_items} items with {n_cold} cold cannot fill distinct slates of {slate_size}")
    pools = tuple((ids, _cdf(np.exp(log_pop[ids]))) for ids in pool_ids if len(ids))

    # Noisy metadata: exact shares of items lose their category or get another (uniformly chosen) class.
    n_missing = round(params.category_missing_share * n_items)
    n_wrong = round(params.category_wrong_share * n_items)
    order = rng.permutation(n_items)
    observed = true_class.astype(np.int64)
    wrong = order[n_missing : n_missing + n_wrong]
    observed[wrong] = (observed[wrong] + rng.integers(1, n_classes, n_wrong)) % n_classes
    observed[order[:n_missing]] = -1

    effects = {
        "visual_projection": projection,
        "class": rng.normal(0, params.class_effect_sd, n_classes),
        "class_embedding": rng.normal(0, params.user_class_taste_sd / math.sqrt(d), (n_classes, d)),
        "visual_embedding": rng.normal(
            0, params.user_visual_taste_sd / math.sqrt(d * len(VISUAL_STATS)), (len(VISUAL_STATS), d)
        ),
        "age": rng.normal(0, params.demographic_effect_sd, len(AGE_BUCKETS)),
        "gender": rng.normal(0, params.demographic_effect_sd, len(GENDERS) + 1),
        "region": rng.normal(0, params.demographic_effect_sd, len(REGIONS)),
        "surface": rng.normal(0, params.context_effect_sd, len(SURFACES)),
        "device": rng.normal(0, params.context_effect_sd, len(DEVICES)),
        "weekday": rng.normal(0, params.context_effect_sd, 7),
        "segment_hour_class": rng.normal(0, params.interaction_sd, (len(SEGMENTS), 24 // HOURS_PER_BUCKET, n_classes)),
    }
    item_popularity = params.popularity_weight * pop_z
    item_logit = (
        params.base_logit + item_popularity + params.visual_weight * visual_score + effects["class"][true_class]
    )
    item_latent = effects["class_embedding"][true_class] + z @ effects["visual_embedding"]

    gender = rng.choice(len(GENDERS), n_users, p=GENDER_PROBS)
    gender[rng.random(n_users) < params.gender_missing_share] = len(GENDERS)
    user_cols = {
        "age": rng.choice(len(AGE_BUCKETS), n_users, p=AGE_PROBS),
        "gender": gender,
        "region": rng.choice(len(REGIONS), n_users, p=REGION_PROBS),
        "segment": rng.choice(len(SEGMENTS), n_users, p=SEGMENT_PROBS),
        "device": rng.choice(len(DEVICES), n_users, p=DEVICE_PROBS),
        "bias": rng.normal(0, params.user_bias_sd, n_users),
    }
    return _World(
        item_image=item_image,
        true_class=true_class,
        observed_category=observed,
        is_cold=is_cold,
        item_logit=item_logit,
        item_popularity=item_popularity,
        item_latent=item_latent.astype(np.float32),
        pools=pools,
        user_cdf=_cdf(rng.lognormal(0, params.user_activity_sigma, n_users)),
        user_cols=user_cols,
        user_latent=rng.standard_normal((n_users, d), dtype=np.float32),
        effects=effects,
    )


def _sample_slates(rng: np.random.Generator, pool_of_slot: np.ndarray, world: _World) -> np.ndarray:
    """Distinct items per row of ``pool_of_slot`` (requests x slots, 0 = warm, 1 = cold), popularity-weighted.

    Slots are drawn with replacement and repeats within a slate are redrawn until none is left; with Zipf
    popularity the head items collide often enough to need a few rounds, never a loop over rows."""
    items = np.empty(pool_of_slot.shape, dtype=np.int64)
    todo = np.ones(pool_of_slot.shape, dtype=bool)
    while todo.any():
        for pool, (ids, cdf) in enumerate(world.pools):
            slots = todo & (pool_of_slot == pool)
            items[slots] = ids[_draw(rng, cdf, int(slots.sum()))]
        order = np.argsort(items, axis=1, kind="stable")
        ranked = np.take_along_axis(items, order, axis=1)
        repeat = np.zeros_like(todo)
        repeat[:, 1:] = ranked[:, 1:] == ranked[:, :-1]
        todo = np.zeros_like(todo)
        np.put_along_axis(todo, order, repeat, axis=1)
    return items


def _strings(codes: np.ndarray, names: tuple[str, ...]) -> pa.Array:
    """Decodes integer codes into a string array; codes outside ``names`` (missing) become nulls."""
    missing = (codes < 0) | (codes >= len(names))
    indices = pa.array(np.where(missing, 0, codes).astype(np.int32), mask=missing)
    return pa.DictionaryArray.from_arrays(indices, pa.array(names, pa.string())).dictionary_decode()


def _simulate_block(
    rng: np.random.Generator,
    r0: int,
    r1: int,
    n_requests: int,
    n_days: int,
    test_start: int,
    slate_size: int,
    world: _World,
    params: SimParams,
) -> tuple[pa.Table, pa.Table]:
    """Rows of requests ``r0 .. r1 - 1`` (time order), ``slate_size`` rows per request, and their logit terms
    (``TERMS_SCHEMA``, row-aligned)."""
    n_req = r1 - r0
    request_id = np.arange(r0, r1, dtype=np.int64)
    # Request r happens at fraction (r + u) / n_requests of the log: strictly increasing in r. Within a day the
    # fraction is mapped through the inverse CDF of HOURLY_TRAFFIC, a monotone map, so ts never decreases.
    day_pos = (request_id + rng.random(n_req)) / n_requests * n_days
    day = np.floor(day_pos)
    traffic_cdf = np.concatenate([[0.0], _cdf(np.asarray(HOURLY_TRAFFIC))])
    second = np.interp(day_pos - day, traffic_cdf, np.arange(25) * 3600.0)
    ts = START_TS + day.astype(np.int64) * 86_400 + np.minimum(second, 86_399).astype(np.int64)
    hour = (ts % 86_400) // 3600
    weekday = (ts // 86_400 + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0

    user = _draw(rng, world.user_cdf, n_req)
    u = world.user_cols
    surface = rng.choice(len(SURFACES), n_req, p=SURFACE_PROBS)
    device = np.where(
        rng.random(n_req) < params.primary_device_share,
        u["device"][user],
        rng.choice(len(DEVICES), n_req, p=DEVICE_PROBS),
    )
    eff = world.effects
    request_logit = (
        u["bias"][user]
        + eff["age"][u["age"][user]]
        + eff["gender"][u["gender"][user]]
        + eff["region"][u["region"][user]]
        + eff["surface"][surface]
        + eff["device"][device]
        + eff["weekday"][weekday]
        + params.hour_amplitude * np.cos(2 * np.pi * (hour - params.hour_peak) / 24)
    )

    # Only test-period requests may show cold items: they are launched when the test period starts.
    cold_share = params.cold_slot_share if len(world.pools) > 1 else 0.0
    pool_of_slot = ((request_id >= test_start)[:, None] & (rng.random((n_req, slate_size)) < cold_share)).astype(
        np.int8
    )
    item = _sample_slates(rng, pool_of_slot, world).ravel()
    position = np.tile(np.arange(slate_size, dtype=np.int64), n_req)
    row_user = np.repeat(user, slate_size)
    cls = world.true_class[item]

    user_taste = np.einsum("nd,nd->n", world.user_latent[row_user], world.item_latent[item], dtype=np.float64)
    interaction = (
        params.interaction_strength
        * (eff["segment_hour_class"][u["segment"][row_user], np.repeat(hour // HOURS_PER_BUCKET, slate_size), cls])
    )
    logit = (
        world.item_logit[item]
        + np.repeat(request_logit, slate_size)
        + user_taste
        + interaction
        - params.position_decay * np.log2(1 + position)
    )
    true_p = 1.0 / (1.0 + np.exp(-logit))
    click = rng.random(len(true_p)) < true_p

    def per_row(values: np.ndarray) -> np.ndarray:
        return np.repeat(values, slate_size)

    columns = [
        per_row(request_id),
        row_user.astype(np.int64),
        item,
        position.astype(np.int8),
        per_row(ts),
        per_row(hour).astype(np.int8),
        per_row(weekday).astype(np.int8),
        _strings(per_row(surface), SURFACES),
        _strings(per_row(device), DEVICES),
        _strings(u["age"][row_user], AGE_BUCKETS),
        _strings(u["gender"][row_user], GENDERS),
        _strings(u["region"][row_user], REGIONS),
        _strings(u["segment"][row_user], SEGMENTS),
        _strings(world.observed_category[item], CLASS_NAMES),
        click.astype(np.int8),
        true_p,
        world.is_cold[item],
    ]
    terms = [logit, world.item_popularity[item], u["bias"][row_user], user_taste, interaction]
    return pa.Table.from_arrays(columns, schema=ROW_SCHEMA), pa.Table.from_arrays(terms, schema=TERMS_SCHEMA)


class _ChunkWriter:
    """Buffers blocks of one split and writes them as row groups of ``chunk_rows`` rows (at most 128k each)."""

    def __init__(self, path: Path, chunk_rows: int, schema: pa.Schema = ROW_SCHEMA) -> None:
        self.writer = pq.ParquetWriter(path, schema)
        self.chunk_rows = chunk_rows
        self.row_group_rows = math.ceil(chunk_rows / math.ceil(chunk_rows / MAX_ROW_GROUP_ROWS))
        self.buffer: list[pa.Table] = []
        self.buffered = 0
        self.rows = 0
        self.clicks = 0

    def add(self, table: pa.Table) -> None:
        self.buffer.append(table)
        self.buffered += table.num_rows
        self.rows += table.num_rows
        if "click" in table.column_names:
            self.clicks += int(np.asarray(table["click"]).sum())
        while self.buffered >= self.chunk_rows:
            pending = pa.concat_tables(self.buffer)
            self._write(pending.slice(0, self.chunk_rows))
            self.buffer = [pending.slice(self.chunk_rows)]
            self.buffered -= self.chunk_rows

    def close(self) -> None:
        if self.buffered:
            self._write(pa.concat_tables(self.buffer))
        self.buffer = []
        self.writer.close()

    def _write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=self.row_group_rows)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Mann-Whitney AUC with tied scores counted as half; ``None`` when only one class is present."""
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mean_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based average rank of each distinct score
    rank_sum = float(mean_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _scoped_auc(click: np.ndarray, score: np.ndarray, cold: np.ndarray) -> dict[str, float | None]:
    return {
        "overall": roc_auc(click, score),
        "cold": roc_auc(click[cold], score[cold]),
        "warm": roc_auc(click[~cold], score[~cold]),
    }


def expected_cold_popularity(world: _World) -> float:
    """E[popularity_weight * pop_i] of the item in a cold slot: the cold pool's own draw probabilities (exposure).

    Exact for one slot; the redraw of repeats within a slate shifts the realised mean slightly toward the tail."""
    if len(world.pools) < 2:
        return 0.0
    ids, cdf = world.pools[1]
    return float(np.diff(cdf, prepend=0.0) @ world.item_popularity[ids])


def observable_scores(terms: pa.Table, cold: np.ndarray, cold_popularity: float) -> dict[str, np.ndarray]:
    """The true logit with the terms no model can observe replaced by their expectations (docs/fashion_clicks.md).

    ``known_users``: a cold item's popularity term -> ``cold_popularity`` (its exposure-weighted mean over cold
    items); ``unknown_users``: in addition every user's bias and taste term -> 0 (their mean under the generator)."""
    logit = terms["logit"].to_numpy()
    known_users = np.where(cold, logit - terms["popularity"].to_numpy() + cold_popularity, logit)
    unknown_users = known_users - terms["user_bias"].to_numpy() - terms["user_taste"].to_numpy()
    return {"known_users": known_users, "unknown_users": unknown_users}


def _test_aucs(out_dir: Path, cold_popularity: float) -> dict[str, dict[str, float | None]]:
    # Only the test split's label, probability, cold flag and logit terms are read back, never the whole log.
    test = pq.read_table(out_dir / "test.parquet", columns=["click", "true_p", "is_cold"])
    click = test["click"].to_numpy()
    cold = test["is_cold"].to_numpy()
    aucs = {"bayes_auc": _scoped_auc(click, test["true_p"].to_numpy(), cold)}
    terms = pq.read_table(
        out_dir / "test_logit_terms.parquet", columns=["logit", "popularity", "user_bias", "user_taste"]
    )
    for name, score in observable_scores(terms, cold, cold_popularity).items():
        aucs[f"observable_auc_{name}"] = _scoped_auc(click, score, cold)
    return aucs


def _write_items(out_dir: Path, photos: np.ndarray, world: _World) -> None:
    np.save(out_dir / "images.npy", photos)
    n_items = len(world.item_image)
    items = pa.Table.from_arrays(
        [
            pa.array(np.arange(n_items, dtype=np.int64)),
            pa.array(world.item_image.astype(np.int64)),
            _strings(world.observed_category, CLASS_NAMES),
            pa.array(world.true_class),
        ],
        schema=ITEM_SCHEMA,
    )
    pq.write_table(items, out_dir / "items.parquet")


def build_fashion_clicks(
    out_dir: Path,
    rows: int,
    seed: int = 0,
    cold_item_share: float = 0.1,
    slate_size: int = 10,
    chunk_rows: int = 200_000,
    progress: bool = False,
    *,
    params: SimParams | None = None,
) -> dict[str, Any]:
    """Writes the fashion-clicks data set into ``out_dir`` and returns its manifest (also ``manifest.json``).

    ``rows`` is rounded down to whole slates of ``slate_size``."""
    params = params or SimParams()
    n_requests = rows // slate_size
    if n_requests < 20:
        raise ValueError(f"rows={rows} gives {n_requests} requests of {slate_size}; need at least 20")
    if not 0.0 <= cold_item_share < 1.0:
        raise ValueError(f"cold_item_share must be in [0, 1), got {cold_item_share}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    if params.rows_per_user < 1:
        raise ValueError(f"rows_per_user must be positive, got {params.rows_per_user}")
    if not 0.0 <= params.interaction_strength < math.inf:
        raise ValueError(f"interaction_strength must be finite and >= 0, got {params.interaction_strength}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    n_items, n_users = catalogue_sizes(rows, params)
    rng = np.random.default_rng([seed, 0])
    all_images, all_labels = load_all()
    chosen = np.sort(rng.choice(len(all_images), n_items, replace=False))
    photos = all_images[chosen]
    world = _build_world(rng, photos, all_labels[chosen], n_users, cold_item_share, slate_size, params)
    del all_images, all_labels
    _write_items(out_dir, photos, world)

    bounds = np.floor(np.cumsum((0.0, *SPLIT_FRACTIONS)) * n_requests).astype(np.int64)
    bounds[-1] = n_requests
    n_days = int(np.clip(n_requests // params.requests_per_day, params.min_days, params.max_days))
    block_requests = max(1, BLOCK_ROWS // slate_size)
    writers = {split: _ChunkWriter(out_dir / f"{split}.parquet", chunk_rows) for split in SPLITS}
    terms_writer = _ChunkWriter(out_dir / "test_logit_terms.parquet", chunk_rows, TERMS_SCHEMA)
    n_blocks = math.ceil(n_requests / block_requests)
    # Items shown before / during the test period, to count warm tail items that by chance are unseen until test.
    shown = {"before_test": np.zeros(n_items, dtype=bool), "test": np.zeros(n_items, dtype=bool)}
    for block in tqdm(range(n_blocks), desc=NAME, unit="block", disable=not progress):
        r0 = block * block_requests
        r1 = min(r0 + block_requests, n_requests)
        table, terms = _simulate_block(
            np.random.default_rng([seed, 1, block]),
            r0,
            r1,
            n_requests,
            n_days,
            int(bounds[2]),
            slate_size,
            world,
            params,
        )
        for k, split in enumerate(SPLITS):
            lo, hi = max(int(bounds[k]), r0), min(int(bounds[k + 1]), r1)
            if lo < hi:
                rows_of_split = table.slice((lo - r0) * slate_size, (hi - lo) * slate_size)
                writers[split].add(rows_of_split)
                if split == "test":
                    terms_writer.add(terms.slice((lo - r0) * slate_size, (hi - lo) * slate_size))
                shown["test" if split == "test" else "before_test"][rows_of_split["item_id"].to_numpy()] = True
    for writer in (*writers.values(), terms_writer):
        writer.close()
    cold_popularity = expected_cold_popularity(world)

    manifest = {
        "name": NAME,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "rows": {split: writers[split].rows for split in SPLITS},
        "requests": {split: int(bounds[k + 1] - bounds[k]) for k, split in enumerate(SPLITS)},
        "n_users": n_users,
        "n_items": n_items,
        "n_cold_items": int(world.is_cold.sum()),
        "n_test_items": int(shown["test"].sum()),
        "n_warm_items_unseen_before_test": int((shown["test"] & ~shown["before_test"] & ~world.is_cold).sum()),
        "n_days": n_days,
        "ctr": {split: writers[split].clicks / max(writers[split].rows, 1) for split in SPLITS},
        **_test_aucs(out_dir, cold_popularity),
        "expected_unobserved_terms": {"cold_popularity": cold_popularity, "user_bias": 0.0, "user_taste": 0.0},
        "arguments": {
            "rows": rows,
            "cold_item_share": cold_item_share,
            "slate_size": slate_size,
        },
        "params": asdict(params),
        "effects": {name: table.tolist() for name, table in world.effects.items()},
        "vocabularies": {
            "item_category": CLASS_NAMES,
            "visual_stats": VISUAL_STATS,
            "surface": SURFACES,
            "device": DEVICES,
            "user_age_bucket": AGE_BUCKETS,
            "user_gender": (*GENDERS, None),
            "user_region": REGIONS,
            "user_segment": SEGMENTS,
        },
        "real_vs_simulated": (
            "Real: the item photos (Fashion-MNIST, Zalando product images) and their true classes. Simulated by "
            "this seeded generator: users, requests, timestamps, slates, the noisy item_category metadata, the "
            "click probabilities true_p and the clicks. See docs/fashion_clicks.md for the generative model."
        ),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
