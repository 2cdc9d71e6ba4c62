"""Bad raw tables under a source: schema, through the real ``ranker features build``: each kind is caught at the
source with the exit code, the message names the user's file, column and problem, and the rows add up (rows in =
rows out + quarantined). Most cases call the command's ``main`` in this process (a subprocess costs seconds); a few
run it as a subprocess, which also shows that no traceback reaches the user.

Kinds and their tests: every row-level check (label source NaN/inf/null/outside {0, 1}, null or unparsable
timestamp, negative id, null group/item/split key, item not in the items table, non-nullable null, identity id out
of range, bucket NaN, dense null/NaN/inf, log1p <= -1, left and inner joins losing rows) in
``test_bad_rows_stop_then_quarantine``; every file-level check (missing, truncated, empty file, repeated column
name, columns or types differing between files, a column in no table, wrong types, join keys, derived-name clash,
timestamp type) in ``test_bad_files_stop_the_build`` and ``test_cli_duplicate_column_names``; the rest (a side
table repeating a key, quarantine above max_bad_share overall and of one split, a constant label, an empty split, a
schema with only a train split, given split files overlapping in time) in their own tests below.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipelines.cli import main
from tests.helpers import RAW_SCHEMA, write_raw_tables

pytestmark = pytest.mark.unit
ROOT = Path(__file__).parents[2]
ROWS = 2000  # interactions written by write_raw_tables (two files of 1000)
BAD_ROWS = (3, 4, 5)  # rows of events/part-0.parquet given a bad value
EVENTS = "events/*.parquet"
PART0, PART1, USERS = "events/part-0.parquet", "events/part-1.parquet", "users.parquet"
IMAGE = {"items": "item_images.parquet", "array": "images.npy"}  # ids 0..39, like items.parquet

Edit = Callable[[pl.DataFrame], pl.DataFrame]


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


def _cli(capsys: pytest.CaptureFixture[str], schema: Path, out: Path) -> Run:
    """``ranker features build SCHEMA --out OUT`` in this process: exit code, stdout, stderr."""
    code = main(["features", "build", str(schema), "--out", str(out)])
    captured = capsys.readouterr()
    return Run(code, captured.out, captured.err)


def _ranker(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def _edit(path: Path, edit: Edit) -> Path:
    edit(pl.read_parquet(path)).write_parquet(path)
    return path


def _at_bad_rows(column: str, value: object) -> Edit:
    bad = pl.int_range(pl.len()).is_in(list(BAD_ROWS))
    return lambda df: df.with_columns(pl.when(bad).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))


def _for_user(user: int, column: str, value: object) -> Edit:
    is_user = pl.col("user_id") == user
    return lambda df: df.with_columns(pl.when(is_user).then(pl.lit(value)).otherwise(pl.col(column)).alias(column))


def _without_user(user: int) -> Edit:
    return lambda df: df.filter(pl.col("user_id") != user)


def _raw(folder: Path, **overrides: Any) -> Path:
    """The raw tables (and an image items table) with ``bad_rows: error``; returns the schema path."""
    schema = write_raw_tables(folder, n=ROWS, **{"bad_rows": "error", **overrides})
    pl.DataFrame({"item_id": np.arange(40), "image_index": np.arange(40)}).write_parquet(folder / IMAGE["items"])
    np.save(folder / IMAGE["array"], np.zeros((40, 4, 4), dtype=np.uint8))
    return schema


def _sparse(name: str, **changes: Any) -> list[dict[str, Any]]:
    return [{**f, **changes} if f["name"] == name else f for f in RAW_SCHEMA["sparse"]]


@dataclass(frozen=True)
class RowCase:
    """A bad value in one table: the edit, the whole reason (``{raw}`` = the raw folder), the schema's changes.

    The interaction rows made bad are ``BAD_ROWS`` of part-0, or, when ``users`` is set, every row of those users.
    """

    table: str
    edit: Edit
    reason: str
    schema: dict[str, Any] = field(default_factory=dict)
    users: tuple[int, ...] = ()


SOURCE = RAW_SCHEMA["source"]
ROW_CASES = {
    "nan-label-source": RowCase(PART0, _at_bad_rows("rating", float("nan")), "column 'rating' (label 'like'): NaN"),
    "inf-label-source": RowCase(PART0, _at_bad_rows("rating", float("inf")), "column 'rating' (label 'like'): inf"),
    "null-label-source": RowCase(PART0, _at_bad_rows("event", None), "column 'event' (label 'engaged'): null"),
    "label-outside-0-1": RowCase(
        USERS,
        lambda df: df.with_columns(
            pl.when(pl.col("user_id") == 5).then(2).otherwise(pl.col("user_id") % 2).alias("vip")
        ),
        "column 'vip' of {raw}/users.parquet (label): value outside {{0, 1}}",
        {"labels": [*RAW_SCHEMA["labels"], {"name": "vip", "column": "vip"}]},
        users=(5,),
    ),
    "null-timestamp": RowCase(PART0, _at_bad_rows("ts", None), "column 'ts' (timestamp): null"),
    "unparsable-timestamp": RowCase(
        PART0,
        _at_bad_rows("ts", "2024-13-45 99:00:00"),
        "column 'ts' (timestamp): unparsable with format '%Y-%m-%d %H:%M:%S'",
    ),
    "negative-id": RowCase(PART0, _at_bad_rows("user_id", -7), "column 'user_id' (sparse): negative id"),
    "null-group": RowCase(PART0, _at_bad_rows("user_id", None), "column 'user_id' (group): null"),
    "null-item": RowCase(PART0, _at_bad_rows("item_id", None), "column 'item_id' (item): null"),
    "item-not-in-items-table": RowCase(
        PART0,
        _at_bad_rows("item_id", 999),
        "column 'item_id' (item): id not in the items table {raw}/item_images.parquet",
        {"image": IMAGE},
    ),
    "null-split-key": RowCase(
        PART0,
        _at_bad_rows("user_id", None),
        "column 'user_id' (split by): null",
        {"source": {**SOURCE, "split": {"kind": "random", "by": "user_id", "seed": 0}}},
    ),
    "null-not-nullable": RowCase(
        PART0,
        _at_bad_rows("position", None),
        "column 'position' (sparse): null",
        {"sparse": _sparse("position", nullable=False)},
    ),
    "identity-out-of-range": RowCase(
        PART0,
        _at_bad_rows("position", 25),
        "column 'position' (sparse): id outside [0, 20)",
        {"sparse": _sparse("position", encoding="identity", num_ids=20, edges=[])},
    ),
    "nan-bucket": RowCase(PART0, _at_bad_rows("price", float("nan")), "column 'price' (sparse, bucket): NaN"),
    "inf-dense": RowCase(PART0, _at_bad_rows("price", float("inf")), "column 'price' (dense): inf"),
    "log1p-below-minus-1": RowCase(PART0, _at_bad_rows("price", -3.0), "column 'price' (dense, log1p): value <= -1"),
    "nan-dense-in-side-table": RowCase(
        USERS, _for_user(5, "age", float("nan")), "column 'age' of {raw}/users.parquet (dense): NaN", users=(5,)
    ),
    "null-dense-in-side-table": RowCase(
        USERS, _for_user(5, "age", None), "column 'age' of {raw}/users.parquet (dense): null", users=(5,)
    ),
    "left-join-loses-rows": RowCase(
        USERS, _without_user(8), "column 'age' of {raw}/users.parquet (dense): null", users=(8,)
    ),
    "inner-join-loses-rows": RowCase(
        USERS,
        _without_user(9),
        "column 'user_id': no match in {raw}/users.parquet",
        {"source": {**SOURCE, "joins": [{**SOURCE["joins"][0], "how": "inner"}, SOURCE["joins"][1]]}},
        users=(9,),
    ),
}


def _bad_rows(raw: Path, users: tuple[int, ...]) -> list[tuple[str, int]]:
    """(file, row) of the interactions a case makes bad, in file order."""
    if not users:
        return [(str(raw / PART0), r) for r in BAD_ROWS]
    found = []
    for part in (PART0, PART1):
        ids = pl.read_parquet(raw / part)["user_id"].to_numpy()
        found += [(str(raw / part), int(r)) for r in np.flatnonzero(np.isin(ids, users))]
    return found


@pytest.mark.parametrize("case", list(ROW_CASES), ids=list(ROW_CASES))
def test_bad_rows_stop_then_quarantine(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    spec = ROW_CASES[case]
    raw = tmp_path / "raw"
    schema = _raw(raw, **spec.schema)
    _edit(raw / spec.table, spec.edit)
    reason = spec.reason.format(raw=raw)
    bad = _bad_rows(raw, spec.users)
    n = len(bad)
    assert 0 < n <= 0.05 * ROWS  # within the schema's max_bad_share, so quarantine builds

    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    assert f"ranker: error: {raw / EVENTS}: {n} bad row(s) of {ROWS}\n" in run.err, run.err
    first = f"  {reason}: {n} row(s), first at row {bad[0][1]} of {bad[0][0]}"
    assert first in run.err, run.err
    if spec.table == USERS and "no match" not in reason:  # the side table's row, or that none matched
        rows = pl.read_parquet(raw / USERS)["user_id"].to_list()
        where = f"(row {rows.index(spec.users[0])} of" if spec.users[0] in rows else "(no row of"
        assert f"{first} {where} {raw / USERS}" in run.err, run.err
    assert "Traceback" not in run.err and not (tmp_path / "feat").exists()

    schema.write_text(schema.read_text().replace("bad_rows: error", "bad_rows: quarantine"))
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 0, run.err
    assert f"source rows in {ROWS:>10,}  out {ROWS - n:>10,}  quarantined {n}\n" in run.out, run.out
    assert f"         {n} x {reason}\n" in run.out and f"quarantined {n} row(s) in total" in run.out, run.out
    results = json.loads((tmp_path / "feat" / "manifest.json").read_text())["results"]
    source = results["source"]
    assert source["rows_in"] == ROWS == source["rows_out"] + source["rows_quarantined"]
    assert source["rows_quarantined"] == n == results["rows_quarantined"] and source["reasons"] == {reason: n}
    assert sum(c["rows"] for c in source["split"]["counts"].values()) == source["rows_out"]
    assert sum(r["rows_out"] for r in results["splits"].values()) == source["rows_out"]
    quarantine = pl.read_parquet(tmp_path / "feat" / "quarantine" / "source.parquet")
    assert sorted(zip(quarantine["_file"], quarantine["_row"], strict=True)) == bad
    assert set(quarantine["_reason"]) == {reason}
    if case == "left-join-loses-rows":
        assert f"join   {raw / USERS} on user_id (left): {n} row(s) unmatched" in run.out, run.out


@dataclass(frozen=True)
class FileCase:
    """A bad file: the edits (table -> edit), the message (``{raw}`` = the raw folder), the schema's changes."""

    edits: dict[str, Edit]
    message: str
    schema: dict[str, Any] = field(default_factory=dict)
    truncate: str = ""  # a table cut short after its edits


