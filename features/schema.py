"""The schema YAML: which columns of the raw parquet are features, labels, groups, slices and images.

Example (``configs/schemas/movielens-100k.yaml`` is a complete one)::

    name: my-data
    files: {train: train/*.parquet, valid: valid.parquet, test: test.parquet}   # relative to this file
    labels: [{name: click, column: clicked}]
    group: user_id                      # GAUC / NDCG group (user or request)
    item: item_id                       # optional: image lookup and cold/warm flags
    sparse:
      - {name: user, column: user_id, encoding: vocab, min_count: 2}
      - {name: tags, column: tags, kind: multi, encoding: hash, buckets: 100000}
      - {name: slot, column: slot_id, encoding: identity, num_ids: 10}
    dense:
      - {name: price, column: price, transform: log1p}
    image: {items: items.parquet, array: images.npy}   # or bytes_column: png_bytes
    slices: [country, is_cold]
    bad_rows: quarantine                # or error (default)
    max_bad_share: 0.01                 # quarantining more than this share of the rows fails the build

Raw tables instead of split files (``source:`` replaces ``files:``; ``features/datasets/movielens-100k.yaml`` is a
complete one)::

    source:
      interactions: events/*.parquet    # one row per interaction
      joins:                            # side tables, many-to-one on a key column of the same name
        - {table: users.parquet, key: user_id}
        - {table: items.parquet, key: item_id, how: inner}   # rows without a match are bad rows
      timestamp: {column: ts, format: "%Y-%m-%d %H:%M:%S"}  # or an integer epoch (unit: s | ms | us) or datetime
      derive:                           # columns computed from the timestamp
        - {name: hour, part: hour}
        - {name: weekday, part: weekday}                    # Monday = 0
        - {name: item_age, part: age_years, since: release_year}
      split: {kind: temporal, fractions: [0.8, 0.1, 0.1]}  # or cutoffs: {valid: "2024-03-01", test: "2024-04-01"}
      # split: {kind: random, fractions: [0.8, 0.1, 0.1], seed: 0, by: user_id}
      # split: {kind: files, files: {train: train.parquet, valid: valid.parquet, test: test.parquet}}
    labels:
      - {name: like, column: rating, threshold: 4}          # rating >= 4
      - {name: buy, column: event, values: [buy]}           # event in [buy]

Id layout of every sparse feature: 0 = missing (null or empty list; a learned "missing" embedding), 1 = out of
vocabulary, 2.. = values. Hash encoding: ``2 + blake2b-64(utf8(str(value)), key=hash_seed as 8 little-endian
bytes) mod buckets`` (the digest read as a little-endian unsigned integer); identity encoding: ``2 + value`` for
integer ids already in ``[0, num_ids)``.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

from common.config import ConfigError, load_yaml

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MISSING_ID = 0
OOV_ID = 1
FIRST_ID = 2
RESERVED_NAMES = frozenset({"group_id", "item_id", "image_index", "is_cold"})  # processed columns the loader reads
TIME_PARTS: dict[str, int] = {"hour": 24, "weekday": 7}  # part -> number of values (identity ids)


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature: one id per row (``single``) or a list of ids (``multi``)."""

    name: str
    column: str
    kind: Literal["single", "multi"] = "single"
    encoding: Literal["vocab", "hash", "identity", "bucket"] = "vocab"
    min_count: int = 1  # vocab: values seen fewer times in train map to the OOV id
    buckets: int = 0  # hash: table size (ids 2 .. buckets+1)
    num_ids: int = 0  # identity: raw ids must lie in [0, num_ids)
    edges: tuple[float, ...] = ()  # bucket: id 2 + (number of edges <= value), so len(edges) + 1 buckets
    quantiles: int = 0  # bucket: instead of edges, this many buckets with edges at train quantiles
    nullable: bool = True  # null -> the missing id; False makes a null bad input
    fill_null: str | int | float | None = None  # single: nulls take this raw value (declared, so never silent)
    non_negative: bool = False  # integer ids below 0 are bad input

    def __post_init__(self) -> None:
        if self.encoding == "hash" and self.buckets <= 0:
            raise ValueError(f"sparse feature {self.name!r}: encoding 'hash' needs buckets > 0")
        if self.encoding == "identity" and self.num_ids <= 0:
            raise ValueError(f"sparse feature {self.name!r}: encoding 'identity' needs num_ids > 0")
        if self.min_count < 1:
            raise ValueError(f"sparse feature {self.name!r}: min_count must be >= 1")
        if self.encoding == "bucket":
            if (len(self.edges) > 0) == (self.quantiles > 0):
                raise ValueError(f"sparse feature {self.name!r}: encoding 'bucket' needs edges or quantiles >= 2")
            if list(self.edges) != sorted(set(self.edges)) or self.quantiles == 1:
                raise ValueError(f"sparse feature {self.name!r}: edges must increase; quantiles must be >= 2")
            if self.kind == "multi":
                raise ValueError(f"sparse feature {self.name!r}: encoding 'bucket' is for single numeric columns")
        elif self.edges or self.quantiles:
            raise ValueError(f"sparse feature {self.name!r}: edges/quantiles need encoding 'bucket'")
        if self.fill_null is not None and self.kind == "multi":
            raise ValueError(f"sparse feature {self.name!r}: fill_null is for single-id features")


