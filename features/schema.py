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

from features.strict_yaml import ConfigError, load_yaml

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MISSING_ID = 0
OOV_ID = 1
FIRST_ID = 2
RESERVED_NAMES = frozenset({"group_id", "item_id", "image_index", "is_cold"})  # processed columns the loader reads


@dataclass(frozen=True)
class SparseFeature:
    """A categorical feature: one id per row (``single``) or a list of ids (``multi``)."""

    name: str
    column: str
    kind: Literal["single", "multi"] = "single"
    encoding: Literal["vocab", "hash", "identity"] = "vocab"
    min_count: int = 1  # vocab: values seen fewer times in train map to the OOV id
    buckets: int = 0  # hash: table size (ids 2 .. buckets+1)
    num_ids: int = 0  # identity: raw ids must lie in [0, num_ids)
    nullable: bool = True  # null -> the missing id; False makes a null bad input

    def __post_init__(self) -> None:
        if self.encoding == "hash" and self.buckets <= 0:
            raise ValueError(f"sparse feature {self.name!r}: encoding 'hash' needs buckets > 0")
        if self.encoding == "identity" and self.num_ids <= 0:
            raise ValueError(f"sparse feature {self.name!r}: encoding 'identity' needs num_ids > 0")
        if self.min_count < 1:
            raise ValueError(f"sparse feature {self.name!r}: min_count must be >= 1")


@dataclass(frozen=True)
class DenseFeature:
    """A numeric feature, standardised with train statistics (after ``log1p`` when asked)."""

    name: str
    column: str
    transform: Literal["standard", "log1p", "none"] = "standard"
    fill_null: float | None = None  # nulls take this raw value (declared, so never silent); else a null is bad input


@dataclass(frozen=True)
class Label:
    """A binary label (0/1) for one task."""

    name: str
    column: str


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
class Schema:
    """A data set's columns and their roles; paths are resolved relative to the schema file."""

    name: str
    files: dict[str, str]
    labels: tuple[Label, ...]
    group: str
    sparse: tuple[SparseFeature, ...] = ()
    dense: tuple[DenseFeature, ...] = ()
    item: str | None = None
    image: ImageSpec | None = None
    slices: tuple[str, ...] = ()
    passthrough: tuple[str, ...] = ()  # copied through for analysis, never a feature (e.g. true_p)
    bad_rows: Literal["error", "quarantine"] = "error"
    hash_seed: int = 0
    description: str = ""
    base_dir: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.labels:
            raise ValueError("at least one label is required")
        if "train" not in self.files:
            raise ValueError(f"files must name a 'train' split; got {sorted(self.files)}")
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
        pattern = self.files[split]
        full = pattern if Path(pattern).is_absolute() else str(Path(self.base_dir) / pattern)
        matches = sorted(Path(p) for p in glob.glob(full))
        if not matches:
            raise FileNotFoundError(f"split {split!r}: no file matches {full}")
        return matches

    def resolve(self, rel: str) -> Path:
        path = Path(rel)
        return path if path.is_absolute() else Path(self.base_dir) / path

    @property
    def feature_columns(self) -> list[str]:
        """Every raw column the pipeline reads (deduplicated, in declaration order)."""
        cols = [f.column for f in self.sparse] + [f.column for f in self.dense] + [lb.column for lb in self.labels]
        cols += [self.group] + ([self.item] if self.item else []) + list(self.slices) + list(self.passthrough)
        return list(dict.fromkeys(cols))


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