def _files_split(raw: Path) -> None:
    """train/valid/test.parquet in ``raw``: the events cut at rows 1500 and 1750."""
    events = pl.read_parquet(raw / EVENTS)
    for split, part in zip(("train", "valid", "test"), (events[:1500], events[1500:1750], events[1750:]), strict=True):
        part.write_parquet(raw / f"{split}.parquet")


FILES_SPLIT = {
    **SOURCE,
    "interactions": "",
    "split": {"kind": "files", "files": {s: f"{s}.parquet" for s in ("train", "valid", "test")}},
}
FILE_CASES = {
    "no-file-matches": FileCase(
        {}, "no file matches {raw}/evnts/*.parquet", {"source": {**SOURCE, "interactions": "evnts/*.parquet"}}
    ),
    "truncated-file": FileCase({}, "{raw}/events/part-1.parquet: not a readable parquet file", truncate=PART1),
    "empty-file": FileCase({PART1: lambda df: df.head(0)}, "{raw}/events/part-1.parquet: empty file (0 rows)"),
    "columns-differ-between-files": FileCase(
        {PART1: lambda df: df.drop("position")},
        "{raw}/events/part-1.parquet: columns ['user_id', 'item_id', 'ts', 'rating', 'event', 'price'] differ from "
        "those of {raw}/events/part-0.parquet",
    ),
    "type-differs-between-files": FileCase(
        {PART1: lambda df: df.with_columns(pl.col("position").cast(pl.Int32))},
        "{raw}/events/part-1.parquet: column 'position' has type Int32, but Int64 in {raw}/events/part-0.parquet",
    ),
    "type-differs-between-split-files": FileCase(
        {"valid.parquet": lambda df: df.with_columns(pl.col("position").cast(pl.Int32))},
        "{raw}/valid.parquet: column 'position' has type Int32, but Int64 in {raw}/train.parquet",
        {"source": FILES_SPLIT},
    ),
    "missing-in-one-split-file": FileCase(
        {"valid.parquet": lambda df: df.drop("position")},
        "{raw}/valid.parquet: missing column(s) ['position']",
        {"source": FILES_SPLIT},
    ),
    "column-in-no-table": FileCase(
        {USERS: lambda df: df.drop("country")},
        "column 'country' is in none of the source tables: {raw}/events/*.parquet has",
    ),
    "wrong-type": FileCase(
        {p: lambda df: df.with_columns(pl.col("price").cast(pl.String)) for p in (PART0, PART1)},
        "{raw}/events/part-0.parquet: column 'price' (sparse feature 'price_bucket') has type String; expected a "
        "number",
    ),
    "wrong-type-in-side-table": FileCase(
        {USERS: lambda df: df.with_columns(pl.col("age").cast(pl.String))},
        "{raw}/users.parquet: column 'age' (dense feature 'age') has type String; expected a number",
    ),
    "non-integer-ids": FileCase(
        {p: lambda df: df.with_columns(pl.col("user_id").cast(pl.String)) for p in (PART0, PART1)},
        "{raw}/events/part-0.parquet: column 'user_id' (non-negative ids of 'user') must hold integers",
    ),
    "join-key-missing-in-side-table": FileCase(
        {USERS: lambda df: df.rename({"user_id": "uid"})},
        "{raw}/users.parquet: join key 'user_id' is missing; the table has ['uid', 'age', 'country']",
    ),
    "join-key-missing-in-interactions": FileCase(
        {USERS: lambda df: df.rename({"user_id": "uid"})},
        "{raw}/events/*.parquet: join key 'uid' (of {raw}/users.parquet) is not a column here",
        {"source": {**SOURCE, "joins": [{"table": USERS, "key": "uid"}, SOURCE["joins"][1]]}},
    ),
    "join-key-types-differ": FileCase(
        {USERS: lambda df: df.with_columns(pl.col("user_id").cast(pl.Int32))},
        "{raw}/users.parquet: join key 'user_id' has type Int32, but Int64 in {raw}/events/*.parquet",
    ),
    "derived-name-clash": FileCase(
        {USERS: lambda df: df.with_columns(pl.lit(1).alias("hour"))},
        "{raw}/users.parquet: derived column 'hour' would replace the column of that name",
    ),
    "timestamp-strings-without-format": FileCase(
        {},
        "{raw}/events/*.parquet: column 'ts' (timestamp) holds strings; give timestamp.format",
        {"source": {**SOURCE, "timestamp": {"column": "ts"}}},
    ),
    "timestamp-wrong-type": FileCase(
        {p: (lambda df: df.with_columns(pl.col("ts").str.len_bytes().cast(pl.Float64))) for p in (PART0, PART1)},
        "{raw}/events/*.parquet: column 'ts' (timestamp) has type Float64; expected an integer epoch",
    ),
}