@dataclass(frozen=True)
class DenseFeature:
    """A numeric feature, standardised with train statistics (after ``log1p`` when asked)."""

    name: str
    column: str
    transform: Literal["standard", "log1p", "none"] = "standard"
    fill_null: float | None = None  # nulls take this raw value (declared, so never silent); else a null is bad input


@dataclass(frozen=True)
class Label:
    """A binary label for one task: the column as is (0/1), ``column >= threshold``, or ``column in values``."""

    name: str
    column: str
    threshold: float | None = None
    values: tuple[str | int, ...] = ()

    def __post_init__(self) -> None:
        if self.threshold is not None and self.values:
            raise ValueError(f"label {self.name!r}: give threshold or values, not both")

    @property
    def derived(self) -> bool:
        return self.threshold is not None or bool(self.values)

    @property
    def rule(self) -> str:
        """The rule as text, e.g. ``rating >= 4``."""
        if self.threshold is not None:
            return f"{self.column} >= {self.threshold:g}"
        if self.values:
            return f"{self.column} in {list(self.values)}"
        return f"{self.column} (0/1)"


@dataclass(frozen=True)
class ImageSpec:
    """Item images: an items table mapping item id to a row of a uint8 array, or to encoded image bytes."""

    items: str
    item_column: str = "item_id"
    array: str | None = None  # .npy of uint8, n x H x W or n x C x H x W
    index_column: str = "image_index"  # items column: row of ``array``
    bytes_column: str | None = None  # items column of encoded PNG/JPEG bytes

    def __post_init__(self) -> None:
        if (self.array is None) == (self.bytes_column is None):
            raise ValueError("image: give exactly one of 'array' (a .npy file) or 'bytes_column'")


@dataclass(frozen=True)
class Join:
    """A side table joined to the interactions on ``key`` (same column name in both; unique in the side table)."""

    table: str  # a parquet path or glob, relative to the schema file
    key: str  # (not ``on``: YAML 1.1 reads an unquoted ``on`` key as true)
    how: Literal["left", "inner"] = "left"  # left: unmatched rows keep nulls (counted); inner: they are bad rows


@dataclass(frozen=True)
class Timestamp:
    """The interactions' time column: an integer epoch (``unit``), a date/datetime, or a string (``format``)."""

    column: str
    format: str | None = None  # strptime format, required for string columns
    unit: Literal["s", "ms", "us"] = "s"


@dataclass(frozen=True)
class Derived:
    """A column computed from the timestamp (UTC): ``hour`` (0-23), ``weekday`` (Monday = 0), ``age_years``."""

    name: str
    part: Literal["hour", "weekday", "age_years"]
    since: str | None = None  # age_years: a column of years; the age is max(0, year of the timestamp - since)

    def __post_init__(self) -> None:
        if (self.part == "age_years") != (self.since is not None):
            raise ValueError(f"derived column {self.name!r}: 'since' goes with part 'age_years' (and only there)")


@dataclass(frozen=True)
class Split:
    """How interactions become train/valid/test.

    ``temporal``: rows sorted by (timestamp, group, item), cut at ``fractions`` or at ``cutoffs`` (the first
    timestamp of valid and of test). ``random``: a seeded permutation of rows, or of the values of ``by`` (so a
    user's rows stay together), cut at ``fractions``. ``files``: one interactions file (or glob) per split.
    """

    kind: Literal["temporal", "random", "files"]
    fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    cutoffs: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    by: str | None = None
    files: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.fractions) != len(SPLITS) or min(self.fractions) <= 0 or abs(sum(self.fractions) - 1) > 1e-9:
            raise ValueError(f"split fractions {list(self.fractions)}: need 3 positive numbers summing to 1")
        if self.cutoffs and (self.kind != "temporal" or sorted(self.cutoffs) != ["test", "valid"]):
            raise ValueError("split cutoffs: a temporal split's {valid: first time, test: first time}")
        if self.by is not None and self.kind != "random":
            raise ValueError("split 'by' groups rows of a random split")
        if (self.kind == "files") != bool(self.files):
            raise ValueError("split 'files' (train, valid, test) goes with kind 'files' (and only there)")
        if self.files and sorted(self.files) != sorted(SPLITS):
            raise ValueError(f"split files must name {list(SPLITS)}; got {sorted(self.files)}")


