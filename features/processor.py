"""Fit on the training split, transform every split into processed parquet.

``fit`` learns vocabularies (minimum count, out-of-vocabulary id), hash mappings (a specified, stable hash) and
dense statistics from the training split only, and writes the fitted state as a versioned artifact
(``feature_map.json`` plus ``vocab/<feature>.parquet``). ``transform`` reads it back and writes, per input file,
one processed parquet file with row groups sized for per-rank reading. Both use polars lazy scans.

Processed columns: one ``Int64`` (single) or ``List(Int64)`` (multi) column per sparse feature, one ``Float32``
column per dense feature, ``label_<name>`` (Int8) per label, ``group_id`` (Int64), and where the schema declares
an item: ``item_id`` (Int64), ``image_index`` (Int64, -1 without an image) and ``is_cold`` (item unseen in
training); ``is_cold_<column>`` (Boolean: value unseen in training) per cold entity (the group, the item and the
schema's ``entities``); ``slice_<column>`` per slice column (raw values), and the passthrough columns unchanged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from features import images as image_store
from features.schema import FIRST_ID, MISSING_ID, OOV_ID, DenseFeature, Label, Schema, SparseFeature
from features.validate import (
    REASON_COLUMN,
    ROW_COLUMN,
    DataError,
    check_file,
    raise_for_problems,
    row_problem,
    summarise_problems,
)

FORMAT_VERSION = 1
HASH_ALGORITHM = "blake2b-64"
FEATURE_MAP = "feature_map.json"
TRAIN_ITEMS = "train_items.parquet"
TRAIN_VALUES = "train_values"  # folder: <column>.parquet, the values of each cold entity seen in training
COLD_PREFIX = "is_cold_"
DEFAULT_ROW_GROUP = 65_536
DEFAULT_WINDOW = 1_000_000  # rows transformed at a time (bounds transform memory)
SLICE_PREFIX = "slice_"


def stable_hash(value: str, seed: int) -> int:
    """blake2b with an 8-byte digest, keyed by ``seed`` (8 bytes, little-endian), digest read little-endian.

    Specified by the standard library's BLAKE2 (RFC 7693), so ids do not change with polars or Python versions.
    """
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8, key=seed.to_bytes(8, "little")).digest()
    return int.from_bytes(digest, "little")


def hash_ids(values: pl.Series, buckets: int, seed: int) -> pl.Series:
    """Ids ``2 + hash(str(value)) mod buckets`` for each value (call it on unique values only)."""
    ids = [FIRST_ID + stable_hash(str(v), seed) % buckets for v in values.to_list()]
    return pl.Series(values.name, ids, dtype=pl.Int64)


def stable_group_id(values: pl.Series, seed: int) -> pl.Series:
    """String group keys as non-negative Int64 (63 bits of the stable hash)."""
    return pl.Series(values.name, [stable_hash(str(v), seed) >> 1 for v in values.to_list()], dtype=pl.Int64)


@dataclass(frozen=True)
class SparseState:
    name: str
    column: str
    kind: str
    encoding: str
    num_embeddings: int
    vocab_file: str | None = None
    vocab_size: int = 0
    min_count: int = 1
    buckets: int = 0
    num_ids: int = 0
    edges: tuple[float, ...] = ()
    fill_null: str | int | float | None = None


@dataclass(frozen=True)
class DenseState:
    name: str
    column: str
    transform: str
    mean: float
    std: float
    fill_null: float | None = None


@dataclass(frozen=True)
class FeatureMap:
    """The fitted state that ``transform``, the model and serving read."""

    format_version: int
    schema_name: str
    hash_algorithm: str
    hash_seed: int
    sparse: tuple[SparseState, ...]
    dense: tuple[DenseState, ...]
    labels: tuple[str, ...]
    label_columns: tuple[str, ...]
    group: str
    item: str | None
    slices: tuple[str, ...]
    passthrough: tuple[str, ...]
    image_shape: tuple[int, ...] | None
    num_images: int
    train_rows: int
    positive_rate: dict[str, float]
    label_rules: tuple[str, ...] = ()  # e.g. "rating >= 4"; empty in feature maps written before label rules
    cold_entities: tuple[str, ...] = ()
    # Polars type of each raw input column in training (``input_columns``); empty in older feature maps.
    input_dtypes: dict[str, str] = field(default_factory=dict)

    @property
    def input_columns(self) -> list[str]:
        """Raw columns a model of this map reads: sparse and dense sources, and the item of an image model."""
        columns = [s.column for s in self.sparse] + [d.column for d in self.dense]
        if self.num_images and self.item:
            columns.append(self.item)
        return list(dict.fromkeys(columns))

    @property
    def sparse_names(self) -> list[str]:
        return [s.name for s in self.sparse]

    @property
    def dense_names(self) -> list[str]:
        return [d.name for d in self.dense]

    @property
    def label_names(self) -> list[str]:
        return [f"label_{name}" for name in self.labels]

    def save(self, out_dir: Path) -> Path:
        path = out_dir / FEATURE_MAP
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, out_dir: str | Path) -> FeatureMap:
        path = Path(out_dir) / FEATURE_MAP
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: no feature map; build the features with `ranker features build SCHEMA.yaml`"
            )
        raw: dict[str, Any] = json.loads(path.read_text())
        if raw.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {raw.get('format_version')} != supported {FORMAT_VERSION}")
        raw["sparse"] = tuple(SparseState(**{**s, "edges": tuple(s.get("edges", ()))}) for s in raw["sparse"])
        raw["dense"] = tuple(DenseState(**d) for d in raw["dense"])
        for key in ("labels", "label_columns", "slices", "passthrough", "label_rules", "cold_entities"):
            raw[key] = tuple(raw.get(key, ()))
        raw["image_shape"] = tuple(raw["image_shape"]) if raw["image_shape"] is not None else None
        return cls(**raw)


def _flagged_scan(
    path: Path, schema: Schema, known_items: pl.Series | None, window: tuple[int, int] | None = None
) -> pl.LazyFrame:
    """The file's rows (``window`` = (first row, row count) of them) with a row index and a problem column."""
    check_file(path, schema)
    scan = pl.scan_parquet(path)
    start = 0
    if window is not None:
        start, length = window
        scan = scan.slice(start, length)
    return (
        scan.select(schema.feature_columns)
        .with_row_index(ROW_COLUMN, offset=start)
        .with_columns(row_problem(schema, known_items))
    )