@pytest.mark.parametrize("case", list(FILE_CASES), ids=list(FILE_CASES))
def test_bad_files_stop_the_build(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    spec = FILE_CASES[case]
    raw = tmp_path / "raw"
    schema = _raw(raw, **spec.schema)
    _files_split(raw)
    for table, edit in spec.edits.items():
        _edit(raw / table, edit)
    if spec.truncate:
        (raw / spec.truncate).write_bytes((raw / spec.truncate).read_bytes()[:200])
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    assert run.err.startswith("ranker: error: ") and spec.message.format(raw=raw) in run.err, run.err
    assert "Traceback" not in run.err and not (tmp_path / "feat").exists() and not list(tmp_path.glob(".feat*"))


def test_a_split_eaten_by_quarantine_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Given split files: 3 bad rows are 0.15% of all rows but 1.2% of the 250-row valid split (limit 1%)."""
    raw = tmp_path / "raw"
    schema = _raw(raw, source=FILES_SPLIT, bad_rows="quarantine", max_bad_share=0.01)
    _files_split(raw)
    _edit(raw / "valid.parquet", _at_bad_rows("ts", None))
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    assert f"{raw / 'train.parquet'}: 3 of 250 rows of split 'valid' (1.2%) are bad, more than max_bad_share" in run.err
    assert f"  column 'ts' (timestamp): null: 3 row(s), first at row 3 of {raw / 'valid.parquet'}" in run.err
    assert not (tmp_path / "feat").exists()


def test_quarantine_eating_the_test_period_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Temporal split: 10 bad rows are 0.5% of all rows, but all lie in the test period (about 5% of that split)."""
    raw = tmp_path / "raw"
    schema = _raw(raw, bad_rows="quarantine", max_bad_share=0.01)
    late = pl.int_range(pl.len()).is_in(list(range(990, 1000)))  # the last rows in time
    _edit(raw / PART1, lambda df: df.with_columns(pl.when(late).then(None).otherwise(pl.col("event")).alias("event")))
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    # The 1990 good rows cut 1592 / 199 / 199; the test period holds 199 good rows and the 10 bad ones.
    assert f"{raw / EVENTS}: 10 of 209 rows of split 'test' (4.8%) are bad, more than max_bad_share 1.0%" in run.err
    assert f"  column 'event' (label 'engaged'): null: 10 row(s), first at row 990 of {raw / PART1}" in run.err
    assert not (tmp_path / "feat").exists()


def test_given_split_files_overlapping_in_time_warn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A files split is the user's; one whose valid rows start before train ends builds, with a warning and counts."""
    raw = tmp_path / "raw"
    schema = _raw(raw, source=FILES_SPLIT)
    _files_split(raw)
    train, valid = pl.read_parquet(raw / "train.parquet"), pl.read_parquet(raw / "valid.parquet")
    # The last 20 train rows and the first 20 valid rows trade places.
    pl.concat([train[:-20], valid[:20]]).write_parquet(raw / "train.parquet")
    pl.concat([train[-20:], valid[20:]]).write_parquet(raw / "valid.parquet")
    last_train = pl.read_parquet(raw / "train.parquet")["ts"].max()
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 0, run.err
    warning = (
        f"ranker: warning: {raw / 'valid.parquet'}: column 'ts' (timestamp): 20 of 250 row(s) of split 'valid' lie "
        f"before {last_train}, the last time of an earlier split"
    )
    assert warning in run.err, run.err
    split = json.loads((tmp_path / "feat" / "manifest.json").read_text())["results"]["source"]["split"]
    assert split["temporal_leak"] is True and split["temporal_leak_rows"] == {"valid": 20, "test": 0}


def test_label_constant_in_a_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw"
    schema = _raw(raw)
    last = pl.int_range(pl.len()) >= pl.len() - 200  # the last 10% of the time range (the test split) all rated 5
    _edit(raw / PART1, lambda df: df.with_columns(pl.when(last).then(5.0).otherwise(pl.col("rating")).alias("rating")))
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    assert f"{raw / PART0}, {raw / PART1}: label 'like' (rating >= 4) is 1 in every one of the 200 rows of split " in (
        run.err
    )
    assert "split 'test'" in run.err and not (tmp_path / "feat").exists()


def test_empty_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    split = {"kind": "temporal", "cutoffs": {"valid": "2024-03-01", "test": "2025-01-01"}}  # data end in March 2024
    raw = tmp_path / "raw"
    schema = _raw(raw, source={**SOURCE, "split": split})
    run = _cli(capsys, schema, tmp_path / "feat")
    assert run.code == 2, run.err
    assert f"{raw / EVENTS}: split 'test' is empty after the temporal split at cutoffs" in run.err
    assert f"of column 'ts' of {ROWS} good row(s)" in run.err and not (tmp_path / "feat").exists()


# The real command as a subprocess, for a representative subset.


def test_cli_names_a_nan_label_source(tmp_path: Path) -> None:
    schema = _raw(tmp_path / "raw")
    part = _edit(tmp_path / "raw" / PART0, _at_bad_rows("rating", float("nan")))
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2, out.stderr
    assert f"{tmp_path / 'raw' / EVENTS}: 3 bad row(s) of 2000" in out.stderr
    assert f"column 'rating' (label 'like'): NaN: 3 row(s), first at row 3 of {part}" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "feat").exists()


