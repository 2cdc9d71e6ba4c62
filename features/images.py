"""Item images: validated once into ``images.npy`` (uint8, n x C x H x W) and ``items.parquet``.

The schema's image source is either a uint8 ``.npy`` array indexed by an items-table column, or a column of encoded
image bytes (PNG/JPEG) in the items table. Both end up as one array, memory-mapped by training and serving.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image, UnidentifiedImageError

from features.schema import Schema
from features.validate import DataError

IMAGES = "images.npy"
ITEMS = "items.parquet"


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        arr = np.asarray(img.convert("L") if img.mode not in ("L", "RGB") else img)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)


def _read_items(schema: Schema, with_images: bool) -> tuple[Path, pl.DataFrame]:
    """The items table's path and its item id column (and image column), checked: readable, non-empty, unique ids."""
    spec = schema.image
    assert spec is not None, "the schema has no image section"
    items_path = schema.resolve(spec.items)
    if not items_path.exists():
        raise DataError(f"{items_path}: items file not found")
    needed = [spec.item_column] + ([spec.index_column if spec.array else spec.bytes_column] if with_images else [])
    try:
        names = list(pl.read_parquet_schema(items_path))
        items = pl.read_parquet(items_path, columns=list(dict.fromkeys(c for c in needed if c in names)))
    except Exception as err:  # polars raises several error types for unreadable files
        raise DataError(f"{items_path}: not a readable parquet file: {err}") from err
    missing = [c for c in needed if c not in names]
    if missing:
        raise DataError(f"{items_path}: missing column(s) {missing}; the file has {names}")
    if items.height == 0:
        raise DataError(f"{items_path}: empty items table")
    if not items.schema[spec.item_column].is_integer():
        raise DataError(
            f"{items_path}: column {spec.item_column!r} (item id) has type {items.schema[spec.item_column]}; "
            "image items need integer ids (map string ids to integers in the items table and the interactions)"
        )
    dupes = items[spec.item_column].is_duplicated().sum()
    if dupes:
        raise DataError(f"{items_path}: column {spec.item_column!r}: {dupes} duplicated item id(s)")
    return items_path, items


def item_ids(schema: Schema) -> pl.Series:
    """The item ids of the schema's image items table (checked as :func:`build` checks them), as Int64."""
    spec = schema.image
    assert spec is not None, "item_ids() needs a schema with an image section"
    return _read_items(schema, with_images=False)[1][spec.item_column].cast(pl.Int64)


def build(schema: Schema, out_dir: Path) -> pl.DataFrame:
    """Validates the item images and writes ``images.npy`` + ``items.parquet`` (item_id, image_index)."""
    spec = schema.image
    assert spec is not None, "build() needs a schema with an image section"
    items_path, items = _read_items(schema, with_images=True)
    ids = items[spec.item_column].cast(pl.Int64)
    if spec.array:
        array_path = schema.resolve(spec.array)
        try:
            array = np.load(array_path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise DataError(f"{array_path}: not a readable .npy image array: {err}") from err
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise DataError(
                f"{array_path}: expected uint8 images n x H x W or n x C x H x W, got {array.dtype} {array.shape}"
            )
        index = items[spec.index_column]
        if index.null_count() or index.min() < 0 or index.max() >= len(array):
            raise DataError(f"{items_path}: column {spec.index_column!r}: image index outside [0, {len(array)})")
        images = np.ascontiguousarray(array[index.to_numpy()])
        images = images[:, None] if images.ndim == 3 else images
    else:
        decoded = []
        for item_id, data in zip(ids.to_list(), items[spec.bytes_column].to_list(), strict=True):
            try:
                decoded.append(_decode(data))
            except (UnidentifiedImageError, OSError, TypeError, ValueError) as err:
                raise DataError(
                    f"{items_path}: column {spec.bytes_column!r}: undecodable image for item {item_id}: {err}"
                ) from err
        shapes = {a.shape for a in decoded}
        if len(shapes) > 1:
            raise DataError(f"{items_path}: column {spec.bytes_column!r}: images of different shapes {sorted(shapes)}")
        images = np.stack(decoded)
    np.save(out_dir / IMAGES, images)
    table = pl.DataFrame({"item_id": ids, "image_index": np.arange(len(ids), dtype=np.int64)})
    table.write_parquet(out_dir / ITEMS)
    return table


def load_items(out_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(out_dir / ITEMS)


def load_images(out_dir: str | Path) -> np.ndarray:
    """The image array ``n x C x H x W`` (uint8), memory-mapped."""
    return np.load(Path(out_dir) / IMAGES, mmap_mode="r")


def image_shape(out_dir: Path) -> tuple[int, ...]:
    return tuple(int(x) for x in load_images(out_dir).shape[1:])