@dataclass(frozen=True)
class Source:
    """Raw tables: interactions plus side tables, with the timestamp, derived columns and the split."""

    split: Split
    interactions: str = ""  # a parquet path or glob; empty with a 'files' split
    joins: tuple[Join, ...] = ()
    timestamp: Timestamp | None = None
    derive: tuple[Derived, ...] = ()

    def __post_init__(self) -> None:
        if (self.split.kind == "files") == bool(self.interactions):
            raise ValueError("source: give 'interactions' (or a split of kind 'files' naming one table per split)")
        if self.split.kind == "temporal" and self.timestamp is None:
            raise ValueError("source: a temporal split needs 'timestamp'")
        if self.derive and self.timestamp is None:
            raise ValueError("source: derived columns need 'timestamp'")


@dataclass(frozen=True)
class Schema:
    """A data set's columns and their roles; paths are resolved relative to the schema file."""

    name: str
    labels: tuple[Label, ...]
    group: str
    files: dict[str, str] = field(default_factory=dict)
    source: Source | None = None
    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()
    item: str | None = None
    image: ImageSpec | None = None
    slices: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()  # copied through for analysis, never a feature (e.g. true_p)
    bad_rows: Literal["error", "quarantine"] = "error"
    max_bad_share: float = 0.01  # a build quarantining a larger share of rows (overall or of a split) fails
    entities: tuple[str, ...] = ()  # more id columns (besides group and item) whose cold/warm split is reported
    hash_seed: int = 0
    description: str = ""
    base_dir: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("at least one label is required")
        if (self.source is None) == (not self.files):
            raise ValueError("give either 'files' (data already split) or 'source' (raw tables), not both")
        if self.source is None and "train" not in self.files:
            raise ValueError(f"files must name a 'train' split; got {sorted(self.files)}")
        if not 0 <= self.max_bad_share < 1:
            raise ValueError(f"max_bad_share {self.max_bad_share} must lie in [0, 1)")
        unknown = sorted(set(self.files) - set(SPLITS))
        if unknown:
            raise ValueError(f"unknown split(s) {unknown} in files; allowed: {list(SPLITS)}")
        names = [f.name for f in self.sparse] + [f.name for f in self.dense] + [lb.name for lb in self.labels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"feature/label names must be unique; repeated: {dupes}")
        reserved = sorted(n for n in names if n in RESERVED_NAMES or n.startswith(("label_", "slice_", "_")))
        if reserved:
            raise ValueError(f"feature names {reserved} are reserved for processed columns; rename them")
        if not self.sparse and not self.dense:
            raise ValueError("the schema declares no sparse or dense feature")
        if self.image is not None and self.item is None:
            raise ValueError("image needs 'item': the column holding the item id")

    def split_files(self, split: str) -> list[Path]:
        """The input parquet files of ``split`` (a path or a glob), sorted; an error if none match."""
        if split not in self.files:
            raise ValueError(f"schema {self.name!r} has no {split!r} split; it has {sorted(self.files)}")
        return self.matching(self.files[split], f"split {split!r}")

    def matching(self, pattern: str, what: str) -> list[Path]:
        """The files matching ``pattern`` (a path or a glob, relative to the schema file), sorted; an error if none."""
        full = str(self.resolve(pattern))
        matches = sorted(Path(p) for p in glob.glob(full))
        if not matches:
            raise FileNotFoundError(f"{what}: no file matches {full}")
        return matches

    def resolve(self, rel: str) -> Path:
        path = Path(rel)
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def feature_columns(self) -> list[str]:
        """Every raw column the pipeline reads (deduplicated, in declaration order)."""
        cols = [f.column for f in self.sparse] + [f.column for f in self.dense] + [lb.column for lb in self.labels]
        cols += [self.group] + ([self.item] if self.item else []) + list(self.slices) + list(self.passthrough)
        return list(dict.fromkeys(cols + list(self.entities)))

    @property
    def cold_entities(self) -> list[str]:
        """Id columns whose values unseen in training make a row cold: group, item, then the declared entities."""
        return list(dict.fromkeys([self.group] + ([self.item] if self.item else []) + list(self.entities)))


def load_schema(path: str | Path, files: dict[str, str] | None = None) -> Schema:
    """Reads a schema YAML (unknown keys are errors); ``files`` overrides the split paths."""
    path = Path(path)
    schema = load_yaml(Schema, path)
    if schema.base_dir:
        raise ConfigError(f"{path}: 'base_dir' is set from the file's location, not in the YAML")
    schema = replace(schema, base_dir=str(path.resolve().parent))
    if files:
        schema = replace(schema, files={**schema.files, **{k: str(Path(v).resolve()) for k, v in files.items()}})
    return schema