def _clean_rows(path: Path, schema: Schema, known_items: pl.Series | None) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """The file's good rows, and the per-reason problem summary (raising in ``bad_rows: error`` mode)."""
    flagged = _flagged_scan(path, schema, known_items)
    problems = summarise_problems(flagged)
    if schema.bad_rows == "error":
        raise_for_problems(path, problems)
    if problems.height == 0:  # every row is good: later passes need not run every check again
        return pl.scan_parquet(path).select(schema.feature_columns), problems
    return flagged.filter(pl.col(REASON_COLUMN).is_null()).drop(ROW_COLUMN, REASON_COLUMN), problems


def _dense_expr(column: str, transform: str, fill_null: float | None) -> pl.Expr:
    col = pl.col(column).cast(pl.Float64)
    col = col if fill_null is None else col.fill_null(fill_null)
    return col.log1p() if transform == "log1p" else col


def _filled(column: str, value: str | int | float | None) -> pl.Expr:
    return pl.col(column) if value is None else pl.col(column).fill_null(value)


def _ids_values(f: SparseFeature) -> pl.Expr:
    return pl.col(f.column).explode().drop_nulls() if f.kind == "multi" else _filled(f.column, f.fill_null).drop_nulls()


def label_expr(label: Label) -> pl.Expr:
    """The 0/1 label (Int8) of ``label``'s rule; values of a value-set rule compare as strings."""
    col = pl.col(label.column)
    if label.threshold is not None:
        col = col.cast(pl.Float64) >= label.threshold
    elif label.values:
        col = col.cast(pl.String).is_in([str(v) for v in label.values])
    return col.cast(pl.Int8)


