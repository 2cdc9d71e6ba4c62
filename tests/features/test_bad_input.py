"""Every kind of broken input gives an error naming the file, the column and the problem; nothing is dropped."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from common.config import ConfigError
from features.processor import fit, processed_files, transform
from features.schema import load_schema
from features.validate import DataError
from pipelines.build_features import build_features

pytestmark = pytest.mark.unit


def _edit_train(schema_path: Path, edit) -> Path:
    path = schema_path.parent / "train.parquet"
    edit(pl.read_parquet(path)).write_parquet(path)
    return path


def _first_rows(value, n: int = 3):
    return pl.when(pl.int_range(pl.len()) < n).then(value)


@pytest.mark.parametrize(
    ("edit", "column", "problem"),
    [
        (lambda df: df.drop("age"), "age", "missing column"),
        (lambda df: df.with_columns(pl.col("age").cast(pl.String)), "age", "has type String"),
        (lambda df: df.with_columns(pl.col("tags").list.join(",")), "tags", "has type String"),
        (lambda df: df.with_columns(_first_rows(None).otherwise(pl.col("click")).alias("click")), "click", "null"),
        (
            lambda df: df.with_columns(_first_rows(2).otherwise(pl.col("click")).alias("click")),
            "click",
            "outside {0, 1}",
        ),
        (lambda df: df.with_columns(_first_rows(float("nan")).otherwise(pl.col("age")).alias("age")), "age", "NaN"),
        (lambda df: df.with_columns(_first_rows(float("inf")).otherwise(pl.col("age")).alias("age")), "age", "inf"),
        (lambda df: df.with_columns(_first_rows(None).otherwise(pl.col("price")).alias("price")), "price", "null"),
        (lambda df: df.with_columns(_first_rows(-1).otherwise(pl.col("slot")).alias("slot")), "slot", "outside [0, 5)"),
        (lambda df: df.with_columns(_first_rows(9).otherwise(pl.col("slot")).alias("slot")), "slot", "outside [0, 5)"),
        (lambda df: df.with_columns(_first_rows(None).otherwise(pl.col("user")).alias("user")), "user", "null"),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "wrong-list-type",
        "null-label",
        "label-outside-01",
        "nan-dense",
        "inf-dense",
        "null-dense",
        "negative-id",
        "id-out-of-range",
        "null-group",
    ],
)
def test_bad_column_is_named(tiny_data, tmp_path: Path, edit, column: str, problem: str) -> None:
    schema_path = tiny_data()
    path = _edit_train(schema_path, edit)
    with pytest.raises(DataError) as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    message = str(err.value)
    assert str(path) in message and repr(column) in message and problem in message
    if "row" in message:
        assert "first at row 0" in message


def test_empty_file(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    path = _edit_train(schema_path, lambda df: df.head(0))
    with pytest.raises(DataError, match="empty file") as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"not a parquet file at all", None], ids=["not-parquet", "truncated"])
def test_unreadable_file(tiny_data, tmp_path: Path, content: bytes | None) -> None:
    schema_path = tiny_data()
    path = schema_path.parent / "train.parquet"
    data = path.read_bytes()
    path.write_bytes(content if content is not None else data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable parquet file") as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    assert str(path) in str(err.value)


def test_duplicate_column_names(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    path = schema_path.parent / "train.parquet"
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_arrays([*table.columns, table.column("age")], [*table.column_names, "age"]), path)
    with pytest.raises(DataError) as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    assert f"{path}: column name(s) ['age'] appear more than once" in str(err.value)


def test_failed_rebuild_keeps_the_finished_build(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    out = tmp_path / "feat"
    first = build_features(schema_path, out, progress=False)
    written = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    # A bad test split fails late: after the fit and the train split were written.
    test = schema_path.parent / "test.parquet"
    pl.read_parquet(test).with_columns(_first_rows(None).otherwise(pl.col("user")).alias("user")).write_parquet(test)
    with pytest.raises(DataError, match="test.parquet"):
        build_features(schema_path, out, progress=False)
    # The earlier, complete build is untouched and no half-written folder is left beside it.
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == written
    assert json.loads((out / "manifest.json").read_text())["finished_at"] == first["finished_at"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feat", "raw"]


def test_missing_file(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data()
    (schema_path.parent / "valid.parquet").unlink()
    schema = load_schema(schema_path)
    fit(schema, tmp_path / "feat")
    with pytest.raises(FileNotFoundError, match="valid"):
        transform(schema, tmp_path / "feat", "valid")


def test_unknown_schema_key(tiny_data) -> None:
    schema_path = tiny_data()
    data = yaml.safe_load(schema_path.read_text())
    data["sparse"][0]["min_cnt"] = 3
    schema_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_schema(schema_path)
    assert str(schema_path) in str(err.value) and "min_cnt" in str(err.value)


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def test_undecodable_image(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data(image={"items": "items.parquet", "item_column": "item", "bytes_column": "png"})
    items = pl.DataFrame({"item": list(range(100, 130)), "png": [_png(i) for i in range(30)]})
    items = items.with_columns(
        pl.when(pl.col("item") == 117).then(b"\x89PNG broken").otherwise(pl.col("png")).alias("png")
    )
    items.write_parquet(schema_path.parent / "items.parquet")
    with pytest.raises(DataError) as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    message = str(err.value)
    assert "items.parquet" in message and "'png'" in message and "item 117" in message and "undecodable" in message


def test_images_decode_into_the_array(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data(image={"items": "items.parquet", "item_column": "item", "bytes_column": "png"})
    pl.DataFrame({"item": list(range(100, 130)), "png": [_png(i) for i in range(30)]}).write_parquet(
        schema_path.parent / "items.parquet"
    )
    out = tmp_path / "feat"
    fmap = fit(load_schema(schema_path), out)
    transform(load_schema(schema_path), out, "test", fmap)
    images = np.load(out / "images.npy")
    test = pl.read_parquet(processed_files(out, "test"))
    assert fmap.image_shape == (1, 8, 8)
    # The image behind each row is the one encoded for its item (value = item - 100).
    assert (images[test["image_index"].to_numpy(), 0, 0, 0] == test["item_id"].to_numpy() - 100).all()


def test_item_without_an_image(tiny_data, tmp_path: Path) -> None:
    """files: form: a row whose item the items table lacks is a bad row of that split file."""
    schema_path = tiny_data(image={"items": "items.parquet", "item_column": "item", "bytes_column": "png"})
    items = schema_path.parent / "items.parquet"
    pl.DataFrame({"item": list(range(100, 129)), "png": [_png(i) for i in range(29)]}).write_parquet(items)  # no 129
    train = pl.read_parquet(schema_path.parent / "train.parquet")
    rows = np.flatnonzero(train["item"].to_numpy() == 129)
    with pytest.raises(DataError) as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    line = f"column 'item' (item): id not in the items table {items}: {len(rows)} row(s), first at row {rows[0]}"
    assert str(err.value).startswith(f"{schema_path.parent / 'train.parquet'}: ") and line in str(err.value)


def test_quarantine_keeps_every_bad_row(tiny_data, tmp_path: Path) -> None:
    schema_path = tiny_data(bad_rows="quarantine")
    raw = _edit_train(
        schema_path,
        lambda df: df.with_columns(
            pl.when(pl.int_range(pl.len()) % 50 == 1).then(7).otherwise(pl.col("click")).alias("click"),
            pl.when(pl.int_range(pl.len()) % 80 == 2).then(float("nan")).otherwise(pl.col("age")).alias("age"),
        ),
    )
    n_raw = pl.read_parquet(raw).height
    schema = load_schema(schema_path)
    out = tmp_path / "feat"
    fmap = fit(schema, out)
    report = transform(schema, out, "train", fmap)
    quarantine = pl.read_parquet(out / "quarantine" / "train-part-00000.parquet")
    assert report.rows_quarantined == quarantine.height == 8 + 5
    assert report.rows_out + report.rows_quarantined == report.rows_in == n_raw
    assert report.reasons == {
        "column 'click' (label): value outside {0, 1}": 8,
        "column 'age' (dense): NaN": 5,
    }
    assert set(quarantine["_row"].to_list()) == {i for i in range(n_raw) if i % 50 == 1 or i % 80 == 2}
    assert fmap.train_rows == n_raw - 13


def test_reserved_feature_name(tiny_data) -> None:
    schema_path = tiny_data()
    data = yaml.safe_load(schema_path.read_text())
    data["sparse"][1]["name"] = "item_id"
    schema_path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="reserved") as err:
        load_schema(schema_path)
    assert "item_id" in str(err.value)


@pytest.mark.parametrize("where", ["items table", "interactions"])
def test_string_item_ids_with_images_are_named(tiny_data, tmp_path: Path, where: str) -> None:
    """Items with images need integer ids, in the items table and in the split files alike."""
    schema_path = tiny_data(image={"items": "items.parquet", "item_column": "item", "bytes_column": "png"})
    items = pl.DataFrame({"item": list(range(100, 130)), "png": [_png(i) for i in range(30)]})
    if where == "items table":
        items = items.with_columns(pl.col("item").cast(pl.String))
        named, column = schema_path.parent / "items.parquet", "'item' (item id) has type String"
    else:
        _edit_train(schema_path, lambda df: df.with_columns(pl.col("item").cast(pl.String)))
        named, column = schema_path.parent / "train.parquet", "'item' (item) has type String; expected an integer"
    items.write_parquet(schema_path.parent / "items.parquet")
    with pytest.raises(DataError) as err:
        fit(load_schema(schema_path), tmp_path / "feat")
    assert str(err.value).startswith(f"{named}: column {column}")
