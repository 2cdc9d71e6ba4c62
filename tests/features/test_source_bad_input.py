"""Bad raw tables under a source: schema: each kind is caught at the source, naming the user's file, column and
problem, and the rows add up (rows in = rows out + quarantined). A representative subset runs the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from features.validate import DataError
from pipelines.build_features import build_features
from tests.helpers import RAW_SCHEMA, write_raw_tables

pytestmark = pytest.mark.unit
ROOT = Path(__file__).parents[2]
BAD_ROWS = (3, 4, 5)  # rows of events/part-0.parquet given a bad value


def _ranker(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _edit(path: Path, edit: Callable[[pl.DataFrame], pl.DataFrame]) -> Path:
    edit(pl.read_parquet(path)).write_parquet(path)
    return path


def _at_bad_rows(column: str, value: object) -> Callable[[pl.DataFrame], pl.DataFrame]:
    bad = pl.int_range(pl.len()).is_in(list(BAD_ROWS))
    return lambda df: df.with_columns(pl.when(bad).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))


def _schema(folder: Path, **overrides: object) -> Path:
    return write_raw_tables(folder, **{"bad_rows": "error", **overrides})


# Row-level problems in the interactions: (column, bad value, words of the reason).
ROW_CASES = {
    "nan-label-source": ("rating", float("nan"), "(label 'like'): NaN"),
    "inf-label-source": ("rating", float("inf"), "(label 'like'): inf"),
    "null-label-source": ("event", None, "(label 'engaged'): null"),
    "null-timestamp": ("ts", None, "(timestamp): null"),
    "unparsable-timestamp": ("ts", "2024-13-45 99:00:00", "(timestamp): unparsable with format"),
    "negative-id": ("user_id", -7, "(sparse): negative id"),
    "null-group": ("user_id", None, "(group): null"),
    "inf-dense": ("price", float("inf"), "(dense): inf"),
    "nan-bucket": ("price", float("nan"), "(sparse, bucket): NaN"),
}


@pytest.mark.parametrize("case", list(ROW_CASES), ids=list(ROW_CASES))
def test_bad_rows_are_named_then_quarantined(tmp_path: Path, case: str) -> None:
    column, value, problem = ROW_CASES[case]
    schema = _schema(tmp_path / "raw")
    part = _edit(tmp_path / "raw" / "events" / "part-0.parquet", _at_bad_rows(column, value))
    with pytest.raises(DataError) as err:
        build_features(schema, tmp_path / "feat", progress=False)
    message = str(err.value)
    assert f"column {column!r}" in message and problem in message, message
    assert f"3 row(s), first at row 3 of {part}" in message, message
    assert not (tmp_path / "feat").exists() and not list(tmp_path.glob(".feat.*"))

    schema.write_text(schema.read_text().replace("bad_rows: error", "bad_rows: quarantine"))
    results = build_features(schema, tmp_path / "feat", progress=False)["results"]
    source = results["source"]
    assert source["rows_quarantined"] == 3 and list(source["reasons"].values()) == [3]
    assert source["rows_in"] == 2000 == source["rows_out"] + source["rows_quarantined"]
    quarantine = pl.read_parquet(tmp_path / "feat" / "quarantine" / "source.parquet")
    assert sorted(quarantine["_row"].to_list()) == list(BAD_ROWS) and set(quarantine["_file"]) == {str(part)}


def test_bad_value_in_a_side_table_names_that_table(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    nan_age = pl.when(pl.col("user_id") == 5).then(float("nan")).otherwise(pl.col("age")).alias("age")
    users = _edit(
        tmp_path / "raw" / "users.parquet", lambda df: df.with_columns(nan_age).filter(pl.col("user_id") != 8)
    )
    events = pl.read_parquet(tmp_path / "raw" / "events" / "*.parquet")
    with pytest.raises(DataError) as err:
        build_features(schema, tmp_path / "feat", progress=False)
    message = str(err.value)
    # User 5's age is NaN (row 5 of the users table); user 8 has no row, so a left join leaves the age null.
    for user, problem, where in ((5, "NaN", f"(row 5 of {users})"), (8, "null", f"(no row of {users} matches it)")):
        rows = np.flatnonzero(events["user_id"].to_numpy() == user)
        line = f"column 'age' of {users} (dense): {problem}: {len(rows)} row(s), first at row {rows[0]} of"
        assert line in message and where in message, message


def test_unmatched_rows_of_an_inner_join_are_counted(tmp_path: Path) -> None:
    source = {**RAW_SCHEMA["source"], "joins": [{"table": "users.parquet", "key": "user_id", "how": "inner"}]}
    source["joins"].append({"table": "items.parquet", "key": "item_id"})
    schema = write_raw_tables(tmp_path / "raw", source=source)
    _edit(tmp_path / "raw" / "users.parquet", lambda df: df.filter(pl.col("user_id") != 9))
    events = pl.read_parquet(tmp_path / "raw" / "events" / "*.parquet")
    results = build_features(schema, tmp_path / "feat", progress=False)["results"]["source"]
    missing = int((events["user_id"] == 9).sum())
    assert results["reasons"] == {f"column 'user_id': no match in {tmp_path / 'raw' / 'users.parquet'}": missing}
    assert results["joins"][0]["rows_unmatched"] == missing
    assert results["rows_out"] + results["rows_quarantined"] == results["rows_in"] == 2000


def test_null_group_of_a_random_split(tmp_path: Path) -> None:
    split = {"kind": "random", "by": "user_id", "seed": 0}
    schema = _schema(tmp_path / "raw", source={**RAW_SCHEMA["source"], "split": split})
    part = _edit(tmp_path / "raw" / "events" / "part-0.parquet", _at_bad_rows("user_id", None))
    with pytest.raises(DataError) as err:
        build_features(schema, tmp_path / "feat", progress=False)
    assert f"column 'user_id' (split by): null: 3 row(s), first at row 3 of {part}" in str(err.value)


def test_label_constant_in_a_split(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    # The last 10% of the time range (the test split) all rated 5.
    last = pl.int_range(pl.len()) >= pl.len() - 200
    _edit(tmp_path / "raw" / "events" / "part-1.parquet", lambda df: df.with_columns(
        pl.when(last).then(5.0).otherwise(pl.col("rating")).alias("rating")))  # fmt: skip
    with pytest.raises(DataError) as err:
        build_features(schema, tmp_path / "feat", progress=False)
    message = str(err.value)
    assert "part-1.parquet" in message and "label 'like' (rating >= 4) is 1 in every one of the 200 rows" in message
    assert "split 'test'" in message and not (tmp_path / "feat").exists()


def test_missing_column_lists_every_table(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    _edit(tmp_path / "raw" / "users.parquet", lambda df: df.drop("country"))
    with pytest.raises(DataError, match="column 'country' is in none of the source tables") as err:
        build_features(schema, tmp_path / "feat", progress=False)
    assert "users.parquet has ['user_id', 'age']" in str(err.value)


def test_wrong_type_in_a_side_table(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    users = _edit(tmp_path / "raw" / "users.parquet", lambda df: df.with_columns(pl.col("age").cast(pl.String)))
    with pytest.raises(DataError) as err:
        build_features(schema, tmp_path / "feat", progress=False)
    assert f"{users}: column 'age' (dense feature 'age') has type String" in str(err.value)


def test_a_split_eaten_by_quarantine_fails(tmp_path: Path) -> None:
    """Given split files: 3 bad rows are 0.15% of all rows but 15% of a 20-row test split."""
    raw = tmp_path / "raw"
    write_raw_tables(raw)
    events = pl.read_parquet(raw / "events" / "*.parquet")
    for split, part in zip(("train", "valid", "test"), (events[:1800], events[1800:1980], events[1980:]), strict=True):
        part.write_parquet(raw / f"{split}.parquet")
    _edit(raw / "test.parquet", _at_bad_rows("ts", None))
    files = {s: f"{s}.parquet" for s in ("train", "valid", "test")}
    source = {**RAW_SCHEMA["source"], "interactions": "", "split": {"kind": "files", "files": files}}
    schema = write_raw_tables(raw, source=source)
    with pytest.raises(DataError, match=r"3 of 20 rows of split 'test' \(15.0%\) are bad, more than max_bad_share"):
        build_features(schema, tmp_path / "feat", progress=False)


# The real command, for a representative subset.


def test_cli_names_a_nan_label_source(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    part = _edit(tmp_path / "raw" / "events" / "part-0.parquet", _at_bad_rows("rating", float("nan")))
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2, out.stderr
    assert f"{tmp_path / 'raw' / 'events' / '*.parquet'}: 3 bad row(s) of 2000" in out.stderr
    assert f"column 'rating' (label 'like'): NaN: 3 row(s), first at row 3 of {part}" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "feat").exists()


def test_cli_duplicate_column_names(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    part = tmp_path / "raw" / "events" / "part-0.parquet"
    table = pq.read_table(part)
    pq.write_table(pa.Table.from_arrays([*table.columns, table.column("price")], [*table.column_names, "price"]), part)
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{part}: column name(s) ['price'] appear more than once" in out.stderr


def test_cli_duplicate_key_in_a_side_table(tmp_path: Path) -> None:
    schema = _schema(tmp_path / "raw")
    users = _edit(tmp_path / "raw" / "users.parquet", lambda df: pl.concat([df, df.filter(pl.col("user_id") == 11)]))
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2, out.stderr
    assert f"{users}: join key 'user_id' is not unique: 1 value(s) appear more than once (first 11, 2 times)" in (
        out.stderr
    )


def test_cli_quarantine_prints_counts_and_respects_the_limit(tmp_path: Path) -> None:
    schema = write_raw_tables(tmp_path / "raw", bad_rows="quarantine", max_bad_share=0.01)
    _edit(tmp_path / "raw" / "events" / "part-0.parquet", _at_bad_rows("ts", None))  # 3 of 2000: under 1%
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 0, out.stderr
    assert "source rows in      2,000  out      1,997  quarantined 3" in out.stdout
    assert "3 x column 'ts' (timestamp): null" in out.stdout and "quarantined 3 row(s) in total" in out.stdout
    manifest = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    assert manifest["results"]["rows_quarantined"] == 3

    bad = pl.int_range(pl.len()) % 10 == 0  # 100 of 2000 rows: 5%, above the 1% limit
    _edit(tmp_path / "raw" / "events" / "part-0.parquet", lambda df: df.with_columns(
        pl.when(bad).then(pl.lit(-1)).otherwise(pl.col("user_id")).alias("user_id")))  # fmt: skip
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat2"))
    assert out.returncode == 2, out.stdout
    assert "103 of 2000 rows of the source (5.1%) are bad, more than max_bad_share 1.0%" in out.stderr
    assert "column 'user_id' (sparse): negative id: 100 row(s)" in out.stderr
    assert "column 'ts' (timestamp): null: 3 row(s)" in out.stderr
    assert not (tmp_path / "feat2").exists() and not list(tmp_path.glob(".feat2.*"))


def test_cli_schema_with_only_a_train_split(tmp_path: Path) -> None:
    schema = tmp_path / "raw" / "schema.yaml"
    write_raw_tables(tmp_path / "raw")
    pl.read_parquet(tmp_path / "raw" / "events" / "*.parquet").write_parquet(tmp_path / "raw" / "train.parquet")
    data = yaml.safe_load(schema.read_text())
    del data["source"]
    data["files"] = {"train": "train.parquet"}
    data["labels"] = [{"name": "like", "column": "rating", "threshold": 4}]
    data["sparse"] = [{"name": "user", "column": "user_id"}]
    data["dense"] = [{"name": "price", "column": "price", "fill_null": 0}]
    data["slices"] = []
    schema.write_text(yaml.safe_dump(data))
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2
    assert "files names the split(s) ['train'], but training needs ['train', 'valid', 'test']" in out.stderr
    assert not (tmp_path / "feat").exists()