def test_cli_duplicate_column_names(tmp_path: Path) -> None:
    schema = _raw(tmp_path / "raw")
    part = tmp_path / "raw" / PART0
    table = pq.read_table(part)
    pq.write_table(pa.Table.from_arrays([*table.columns, table.column("price")], [*table.column_names, "price"]), part)
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert f"{part}: column name(s) ['price'] appear more than once" in out.stderr


def test_cli_duplicate_key_in_a_side_table(tmp_path: Path) -> None:
    """A side table repeating a key would duplicate interaction rows: the build stops instead."""
    schema = _raw(tmp_path / "raw")
    users = _edit(tmp_path / "raw" / USERS, lambda df: pl.concat([df, df.filter(pl.col("user_id") == 11)]))
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 2, out.stderr
    assert f"{users}: join key 'user_id' is not unique: 1 value(s) appear more than once (first 11, 2 times)" in (
        out.stderr
    )


def test_cli_quarantine_prints_counts_and_respects_the_limit(tmp_path: Path) -> None:
    schema = _raw(tmp_path / "raw", bad_rows="quarantine", max_bad_share=0.01)
    _edit(tmp_path / "raw" / PART0, _at_bad_rows("ts", None))  # 3 of 2000: under 1%
    out = _ranker("features", "build", str(schema), "--out", str(tmp_path / "feat"))
    assert out.returncode == 0, out.stderr
    assert "source rows in      2,000  out      1,997  quarantined 3" in out.stdout
    assert "3 x column 'ts' (timestamp): null" in out.stdout and "quarantined 3 row(s) in total" in out.stdout
    manifest = json.loads((tmp_path / "feat" / "manifest.json").read_text())
    assert manifest["results"]["rows_quarantined"] == 3

    bad = pl.int_range(pl.len()) % 10 == 0  # 100 of 2000 rows: 5%, above the 1% limit
    _edit(tmp_path / "raw" / PART0, lambda df: df.with_columns(
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
    pl.read_parquet(tmp_path / "raw" / EVENTS).write_parquet(tmp_path / "raw" / "train.parquet")
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