def collect(query: pl.LazyFrame) -> pl.DataFrame:
    """``query`` run by polars' streaming engine: memory bounded by the query's state and result, not by the rows.

    Queries run one at a time: ``pl.collect_all`` caches the input they share, the whole training split in ``fit``
    (1.1 GB at 8M rows).
    """
    return query.collect(engine="streaming")


_KEY_BITS = 16  # bits of the sort key one selection pass resolves: at most 4 passes, 2**16 groups per order statistic
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _sort_key(value: pl.Expr) -> pl.Expr:
    """Int64 keys in the order of the Float64 ``value``s (no NaN): the IEEE 754 bits, negatives' magnitude flipped."""
    bits = value.reinterpret(dtype=pl.Int64)
    return pl.when(bits < 0).then(bits ^ _INT64[1]).otherwise(bits)


def _order_statistics(values: pl.LazyFrame, ranks: set[int], count: int) -> dict[int, float]:
    """The values at 0-based ``ranks`` in sorted order of column ``v`` (Float64, ``count`` values, no null or NaN).

    Exact, in memory bounded by 2**16 groups per rank rather than by ``count`` (an exact quantile otherwise sorts the
    whole column): a most-significant-digit radix selection on :func:`_sort_key`, 16 bits per streaming pass. Each
    pass counts the values per next-16-bit block within the blocks that hold a wanted rank and keeps the block that
    holds it; a block whose smallest and largest values are equal gives the answer (by the last pass every block
    holds a single value).
    """
    key = _sort_key(pl.col("v"))
    blocks = {r: (*_INT64, r) for r in ranks}  # rank -> (key range holding it, its rank within that range)
    found: dict[int, float] = {}
    for shift in range(64 - _KEY_BITS, -1, -_KEY_BITS):
        if not blocks:
            break
        width = 1 << shift
        within = pl.any_horizontal([key.is_between(lo, hi) for lo, hi, _ in set(blocks.values())])
        groups = collect(
            values.filter(within)
            .group_by((key // width).alias("block"))
            .agg(pl.len().alias("n"), pl.col("v").min().alias("low"), pl.col("v").max().alias("high"))
            .sort("block")
        )
        for r, (lo, hi, rank) in list(blocks.items()):
            inside = groups.filter(pl.col("block").is_between(lo // width, hi // width))
            ends = inside["n"].cum_sum()
            i = int(ends.search_sorted(rank, side="right"))
            block, n, low, high = inside.row(i)
            if low == high:
                found[r] = low
                del blocks[r]
            else:
                first = block * width
                blocks[r] = (max(first, _INT64[0]), min(first + width - 1, _INT64[1]), rank - (ends[i] - n))
    assert len(found) == len(ranks) and count > max(ranks), (ranks, count)
    return found


_MANTISSA = 1 << 52  # a finite double is sign * mantissa * 2**(max(exponent, 1) - 1075), mantissa < 2**53
_HALF = 1 << 27


def _exact_moments(values: pl.LazyFrame) -> tuple[int, Fraction, Fraction]:
    """Count, sum and sum of squares of column ``v`` (Float64, finite, nulls ignored), exactly.

    Float sums depend on the order of the additions, which parallel engines do not fix (polars' ``mean`` of the
    same column differed in the last bit from run to run). Integer sums do not: the values' integer mantissas
    (halves of them for the squares) are summed as Int128 per binary exponent, at most 2047 groups, and
    scaled in Python.
    """
    bits = pl.col("v").reinterpret(dtype=pl.Int64)
    magnitude = bits & _INT64[1]
    exponent = magnitude // _MANTISSA
    mantissa = magnitude % _MANTISSA + pl.when(exponent > 0).then(_MANTISSA).otherwise(0)
    high, low = (mantissa // _HALF).cast(pl.Int128), (mantissa % _HALF).cast(pl.Int128)
    signed = pl.when(bits < 0).then(-mantissa).otherwise(mantissa).cast(pl.Int128)
    sums = collect(
        values.drop_nulls()
        .group_by(exponent.alias("exponent"))
        .agg(
            pl.len().alias("n"),
            signed.sum().alias("sum"),
            (high * high).sum().alias("hh"),
            (high * low).sum().alias("hl"),
            (low * low).sum().alias("ll"),
        )
    )
    count, total, squares = 0, Fraction(0), Fraction(0)
    for exp, n, s, hh, hl, ll in sums.iter_rows():
        scale = Fraction(2) ** (max(exp, 1) - 1075)
        count += n
        total += s * scale
        squares += (hh * 2**54 + hl * 2**28 + ll) * scale * scale
    return count, total, squares


def _dense_stats(d: DenseFeature, train: pl.LazyFrame) -> tuple[float, float]:
    """Mean (correctly rounded) and standard deviation (ddof 0) of ``d``'s transformed training values."""
    n, total, squares = _exact_moments(train.select(_dense_expr(d.column, d.transform, d.fill_null).alias("v")))
    return float(total / n), math.sqrt((squares - total * total / n) / n)


def _quantile_edges(f: SparseFeature, train: pl.LazyFrame, count: int, nulls: int) -> tuple[float, ...]:
    """Edges at the train quantiles i/``f.quantiles`` of ``f``'s column (``count`` values and ``nulls`` nulls), sorted,
    without repeats.

    Bit for bit polars' in-memory ``quantile(q, interpolation="linear")``, which sorts nulls first and interpolates
    at position (count - 1) * q + nulls, from exact order statistics.
    """
    if count == 0:
        raise ValueError(f"bucket feature {f.name!r}: column {f.column!r} has no values in the training split")
    positions = [(count - 1) * (i / f.quantiles) + nulls for i in range(1, f.quantiles)]
    ranks = {int(p) - nulls for p in positions} | {math.ceil(p) - nulls for p in positions}
    value = pl.col(f.column).cast(pl.Float64)
    # -0.0 as 0.0, so that equal values have one key.
    values = train.select(pl.when(value == 0).then(0.0).otherwise(value).alias("v")).drop_nulls()
    at = _order_statistics(values, ranks, count)
    edges = set()
    for p in positions:
        lower, upper = at[int(p) - nulls], at[math.ceil(p) - nulls]
        edges.add(lower if lower == upper else (p - int(p)) * (upper - lower) + lower)
    return tuple(sorted(edges))


def fit(schema: Schema, out_dir: Path) -> FeatureMap:
    """Fits vocabularies, hashes and dense statistics on the training split; writes the feature map.

    Every query streams (:func:`collect`), so the peak memory is set by the results (vocabularies, the values of the
    cold entities) and not by the size of the training split.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab").mkdir(exist_ok=True)
    items = image_store.build(schema, out_dir) if schema.image else None
    known = items["item_id"] if items is not None else None
    frames = [_clean_rows(p, schema, known)[0] for p in schema.split_files("train")]
    train = pl.concat(frames)

    vocab_features = [f for f in schema.sparse if f.encoding == "vocab"]
    quantile_features = [f for f in schema.sparse if f.encoding == "bucket" and not f.edges]
    stat_row = collect(
        train.select(
            [pl.len().alias("_rows")]
            + [label_expr(lb).cast(pl.Float64).mean().alias(f"{lb.name}.rate") for lb in schema.labels]
            + [pl.col(f.column).count().alias(f"{f.name}.count") for f in quantile_features]
        )
    ).row(0, named=True)
    if stat_row["_rows"] == 0:
        raise ValueError(f"schema {schema.name!r}: the training split has no usable rows")
    vocabs = [
        collect(
            train.select(_ids_values(f).alias("value"))
            .group_by("value")
            .agg(pl.len().alias("count"))
            .filter(pl.col("count") >= f.min_count)
            .sort(["count", "value"], descending=[True, False])
            .with_row_index("id", offset=FIRST_ID)
            .with_columns(pl.col("id").cast(pl.Int64))
        )
        for f in vocab_features
    ]
    edges = {
        f.name: _quantile_edges(f, train, stat_row[f"{f.name}.count"], stat_row["_rows"] - stat_row[f"{f.name}.count"])
        for f in quantile_features
    }
    edges |= {f.name: tuple(f.edges) for f in schema.sparse if f.encoding == "bucket" and f.edges}
    entities = schema.cold_entities
    seen = {e: collect(train.select(pl.col(e).unique().sort())) for e in entities}
    (out_dir / TRAIN_VALUES).mkdir(exist_ok=True)
    for entity, values in seen.items():
        values.write_parquet(out_dir / TRAIN_VALUES / f"{entity}.parquet")
    if schema.item:
        seen[schema.item].write_parquet(out_dir / TRAIN_ITEMS)

    vocab_by_name = dict(zip([f.name for f in vocab_features], vocabs, strict=True))
    sparse_states = []
    for f in schema.sparse:
        if f.encoding == "vocab":
            vocab = vocab_by_name[f.name]
            vocab_file = f"vocab/{f.name}.parquet"
            vocab.write_parquet(out_dir / vocab_file)
            state = SparseState(
                f.name, f.column, f.kind, f.encoding, FIRST_ID + vocab.height, vocab_file, vocab.height, f.min_count,
                fill_null=f.fill_null,
            )  # fmt: skip
        elif f.encoding == "bucket":
            state = SparseState(
                f.name, f.column, f.kind, f.encoding, FIRST_ID + len(edges[f.name]) + 1, edges=edges[f.name],
                fill_null=f.fill_null,
            )  # fmt: skip
        elif f.encoding == "hash":
            state = SparseState(
                f.name, f.column, f.kind, f.encoding, FIRST_ID + f.buckets, buckets=f.buckets, fill_null=f.fill_null
            )
        else:
            state = SparseState(
                f.name, f.column, f.kind, f.encoding, FIRST_ID + f.num_ids, num_ids=f.num_ids, fill_null=f.fill_null
            )
        sparse_states.append(state)
    dense_states = []
    for d in schema.dense:
        mean, std = _dense_stats(d, train) if d.transform != "none" else (0.0, 1.0)
        dense_states.append(
            DenseState(d.name, d.column, d.transform, float(mean), float(std) if std > 0 else 1.0, d.fill_null)
        )
    fmap = FeatureMap(
        format_version=FORMAT_VERSION,
        schema_name=schema.name,
        hash_algorithm=HASH_ALGORITHM,
        hash_seed=schema.hash_seed,
        sparse=tuple(sparse_states),
        dense=tuple(dense_states),
        labels=tuple(lb.name for lb in schema.labels),
        label_columns=tuple(lb.column for lb in schema.labels),
        group=schema.group,
        item=schema.item,
        slices=tuple(schema.slices),
        passthrough=tuple(schema.passthrough),
        image_shape=image_store.image_shape(out_dir) if schema.image else None,
        num_images=int(items.height) if items is not None else 0,
        train_rows=int(stat_row["_rows"]),
        positive_rate={lb.name: float(stat_row[f"{lb.name}.rate"]) for lb in schema.labels},
        label_rules=tuple(lb.rule for lb in schema.labels),
        cold_entities=tuple(entities),
    )
    train_schema = train.collect_schema()
    fmap = replace(fmap, input_dtypes={c: str(train_schema[c]) for c in fmap.input_columns})
    fmap.save(out_dir)
    return fmap


def _read_parquet(path: Path) -> pl.DataFrame:
    """A small fitted table (vocabulary, train items), read once per version of the file: serving calls often."""
    stat = path.stat()
    return _read_parquet_version(str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _read_parquet_version(path: str, mtime_ns: int, size: int) -> pl.DataFrame:
    return pl.read_parquet(path)


def _sparse_expr(state: SparseState, out_dir: Path, lf: pl.LazyFrame, seed: int) -> pl.Expr:
    col = pl.col(state.column)
    target = pl.element() if state.kind == "multi" else _filled(state.column, state.fill_null)
    if state.encoding == "identity":
        mapped = target.cast(pl.Int64) + FIRST_ID
    elif state.encoding == "bucket":
        value = target.cast(pl.Float64)
        mapped = pl.sum_horizontal([(value >= e).cast(pl.Int64) for e in state.edges] or [pl.lit(0)]) + FIRST_ID
    else:
        if state.encoding == "vocab":
            assert state.vocab_file is not None, f"vocab feature {state.name} has no vocab file"
            vocab = _read_parquet(out_dir / state.vocab_file)
            old, new = vocab["value"], vocab["id"]
        else:
            sf = SparseFeature(
                state.name, state.column, state.kind, "hash", buckets=state.buckets, fill_null=state.fill_null
            )  # type: ignore[arg-type]
            uniques = lf.select(_ids_values(sf).unique().alias("value")).collect()["value"]
            old, new = uniques, hash_ids(uniques, state.buckets, seed)
        mapped = target.replace_strict(old=old, new=new, default=OOV_ID, return_dtype=pl.Int64)
    # replace_strict sends nulls to the default, so nulls are routed to the missing id first.
    mapped = pl.when(target.is_null()).then(pl.lit(MISSING_ID, dtype=pl.Int64)).otherwise(mapped)
    if state.kind == "single":
        return mapped.alias(state.name)
    empty = col.is_null() | (col.list.len() == 0)
    listed = col.list.eval(mapped)
    return pl.when(empty).then(pl.lit([MISSING_ID], dtype=pl.List(pl.Int64))).otherwise(listed).alias(state.name)


def _model_input_exprs(fmap: FeatureMap, out_dir: Path, lf: pl.LazyFrame) -> list[pl.Expr]:
    """Sparse ids and standardised dense values: the processed columns the model's embeddings and MLPs read."""
    exprs = [_sparse_expr(s, out_dir, lf, fmap.hash_seed) for s in fmap.sparse]
    return exprs + [
        ((_dense_expr(d.column, d.transform, d.fill_null) - d.mean) / d.std).cast(pl.Float32).alias(d.name)
        for d in fmap.dense
    ]


def _key_exprs(fmap: FeatureMap, out_dir: Path, lf: pl.LazyFrame, items: pl.DataFrame | None) -> list[pl.Expr]:
    """``group_id``, and with an item column ``item_id``, ``image_index`` (image models) and ``is_cold``."""
    exprs = []
    lf_schema = lf.collect_schema()
    if fmap.group in lf_schema:
        group = pl.col(fmap.group)
        if lf_schema[fmap.group].is_integer():
            exprs.append(group.cast(pl.Int64).alias("group_id"))
        else:
            uniques = lf.select(group.unique()).collect()[fmap.group]
            exprs.append(
                group.cast(pl.String)
                .replace_strict(
                    uniques.cast(pl.String), stable_group_id(uniques, fmap.hash_seed), return_dtype=pl.Int64
                )
                .alias("group_id")
            )
    if fmap.item and fmap.item in lf_schema:
        item = pl.col(fmap.item)
        train_items = _read_parquet(out_dir / TRAIN_ITEMS)[fmap.item]
        exprs.append(item.cast(pl.Int64).alias("item_id"))
        if items is not None:
            exprs.append(
                item.replace_strict(items["item_id"], items["image_index"], default=-1, return_dtype=pl.Int64).alias(
                    "image_index"
                )
            )
        exprs.append((~item.is_in(train_items.implode())).alias("is_cold"))
    return exprs


def _output_exprs(
    fmap: FeatureMap, labels: tuple[Label, ...], out_dir: Path, lf: pl.LazyFrame, items: pl.DataFrame | None
) -> list[pl.Expr]:
    exprs = _model_input_exprs(fmap, out_dir, lf)
    exprs += [label_expr(lb).alias(name) for lb, name in zip(labels, fmap.label_names, strict=True)]
    exprs += _key_exprs(fmap, out_dir, lf, items)
    exprs += cold_exprs(fmap, out_dir, fmap.cold_entities)
    exprs += [pl.col(c).alias(f"{SLICE_PREFIX}{c}") for c in fmap.slices]
    taken = {e.meta.output_name() for e in exprs}
    clashes = [c for c in fmap.passthrough if c in taken]
    if clashes:
        raise ValueError(f"passthrough column(s) {clashes} clash with processed column names")
    return exprs + [pl.col(c) for c in fmap.passthrough]


def cold_exprs(fmap: FeatureMap, out_dir: Path, entities: Sequence[str]) -> list[pl.Expr]:
    """``is_cold_<entity>`` (value unseen in training) per entity; ``out_dir``: a feature folder or an export."""
    missing = [e for e in entities if e not in fmap.cold_entities]
    if missing:
        raise ValueError(f"{out_dir}: no training values of {missing}; cold entities: {list(fmap.cold_entities)}")
    exprs = []
    for entity in entities:
        path = Path(out_dir) / TRAIN_VALUES / f"{entity}.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; an export written before it was kept, re-export the run")
        seen = pl.read_parquet(path)[entity]
        exprs.append((~pl.col(entity).is_in(seen.implode())).alias(f"{COLD_PREFIX}{entity}"))
    return exprs


def model_inputs(fmap: FeatureMap, out_dir: Path, frame: pl.DataFrame, items: pl.DataFrame | None) -> pl.DataFrame:
    """Processed model inputs of raw rows (no labels needed), as :class:`features.loader.BatchBuilder` reads them.

    ``frame`` holds ``fmap.input_columns`` already in their training types (:func:`conform_inputs`); the group and
    item keys are processed when present. ``out_dir`` is the feature folder or an export (vocabularies, train items).
    """
    lf = frame.lazy()
    return lf.select(_model_input_exprs(fmap, out_dir, lf) + _key_exprs(fmap, out_dir, lf, items)).collect()


_SCALAR_TYPES = {str(t): t for t in (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.UInt8, pl.UInt16, pl.UInt32,
                                        pl.UInt64, pl.Float32, pl.Float64, pl.String, pl.Boolean)}  # fmt: skip


def _parse_dtype(text: str) -> pl.DataType:
    """The polars type written as ``str(dtype)`` in a feature map (``List(String)``, ``Int64``, ...)."""
    if text.startswith("List(") and text.endswith(")"):
        return pl.List(_parse_dtype(text[5:-1]))
    if text.startswith("Categorical"):
        return pl.String
    return _SCALAR_TYPES[text]


def _type_family(dtype: pl.DataType) -> str:
    if isinstance(dtype, pl.List):
        return f"list of {_type_family(dtype.inner)}"
    if dtype.is_integer():
        return "integer"
    if dtype.is_float():
        return "float"
    if dtype in (pl.String, pl.Categorical):
        return "string"
    return str(dtype)


def conform_inputs(fmap: FeatureMap, frame: pl.DataFrame, where: str) -> pl.DataFrame:
    """``frame``'s model input columns in their training types; other columns are left out.

    Raises :class:`DataError` naming ``where`` and the column when one is missing or its type cannot stand for the
    training type: an integer where training saw strings (ids would never match the vocabulary) or a list where it
    saw a scalar. Integers of another width, and integers for a float column, are cast; an all-null column is the
    training type with every value missing (mapped to the missing id / the fill value).
    """
    missing = [c for c in fmap.input_columns if c not in frame.columns]
    if missing:
        raise DataError(f"{where}: missing column(s) {missing}; the model reads {fmap.input_columns}")
    dense = {d.column for d in fmap.dense} | {s.column for s in fmap.sparse if s.encoding == "bucket"}
    out = []
    for column in fmap.input_columns:
        got = frame.schema[column]
        if column not in fmap.input_dtypes:  # a feature map written before input types were recorded
            out.append(pl.col(column))
            continue
        want = _parse_dtype(fmap.input_dtypes[column])
        same = _type_family(got) == _type_family(want)
        numeric = column in dense and (got.is_numeric() or got == pl.Boolean) and want.is_numeric()
        if not (same or numeric or got == pl.Null or (isinstance(got, pl.List) and got.inner == pl.Null)):
            raise DataError(
                f"{where}: column {column!r} has type {got} ({_type_family(got)}); "
                f"the model was trained on {want} ({_type_family(want)})"
            )
        out.append(pl.col(column).cast(want))
    try:
        return frame.select(out)
    except pl.exceptions.InvalidOperationError as err:  # e.g. an integer beyond the training type's range
        raise DataError(f"{where}: {str(err).splitlines()[0]}") from err


@dataclass(frozen=True)
class SplitReport:
    split: str
    files: int
    rows_in: int
    rows_out: int
    rows_quarantined: int
    reasons: dict[str, int]


def transform(
    schema: Schema,
    out_dir: Path,
    split: str,
    fmap: FeatureMap | None = None,
    row_group_size: int = DEFAULT_ROW_GROUP,
    window_rows: int = DEFAULT_WINDOW,
) -> SplitReport:
    """Writes ``out_dir/<split>/part-NNNNN-WWWW.parquet`` (and ``out_dir/quarantine/<split>-part-NNNNN.parquet``).

    Each input file is transformed in windows of ``window_rows`` rows, one output file per window, in input order:
    the id mappings (``replace_strict``) do not stream in polars 2.1, so without windows the peak memory grew with
    the file (measured on 8M rows: 2.2 GB, against a few hundred MB per 1M-row window).
    """
    fmap = fmap or FeatureMap.load(out_dir)
    items = image_store.load_items(out_dir) if schema.image else None
    known = items["item_id"] if items is not None else None
    split_dir = out_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for old in split_dir.glob("part-*.parquet"):
        old.unlink()
    rows_in = rows_out = quarantined = 0
    reasons: dict[str, int] = {}
    files = schema.split_files(split)
    for i, path in enumerate(files):
        _, problems = _clean_rows(path, schema, known)
        n_bad = int(problems["rows"].sum()) if problems.height else 0
        for row in problems.to_dicts():
            reasons[row[REASON_COLUMN]] = reasons.get(row[REASON_COLUMN], 0) + int(row["rows"])
        if n_bad:
            qdir = out_dir / "quarantine"
            qdir.mkdir(exist_ok=True)
            flagged = _flagged_scan(path, schema, known)
            flagged.filter(pl.col(REASON_COLUMN).is_not_null()).with_columns(
                pl.lit(str(path)).alias("_file")
            ).sink_parquet(qdir / f"{split}-part-{i:05d}.parquet")
        n_rows = pq.ParquetFile(path).metadata.num_rows
        for j, start in enumerate(range(0, n_rows, window_rows)):
            window = _flagged_scan(path, schema, known, (start, window_rows))
            clean = window.filter(pl.col(REASON_COLUMN).is_null())
            out_path = split_dir / f"part-{i:05d}-{j:04d}.parquet"
            clean.select(_output_exprs(fmap, schema.labels, out_dir, clean, items)).sink_parquet(
                out_path, row_group_size=row_group_size, compression="zstd"
            )
            rows_out += pq.ParquetFile(out_path).metadata.num_rows
        rows_in += n_rows
        quarantined += n_bad
    if rows_out + quarantined != rows_in:
        raise RuntimeError(f"{split}: {rows_in} rows in but {rows_out} out + {quarantined} quarantined")
    return SplitReport(split, len(files), rows_in, rows_out, quarantined, reasons)


def processed_files(out_dir: str | Path, split: str) -> list[Path]:
    files = sorted((Path(out_dir) / split).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"{Path(out_dir) / split}: no processed parquet for split {split!r}; the schema must name that split "
            "(under files:, or a source: split) and `ranker features build SCHEMA.yaml` must finish"
        )
    return files
